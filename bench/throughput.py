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
import time
from typing import Any

import httpx

from bench.inputs import Photo
from bench.ladder import FORMATS, LADDER, MAX_PIXELS, QUALITY
from bench.model import Row, table
from bench.stack import Stack, upload, wait_for, wait_ready
from imagepipe import imaging

UPLOAD_CLIENTS = 4  # concurrent uploaders in row 3, as a few browsers would be
_photo: bytes = b""  # the photo an anchor process renders, set once by its initializer


def _keep(data: bytes) -> None:
    global _photo
    _photo = data


def _render(_: int) -> int:
    rendered = imaging.render(
        _photo, LADDER, formats=FORMATS, max_pixels=MAX_PIXELS, quality=QUALITY
    )
    return len(rendered.renditions)


def imaging_ceiling(photo: Photo, count: int, processes: int) -> float:
    """Photos per second that ``processes`` warm processes render, doing nothing else."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=_keep, initargs=(photo.data,)) as pool:
        pool.map(_render, range(processes), chunksize=1)  # warm: imports, first decode
        started = time.perf_counter()
        pool.map(_render, range(count), chunksize=1)
        return count / (time.perf_counter() - started)


async def _warm_up(
    client: httpx.AsyncClient, stack: Stack, photo: Photo, backup: bool = False
) -> None:
    await wait_ready(client, stack)
    ids = [await upload(client, photo.data) for _ in range(stack.workers)]
    await wait_for(client, ids, backup=backup)  # decode children started, first jobs done


async def worker_rate(stack: Stack, photo: Photo, count: int) -> float:
    """Photos per second through arq and the worker, with the batch queued up front."""
    stack.start("api")
    stack.start("worker")
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
            await _warm_up(client, stack, photo)
            stack.pause("worker")
            ids = [await upload(client, photo.data) for _ in range(count)]
            started = time.monotonic()
            stack.resume("worker")
            finished = await wait_for(client, ids, timeout_s=60 + count * 5)
    finally:
        stack.stop("worker", "api")
    return count / (finished - started)


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
            finished = await wait_for(client, ids, backup=True, timeout_s=60 + count * 8)
    finally:
        stack.stop("replicator", "worker", "api")
    return count / (finished - started)


def rows(stack: Stack, photo: Photo, count: int) -> tuple[Row, Row]:
    """Rows 2 and 3, both against the imaging-only ceiling measured here."""
    ceiling = imaging_ceiling(photo, count, stack.workers)
    worker = asyncio.run(worker_rate(stack, photo, count))
    e2e = asyncio.run(end_to_end_rate(stack, photo, count))
    ceiling_again = imaging_ceiling(photo, count, stack.workers)  # the machine may have drifted
    ceiling_mean = (ceiling + ceiling_again) / 2
    data: dict[str, Any] = {
        "photo": photo.name,
        "count": count,
        "processes": stack.workers,
        "ceiling_per_s": [ceiling, ceiling_again],
        "worker_per_s": worker,
        "end_to_end_per_s": e2e,
    }
    details = table(
        ["what", "photos/s", "ratio to ceiling"],
        [
            [
                f"imaging only, {stack.workers} processes (before, after)",
                f"{ceiling:.2f}, {ceiling_again:.2f}",
                "1",
            ],
            [
                "worker: arq + sandbox + storage + callbacks",
                f"{worker:.2f}",
                f"{worker / ceiling_mean:.2f}",
            ],
            [
                "end to end: upload → completed → on backup",
                f"{e2e:.2f}",
                f"{e2e / ceiling_mean:.2f}",
            ],
        ],
    )
    details.append(f"\n{count} uploads of {photo.name} ({len(photo.data) / 1e6:.1f} MB).")
    return (
        Row(
            2,
            "worker throughput at saturation",
            "imaging-only throughput, same processes",
            "≥ 0.85 of imaging-only",
            worker / ceiling_mean,
            f"{worker / ceiling_mean:.2f} of imaging-only",
            worker / ceiling_mean >= 0.85,
            details=details,
            data=data,
        ),
        Row(
            3,
            "end-to-end throughput, whole local stack",
            "the imaging-only ceiling of #2",
            "≥ 0.6 of the ceiling",
            e2e / ceiling_mean,
            f"{e2e / ceiling_mean:.2f} of the ceiling",
            e2e / ceiling_mean >= 0.6,
            data=data,
        ),
    )
