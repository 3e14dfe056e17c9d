"""Row 16: deletion propagation (DELETE -> gone from backup) at a steady upload load, against
the replication lag of the copies made in the same run.

Whole stack, small photos. Victims are uploaded and backed up first; then uploads run at a
steady rate while the victims are deleted one at a time, spread over the same window. Both
sides are read from the catalog afterwards: a copy's lag is ``backup_changed_at -
created_at`` of its object row (as row 7), a deletion's propagation is from its request to
the last removal of its objects (the backup copy, the last one removed).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.inputs import Photo
from bench.loadgen import open_loop
from bench.model import Row, table
from bench.stack import Stack, upload, wait_tickets
from bench.stats import percentile
from imagepipe.catalog.engine import create_engine
from imagepipe.catalog.schema import deletions, objects, removals

RATE = 4.0  # uploads/s: each eight objects to copy
GOAL = 1.5  # deletion p99 within this many times the copies' lag p99


async def _lags(engine: AsyncEngine, since: float) -> list[float]:
    """Seconds from creation to a verified copy, of the objects made after ``since``."""
    made = objects.c.created_at
    query = select(made, objects.c.backup_changed_at).where(
        objects.c.backup_state == "completed", func.extract("epoch", made) >= since
    )
    async with engine.connect() as db:
        return [(done - at).total_seconds() for at, done in await db.execute(query)]


async def _propagations(engine: AsyncEngine) -> list[float]:
    """Seconds from each DELETE to its last removal (every copy gone)."""
    last = (
        select(removals.c.photo_id, func.max(removals.c.changed_at).label("gone"))
        .group_by(removals.c.photo_id)
        .subquery()
    )
    query = select(deletions.c.requested_at, last.c.gone).join(
        last, last.c.photo_id == deletions.c.photo_id
    )
    query = query.where(deletions.c.state == "deleted")
    async with engine.connect() as db:
        return [(gone - asked).total_seconds() for asked, gone in await db.execute(query)]


async def _delete_spread(client: httpx.AsyncClient, photo_ids: list[str], window_s: float) -> None:
    """DELETE each photo, evenly over the window."""
    for photo_id in photo_ids:
        started = time.monotonic()
        answer = await client.delete(f"/photos/{photo_id}")
        if answer.status_code != 202:
            raise RuntimeError(f"DELETE answered {answer.status_code}: {answer.text[:200]}")
        await asyncio.sleep(max(0.0, window_s / len(photo_ids) - (time.monotonic() - started)))


async def _finished(engine: AsyncEngine, count: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    query = select(func.count()).where(deletions.c.state == "deleted")
    while time.monotonic() < deadline:
        async with engine.connect() as db:
            if (await db.execute(query)).scalar_one() >= count:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{count} deletions not done within {timeout_s:.0f} s")


async def measure(stack: Stack, photo: Photo, seconds: float, victims: int) -> dict[str, Any]:
    """Victims backed up; then uploads at RATE while they are deleted; both sides' times."""
    for role in ("api", "worker", "replicator"):
        stack.start(role)
    engine = create_engine(stack.settings)
    try:
        async with stack.client(30) as client:
            await stack.wait_ready()
            tickets = [await upload(client, photo.data) for _ in range(victims)]
            found = await wait_tickets(client, tickets, backup=True)
            doomed = [t["photo_id"] for t in found.values()]
            since = time.time()
            send = lambda c: c.post(  # noqa: E731
                "/photos", content=photo.data, headers={"Content-Type": "image/jpeg"}
            )
            load, _ = await asyncio.gather(
                open_loop(client, send, rate=RATE, duration_s=seconds, ok=(202,)),
                _delete_spread(client, doomed, seconds),
            )
            await _finished(engine, victims, 120)
            await asyncio.sleep(2)  # the last uploads' copies land
            lags, gone = await _lags(engine, since), await _propagations(engine)
    finally:
        await engine.dispose()
        stack.stop("replicator", "worker", "api")
    return {"uploads": len(load.latencies), "lags_s": lags, "propagation_s": gone}


def row(stack: Stack, photo: Photo, seconds: float, victims: int) -> Row:
    """Row 16."""
    result = asyncio.run(measure(stack, photo, seconds, victims))
    lags, gone = result["lags_s"], result["propagation_s"]
    lag = {q: percentile(lags, q) for q in (50, 99)}
    prop = {q: percentile(gone, q) for q in (50, 99)}
    ratio = prop[99] / lag[99] if lag[99] > 0 else 0.0
    details = table(
        ["what", "p50 / p99 s", "samples"],
        [
            ["copy to backup (replication lag)", f"{lag[50]:.2f} / {lag[99]:.2f}", str(len(lags))],
            ["DELETE → gone from backup", f"{prop[50]:.2f} / {prop[99]:.2f}", str(len(gone))],
        ],
    )
    details.append(
        f"\n{result['uploads']} uploads at {RATE:g}/s over {seconds:g} s while {len(gone)} "
        "backed-up photos were deleted one at a time over the same window; api, worker and "
        "replicator, one each."
    )
    return Row(
        16,
        "deletion propagation at a steady upload load",
        "replication lag of the copies in the same run",
        f"p99 ≤ {GOAL:g}× the copies' lag p99",
        ratio,
        f"p99 {prop[99]:.2f} s = {ratio:.2f}× the copies' {lag[99]:.2f} s",
        ratio <= GOAL,
        details=details,
        data=result,
    )
