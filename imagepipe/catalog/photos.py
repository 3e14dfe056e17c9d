"""PhotoCatalog: the queries every role runs against the catalog, and nothing else.

    accepted(ticket)                     the upload's row (state accepted) and its original
    completed(manifest, manifest_file)   the photo indexed: upright size, sizes, its objects
    failed(photo_id, error)              processing gave up
    get(photo_id) / page(cursor, limit, owner=)  a photo; an owner's photos or the public
                                         stream, newest first (keyset paging)
    backup_changed(key, state, reason)   an object's backup state, as the replicator finds it

Every write is idempotent (a retried callback, a re-run audit): inserts skip rows that
exist, and a terminal photo never changes state again.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import Insert, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from imagepipe.catalog import usage
from imagepipe.catalog.engine import reconnecting, session
from imagepipe.catalog.rows import ACCEPTED, COMPLETED, FAILED, PhotoRow
from imagepipe.catalog.schema import objects, photos
from imagepipe.errors import BadRequest
from imagepipe.models import BackupState, Original, PhotoManifest, StoredFile, Ticket


def at(seconds: float) -> datetime:
    """A Unix time as the catalog stores it."""
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass(frozen=True)
class Cursor:
    """Where a gallery page ends: the next page starts after this photo."""

    completed_at: datetime
    photo_id: str

    def encode(self) -> str:
        """Opaque to clients: they hand back what `next` said."""
        raw = f"{self.completed_at.timestamp():.6f}/{self.photo_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """The cursor a client sent back; 400 for one this server never made."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            stamp, photo_id = raw.split("/", 1)
            return cls(at(float(stamp)), photo_id)
        except (ValueError, binascii.Error, OverflowError, OSError):
            raise BadRequest("`before` is not a cursor this server gave out") from None


@dataclass(frozen=True)
class GalleryRow:
    """One photo of a gallery page."""

    photo_id: str
    completed_at: datetime
    visibility: str = "private"


def _facts(original: Original, ticket_id: str, created_at: float) -> dict[str, Any]:
    """The columns an original's facts fill."""
    return {
        "id": original.photo_id,
        "ticket_id": ticket_id,
        "original_key": original.original_key,
        "format": original.format,
        "width": original.width,
        "height": original.height,
        "bytes": original.bytes,
        "sha256": original.sha256,
        "created_at": at(created_at),
        "owner": original.owner,
        "visibility": original.visibility,
    }


COMPLETION = ("state", "width", "height", "sizes", "completed_at", "updated_at")
MAX_PARAMETERS = 32767  # what PostgreSQL's protocol takes in one statement
T = TypeVar("T")


def _completed_row(manifest: PhotoManifest, now: datetime) -> dict[str, Any]:
    """A completed photo's whole row, from its manifest."""
    done = {
        "state": COMPLETED,
        "width": manifest.width,
        "height": manifest.height,
        "sizes": {name: d.model_dump(mode="json") for name, d in manifest.sizes.items()},
        "completed_at": at(manifest.completed_at) if manifest.completed_at else now,
        "updated_at": now,
    }
    return {**_facts(manifest, manifest.ticket_id, manifest.created_at), **done}


def _files_of(manifest: PhotoManifest, manifest_file: StoredFile) -> list[Located]:
    """Every object of a processed photo: (photo id, file, kind)."""
    found = [(manifest.photo_id, _original(manifest), "original")]
    sizes = manifest.sizes.values()
    found += [(manifest.photo_id, f, "derivative") for d in sizes for f in d.files]
    found.append((manifest.photo_id, manifest_file, "manifest"))
    return found


def _completion_upsert(upsert: Insert, restore: bool) -> Insert:
    # a callback leaves the row's visibility (a PATCH may have changed it meanwhile); reindex
    # restores the manifest's (the manifest is the truth, the row may be an old backup's)
    columns = (*COMPLETION, "visibility") if restore else COMPLETION
    refreshed = {column: upsert.excluded[column] for column in columns}
    # a reprocessed photo (the audit, a format added to the ladder) is indexed again; a failed
    # one stays failed
    return upsert.on_conflict_do_update(
        index_elements=[photos.c.id], set_=refreshed, where=photos.c.state != FAILED
    )


