"""What a worker process builds once at startup and every job uses, typed.

arq hands each job a ``ctx`` dict; the one entry imagepipe puts there is ``deps``, so a job
reads ``deps(ctx).primary`` instead of an untyped ``ctx["primary"]``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, cast

import httpx
from arq.connections import ArqRedis

from imagepipe import loopwatch, metrics
from imagepipe.config import Settings
from imagepipe.connections import check_redis_policy
from imagepipe.storage import Storage
from imagepipe.storage.factory import primary_storage
from imagepipe.tickets import TicketStore
from imagepipe.worker.sandbox import DecodePool


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a container's or taskset's
    cpuset), not the host's count, which may be far larger."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # no affinity on this platform
        return os.cpu_count() or 1


def concurrency(settings: Settings) -> int:
    """Decode slots in this worker process: one per usable core unless configured."""
    return settings.worker_concurrency or usable_cores()


@dataclass
class WorkerDeps:
    """The clients of one worker process."""

    settings: Settings
    redis: ArqRedis
    primary: Storage
    tickets: TicketStore
    pool: DecodePool
    http: httpx.AsyncClient

    @classmethod
    async def start(cls, settings: Settings, redis: ArqRedis) -> WorkerDeps:
        """Check Redis, open primary storage, warm the decode children, make the HTTP client."""
        await check_redis_policy(redis)
        pool = DecodePool(
            concurrency(settings), settings.decode_memory_mb, settings.decode_timeout_s
        )
        await pool.start()
        timeout_s = settings.callback_timeout_ms / 1000
        connect_s = settings.callback_connect_timeout_ms / 1000
        return cls(
            settings=settings,
            redis=redis,
            primary=primary_storage(settings),
            tickets=TicketStore(redis, settings.ticket_retention_s),
            pool=pool,
            http=httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=connect_s)),
        )

    async def close(self) -> None:
        """Close what start made."""
        await self.pool.close()
        await self.primary.close()
        await self.http.aclose()


def deps(ctx: dict[str, Any]) -> WorkerDeps:
    """The WorkerDeps in an arq job's context."""
    return cast(WorkerDeps, ctx["deps"])


async def startup(ctx: dict[str, Any]) -> None:
    """arq on_startup: build the WorkerDeps of this process."""
    settings: Settings = ctx["settings"]
    ctx["deps"] = await WorkerDeps.start(settings, ctx["redis"])
    ctx["loopwatch"] = asyncio.create_task(loopwatch.watch(settings.loop_stall_ms, "worker"))
    metrics.serve(settings.metrics_port, settings.metrics_host)


async def shutdown(ctx: dict[str, Any]) -> None:
    """arq on_shutdown: close what startup made; safe to call twice."""
    if "loopwatch" in ctx:
        ctx.pop("loopwatch").cancel()
    if "deps" in ctx:
        await ctx.pop("deps").close()
