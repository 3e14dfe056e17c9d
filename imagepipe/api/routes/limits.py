"""`GET /limits`: where the caller's owner stands against their fair-use limits (`api.fairuse`)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from imagepipe.api.access import Granted
from imagepipe.api.deps import ServicesDep

router = APIRouter(tags=["limits"])


@router.get("/limits")
async def get_limits(services: ServicesDep, grant: Granted) -> JSONResponse:
    """The owner's limits, what is left of each and when it is back (RateLimit headers too)."""
    standings = await services.fair_use.standing(grant)
    headers = {**standings.headers(), "Cache-Control": "no-store"}
    return JSONResponse(standings.view(), headers=headers)
