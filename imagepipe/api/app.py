"""`create_app(settings)` builds the web tier; `serve` runs it under uvicorn.

With `IMAGEPIPE_CALLBACK_PORT` set, `/internal/callbacks` leaves the public app for an app of
its own (`create_callback_app`) on that port, meant for a private network: `serve` runs both
uvicorn servers in one event loop, over one `Services` (`SharedServices`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import ModuleType

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from imagepipe import __version__, loopwatch
from imagepipe.api import problems
from imagepipe.api.edges import HeadAsGet, ResponseDefaults
from imagepipe.api.limits import ConcurrencyLimit
from imagepipe.api.polls import TicketPolls
from imagepipe.api.routes import (
    callbacks,
    deletions,
    docs,
    limits,
    page,
    photos,
    polling,
    probes,
    resumable_draft,
    uploads,
)
from imagepipe.api.services import Services
from imagepipe.api.tus import TusEdge
from imagepipe.config import Settings

PUBLIC_ROUTES = (photos, uploads, resumable_draft, deletions, polling, probes, page, limits)
ROUTES = (photos, uploads, resumable_draft, deletions, polling, callbacks, probes, page, limits)


class SharedServices:
    """One `Services` for every app a process serves: started by the first lifespan to
    begin, stopped when the last one ends."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = asyncio.Lock()
        self._users = 0
        self._services: Services | None = None
        self._watch: asyncio.Task[None] | None = None  # the event-loop watcher

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """A FastAPI lifespan: ``app.state.services`` while the app runs."""
        async with self._lock:
            if self._services is None:
                self._services = await Services.start(self.settings)
                stall_ms = self.settings.loop_stall_ms
                self._watch = asyncio.create_task(loopwatch.watch(stall_ms, "api"))
            self._users += 1
        app.state.services = self._services
        try:
            yield
        finally:
            async with self._lock:
                self._users -= 1
                if self._users == 0 and self._services is not None:
                    services, self._services = self._services, None
                    if self._watch is not None:
                        self._watch.cancel()
                    await services.stop()


def _with_routes(app: FastAPI, routes: tuple[ModuleType, ...], settings: Settings) -> FastAPI:
    problems.install(app)
    for module in routes:
        app.include_router(module.router)
    # the last added runs first: defaults on every answer, then HEAD, then the bounds
    app.add_middleware(ConcurrencyLimit, settings=settings)
    app.add_middleware(HeadAsGet)
    app.add_middleware(ResponseDefaults)
    return app


def create_app(settings: Settings, shared: SharedServices | None = None) -> FastAPI:
    """The FastAPI app; clients are made in its lifespan, from these settings.

    It serves the callback route too unless `settings.callback_port` gives that route a
    listener of its own.
    """
    app = FastAPI(
        title="imagepipe",
        version=__version__,
        summary="Upload photos; get a ticket at once; poll it while they are resized.",
        lifespan=(shared or SharedServices(settings)).lifespan,
        docs_url=None,  # routes.docs serves them, in development only
        redoc_url=None,
    )
    routes = PUBLIC_ROUTES if settings.callback_port else ROUTES
    if settings.environment != "production":  # the docs load Swagger UI and ReDoc from a CDN
        routes = (*routes, docs)
    _with_routes(app, routes, settings)
    app.add_middleware(TusEdge)  # Tus-Resumable on every answer under /uploads/, errors too
    app.add_middleware(TicketPolls)  # outermost: a poll skips everything it does not need
    return app


def create_callback_app(settings: Settings, shared: SharedServices | None = None) -> FastAPI:
    """The callback listener's app: only `POST /internal/callbacks`, no docs."""
    app = FastAPI(
        title="imagepipe callbacks",
        version=__version__,
        lifespan=(shared or SharedServices(settings)).lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    return _with_routes(app, (callbacks,), settings)


def _server(app: FastAPI, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # keep our structured logging
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    return uvicorn.Server(config)


async def serve_together(servers: list[uvicorn.Server]) -> None:
    """Run uvicorn servers in this event loop until one stops, then stop the others."""
    tasks = [asyncio.ensure_future(server.serve()) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the web tier until interrupted (and the callback listener, where one is set)."""
    shared = SharedServices(settings)
    servers = [_server(create_app(settings, shared), host, port)]
    if settings.callback_port:
        internal = create_callback_app(settings, shared)
        servers.append(_server(internal, settings.callback_host, settings.callback_port))
    loop_factory = servers[0].config.get_loop_factory()
    # as uvicorn.run: a Ctrl-C is a clean stop, a server that never started a failure
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=loop_factory) as run:
        run.run(serve_together(servers))
    if not all(server.started for server in servers):
        sys.exit(STARTUP_FAILURE)
