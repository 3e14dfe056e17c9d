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
from bench.ladder import FORMATS, LADDER, MAX_PIXELS, QUALITIES
from bench.model import Row, table
from bench.stack import Stack, cpu_s, last_update, upload, wait_for, wait_tickets
from imagepipe.imaging import render as imaging

UPLOAD_CLIENTS = 4  # concurrent uploaders in row 3, as a few browsers would be
POLL_S = 0.25  # polling a batch of tickets costs the API CPU that the benchmark would count
_photo: bytes = b""  # the photo an anchor process renders, set once by its initializer


def _keep(data: bytes) -> None:
    global _photo
    _photo = data


def _render(_: int) -> float:
    started = time.process_time()
    imaging.render(_photo, LADDER, formats=FORMATS, max_pixels=MAX_PIXELS, qualities=QUALITIES)
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
    await stack.wait_ready()
    ids = [await upload(client, photo.data) for _ in range(stack.workers)]
    await wait_for(client, ids, backup=backup)  # decode children started, first jobs done


def _cpu_by_role(stack: Stack) -> dict[str, float]:
    """CPU seconds used so far by every process of the stack, by role."""
    assert stack.valkey is not None and stack.s3 is not None
    used = {}
    if "worker" in stack.roles:
        own = cpu_s(stack.pid("worker"), descendants=False)
        used["decode children"] = cpu_s(stack.pid("worker")) - own
        used["worker process"] = own
    for role in ("api", "replicator"):
        if role in stack.roles:
            used[role] = cpu_s(stack.pid(role))
    used["valkey"] = cpu_s(stack.valkey.pid or 0)
    if "replicator" in stack.roles:
        used["rclone (backup S3)"] = cpu_s(stack.s3.pid or 0)
    return used


def _per_photo(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    return {role: 1000 * (after[role] - before[role]) / count for role in after}


async def worker_rate(stack: Stack, photo: Photo, count: int) -> tuple[float, dict[str, float]]:
    """(photos per second through arq and the worker, CPU ms per photo by process)."""
    stack.start("api")
    stack.start("worker")
    try:
        async with stack.client(60) as client:
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
    return count / (last_update(found) - started), _per_photo(before, after, count)


async def _upload_all(client: httpx.AsyncClient, data: bytes, count: int) -> list[str]:
    queue = list(range(count))
    ids: list[str] = []

    async def uploader() -> None:
        while queue:
            queue.pop()
            ids.append(await upload(client, data))

    await asyncio.gather(*(uploader() for _ in range(UPLOAD_CLIENTS)))
    return ids


async def end_to_end_rate(stack: Stack, photo: Photo, count: int) -> tuple[float, dict[str, float]]:
    """(photos per second from first upload to last backup copy, CPU ms per photo by role)."""
    for role in ("api", "worker", "replicator"):
        stack.start(role)
    try:
        async with stack.client(60) as client:
            await _warm_up(client, stack, photo, backup=True)  # and nothing left in flight
            before = _cpu_by_role(stack)
            started = time.monotonic()
            ids = await _upload_all(client, photo.data, count)
            finished = await wait_for(
                client, ids, backup=True, timeout_s=60 + count * 8, poll_s=POLL_S
            )
            after = _cpu_by_role(stack)
    finally:
        stack.stop("replicator", "worker", "api")
    return count / (finished - started), _per_photo(before, after, count)


def _details(photo: Photo, count: int, ceilings: list[float], rates: dict[str, float]) -> list[str]:
    ceiling = statistics.median(ceilings)
    lines = table(
        ["what (wall clock)", "photos/s", "ratio to ceiling"],
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
    lines.append(f"\n{count} uploads of {photo.name} ({len(photo.data) / 1e6:.1f} MB).")
    return lines


def _imaging_share(cpu: dict[str, float]) -> float:
    """The decode children's share of every process's CPU per photo, measured together."""
    return cpu["decode children"] / sum(cpu.values())


def _cpu_table(anchor: float, cpu: dict[str, float]) -> list[str]:
    rows = [["imaging only, separate processes (cross-check)", f"{anchor:.0f}", ""]]
    rows += [[role, f"{ms:.0f}", ""] for role, ms in cpu.items()]
    total = sum(cpu.values())
    rows.append(["**all processes**", f"{total:.0f}", f"{_imaging_share(cpu):.2f}"])
    return table(["process", "CPU ms per photo", "decode children ÷ all"], rows)


def rows(stack: Stack, photo: Photo, count: int) -> tuple[Row, Row]:
    """Rows 2 and 3: CPU per photo against imaging's (the verdict), and wall-clock rates."""
    first, anchor = imaging_ceiling(photo, count, stack.workers)
    worker, worker_cpu = asyncio.run(worker_rate(stack, photo, count))
    second, _ = imaging_ceiling(photo, count, stack.workers)  # the machine drifts: measure again
    e2e, e2e_cpu = asyncio.run(end_to_end_rate(stack, photo, count))
    third, _ = imaging_ceiling(photo, count, stack.workers)
    ceilings = [first, second, third]
    wall = {"worker": worker, "e2e": e2e}
    ceiling = statistics.median(ceilings)
    # At saturation every core is busy, so photos/s = cores / CPU per photo. The decode
    # children run imaging.render and nothing else (a pool costs what in-process rendering
    # does), so their share of all CPU, measured in the same window, is the throughput ratio
    # to imaging-only: paired, and blind to the load other tenants add to wall clocks.
    ratio2, ratio3 = _imaging_share(worker_cpu), _imaging_share(e2e_cpu)
    data: dict[str, Any] = {
        "photo": photo.name,
        "count": count,
        "processes": stack.workers,
        "ceiling_per_s": ceilings,
        "worker_per_s": worker,
        "end_to_end_per_s": e2e,
        "imaging_cpu_ms": anchor,
        "worker_cpu_ms": worker_cpu,
        "end_to_end_cpu_ms": e2e_cpu,
    }
    return (
        Row(
            2,
            "worker throughput at saturation",
            "imaging-only throughput, same processes",
            "≥ 0.85 of imaging-only",
            ratio2,
            f"{ratio2:.3f} of imaging-only by CPU per photo ({worker / ceiling:.2f} by wall clock)",
            ratio2 >= 0.85,
            details=[*_cpu_table(anchor, worker_cpu), "", *_details(photo, count, ceilings, wall)],
            data=data,
        ),
        Row(
            3,
            "end-to-end throughput, whole local stack",
            "the imaging-only ceiling of #2",
            "≥ 0.6 of the ceiling",
            ratio3,
            f"{ratio3:.3f} of the ceiling by CPU per photo ({e2e / ceiling:.2f} by wall clock)",
            ratio3 >= 0.6,
            details=[*_cpu_table(anchor, e2e_cpu), "", "Wall-clock rates: see row 2."],
            data=data,
        ),
    )
