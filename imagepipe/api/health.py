"""Liveness and readiness."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any, cast

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from imagepipe import keys, metrics
from imagepipe.api.deps import ServicesDep
from imagepipe.api.services import Services
from imagepipe.storage import StorageError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(services: ServicesDep) -> Response:
    """Prometheus text format: this process's counters plus the system gauges from Redis."""
    with contextlib.suppress(RedisError):
        await metrics.refresh_system_gauges(services.redis)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def last_audit(services: Services) -> dict[str, float]:
    """The last audit's finish time and findings (empty before the first audit)."""
    raw = await cast(Awaitable[dict[bytes, bytes]], services.redis.hgetall(keys.AUDIT_LAST))
    return {k.decode(): float(v) for k, v in raw.items()}


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready: Redis and primary storage answer; details on what the backlog looks like."""
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
    ready = checks["redis"] == "ok" and checks["primary"] == "ok"
    return JSONResponse(
        {"status": "ready" if ready else "unready", **checks}, status_code=200 if ready else 503
    )
