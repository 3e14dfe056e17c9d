"""Readiness: can this API process do its work now, and how far behind is the async half."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from imagepipe import keys
from imagepipe.api.services import Services
from imagepipe.errors import CatalogUnavailable
from imagepipe.replication.log import deletion_backlog
from imagepipe.storage import StorageError

log = logging.getLogger(__name__)
TIMEOUTS = (TimeoutError, RedisTimeout)
UNREACHABLE = (OSError, RedisConnectionError, StorageError, CatalogUnavailable)


async def last_audit(services: Services) -> dict[str, float]:
    """The last audit's finish time and findings (empty before the first audit)."""
    raw = await cast(Awaitable[dict[bytes, bytes]], services.redis.hgetall(keys.AUDIT_LAST))
    return {k.decode(): float(v) for k, v in raw.items()}


async def readiness(services: Services) -> tuple[bool, dict[str, Any]]:
    """Ready when Redis, the catalog and primary storage answer; the checks, with backlog
    detail."""
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
        removals = await deletion_backlog(services.redis)
        checks["deletion_pending"] = removals.pending
        checks["deletion_oldest_s"] = round(removals.oldest_age_s, 3)
        checks["last_audit"] = await last_audit(services)
    except (RedisError, OSError) as exc:
        checks["redis"] = failed("redis", exc)
    try:
        await services.catalog.ping()
        checks["catalog"] = "ok"
    except CatalogUnavailable as exc:
        checks["catalog"] = failed("catalog", exc)
    try:
        await services.primary.check()
        checks["primary"] = "ok"
    except StorageError as exc:
        checks["primary"] = failed("primary", exc)
    return all(checks[c] == "ok" for c in ("redis", "catalog", "primary")), checks


def failed(check: str, exc: Exception) -> str:
    """Why a check failed, in a word; the exception (hosts, paths) goes to the log only."""
    log.warning("not ready: %s failed: %s", check, exc)
    if isinstance(exc, TIMEOUTS) or isinstance(exc.__cause__, TIMEOUTS):
        return "timed out"
    return "unreachable" if isinstance(exc, UNREACHABLE) else "error"
