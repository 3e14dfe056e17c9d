"""Running pieces of the stack inside the test process: a real uvicorn API on a free port,
a burst arq worker, and a replicator that runs until the log is empty."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from redis.asyncio import Redis
from starlette.types import ASGIApp

from imagepipe import keys
from imagepipe.api.app import create_app
from imagepipe.catalog.engine import create_engine
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.config import Settings
from imagepipe.replication.replicator import Replicator
from imagepipe.storage.factory import backup_storage, primary_storage
from imagepipe.worker.app import build_worker


@contextmanager
def api_server(settings: Settings) -> Iterator[str]:
    """Serve create_app(settings) over real HTTP from a thread; yields the base URL."""
    with serving(create_app(settings), settings.port) as url:
        yield url


@contextmanager
def serving(app: ASGIApp, port: int) -> Iterator[str]:
    """Serve an ASGI app (the API, or a web tier in front of it) over real HTTP from a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


async def run_worker_burst(settings: Settings, queue: str = keys.UPLOADS_QUEUE) -> None:
    """Process every queued job (and the callbacks they queue), then return."""
    worker = build_worker(settings, queue_name=queue, burst=True)
    try:
        await worker.main()
    finally:
        await worker.close()


async def replicate_all(settings: Settings, redis: Redis, timeout_s: float = 30) -> None:
    """Run a replicator until nothing is pending on the log (no copy, no removal)."""
    primary, backup = primary_storage(settings), backup_storage(settings)
    engine = create_engine(settings)
    catalog = PhotoCatalog(engine)
    replicator = Replicator(settings, redis, primary, backup, catalog, consumer="test")
    runner = asyncio.create_task(replicator.run())
    try:
        async with asyncio.timeout(timeout_s):
            while await _pending(redis):  # noqa: ASYNC110 (polls Redis)
                await asyncio.sleep(0.05)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await replicator.drain()
        await backup.close()
        await primary.close()
        await engine.dispose()


async def _pending(redis: Redis) -> int:
    """Copies and removals still on the replication log."""
    return int(await redis.zcard(keys.REPLICATION_PENDING)) + int(
        await redis.zcard(keys.DELETION_PENDING)
    )
