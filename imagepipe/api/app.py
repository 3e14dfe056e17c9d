"""`create_app(settings)` builds the web tier; `serve` runs it under uvicorn."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from imagepipe import __version__
from imagepipe.api import problems
from imagepipe.api.edges import HeadAsGet, ResponseDefaults
from imagepipe.api.limits import ConcurrencyLimit
from imagepipe.api.routes import callbacks, docs, page, photos, polling, probes
from imagepipe.api.services import Services
from imagepipe.config import Settings


def create_app(settings: Settings) -> FastAPI:
    """The FastAPI app; clients are made in its lifespan, from these settings."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await Services.start(settings)
        try:
            yield
        finally:
            await app.state.services.stop()

    app = FastAPI(
        title="imagepipe",
        version=__version__,
        summary="Upload photos; get a ticket at once; poll it while they are resized.",
        lifespan=lifespan,
        docs_url=None,  # routes.docs serves them, in development only
        redoc_url=None,
    )
    problems.install(app)
    for module in (photos, polling, callbacks, probes, page):
        app.include_router(module.router)
    if settings.environment != "production":  # the docs load Swagger UI and ReDoc from a CDN
        app.include_router(docs.router)
    # the last added runs first: defaults on every answer, then HEAD, then the bounds
    app.add_middleware(ConcurrencyLimit, settings=settings)
    app.add_middleware(HeadAsGet)
    app.add_middleware(ResponseDefaults)
    return app


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the web tier until interrupted."""
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_config=None,  # keep our structured logging
        timeout_graceful_shutdown=10,
        server_header=False,
    )
