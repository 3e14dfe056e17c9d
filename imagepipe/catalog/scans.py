"""What the audit reads from the catalog: each query's cost follows what changed, or one slice.

    changed_since(t)       photos whose row changed at or after t (the audit's watermark)
    stuck(before)          photos accepted and untouched since before: processing stopped
    unconfirmed(before)    objects whose backup copy is not (or no longer) confirmed
    in_slice(prefix)       every photo whose id starts with prefix, with its objects
    mark / set_mark        named timestamps (the watermark)

Photo ids are random hex, so id prefixes cut the library into equal slices: the audit checks
a few slices per pass and every slice over `IMAGEPIPE_AUDIT_VERIFY_PERIOD_S`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, tuple_
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from imagepipe.catalog.engine import reconnecting, session
from imagepipe.catalog.rows import ACCEPTED, ObjectRow, PhotoRow, object_row
from imagepipe.catalog.schema import marks, objects, photos
from imagepipe.models import BackupState

BATCH = 500  # rows per round trip when a scan may be long


class CatalogScans:
    """The audit's reads (and its watermark)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def changed_since(self, since: datetime) -> AsyncIterator[PhotoRow]:
        """Photos changed at or after ``since``, oldest change first, in batches."""
        query = select(photos).where(photos.c.updated_at >= since)
        async for row in self._batched(query, photos.c.updated_at):
            yield row

    async def stuck(self, before: datetime) -> AsyncIterator[PhotoRow]:
        """Photos still `accepted` whose row has not changed since ``before`` (not deleted:
        a deleted photo is never processed, and the audit proves its deletion apart)."""
        query = select(photos).where(
            photos.c.state == ACCEPTED, photos.c.updated_at < before, photos.c.deleted_at.is_(None)
        )
        async for row in self._batched(query, photos.c.updated_at):
            yield row

    async def _batched(self, query: Select[Any], order: Any) -> AsyncIterator[PhotoRow]:
        """Keyset batches over (order, id): never the whole result in memory."""
        after: tuple[Any, str] | None = None
        while True:
            batch = query.order_by(order, photos.c.id).limit(BATCH)
            if after is not None:
                batch = batch.where(tuple_(order, photos.c.id) > tuple_(*after))
            async with session(self.engine) as db:
                rows = [PhotoRow.of(r) for r in (await db.execute(batch)).mappings()]
            for row in rows:
                yield row
            if len(rows) < BATCH:
                return
            last = rows[-1]
            after = (getattr(last, order.name), last.id)

    @reconnecting
    async def unconfirmed(self, before: datetime, limit: int) -> list[ObjectRow]:
        """Up to ``limit`` objects not confirmed in backup whose state is older than ``before``."""
        query = (
            select(objects)
            .where(
                objects.c.backup_state != BackupState.COMPLETED.value,
                objects.c.backup_changed_at < before,
            )
            .order_by(objects.c.backup_changed_at)
            .limit(limit)
        )
        async with session(self.engine) as db:
            return [object_row(r) for r in (await db.execute(query)).mappings()]

    @reconnecting
    async def objects_of(self, photo_ids: list[str]) -> dict[str, list[ObjectRow]]:
        """The objects of these photos, by photo."""
        found: dict[str, list[ObjectRow]] = {p: [] for p in photo_ids}
        query = select(objects).where(objects.c.photo_id.in_(photo_ids))
        async with session(self.engine) as db:
            for row in (await db.execute(query)).mappings():
                found[row["photo_id"]].append(object_row(row))
        return found

    @reconnecting
    async def in_slice(self, prefix: str) -> list[PhotoRow]:
        """Every photo whose id starts with ``prefix`` (a slice: a small share of the library)."""
        # a range, not LIKE: the primary key's index serves it under any collation
        after = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        query = select(photos).where(photos.c.id >= prefix, photos.c.id < after)
        async with session(self.engine) as db:
            return [PhotoRow.of(r) for r in (await db.execute(query)).mappings()]

    @reconnecting
    async def mark(self, name: str) -> datetime | None:
        """A named timestamp, None before it was first set."""
        async with session(self.engine) as db:
            found = await db.execute(select(marks.c.at).where(marks.c.name == name))
        return found.scalar_one_or_none()

    @reconnecting
    async def set_mark(self, name: str, when: datetime) -> None:
        """Set a named timestamp."""
        upsert = insert(marks).values(name=name, at=when)
        upsert = upsert.on_conflict_do_update(index_elements=[marks.c.name], set_={"at": when})
        async with session(self.engine) as db:
            await db.execute(upsert)
