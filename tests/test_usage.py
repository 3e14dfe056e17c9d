"""Each owner's stored-bytes counter (`catalog.usage`) on a real PostgreSQL: it moves with the
statements that record objects, equals the SUM over the owner's objects, and `recount`
(which `reindex` runs) makes it right again whatever it said."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.catalog.usage import OwnerUsage
from imagepipe.models import PhotoManifest, StoredFile, Ticket
from tests.test_catalog import MANIFEST_FILE, engine_for, manifest_of, ticket

SUMS = text(
    "SELECT p.owner, sum(o.bytes) FROM objects o JOIN photos p ON p.id = o.photo_id "
    "WHERE o.kind IN ('original', 'derivative') GROUP BY p.owner"
)
COUNTERS = text("SELECT owner, stored_bytes FROM owners WHERE stored_bytes > 0")


@pytest.fixture
async def engine(database: str) -> AsyncIterator[AsyncEngine]:
    made = engine_for(database)
    yield made
    await made.dispose()


def owned(owner: str, n: int) -> Ticket:
    return ticket(f"{owner[0]}{n:019d}", f"{owner[0]}{n:023d}").model_copy(update={"owner": owner})


async def rows(engine: AsyncEngine, query: object) -> dict[str, int]:
    async with engine.connect() as db:
        return {owner: int(n) for owner, n in await db.execute(query)}  # type: ignore[call-overload]


async def test_the_counter_follows_every_recorded_object_and_equals_the_sum(
    engine: AsyncEngine,
) -> None:
    catalog, usage = PhotoCatalog(engine), OwnerUsage(engine)
    alice, bob = [owned("alice", n) for n in range(3)], [owned("bob", 0)]
    for t in [*alice, *bob]:
        await catalog.accepted(t)
        await catalog.accepted(t)  # retried: recorded and counted once
    assert await usage.stored_bytes("alice") == 3 * 123  # the originals
    await catalog.completed_many([(manifest_of(t), MANIFEST_FILE) for t in alice])
    await catalog.completed(manifest_of(alice[0]), MANIFEST_FILE)  # a retried callback
    # originals (123) and one derivative (10) each; the manifest does not count
    assert await usage.stored_bytes("alice") == 3 * (123 + 10)
    assert await usage.stored_bytes("bob") == 123
    assert await usage.stored_bytes("carol") == 0
    assert await rows(engine, COUNTERS) == await rows(engine, SUMS)


async def test_recount_rebuilds_counters_that_went_wrong(engine: AsyncEngine) -> None:
    catalog, usage = PhotoCatalog(engine), OwnerUsage(engine)
    await catalog.completed(manifest_of(owned("alice", 1)), MANIFEST_FILE)
    async with engine.begin() as db:
        await db.execute(text("UPDATE owners SET stored_bytes = 999999"))
        await db.execute(text("INSERT INTO owners VALUES ('ghost', 5)"))
    await usage.recount()
    assert await rows(engine, COUNTERS) == {"alice": 133} == await rows(engine, SUMS)


def indexed(t: Ticket) -> tuple[PhotoManifest, StoredFile]:
    """The photo's manifest and its manifest file (a key of its own)."""
    return manifest_of(t), StoredFile(key=f"manifests/{t.photo_id}.json", bytes=5, sha256="2" * 64)


async def test_a_bulk_load_records_and_counts_what_one_at_a_time_does(
    engine: AsyncEngine,
) -> None:
    catalog = PhotoCatalog(engine)
    one_by_one = [owned("dora", n) for n in range(3)]
    in_bulk = [owned("emil", n) for n in range(3)] + [owned("fay", 0)]
    for t in one_by_one:
        await catalog.completed(*indexed(t))
    await catalog.completed_many([indexed(t) for t in in_bulk])
    await catalog.completed_many([indexed(t) for t in in_bulk])  # again: nothing counted twice
    counters = await rows(engine, COUNTERS)
    assert counters["dora"] == counters["emil"] == 3 * (123 + 10) and counters["fay"] == 133
    assert counters == await rows(engine, SUMS)
    shape = text(
        "SELECT p.owner, p.state, count(o.key), sum(o.bytes) FROM photos p JOIN objects o "
        "ON o.photo_id = p.id WHERE p.owner IN ('dora', 'emil') GROUP BY p.owner, p.state"
    )
    async with engine.connect() as db:
        found = {owner: tuple(rest) for owner, *rest in await db.execute(shape)}
    assert found["dora"] == ("completed", 9, 3 * (123 + 10 + 5))
    assert found["emil"] == found["dora"]