def _with_objects(
    photo_statement: Insert, files: list[Located], now: datetime, owner_of: dict[str, str]
) -> Insert:
    """One statement: the photo rows (a CTE), their objects (ones recorded stay), then the
    bytes of the objects it inserted onto their owners' counters (``owner_of``: photo -> owner)."""
    rows = [_object_row(photo_id, file, kind, now) for photo_id, file, kind in files]
    # one row (every upload) as a dict: SQLAlchemy caches that statement's compiled form,
    # where a list of rows is compiled again on every call
    recorded = insert(objects).values(rows[0] if len(rows) == 1 else rows)
    recorded = recorded.on_conflict_do_nothing()
    inserted = recorded.returning(objects.c.photo_id, objects.c.kind, objects.c.bytes)
    counted = usage.counting(inserted.cte("new_objects"), owner_of)
    return counted.add_cte(photo_statement.cte("photo_rows"))


def _original(original: Original) -> StoredFile:
    return StoredFile(key=original.original_key, bytes=original.bytes, sha256=original.sha256)


Located = tuple[str, StoredFile, str]  # (photo id, the file, its kind)


def _object_row(photo_id: str, file: StoredFile, kind: str, now: datetime) -> dict[str, Any]:
    """An object's row (kind: original, derivative, manifest), not yet in backup."""
    return {
        "key": file.key,
        "photo_id": photo_id,
        "kind": kind,
        "bytes": file.bytes,
        "sha256": file.sha256,
        "backup_state": BackupState.PENDING.value,
        "backup_attempts": 0,
        "backup_changed_at": now,
        "created_at": now,
    }


