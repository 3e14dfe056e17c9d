"""Row 5: the accept path alone (api + Valkey; no worker, no replicator).

A closed loop of 16 clients finds the capacity; an open loop at half that rate then measures
latency from each request's scheduled start. The anchor writes and fsyncs the same bytes to
the same disk from Python, the way the filesystem store does (temp file, fsync, rename, fsync
the folder), one file after another.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import httpx

from bench.inputs import Photo
from bench.loadgen import Load, Request, closed_loop, open_loop
from bench.model import Row, table
from bench.stack import Stack, cpu_s
from bench.stats import percentile

CLIENTS = 16
P99_BUDGET_MS = 50
SHARE_OF_DISK = 0.3


def fsync_rate(folder: Path, data: bytes, count: int, max_s: float) -> float:
    """MB/s of writing ``data`` as whole files, each fsynced and renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    written, started = 0, time.perf_counter()
    for i in range(count):
        tmp, final = folder / f".{i}.tmp", folder / f"{i}.jpg"
        with tmp.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        tmp.rename(final)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        written += len(data)
        if time.perf_counter() - started > max_s:
            break
    elapsed = time.perf_counter() - started
    for path in folder.iterdir():
        path.unlink()
    return written / elapsed / 1e6


def _request(data: bytes) -> Request:
    headers = {"Content-Type": "image/jpeg"}
    return lambda client: client.post("/photos", content=data, headers=headers)


async def measure(stack: Stack, photo: Photo, duration_s: float) -> tuple[Load, Load, float]:
    """(closed loop at 16 clients, open loop at half its rate, API CPU ms per upload)."""
    stack.start("api")
    try:
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with stack.client(30, limits=limits) as client:
            await stack.wait_ready()
            send = _request(photo.data)
            await closed_loop(client, send, clients=2, duration_s=1, max_requests=4, ok=(202,))
            cpu_before = cpu_s(stack.pid("api"))
            closed = await closed_loop(
                client,
                send,
                clients=CLIENTS,
                duration_s=duration_s,
                max_requests=int(duration_s * 200),
                ok=(202,),
            )
            opened = await open_loop(
                client,
                send,
                rate=max(1.0, closed.rate / 2),
                duration_s=duration_s * 1.5,
                ok=(202,),
            )
            cpu_ms = 1000 * (cpu_s(stack.pid("api")) - cpu_before)
    finally:
        stack.stop("api")
    return closed, opened, cpu_ms / max(1, len(closed.latencies) + len(opened.latencies))


def _quantiles(load: Load) -> str:
    values = load.latencies
    return " / ".join(f"{percentile(values, q):.0f}" for q in (50, 99, 99.9))


def row(stack: Stack, photo: Photo, duration_s: float, disk_files: int) -> Row:
    """Row 5."""
    disk = fsync_rate(stack.root / "fsync-anchor", photo.data, disk_files, duration_s)
    closed, opened, api_cpu_ms = asyncio.run(measure(stack, photo, duration_s))
    disk_again = fsync_rate(stack.root / "fsync-anchor", photo.data, disk_files, duration_s)
    disk_mb_s = (disk + disk_again) / 2
    accepted_mb_s = closed.rate * len(photo.data) / 1e6
    p99 = percentile(opened.latencies, 99)
    share = accepted_mb_s / disk_mb_s
    details = table(
        ["loop", "requests", "failed", "rate/s", "MB/s", "p50 / p99 / p99.9 ms"],
        [
            [
                f"closed, {CLIENTS} clients",
                str(len(closed.latencies)),
                str(closed.failures),
                f"{closed.rate:.1f}",
                f"{accepted_mb_s:.1f}",
                _quantiles(closed),
            ],
            [
                f"open, {closed.rate / 2:.1f}/s",
                str(len(opened.latencies)),
                str(opened.failures),
                f"{opened.rate:.1f}",
                f"{opened.rate * len(photo.data) / 1e6:.1f}",
                _quantiles(opened),
            ],
        ],
    )
    details.append(
        f"\nRaw write + fsync + rename of the same {len(photo.data) / 1e6:.1f} MB, one stream: "
        f"{disk:.0f} and {disk_again:.0f} MB/s (before, after). With "
        f"{len(opened.latencies)} open-loop samples p99.9 is close to the maximum. The API "
        f"process spent {api_cpu_ms:.1f} ms of CPU per accepted upload (one process, one core)."
    )
    return Row(
        5,
        "upload accept latency and rate (accept path only)",
        "write + fsync of the same bytes from Python",
        f"open-loop p99 ≤ {P99_BUDGET_MS} ms; closed-loop MB/s ≥ {SHARE_OF_DISK} of raw",
        share,
        f"p99 {p99:.0f} ms; {share:.2f} of raw fsync MB/s",
        p99 <= P99_BUDGET_MS and share >= SHARE_OF_DISK and not opened.failures,
        details=details,
        data={
            "disk_mb_s": [disk, disk_again],
            "closed": vars(closed),
            "open": vars(opened),
            "api_cpu_ms_per_upload": api_cpu_ms,
        },
    )
