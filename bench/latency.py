"""Row 4: one photo on an idle stack, from the upload sent to the ticket seen completed.

Two observers run side by side after the 202: a poller (GET /tickets/{id} every 10 ms, so it
adds at most 10 ms) and a Server-Sent Events stream. The anchor is the imaging time of the same
photo, ``imaging.render`` in this process (wall clock, warm), so what is left over is what
the pipeline adds: the upload, queueing, the sandbox hop, storage writes and the callback.
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
from bench.stack import Stack, upload, wait_for, wait_ready
from bench.stats import summarize

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


async def one_photo(client: httpx.AsyncClient, photo: Photo) -> tuple[float, float]:
    """(ms to completed seen by polling, ms to completed pushed over SSE)."""
    sent = time.monotonic()
    ticket_id = await upload(client, photo.data)
    polled, pushed = await asyncio.wait_for(
        asyncio.gather(_polled(client, ticket_id, 30), _pushed(client, ticket_id)), 60
    )
    return (polled - sent) * 1000, (pushed - sent) * 1000


def imaging_ms(photo: Photo, repeats: int) -> list[float]:
    """Wall-clock ms of imaging.render on this photo in this process (after a warm-up)."""
    imagepipe_ladder(photo.data)
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        imagepipe_ladder(photo.data)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure(stack: Stack, photo: Photo, samples: int) -> tuple[list[float], list[float]]:
    """Upload one photo at a time on the whole idle stack, ``samples`` times."""
    for role in ("api", "worker", "replicator"):
        stack.start(role)
    polled, pushed = [], []
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
            await wait_ready(client, stack)
            warm = await upload(client, photo.data)
            await wait_for(client, [warm], backup=True)
            for _ in range(samples):
                await asyncio.sleep(IDLE_GAP_S)
                by_poll, by_push = await one_photo(client, photo)
                polled.append(by_poll)
                pushed.append(by_push)
                await asyncio.sleep(IDLE_GAP_S)  # let the replicator's copies finish
    finally:
        stack.stop("replicator", "worker", "api")
    return polled, pushed


def row(stack: Stack, photo: Photo, samples: int) -> Row:
    """Row 4."""
    before = imaging_ms(photo, samples)
    polled, pushed = asyncio.run(measure(stack, photo, samples))
    anchor = statistics.median(before + imaging_ms(photo, samples))
    poll, push = summarize(polled), summarize(pushed)
    overhead = poll.median - anchor
    details = table(
        ["what", "p50 (p10–p90) ms", "over imaging, p50"],
        [
            ["imaging.render alone (wall)", f"{anchor:.0f}", "—"],
            [
                "upload sent → completed (polled every 10 ms)",
                poll.text("", 0),
                f"+{overhead:.0f} ms",
            ],
            [
                "upload sent → completed (SSE event)",
                push.text("", 0),
                f"+{push.median - anchor:.0f} ms",
            ],
        ],
    )
    details.append(
        f"\n{samples} uploads of {photo.name} ({len(photo.data) / 1e6:.1f} MB), one at a time."
    )
    return Row(
        4,
        "end-to-end latency of one photo, idle stack",
        "imaging time of that photo",
        f"p50 ≤ imaging + {BUDGET_MS} ms",
        overhead,
        f"imaging + {overhead:.0f} ms (poll), + {push.median - anchor:.0f} ms (SSE)",
        overhead <= BUDGET_MS,
        details=details,
        data={"imaging_ms": anchor, "polled_ms": polled, "pushed_ms": pushed},
    )
