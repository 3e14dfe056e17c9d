"""Named dependency types for routes (FastAPI's Annotated style)."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from imagepipe.api.services import Services


async def get_services(request: Request) -> Services:
    """The Services the lifespan built for this app.

    ``async`` although it awaits nothing: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread hop that cost more than the rest of a ticket poll.
    """
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]
