"""Row 7: backup lag at a steady 10 uploads/s, and catch-up after a backup outage.

Whole stack; small photos so that 10 uploads/s (each one original, six sizes and a manifest:
8 objects) stays within what the worker can do on a small machine. The lag of each object is
read from the catalog (``backup_changed_at - created_at`` of its row once completed).
The outage stops rclone's S3 server, keeps uploading, starts it again on the same port and
times the drain. The anchor PUTs the same objects one after another to the same server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.inputs import Photo
from bench.loadgen import open_loop
from bench.model import Row, table
from bench.stack import BUCKET, Stack, upload
from bench.stats import percentile
from imagepipe import keys
from imagepipe.catalog.engine import create_engine
from imagepipe.catalog.schema import objects

RATE = 10.0
LAG_BUDGET_S = 2.0
SHARE = 0.7


async def _lags(engine: AsyncEngine) -> dict[str, float]:
    """Each object copied to backup: seconds from its row's creation to its copy's confirmation."""
    query = select(objects.c.key, objects.c.created_at, objects.c.backup_changed_at).where(
        objects.c.backup_state == "completed"
    )
    async with engine.connect() as db:
        rows = await db.execute(query)
    return {key: (done - made).total_seconds() for key, made, done in rows}


async def _drained(redis: Redis, timeout_s: float, below: int = 1) -> float:
    """When fewer than ``below`` objects were pending (the monotonic time it was seen)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await redis.zcard(keys.REPLICATION_PENDING) < below:
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise TimeoutError("the replication backlog never drained")


async def _uploads(client: httpx.AsyncClient, photo: Photo, duration_s: float) -> int:
    send = lambda c: c.post(  # noqa: E731
        "/photos", content=photo.data, headers={"Content-Type": "image/jpeg"}
    )
    load = await open_loop(client, send, rate=RATE, duration_s=duration_s, ok=(202,))
    if load.failures:
        raise RuntimeError(f"{load.failures} uploads refused")
    return len(load.latencies)


async def measure(stack: Stack, photo: Photo, steady_s: float, outage_s: float) -> dict[str, Any]:
    """Steady-state lags, then the backlog an outage leaves and how fast it drains."""
    assert stack.valkey is not None and stack.s3 is not None
    for role in ("api", "worker", "replicator"):
        stack.start(role)
    redis = Redis.from_url(stack.valkey.url)
    engine = create_engine(stack.settings)
    try:
        async with stack.client(30) as client:
            await stack.wait_ready()
            await upload(client, photo.data)
            await _drained(redis, 60)
            before = set(await _lags(engine))
            uploaded = await _uploads(client, photo, steady_s)
            await asyncio.sleep(2)  # the last uploads' sizes reach the log
            await _drained(redis, 120)
            steady = {key: lag for key, lag in (await _lags(engine)).items() if key not in before}
            stack.s3.stop()
            outage_uploads = await _uploads(client, photo, outage_s)
            await asyncio.sleep(2)
            backlog = int(await redis.zcard(keys.REPLICATION_PENDING))
            stack.s3.start()
            restarted = time.monotonic()
            first = await _drained(redis, 300, below=backlog)  # the first copy after the outage
            drained = await _drained(redis, 300)
    finally:
        await redis.aclose()
        await engine.dispose()
        stack.stop("replicator", "worker", "api")
    return {
        "uploaded": uploaded,
        "lags_s": list(steady.values()),
        "outage_uploads": outage_uploads,
        "backlog": backlog,
        "drain_s": drained - restarted,
        "first_copy_s": first - restarted,
        "steady_keys": list(steady),
    }


def put_rate(stack: Stack, object_keys: list[str], max_s: float) -> float:
    """Objects per second PUT one after another to the backup server (plain boto3)."""
    client = stack.backup_client()
    bodies = [(stack.root / "primary" / key).read_bytes() for key in object_keys]
    client.put_object(Bucket=BUCKET, Key="put-anchor/warm", Body=bodies[0])
    sent, started = 0, time.perf_counter()
    for i, body in enumerate(bodies):
        client.put_object(Bucket=BUCKET, Key=f"put-anchor/{i}", Body=body)
        sent += 1
        if time.perf_counter() - started > max_s:
            break
    return sent / (time.perf_counter() - started)


def row(stack: Stack, photo: Photo, steady_s: float, outage_s: float) -> Row:
    """Row 7."""
    result = asyncio.run(measure(stack, photo, steady_s, outage_s))
    anchor = put_rate(stack, result["steady_keys"], 20)
    lags = result["lags_s"]
    p50, p99 = percentile(lags, 50), percentile(lags, 99)
    catch_up = result["backlog"] / result["drain_s"] if result["drain_s"] > 0 else 0.0
    share = catch_up / anchor
    copying_s = result["drain_s"] - result["first_copy_s"]
    after_first = result["backlog"] / copying_s if copying_s > 0 else 0.0
    details = table(
        ["what", "value"],
        [
            ["steady: uploads at 10/s", f"{result['uploaded']} uploads, {len(lags)} objects"],
            ["steady: lag p50 / p99 / max", f"{p50:.2f} / {p99:.2f} / {max(lags):.2f} s"],
            [
                f"outage: backup S3 down for {outage_s:.0f} s",
                f"{result['outage_uploads']} uploads, {result['backlog']} objects pending",
            ],
            [
                "catch-up: drain after restart",
                f"{result['drain_s']:.1f} s = {catch_up:.1f} objects/s",
            ],
            [
                "… of which waiting for the first copy (retry backoff)",
                f"{result['first_copy_s']:.1f} s; then {after_first:.1f} objects/s",
            ],
            ["anchor: single-stream PUT, same objects", f"{anchor:.1f} objects/s"],
        ],
    )
    data = {k: v for k, v in result.items() if k != "steady_keys"} | {"put_per_s": anchor}
    return Row(
        7,
        "replication: steady lag and catch-up",
        "single-stream S3 PUT rate, same objects",
        f"lag p99 ≤ {LAG_BUDGET_S:.0f} s; catch-up ≥ {SHARE} of PUT rate",
        share,
        f"lag p99 {p99:.2f} s; catch-up {share:.2f} of PUT rate",
        p99 <= LAG_BUDGET_S and share >= SHARE,
        details=details,
        data=data,
    )
