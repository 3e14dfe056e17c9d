"""Probes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import contextlib

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from imagepipe.api.deps import ServicesDep
from imagepipe.api.readiness import readiness
from imagepipe.replication.gauges import refresh_system_gauges

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers."""
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(services: ServicesDep) -> Response:
    """Prometheus text format: this process's counters plus the system gauges from Redis."""
    with contextlib.suppress(RedisError):
        await refresh_system_gauges(services.redis)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready: Redis and primary storage answer; details on what the backlog looks like."""
    ready, checks = await readiness(services)
    body = {"status": "ready" if ready else "unready", **checks}
    return JSONResponse(body, status_code=200 if ready else 503)
