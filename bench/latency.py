"""Row 4: one photo on an idle stack, from the upload sent to the ticket seen completed.

Two observers run side by side after the 202: a poller (GET /tickets/{id} every 10 ms, so it
adds at most 10 ms) and a Server-Sent Events stream. The anchor is the imaging time of the same
photo, ``imaging.render`` in this process (wall clock, warm), taken just before each upload
so that each sample is a pair measured under the same load; what is left over is what the
pipeline adds: the upload, queueing, the sandbox hop, storage writes and the callback.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx

from bench.inputs import Photo
from bench.ladder import imagepipe_ladder
from bench.model import Row, table
from bench.stack import Stack, upload, wait_for
from bench.stats import summarize
from imagepipe.stack.net import free_port

POLL_S = 0.01
IDLE_GAP_S = 0.5  # between samples: the stack is idle when each upload arrives
BUDGET_MS = 60


async def _polled(client: httpx.AsyncClient, ticket_id: str, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ticket = (await client.get(f"/tickets/{ticket_id}")).json()
        if ticket["status"] in ("completed", "failed"):
            return time.monotonic()
        await asyncio.sleep(POLL_S)
    raise TimeoutError("the ticket never completed")


async def _pushed(client: httpx.AsyncClient, ticket_id: str) -> float:
    async with client.stream("GET", f"/tickets/{ticket_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                status = json.loads(line[5:])["status"]
                if status in ("completed", "failed"):
                    return time.monotonic()
    raise RuntimeError("the event stream ended before the ticket completed")


Sample = dict[str, float]  # milliseconds: imaging (the paired anchor), accepted, polled, ...


async def job_seconds(client: httpx.AsyncClient, metrics_url: str) -> float:
    """Total seconds the worker spent in process_photo so far (its Prometheus histogram)."""
    text = (await client.get(metrics_url)).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("imagepipe_job_duration_seconds_sum")
    )


async def one_photo(client: httpx.AsyncClient, photo: Photo, metrics_url: str) -> Sample:
    """One upload, timed to its 202, to completed (polled and pushed), and its job's time."""
    job_before = await job_seconds(client, metrics_url)
    sent = time.monotonic()
    ticket_id = await upload(client, photo.data)
    accepted = time.monotonic()
    polled, pushed = await asyncio.wait_for(
        asyncio.gather(_polled(client, ticket_id, 30), _pushed(client, ticket_id)), 60
    )
    job = await job_seconds(client, metrics_url) - job_before
    return {
        "accepted": (accepted - sent) * 1000,
        "polled": (polled - sent) * 1000,
        "pushed": (pushed - sent) * 1000,
        "job": job * 1000,
    }


def imaging_ms(photo: Photo, repeats: int, warm: bool = True) -> list[float]:
    """Wall-clock ms of imaging.render on this photo in this process (after a warm-up)."""
    if warm:
        imagepipe_ladder(photo.data)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        imagepipe_ladder(photo.data)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure(stack: Stack, photo: Photo, samples: int) -> list[Sample]:
    """Upload one photo at a time on the whole idle stack, ``samples`` times."""
    metrics_port = free_port()
    stack.start("api")
    stack.start("worker", IMAGEPIPE_METRICS_PORT=str(metrics_port))
    stack.start("replicator")
    results = []
    try:
        async with stack.client(30) as client:
            await stack.wait_ready()
            warm = await upload(client, photo.data)
            await wait_for(client, [warm], backup=True)
            for _ in range(samples):
                await asyncio.sleep(IDLE_GAP_S)
                anchor = imaging_ms(photo, 1, warm=False)[0]
                sample = await one_photo(client, photo, f"http://127.0.0.1:{metrics_port}/")
                results.append({"imaging": anchor, **sample})
                await asyncio.sleep(IDLE_GAP_S)  # let the replicator's copies finish
    finally:
        stack.stop("replicator", "worker", "api")
    return results


def over_imaging(samples: list[Sample], key: str) -> float:
    """p50 of each sample's time minus its own paired anchor, in ms."""
    return statistics.median(s[key] - s["imaging"] for s in samples)


def _details(samples: list[Sample], photo: Photo) -> list[str]:
    by = {key: summarize([s[key] for s in samples]) for key in samples[0]}
    rest = summarize([s["polled"] - s["accepted"] - s["job"] for s in samples])
    lines = table(
        ["what", "p50 (p10–p90) ms", "over its paired imaging, p50"],
        [
            ["imaging.render alone, in this process (wall)", by["imaging"].text("", 0), "—"],
            [
                "upload sent → completed (polled every 10 ms)",
                by["polled"].text("", 0),
                f"+{over_imaging(samples, 'polled'):.0f} ms",
            ],
            [
                "upload sent → completed (SSE event)",
                by["pushed"].text("", 0),
                f"+{over_imaging(samples, 'pushed'):.0f} ms",
            ],
        ],
    )
    lines += ["", "Where the polled time goes (p50 of each part):", ""]
    lines += table(
        ["part", "ms"],
        [
            [
                "upload sent → 202 (stream to primary, fsync, ticket, enqueue)",
                by["accepted"].text("", 0),
            ],
            [
                "the worker's process_photo (sandbox render, writes, events queued)",
                by["job"].text("", 0),
            ],
            [
                "the rest: queue pick-up, the completion callback job, its POST, the poll",
                rest.text("", 0),
            ],
        ],
    )
    lines.append(
        f"\n{len(samples)} uploads of {photo.name} ({len(photo.data) / 1e6:.1f} MB), one at a "
        "time, api + worker + replicator running."
    )
    return lines


def row(stack: Stack, photo: Photo, samples: int) -> Row:
    """Row 4."""
    imaging_ms(photo, 3)  # warm this process's decoder and allocator
    results = asyncio.run(measure(stack, photo, samples))
    polled, pushed = over_imaging(results, "polled"), over_imaging(results, "pushed")
    return Row(
        4,
        "end-to-end latency of one photo, idle stack",
        "imaging time of that photo",
        f"p50 ≤ imaging + {BUDGET_MS} ms",
        polled,
        f"imaging + {polled:.0f} ms (poll), + {pushed:.0f} ms (SSE)",
        polled <= BUDGET_MS,
        details=_details(results, photo),
        data={
            "imaging_ms": statistics.median(s["imaging"] for s in results),
            "samples_ms": results,
        },
    )
