"""Row 17: resumable upload throughput (tus, 8 MB PATCHes) against one `POST /photos`.

The same bytes, the same API process with default settings, in the same run: rounds
alternate a plain upload of the whole file and a tus upload of it (creation, then PATCHes of
8 MB, each made durable before its 204, the last one accepting the photo). The headline is
the tus MB/s over the POST MB/s, the median of the rounds' ratios; goal ≥ 0.8.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from io import BytesIO

import httpx
from PIL import Image

from bench.model import Row, table
from bench.stack import Stack

CHUNK = 8 * 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
DEFAULTS = {"IMAGEPIPE_LOG_LEVEL": "INFO"}


def noise_png(megabytes: int) -> bytes:
    """A real PNG of about ``megabytes`` MB: noise, stored uncompressed, like a camera's
    largest files (the bytes are what this row moves)."""
    width = 4000
    height = megabytes * 1_000_000 // (3 * width)
    out = BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(
        out, "PNG", compress_level=0
    )
    return out.getvalue()


async def post_once(client: httpx.AsyncClient, data: bytes) -> float:
    """Seconds for one `POST /photos` of ``data``, to its 202."""
    started = time.perf_counter()
    response = await client.post("/photos", content=data, headers={"Content-Type": "image/png"})
    if response.status_code != 202:
        raise RuntimeError(f"upload refused: {response.status_code} {response.text[:300]}")
    return time.perf_counter() - started


async def tus_once(client: httpx.AsyncClient, data: bytes) -> float:
    """Seconds for one tus upload of ``data`` in 8 MB PATCHes, to the last one's ticket."""
    started = time.perf_counter()
    created = await client.post("/uploads/", headers={**TUS, "Upload-Length": str(len(data))})
    if created.status_code != 201:
        raise RuntimeError(f"creation refused: {created.status_code} {created.text[:300]}")
    url, offset = created.headers["location"], 0
    while offset < len(data):
        headers = {
            **TUS,
            "Upload-Offset": str(offset),
            "Content-Type": "application/offset+octet-stream",
        }
        sent = await client.patch(url, content=data[offset : offset + CHUNK], headers=headers)
        if sent.status_code != 204:
            raise RuntimeError(f"PATCH refused: {sent.status_code} {sent.text[:300]}")
        offset = int(sent.headers["upload-offset"])
    if "link" not in sent.headers:
        raise RuntimeError("the last PATCH named no ticket")
    return time.perf_counter() - started


async def _rounds(stack: Stack, data: bytes, rounds: int) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {"POST /photos": [], "tus, 8 MB PATCHes": []}
    async with stack.client(120) as client:
        await stack.wait_ready()
        await post_once(client, data)  # warm: connections, the first write of a folder
        await tus_once(client, data)
        for _ in range(rounds):
            seconds["POST /photos"].append(await post_once(client, data))
            seconds["tus, 8 MB PATCHes"].append(await tus_once(client, data))
    return seconds


def row(stack: Stack, megabytes: int, rounds: int) -> Row:
    """Row 17."""
    data = noise_png(megabytes)
    stack.start("api", **DEFAULTS)
    try:
        seconds = asyncio.run(_rounds(stack, data, rounds))
    finally:
        stack.stop("api")
    rates = {k: [len(data) / 1e6 / s for s in v] for k, v in seconds.items()}
    post, tus = (statistics.median(v) for v in rates.values())
    # paired round by round: each ratio's two sides ran seconds apart
    ratio = statistics.median(t / p for p, t in zip(*rates.values(), strict=True))
    details = table(
        ["upload", "MB/s per round", "median"],
        [
            [k, ", ".join(f"{r:.0f}" for r in v), f"{statistics.median(v):.0f}"]
            for k, v in rates.items()
        ],
    )
    details.append(
        f"\n{len(data) / 1e6:.1f} MB PNG, {rounds} alternating rounds on one keep-alive "
        "connection; the API alone, default settings, filesystem primary."
    )
    return Row(
        17,
        "resumable upload throughput, 8 MB chunks",
        "`POST /photos` of the same bytes",
        "≥ 0.8 of POST /photos",
        ratio,
        f"{ratio:.2f} of POST /photos ({tus:.0f} vs {post:.0f} MB/s, medians)",
        ratio >= 0.8,
        details=details,
        data={"mb_per_s": rates, "bytes": len(data)},
    )
