"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from imagepipe.api.deps import ServicesDep
from imagepipe.storage import StorageError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


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
        checks["replication_lag_s"] = round(backlog.oldest_age_s, 3)
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
