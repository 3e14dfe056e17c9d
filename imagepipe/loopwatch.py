"""Event-loop stalls: a blocked loop delays every request in the process, so say when.

`watch` runs beside a role's work: it sleeps a tick as long as the threshold again and
again, and a wake-up later than the tick by more than the threshold means something held
the loop (a hash, a parse, a synchronous call) that long at least; a stall of twice the
threshold is always seen. Each stall is logged at WARNING and counted
(`imagepipe_event_loop_stalls_total`); a tick costs a few microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from imagepipe import metrics

log = logging.getLogger(__name__)


async def watch(threshold_ms: int, role: str) -> None:
    """Forever: log every stall of the running loop past ``threshold_ms`` (0: never)."""
    if threshold_ms <= 0:
        return
    loop, tick = asyncio.get_running_loop(), threshold_ms / 1000  # any stall of two ticks shows
    while True:
        before = loop.time()
        await asyncio.sleep(tick)
        late_ms = (loop.time() - before - tick) * 1000
        if late_ms > threshold_ms:
            metrics.LOOP_STALLS.labels(role).inc()
            log.warning("event loop blocked for %.0f ms or more", late_ms)


@contextlib.asynccontextmanager
async def watching(threshold_ms: int, role: str) -> AsyncIterator[None]:
    """`watch` while the block runs."""
    task = asyncio.create_task(watch(threshold_ms, role))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
