"""Readiness: can this API process do its work now, and how far behind is the async half."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

from redis.exceptions import RedisError

from imagepipe import keys
from imagepipe.api.services import Services
from imagepipe.storage import StorageError


async def last_audit(services: Services) -> dict[str, float]:
    """The last audit's finish time and findings (empty before the first audit)."""
    raw = await cast(Awaitable[dict[bytes, bytes]], services.redis.hgetall(keys.AUDIT_LAST))
    return {k.decode(): float(v) for k, v in raw.items()}


async def readiness(services: Services) -> tuple[bool, dict[str, Any]]:
    """Ready when Redis and primary storage answer; the checks, with backlog detail."""
    checks: dict[str, Any] = {}
    try:
        await services.redis.ping()
        backlog = await services.replication.backlog()
        checks["redis"] = "ok"
        checks["queue_depth"] = await services.queue_depth()
        checks["replication_pending"] = backlog.pending
        checks["replication_pending_bytes"] = backlog.pending_bytes
        checks["replication_lag_s"] = round(backlog.oldest_age_s, 3)
        checks["replication_past_target"] = backlog.past_target
        checks["last_audit"] = await last_audit(services)
    except (RedisError, OSError) as exc:
        checks["redis"] = f"unreachable: {exc}"
    try:
        await services.primary.check()
        checks["primary"] = "ok"
    except StorageError as exc:
        checks["primary"] = f"unreachable: {exc}"
    return checks["redis"] == "ok" and checks["primary"] == "ok", checks