def page_query(before: Cursor | None, limit: int, owner: str | None) -> Select[Any]:
    """A page of ``owner``'s photos (index `photos_owner`), or with None of the public stream
    (`photos_public`): keyset, no OFFSET scans."""
    mine = photos.c.owner == owner if owner is not None else photos.c.visibility == "public"
    query = (
        select(photos.c.id, photos.c.completed_at, photos.c.visibility)
        .where(photos.c.state == COMPLETED, mine, photos.c.deleted_at.is_(None))
        .order_by(photos.c.completed_at.desc(), photos.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        mark = tuple_(photos.c.completed_at, photos.c.id)
        query = query.where(mark < tuple_(before.completed_at, before.photo_id))
    return query


class PhotoCatalog:
    """Photos and their objects in PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @reconnecting
    async def ping(self) -> None:
        """Raise CatalogUnavailable unless PostgreSQL answers (for /readyz)."""
        async with session(self.engine) as db:
            await db.execute(select(1))

    @reconnecting
    async def accepted(self, ticket: Ticket) -> None:
        """Record an accepted upload and its original (a second call changes nothing)."""
        now = at(ticket.created_at)
        row = {**_facts(ticket, ticket.id, ticket.created_at), "state": ACCEPTED, "updated_at": now}
        photo = insert(photos).values(row).on_conflict_do_nothing()
        original = [(ticket.photo_id, _original(ticket), "original")]
        async with session(self.engine) as db:
            await db.execute(_with_objects(photo, original, now, {ticket.photo_id: ticket.owner}))

    @reconnecting
    async def completed(self, manifest: PhotoManifest, manifest_file: StoredFile) -> None:
        """Index a processed photo from its manifest: its row completed (made if missing:
        `reindex` rebuilds the catalog this way), its original, derivatives and manifest."""
        await self.completed_many([(manifest, manifest_file)])

    @reconnecting
    async def completed_many(
        self, indexed: list[tuple[PhotoManifest, StoredFile]], *, restore: bool = False
    ) -> None:
        """`completed` for many photos (reindex, bulk loads), each with its objects.
        ``restore``: the manifests' visibility wins over the rows'.

        One photo (every callback) is one statement whose compiled form SQLAlchemy caches;
        many are `_completed_in_bulk`, since a statement listing many rows is compiled again
        on every call (seconds for a few thousand photos)."""
        now = datetime.now(tz=UTC)
        if len(indexed) > 1:
            return await self._completed_in_bulk(indexed, restore, now)
        ((manifest, manifest_file),) = indexed
        upsert = _completion_upsert(insert(photos).values(_completed_row(manifest, now)), restore)
        files = _files_of(manifest, manifest_file)
        async with session(self.engine) as db:
            await db.execute(_with_objects(upsert, files, now, {manifest.photo_id: manifest.owner}))

    async def _completed_in_bulk(
        self, indexed: list[tuple[PhotoManifest, StoredFile]], restore: bool, now: datetime
    ) -> None:
        """Many photos as three statements in one transaction, each sent with every row at
        once (SQLAlchemy's "insertmanyvalues": compiled once, the rows batched into the wire
        format): the photos, their objects, and the bytes of the objects inserted onto their
        owners' counters."""
        rows = [_completed_row(m, now) for m, _ in indexed]
        files = [_object_row(*located, now) for m, f in indexed for located in _files_of(m, f)]
        owner_of = {m.photo_id: m.owner for m, _ in indexed}
        recorded = (
            insert(objects)
            .on_conflict_do_nothing()
            .returning(objects.c.photo_id, objects.c.kind, objects.c.bytes)
        )
        async with session(self.engine, atomic=True) as db:
            await db.execute(_completion_upsert(insert(photos), restore), rows)
            inserted = (await db.execute(recorded, files)).all()
            added = usage.bytes_per_owner(inserted, owner_of)
            if added:
                await db.execute(usage.adding(), added)

    @reconnecting
    async def failed(self, photo_id: str, error: str | None) -> None:
        """Processing gave up on this photo (a completed one stays completed)."""
        now = datetime.now(tz=UTC)
        async with session(self.engine) as db:
            await db.execute(
                update(photos)
                .where(photos.c.id == photo_id, photos.c.state == ACCEPTED)
                .values(state=FAILED, error=error, updated_at=now)
            )

    @reconnecting
    async def page(
        self, before: Cursor | None, limit: int, *, owner: str | None
    ) -> list[GalleryRow]:
        """Completed photos, newest first, after ``before``: ``owner``'s, or with None the
        public stream (`page_query`)."""
        async with session(self.engine) as db:
            found = await db.execute(page_query(before, limit, owner))
        return [GalleryRow(*row) for row in found]

    @reconnecting
    async def deleted(self, photo_id: str) -> bool:
        """Whether the photo's owner deleted it (a callback then indexes nothing)."""
        query = select(photos.c.deleted_at).where(photos.c.id == photo_id)
        async with session(self.engine) as db:
            return (await db.execute(query)).scalar_one_or_none() is not None

    @reconnecting
    async def photo(self, photo_id: str) -> dict[str, Any] | None:
        """A photo's row, or None."""
        async with session(self.engine) as db:
            found = await db.execute(select(photos).where(photos.c.id == photo_id))
        row = found.mappings().first()
        return dict(row) if row is not None else None

    @reconnecting
    async def manifest(self, photo_id: str) -> PhotoManifest | None:
        """A completed photo's record (as its manifest on primary says it), or None (also once
        deleted)."""
        query = select(photos).where(
            photos.c.id == photo_id, photos.c.state == COMPLETED, photos.c.deleted_at.is_(None)
        )
        async with session(self.engine) as db:
            row = (await db.execute(query)).mappings().first()
        return PhotoRow.of(row).manifest() if row is not None else None

    @reconnecting
    async def backup_state(self, photo_id: str) -> BackupState:
        """Completed when every object of the photo is in backup; failed when one failed."""
        query = (
            select(objects.c.backup_state, func.count())
            .where(objects.c.photo_id == photo_id)
            .group_by(objects.c.backup_state)
        )
        async with session(self.engine) as db:
            counts: dict[str, int] = {state: n for state, n in await db.execute(query)}
        if counts.get(BackupState.FAILED.value):
            return BackupState.FAILED
        done = counts and set(counts) == {BackupState.COMPLETED.value}
        return BackupState.COMPLETED if done else BackupState.PENDING

    @reconnecting
    async def backup_found(self, states: dict[str, BackupState]) -> None:
        """Set objects' backup states as a check found them (reindex, audit): no attempt counted."""
        now = datetime.now(tz=UTC)
        by_state: dict[BackupState, list[str]] = {}
        for key, state in states.items():
            by_state.setdefault(state, []).append(key)
        async with session(self.engine) as db:
            for state, found in by_state.items():
                await db.execute(
                    update(objects)
                    .where(objects.c.key.in_(found))
                    .values(backup_state=state.value, backup_reason=None, backup_changed_at=now)
                )

    @reconnecting
    async def backup_changed(self, key: str, state: BackupState, reason: str | None) -> None:
        """An object's backup copy is verified (completed), failed for good, or being retried."""
        values: dict[str, Any] = {
            "backup_state": state.value,
            "backup_reason": reason,
            "backup_changed_at": datetime.now(tz=UTC),
            "backup_attempts": objects.c.backup_attempts + 1,
        }
        async with session(self.engine) as db:
            await db.execute(update(objects).where(objects.c.key == key).values(values))
