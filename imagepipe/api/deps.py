"""Named dependency types for routes (FastAPI's Annotated style)."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request

from imagepipe.api.services import Services


def get_services(request: Request) -> Services:
    """The Services the lifespan built for this app."""
    return cast(Services, request.app.state.services)


ServicesDep = Annotated[Services, Depends(get_services)]
