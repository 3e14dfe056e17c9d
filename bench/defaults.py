"""Rows 12 to 15: what a user of the defaults gets, measured from outside, on real photos.

The older rows measure parts under bench settings (quiet logs, two decode slots, a generated
photo, Python clients in the benchmark's own process). These run `imagepipe api`, `worker`
and `replicator` one each with their default settings (INFO logs, decode slots from the
cores this process may use), on the largest photos of ``IMAGEPIPE_CORPUS`` (generated
stand-ins without one), with a wrk-like load generator in a process of its own
(`bench.wrk`), and hold each to an anchor taken in the same run:

12  poll `GET /tickets/{id}` at 32 connections      /healthz of the same server
13  whole-stack throughput, uploads to backup       libvips making the same ladders on every core
14  upload -> completed p50, idle stack             libvips making the same photo's ladder
15  open-loop accept p99 at half the closed rate    (none: a latency budget), worker stopped
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from bench import inputs, latency, profile, throughput
from bench.inputs import Photo
from bench.ladder import vips_ladder
from bench.model import Row, table
from bench.stack import Stack, cpu_s, upload, wait_for
from bench.stats import percentile, summarize
from imagepipe.stack.net import free_port

DEFAULTS = {"IMAGEPIPE_WORKER_CONCURRENCY": "0", "IMAGEPIPE_LOG_LEVEL": "INFO"}
CONNECTIONS = 32
POLL_PASSES = 3
UPLOADERS = 4
ROLES = ("api", "worker", "replicator")
Load = dict[str, Any]  # what bench.wrk printed, and its rate


def cores() -> int:
    """The cores this process may run on (what the roles' defaults count too)."""
    return len(os.sched_getaffinity(0))


def user_photos(quick: bool) -> list[Photo]:
    """The four largest camera photos of the corpus, else generated ones of similar sizes."""
    if quick:
        return [inputs.generated("quick", *inputs.QUICK_SIZES["quick"])]
    real = sorted(inputs.corpus_photos(), key=lambda p: p.megapixels, reverse=True)[:4]
    if real:
        return real
    sizes = [(4032, 3024), (4608, 1976), (3264, 2448), (2725, 2225)]
    return [inputs.generated(f"{w}x{h}", w, h) for w, h in sizes]


def _describe(photos: Sequence[Photo]) -> str:
    return ", ".join(f"{p.name} ({p.megapixels:.1f} MP)" for p in photos)


@contextlib.contextmanager
def _roles(stack: Stack, *roles: str, worker_env: dict[str, str] | None = None) -> Iterator[None]:
    for role in roles:
        stack.start(role, **DEFAULTS, **(worker_env or {} if role == "worker" else {}))
    try:
        yield
    finally:
        stack.stop(*reversed(roles))


def wrk(stack: Stack, path: str, seconds: float, *args: str) -> Load:
    """One `bench.wrk` run against the stack's API; what it saw."""
    command = [sys.executable, "-m", "bench.wrk", path, "--port", str(stack.port)]
    command += ["--seconds", f"{seconds:g}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds * 4 + 60)
    if done.returncode != 0:
        raise RuntimeError(f"bench.wrk failed: {done.stderr[-1000:]}")
    result: Load = json.loads(done.stdout)
    result["rate"] = len(result["latencies_ms"]) / result["seconds"]
    return result


# -- row 12: polls --------------------------------------------------------------------------


async def _completed_ticket(stack: Stack, photo: Photo) -> tuple[str, str]:
    async with stack.client(60) as client:
        await stack.wait_ready()
        ticket_id = await upload(client, photo.data)
        await wait_for(client, [ticket_id], backup=True)
        etag = (await client.get(f"/tickets/{ticket_id}")).headers["etag"]
    return ticket_id, etag


def poll_rates(stack: Stack, photo: Photo, seconds: float) -> dict[str, list[float]]:
    """Requests/s of /healthz, a completed ticket and its 304, in interleaved passes."""
    with _roles(stack, *ROLES):
        ticket_id, etag = asyncio.run(_completed_ticket(stack, photo))
        loads = {
            "bare": ("/healthz",),
            "ticket": (f"/tickets/{ticket_id}",),
            "ticket 304": (f"/tickets/{ticket_id}", "--header", f"If-None-Match: {etag}"),
        }
        rates: dict[str, list[float]] = {name: [] for name in loads}
        for _ in range(POLL_PASSES):
            for name, (path, *extra) in loads.items():
                ok = "304" if extra else "200"
                args = ("--connections", str(CONNECTIONS), "--ok", ok, *extra)
                seen = wrk(stack, path, seconds, *args)
                if seen["failures"]:
                    raise RuntimeError(f"{name}: unexpected answers {seen['statuses']}")
                rates[name].append(seen["rate"])
    return rates


def poll_row(stack: Stack, photo: Photo, seconds: float) -> Row:
    """Row 12."""
    rates = poll_rates(stack, photo, seconds)
    # paired pass by pass: each ratio's two sides ran a few seconds apart
    ratio = {
        k: statistics.median(r / b for r, b in zip(v, rates["bare"], strict=True))
        for k, v in rates.items()
    }
    details = table(
        ["endpoint", "requests/s per pass", "÷ /healthz (median of passes)"],
        [[k, ", ".join(f"{r:.0f}" for r in v), f"{ratio[k]:.2f}"] for k, v in rates.items()],
    )
    details.append(
        f"\n`bench.wrk`, {CONNECTIONS} keep-alive connections, {POLL_PASSES} interleaved passes "
        f"of {seconds:g} s; api, worker and replicator running with default settings; the "
        "ticket is a completed one, backed up."
    )
    return Row(
        12,
        "poll a ticket, defaults, 32 connections",
        "`GET /healthz` of the same server",
        "≥ 0.6 of /healthz",
        ratio["ticket"],
        f"{ratio['ticket']:.2f} of /healthz ({ratio['ticket 304']:.2f} for a 304)",
        min(ratio["ticket"], ratio["ticket 304"]) >= 0.6,
        details=details,
        data={"per_s": rates},
    )


# -- row 13: throughput ---------------------------------------------------------------------

_photos: list[bytes] = []  # what an anchor process renders, set by its initializer


def _keep(photos: list[bytes]) -> None:
    _photos[:] = photos


def _vips(turn: int) -> None:
    vips_ladder(_photos[turn % len(_photos)])


def vips_rate(photos: Sequence[Photo], count: int) -> float:
    """Photos per second of libvips making the ladder in one process per core."""
    context = multiprocessing.get_context("spawn")
    data = [p.data for p in photos]
    with context.Pool(cores(), initializer=_keep, initargs=(data,)) as pool:
        pool.map(_vips, range(cores() * len(data)), chunksize=1)  # warm
        started = time.perf_counter()
        pool.map(_vips, range(count), chunksize=1)
        return count / (time.perf_counter() - started)


async def _upload_many(stack: Stack, photos: Sequence[Photo], count: int) -> list[str]:
    turns = list(range(count))
    ids: list[str] = []
    async with stack.client(60) as client:

        async def uploader() -> None:
            while turns:
                ids.append(await upload(client, photos[turns.pop() % len(photos)].data))

        await asyncio.gather(*(uploader() for _ in range(UPLOADERS)))
    return ids


async def _stack_rate(
    stack: Stack, photos: Sequence[Photo], count: int
) -> tuple[float, dict[str, float]]:
    async with stack.client(60) as client:
        await stack.wait_ready()
        warm = [await upload(client, p.data) for p in photos]
        await wait_for(client, warm, backup=True)
        before = _cpu(stack)
        started = time.monotonic()
        done = await _batch(stack, client, photos, count)
        after = _cpu(stack)
    return count / (done - started), throughput._per_photo(before, after, count)


async def _batch(
    stack: Stack, client: httpx.AsyncClient, photos: Sequence[Photo], count: int
) -> float:
    ids = await _upload_many(stack, photos, count)
    return await wait_for(client, ids, backup=True, timeout_s=60 + count * 8, poll_s=0.25)


def _cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far by process, the catalog's PostgreSQL (and its backends) too."""
    used = throughput._cpu_by_role(stack)
    postgres = stack.servers.postgres
    if postgres is not None and postgres.pid:
        used["postgres (catalog)"] = cpu_s(postgres.pid)
    return used


def profile_pass(stack: Stack, photos: Sequence[Photo], count: int) -> list[str]:
    """Another batch with every role sampled by py-spy: the table of where CPU goes."""

    async def run() -> None:
        async with stack.client(60) as client:
            await _batch(stack, client, photos, count)

    with profile.profiled({role: stack.pid(role) for role in ROLES}) as found:
        asyncio.run(run())
    return profile.lines(found)


def throughput_row(stack: Stack, photos: Sequence[Photo], count: int) -> Row:
    """Row 13."""
    anchors = [vips_rate(photos, count)]
    with _roles(stack, *ROLES):
        rate, cpu = asyncio.run(_stack_rate(stack, photos, count))
        profiled = profile_pass(stack, photos, max(len(photos), count // 2))
    anchors.append(vips_rate(photos, count))
    anchor = statistics.median(anchors)
    ratio = rate / anchor
    rows = [[role, f"{ms:.0f}"] for role, ms in cpu.items()]
    rows.append(["**all processes**", f"{sum(cpu.values()):.0f}"])
    details = table(["process", "CPU ms per photo"], rows)
    details += [
        "",
        *table(
            ["what (wall clock)", "photos/s"],
            [
                [f"libvips ladder, {cores()} processes (before, after)", _join(anchors)],
                ["whole stack: upload → completed → on backup", f"{rate:.2f}"],
            ],
        ),
        f"\n{count} uploads ({UPLOADERS} at a time) rotating over {_describe(photos)}.",
        *profiled,
    ]
    return Row(
        13,
        "whole-stack throughput, defaults, real photos",
        "libvips making the same ladders on every core",
        "≥ 0.6 of libvips",
        ratio,
        f"{ratio:.2f} of libvips ({rate:.1f} vs {anchor:.1f} photos/s)",
        ratio >= 0.6,
        details=details,
        data={"per_s": rate, "anchor_per_s": anchors, "cpu_ms": cpu},
    )


def _join(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# -- row 14: latency ------------------------------------------------------------------------


def vips_ms(photo: Photo) -> float:
    """Wall-clock ms of libvips making this photo's ladder here, on one thread."""
    started = time.perf_counter()
    vips_ladder(photo.data)
    return (time.perf_counter() - started) * 1000


async def _latencies(
    stack: Stack, photos: Sequence[Photo], samples: int, metrics: str
) -> list[dict[str, Any]]:
    results = []
    async with stack.client(30) as client:
        await stack.wait_ready()
        await wait_for(client, [await upload(client, p.data) for p in photos], backup=True)
        for turn in range(samples):
            photo = photos[turn % len(photos)]
            await asyncio.sleep(latency.IDLE_GAP_S)
            anchor = vips_ms(photo)
            sample = await latency.one_photo(client, photo, metrics)
            results.append({"photo": photo.name, "libvips": anchor, **sample})
            await asyncio.sleep(latency.IDLE_GAP_S)  # the replicator's copies finish
    return results


def latency_row(stack: Stack, photos: Sequence[Photo], samples: int) -> Row:
    """Row 14."""
    for photo in photos:
        vips_ms(photo)  # warm libvips in this process
    port = free_port()
    with _roles(stack, *ROLES, worker_env={"IMAGEPIPE_METRICS_PORT": str(port)}):
        found = asyncio.run(_latencies(stack, photos, samples, f"http://127.0.0.1:{port}/"))
    over = {k: statistics.median(s[k] - s["libvips"] for s in found) for k in ("polled", "pushed")}
    rows = [
        [name, summarize([s[key] for s in found]).text("", 0)]
        for name, key in [
            ("libvips ladder alone, in this process", "libvips"),
            ("upload sent → 202", "accepted"),
            ("the worker's process_photo", "job"),
            ("upload sent → completed (polled every 10 ms)", "polled"),
            ("upload sent → completed (SSE event)", "pushed"),
        ]
    ]
    details = table(["what", "p50 (p10–p90) ms"], rows)
    details.append(
        f"\n{len(found)} uploads, one at a time, rotating over {_describe(photos)}; each "
        "paired with libvips making the same photo's ladder just before it."
    )
    return Row(
        14,
        "upload → completed, idle stack, defaults, real photos",
        "libvips making that photo's ladder",
        "p50 ≤ libvips + 60 ms",
        over["polled"],
        f"libvips + {over['polled']:.0f} ms (poll), + {over['pushed']:.0f} ms (SSE)",
        over["polled"] <= 60,
        details=details,
        data={"samples_ms": found},
    )


# -- row 15: accept tail --------------------------------------------------------------------


def accept_loads(stack: Stack, photos: Sequence[Photo], seconds: float) -> tuple[Load, Load]:
    """(closed loop at 16 connections, open loop at half its rate): api and replicator."""
    with tempfile.TemporaryDirectory() as tmp, _roles(stack, "api", "replicator"):
        bodies = []
        for i, photo in enumerate(photos):
            (Path(tmp) / f"{i}.jpg").write_bytes(photo.data)
            bodies += ["--body", str(Path(tmp) / f"{i}.jpg")]
        grant = f"Authorization: {stack.authorization}"
        post = ["--method", "POST", "--header", "Content-Type: image/jpeg", "--header", grant]
        post += ["--ok", "202"]
        asyncio.run(stack.wait_ready())
        wrk(stack, "/photos", 1, "--connections", "2", *post, *bodies)  # warm
        closed = wrk(stack, "/photos", seconds, "--connections", "16", *post, *bodies)
        rate = max(1.0, closed["rate"] / 2)
        opened = wrk(stack, "/photos", seconds * 1.5, "--rate", f"{rate:.2f}", *post, *bodies)
    return closed, opened


def _quantiles(latencies: list[float]) -> str:
    return " / ".join(f"{percentile(latencies, q):.0f}" for q in (50, 90, 99, 99.9))


def accept_row(stack: Stack, photos: Sequence[Photo], seconds: float) -> Row:
    """Row 15."""
    closed, opened = accept_loads(stack, photos, seconds)
    p99 = percentile(opened["latencies_ms"], 99)
    details = table(
        ["loop", "answered", "failed", "rate/s", "p50 / p90 / p99 / p99.9 ms"],
        [
            [
                name,
                str(len(load["latencies_ms"])),
                str(load["failures"]),
                f"{load['rate']:.1f}",
                _quantiles(load["latencies_ms"]),
            ]
            for name, load in (("closed, 16 connections", closed), ("open, half that", opened))
        ],
    )
    details.append(
        f"\n`bench.wrk` posting raw bodies rotating over {_describe(photos)}; api and "
        "replicator with default settings, the worker stopped (the queue grows)."
    )
    return Row(
        15,
        "accept p99, open loop at half capacity, defaults",
        "— (a budget; the closed loop sets the rate)",
        "p99 ≤ 50 ms",
        p99,
        f"p99 {p99:.0f} ms at {opened['rate']:.1f}/s",
        p99 <= 50 and not opened["failures"],
        details=details,
        data={"closed": closed, "open": opened},
    )
