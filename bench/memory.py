"""Row 8: memory. The API's RSS while it streams a 200 MB upload; a decode child's peak RSS.

The upload is a real JPEG followed by 200 MB of padding (the accept path reads the header and
streams the rest to disk; nothing decodes it), sent in 1 MB chunks with the byte limit raised.
The API's RSS is sampled from /proc every 10 ms. The child is a real ``sandbox.DecodePool``
slot rendering a 24 MP JPEG; its peak is the kernel's high-water mark (VmHWM), reset in the
child just before the render.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bench import child
from bench.inputs import Photo
from bench.model import Row, table
from bench.stack import Stack
from imagepipe.worker.sandbox import DecodePool

PADDING = 200 * 1024 * 1024
CHUNK = 1024 * 1024
API_BUDGET_MB = 30
CHILD_BUDGET_MB = 150


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _body(head: bytes, padding: int) -> AsyncIterator[bytes]:
    yield head
    zeros = bytes(CHUNK)
    for _ in range(padding // CHUNK):
        yield zeros


async def api_growth(stack: Stack, photo: Photo, padding: int) -> tuple[float, float]:
    """(RSS before, peak RSS during) of the API, in MB, around one big upload."""
    limit = str(padding + 16 * CHUNK)
    stack.start("api", IMAGEPIPE_MAX_UPLOAD_BYTES=limit)
    pid = stack.pid("api")
    peak = 0.0
    try:
        async with stack.client(120) as client:
            await stack.wait_ready()
            small = await client.post("/photos", content=photo.data, headers=_JPEG)
            small.raise_for_status()  # warm: the upload path has run once
            await asyncio.sleep(0.5)
            baseline = rss_mb(pid)
            sending = asyncio.create_task(
                client.post("/photos", content=_body(photo.data, padding), headers=_JPEG)
            )
            while not sending.done():
                peak = max(peak, rss_mb(pid))
                await asyncio.sleep(0.01)
            response = await sending
            if response.status_code != 202:
                raise RuntimeError(f"big upload refused: {response.status_code} {response.text}")
            peak = max(peak, rss_mb(pid))
    finally:
        stack.stop("api")
    return baseline, peak


_JPEG = {"Content-Type": "image/jpeg"}


async def child_peak(photo: Photo) -> tuple[float, float]:
    """Peak RSS (MB) of a warm decode child before and after it rendered this photo."""
    pool = DecodePool(
        1, memory_mb=1024, timeout_s=60, preload=("imagepipe.imaging.render", "bench.child")
    )
    await pool.start()
    try:
        return await pool.run(child.render_and_peak, photo.data)
    finally:
        await pool.close()


def row(stack: Stack, small: Photo, big: Photo, padding: int = PADDING) -> Row:
    """Row 8."""
    started = time.monotonic()
    baseline, peak = asyncio.run(api_growth(stack, small, padding))
    upload_s = time.monotonic() - started
    warm, after = asyncio.run(child_peak(big))
    growth = peak - baseline
    details = table(
        ["what", "MB"],
        [
            [
                f"API RSS before / peak during a {padding / 2**20:.0f} MB upload",
                f"{baseline:.0f} / {peak:.0f} (+{growth:.1f})",
            ],
            [
                f"decode child peak RSS, warm / after {big.name} ({big.megapixels:.0f} MP)",
                f"{warm:.0f} / {after:.0f}",
            ],
        ],
    )
    details.append(f"\nThe big upload took {upload_s:.1f} s including API start-up.")
    return Row(
        8,
        "memory",
        "—",
        f"API grows < {API_BUDGET_MB} MB; child < {CHILD_BUDGET_MB} MB",
        growth,
        f"API +{growth:.1f} MB; child {after:.0f} MB",
        growth < API_BUDGET_MB and after < CHILD_BUDGET_MB,
        details=details,
        data={
            "api_baseline_mb": baseline,
            "api_peak_mb": peak,
            "child_peak_mb": after,
            "child_warm_mb": warm,
        },
    )
