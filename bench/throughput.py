"""Rows 2 and 3: photos per second through the worker, and through the whole stack.

The ceiling both are measured against is imaging alone: ``imaging.render`` in as many warm
processes as the worker has decode slots, nothing else running. Row 2 queues a batch while the
worker is frozen (SIGSTOP), then lets it run and times the batch from thaw to the last ticket
completed: arq, the sandbox, real storage writes and the signed callbacks are all in it. Row 3
times the same batch from the first upload sent to the last copy verified on backup S3, with
api, worker and replicator sharing the machine.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from typing import Any

import httpx

from bench.inputs import Photo
from bench.ladder import FORMATS, LADDER, MAX_PIXELS, QUALITY
from bench.model import Row, table
from bench.stack import (
    Stack,
    cpu_s,
    last_update,
    upload,
    wait_for,
    wait_ready,
    wait_tickets,
)
from imagepipe import imaging

UPLOAD_CLIENTS = 4  # concurrent uploaders in row 3, as a few browsers would be
POLL_S = 0.25  # polling a batch of tickets costs the API CPU that the benchmark would count
_photo: bytes = b""  # the photo an anchor process renders, set once by its initializer


def _keep(data: bytes) -> None:
    global _photo
    _photo = data


def _render(_: int) -> float:
    started = time.process_time()
    imaging.render(_photo, LADDER, formats=FORMATS, max_pixels=MAX_PIXELS, quality=QUALITY)
    return time.process_time() - started


def imaging_ceiling(photo: Photo, count: int, processes: int) -> tuple[float, float]:
    """(photos per second, CPU ms per photo) of warm processes that only render."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=_keep, initargs=(photo.data,)) as pool:
        pool.map(_render, range(processes), chunksize=1)  # warm: imports, first decode
        started = time.perf_counter()
        cpu = pool.map(_render, range(count), chunksize=1)
        return count / (time.perf_counter() - started), 1000 * sum(cpu) / count


async def _warm_up(
    client: httpx.AsyncClient, stack: Stack, photo: Photo, backup: bool = False
) -> None:
    await wait_ready(client, stack)
    ids = [await upload(client, photo.data) for _ in range(stack.workers)]
    await wait_for(client, ids, backup=backup)  # decode children started, first jobs done


def _cpu_by_role(stack: Stack) -> dict[str, float]:
    worker, api = stack.pid("worker"), stack.pid("api")
    own = cpu_s(worker, descendants=False)
    return {"decode children": cpu_s(worker) - own, "worker process": own, "api": cpu_s(api)}


async def worker_rate(stack: Stack, photo: Photo, count: int) -> tuple[float, dict[str, float]]:
    """(photos per second through arq and the worker, CPU ms per photo by process)."""
    stack.start("api")
    stack.start("worker")
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            await _warm_up(client, stack, photo)
            stack.pause("worker")
            ids = [await upload(client, photo.data) for _ in range(count)]
            before = _cpu_by_role(stack)
            started = time.time()  # the tickets' clock: completion is read from them
            stack.resume("worker")
            # a slow poll that costs the API little; the end is the last ticket's own time
            found = await wait_tickets(client, ids, timeout_s=60 + count * 5, poll_s=POLL_S)
            after = _cpu_by_role(stack)
    finally:
        stack.stop("worker", "api")
    cpu = {role: 1000 * (after[role] - before[role]) / count for role in after}
    return count / (last_update(found) - started), cpu


async def _upload_all(client: httpx.AsyncClient, data: bytes, count: int) -> list[str]:
    queue = list(range(count))
    ids: list[str] = []

    async def uploader() -> None:
        while queue:
            queue.pop()
            ids.append(await upload(client, data))

    await asyncio.gather(*(uploader() for _ in range(UPLOAD_CLIENTS)))
    return ids


async def end_to_end_rate(stack: Stack, photo: Photo, count: int) -> float:
    """Photos per second from the first upload to the last object verified on backup."""
    for role in ("api", "worker", "replicator"):
        stack.start(role)
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            await _warm_up(client, stack, photo, backup=True)  # and nothing left in flight
            started = time.monotonic()
            ids = await _upload_all(client, photo.data, count)
            finished = await wait_for(
                client, ids, backup=True, timeout_s=60 + count * 8, poll_s=POLL_S
            )
    finally:
        stack.stop("replicator", "worker", "api")
    return count / (finished - started)


def _details(
    photo: Photo, count: int, ceilings: list[float], rates: dict[str, float], cpu: dict[str, float]
) -> list[str]:
    ceiling = statistics.median(ceilings)
    lines = table(
        ["what", "photos/s", "ratio to ceiling"],
        [
            ["imaging only (before, between, after)", ", ".join(f"{c:.2f}" for c in ceilings), "1"],
            [
                "worker: arq + sandbox + storage + callbacks",
                f"{rates['worker']:.2f}",
                f"{rates['worker'] / ceiling:.2f}",
            ],
            [
                "end to end: upload → completed → on backup",
                f"{rates['e2e']:.2f}",
                f"{rates['e2e'] / ceiling:.2f}",
            ],
        ],
    )
    lines += [
        "",
        f"{count} uploads of {photo.name} ({len(photo.data) / 1e6:.1f} MB). "
        "CPU ms per photo while the worker drained the batch (row 2):",
        "",
    ]
    lines += table(["process", "CPU ms per photo"], [[k, f"{v:.0f}"] for k, v in cpu.items()])
    return lines


def rows(stack: Stack, photo: Photo, count: int) -> tuple[Row, Row]:
    """Rows 2 and 3, both against the imaging-only ceiling (median of three measurements)."""
    first, imaging_cpu = imaging_ceiling(photo, count, stack.workers)
    worker, cpu = asyncio.run(worker_rate(stack, photo, count))
    second, _ = imaging_ceiling(photo, count, stack.workers)  # the machine drifts: measure again
    e2e = asyncio.run(end_to_end_rate(stack, photo, count))
    third, _ = imaging_ceiling(photo, count, stack.workers)
    ceilings = [first, second, third]
    ceiling = statistics.median(ceilings)
    cpu = {"imaging only (anchor)": imaging_cpu, **cpu}
    rates = {"worker": worker, "e2e": e2e}
    data: dict[str, Any] = {
        "photo": photo.name,
        "count": count,
        "processes": stack.workers,
        "ceiling_per_s": ceilings,
        "worker_per_s": worker,
        "end_to_end_per_s": e2e,
        "cpu_ms_per_photo": cpu,
    }
    return (
        Row(
            2,
            "worker throughput at saturation",
            "imaging-only throughput, same processes",
            "≥ 0.85 of imaging-only",
            worker / ceiling,
            f"{worker / ceiling:.2f} of imaging-only",
            worker / ceiling >= 0.85,
            details=_details(photo, count, ceilings, rates, cpu),
            data=data,
        ),
        Row(
            3,
            "end-to-end throughput, whole local stack",
            "the imaging-only ceiling of #2",
            "≥ 0.6 of the ceiling",
            e2e / ceiling,
            f"{e2e / ceiling:.2f} of the ceiling",
            e2e / ceiling >= 0.6,
            details=["Measured with row 2; see its table."],
            data=data,
        ),
    )
