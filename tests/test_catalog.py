"""The catalog on a real PostgreSQL: migrations, the schema check, and the PhotoCatalog queries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine.default import CACHE_HIT
from sqlalchemy.ext.asyncio import AsyncEngine

from imagepipe.catalog.engine import create_engine, driver_url, unreachable
from imagepipe.catalog.migrate import (
    SchemaOutdated,
    current_revision,
    head_revision,
    migrate,
    require_current_schema,
)
from imagepipe.catalog.photos import Cursor, PhotoCatalog, at
from imagepipe.catalog.rows import COMPLETED
from imagepipe.catalog.schema import metadata
from imagepipe.config import Settings
from imagepipe.errors import BadRequest
from imagepipe.models import BackupState, Derivative, PhotoManifest, StoredFile, Ticket
from tests.conftest import SECRETS


def engine_for(url: str) -> AsyncEngine:
    return create_engine(Settings(database_url=url, **SECRETS))


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    made = engine_for(database)
    yield made
    await made.dispose()


def ticket(photo_id: str = "a" * 20, ticket_id: str = "T" * 24, at: float = 1e9) -> Ticket:
    return Ticket(
        id=ticket_id,
        photo_id=photo_id,
        original_key=f"originals/{photo_id}.jpg",
        sha256="0" * 64,
        format="JPEG",
        width=4000,
        height=3000,
        bytes=123,
        created_at=at,
    )


def manifest_of(t: Ticket, completed_at: float = 0.0) -> PhotoManifest:
    size = Derivative(
        key=f"derivatives/{t.photo_id}/m.jpg", bytes=10, sha256="1" * 64, width=375, height=500
    )
    return PhotoManifest(
        **t.original_facts() | {"width": 3000, "height": 4000},
        ticket_id=t.id,
        created_at=t.created_at,
        completed_at=completed_at,
        sizes={"m": size},
    )


MANIFEST_FILE = StoredFile(key="manifests/x.json", bytes=5, sha256="2" * 64)


def test_driver_url_names_asyncpg_and_refuses_other_schemes() -> None:
    assert driver_url("postgresql://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    assert driver_url("postgres://u@/db?host=/s") == "postgresql+asyncpg://u@/db?host=/s"
    with pytest.raises(ValueError, match="postgresql://"):
        driver_url("mysql://u@h/db")


async def test_migrations_make_exactly_the_schema_the_code_queries(engine: AsyncEngine) -> None:
    def differences(connection: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    async with engine.connect() as db:
        assert await db.run_sync(differences) == []
    assert await current_revision(engine) == head_revision()


async def test_a_role_on_an_unmigrated_database_is_told_what_to_run(fresh_database: str) -> None:
    engine = engine_for(fresh_database)
    try:
        with pytest.raises(SchemaOutdated, match="run `imagepipe migrate`"):
            await require_current_schema(engine)
        assert await migrate(engine) == (None, head_revision())
        await require_current_schema(engine)
    finally:
        await engine.dispose()


async def test_many_processes_may_migrate_at_once(fresh_database: str) -> None:
    engines = [engine_for(fresh_database) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(e) for e in engines))
        assert {after for _, after in results} == {head_revision()}
        assert sorted(before or "" for before, _ in results) == ["", *[head_revision()] * 3]
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))


async def test_an_accepted_photo_completes_with_its_objects(engine: AsyncEngine) -> None:
    catalog, t = PhotoCatalog(engine), ticket()
    await catalog.accepted(t)
    await catalog.accepted(t)  # a retried accept changes nothing
    row = await catalog.photo(t.photo_id)
    assert row is not None and row["state"] == "accepted" and row["width"] == 4000
    await catalog.completed(manifest_of(t), MANIFEST_FILE)
    row = await catalog.photo(t.photo_id)
    assert row is not None and row["state"] == COMPLETED
    assert (row["width"], row["height"]) == (3000, 4000)  # upright, from the manifest
    assert row["sizes"]["m"]["key"] == f"derivatives/{t.photo_id}/m.jpg"
    assert await catalog.backup_state(t.photo_id) is BackupState.PENDING


async def test_a_completed_photo_never_fails_and_a_failed_one_never_completes(
    engine: AsyncEngine,
) -> None:
    catalog = PhotoCatalog(engine)
    done, broken = ticket("b" * 20, "B" * 24), ticket("c" * 20, "C" * 24)
    for t in (done, broken):
        await catalog.accepted(t)
    await catalog.completed(manifest_of(done), MANIFEST_FILE)
    await catalog.failed(done.photo_id, "late failure")
    await catalog.failed(broken.photo_id, "not a decodable image")
    await catalog.completed(
        manifest_of(broken), StoredFile(key="manifests/c.json", bytes=1, sha256="")
    )
    assert (await catalog.photo(done.photo_id) or {})["state"] == COMPLETED
    failed = await catalog.photo(broken.photo_id) or {}
    assert (failed["state"], failed["error"]) == ("failed", "not a decodable image")


async def test_a_manifest_alone_rebuilds_the_row(engine: AsyncEngine) -> None:
    catalog, t = PhotoCatalog(engine), ticket("d" * 20, "D" * 24)
    await catalog.completed(manifest_of(t, completed_at=2e9), MANIFEST_FILE)
    row = await catalog.photo(t.photo_id)
    assert row is not None and row["state"] == COMPLETED and row["ticket_id"] == t.id
    assert row["completed_at"].timestamp() == 2e9
    page = await catalog.page(None, 10, owner="")
    assert [r.photo_id for r in page] == [t.photo_id]


async def test_backup_state_follows_every_object(engine: AsyncEngine) -> None:
    catalog, t = PhotoCatalog(engine), ticket("e" * 20, "E" * 24)
    await catalog.completed(manifest_of(t), MANIFEST_FILE)
    keys = [t.original_key, f"derivatives/{t.photo_id}/m.jpg"]
    for key in keys:
        await catalog.backup_changed(key, BackupState.COMPLETED, None)
    assert await catalog.backup_state(t.photo_id) is BackupState.PENDING  # the manifest is not
    await catalog.backup_changed(MANIFEST_FILE.key, BackupState.COMPLETED, None)
    assert await catalog.backup_state(t.photo_id) is BackupState.COMPLETED
    await catalog.backup_changed(keys[0], BackupState.FAILED, "access_denied")
    assert await catalog.backup_state(t.photo_id) is BackupState.FAILED


async def test_the_gallery_pages_newest_first_without_repeats(engine: AsyncEngine) -> None:
    catalog = PhotoCatalog(engine)
    ids = [f"{n:020x}" for n in range(7)]
    for n, photo_id in enumerate(ids):
        t = ticket(photo_id, f"{n:024d}")
        # two photos completed in the same microsecond: the id breaks the tie
        await catalog.completed(manifest_of(t, completed_at=1e9 + n // 2), MANIFEST_FILE)
    seen, cursor = [], None
    while page := await catalog.page(cursor, 3, owner=""):
        seen += [r.photo_id for r in page]
        cursor = Cursor(page[-1].completed_at, page[-1].photo_id)
    assert seen == list(reversed(ids))


def test_cursors_round_trip_and_foreign_ones_are_refused() -> None:
    made = Cursor(at(1e9 + 0.123456), "f" * 20)
    assert Cursor.decode(made.encode()) == made
    for junk in ("", "nan", "!!!", "bm90LWEtY3Vyc29y"):
        with pytest.raises(BadRequest):
            Cursor.decode(junk)


async def test_an_accept_reuses_its_compiled_statement(engine: AsyncEngine) -> None:
    # every upload runs this statement: compiling it again each time cost the API ~1.5 ms
    catalog = PhotoCatalog(engine)
    seen: list[bool] = []

    def record(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if statement.lstrip().upper().startswith("WITH"):
            seen.append(context.cache_hit == CACHE_HIT)

    event.listen(engine.sync_engine, "after_cursor_execute", record)
    try:
        await catalog.accepted(ticket("b" * 20, "U" * 24))
        await catalog.accepted(ticket("c" * 20, "V" * 24).model_copy(update={"owner": "other"}))
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", record)
    assert len(seen) == 2 and seen[1], seen  # the second upload found the first's compilation


def test_a_server_still_recovering_is_unreachable_and_a_query_s_own_error_is_not() -> None:
    # asyncpg's CannotConnectNowError may reach SQLAlchemy as a bare DBAPIError: were it not
    # called unreachable, a role would crash on it while PostgreSQL recovers from a crash
    class Recovering(Exception):
        sqlstate = "57P03"  # the database system is starting up

    class Duplicate(Exception):
        sqlstate = "23505"

    wrapped = Exception("adapter")
    wrapped.__cause__ = Recovering()
    assert unreachable(sa_exc.DBAPIError("SELECT 1", None, wrapped))
    assert not unreachable(sa_exc.DBAPIError("INSERT", None, Duplicate()))
    assert unreachable(
        sa_exc.DBAPIError("SELECT 1", None, Duplicate(), connection_invalidated=True)
    )
