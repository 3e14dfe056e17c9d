"""Deleted photos in the catalog: the tombstone row, each object's removal, the receipt.

    request(photo_id, owner, ticket_id, trash_s)  the owner's DELETE: the photo hidden from
                                   every reader and a `deletions` row (its ticket), at once
    undo(photo_id, owner)          back out of the trash (nothing removed yet)
    plan / start                   what the deletion removes; then, once the tombstone object
                                   is on primary, one statement per step in one transaction:
                                   a removal row per object, the objects (and their bytes on
                                   the owner's counter) dropped, the tombstone's object row
    removal_changed(key, copy, …)  one copy of one object removed, failed or being retried
    finish_if_removed(photo_id)    every copy gone and the tombstone in backup: `deleted`,
                                   with its receipt
    due / unfinished               what the sweeper and the audit take up

A deletion only moves forward (trashed -> deleting -> deleted) except by `undo` (trashed
only); its row is never dropped, so a photo id is never reused and the audit can always
prove what became of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from imagepipe import keys
from imagepipe.catalog import usage
from imagepipe.catalog.engine import reconnecting, session
from imagepipe.catalog.schema import deletions, objects, photos, removals
from imagepipe.models import BackupState, StoredFile

TRASHED, DELETING, DELETED = "trashed", "deleting", "deleted"
COPIES = ("primary", "backup")
PENDING, COMPLETED, FAILED = (s.value for s in BackupState)


def rfc3339(when: datetime | None) -> str | None:
    """A catalog time as the API and the tombstone write it (UTC, ``Z``)."""
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z") if when else None


@dataclass(frozen=True)
class Deletion:
    """One photo's deletion as the catalog has it."""

    photo_id: str
    ticket_id: str
    owner: str
    state: str
    requested_at: datetime
    purge_after: datetime
    started_at: datetime | None
    completed_at: datetime | None
    objects: list[str] | None
    receipt: dict[str, Any] | None

    @classmethod
    def of(cls, row: Any) -> Deletion:
        """From a result row of `deletions`."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def due(self, now: datetime) -> bool:
        """Whether its removal should be under way (the trash window is over)."""
        return self.state != TRASHED or self.purge_after <= now


def tombstone_body(deletion: Deletion, object_keys: list[str]) -> bytes:
    """The tombstone object (the shared contract with restore): who, when, every key."""
    body = {
        "photo_id": deletion.photo_id,
        "owner": deletion.owner,
        "deleted_at": rfc3339(deletion.requested_at),
        "objects": sorted(object_keys),
    }
    return json.dumps(body, indent=1).encode()


def _removal_rows(photo_id: str, object_keys: list[str], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "key": key,
            "photo_id": photo_id,
            "primary_state": PENDING,
            "backup_state": PENDING,
            "attempts": 0,
            "changed_at": now,
        }
        for key in object_keys
    ]


def copy_states(rows: list[tuple[str, str]]) -> dict[str, str]:
    """Each copy's state from its objects' (primary, backup) removal states."""
    found = {}
    for index, copy in enumerate(COPIES):
        states = {row[index] for row in rows}
        done = not states or states == {COMPLETED}
        found[copy] = FAILED if FAILED in states else COMPLETED if done else PENDING
    return found


class DeletionCatalog:
    """Deletions of photos in PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @reconnecting
    async def request(
        self, photo_id: str, owner: str, ticket_id: str, trash_s: int
    ) -> Deletion | None:
        """Delete ``owner``'s photo: hidden at once, its deletion row made (or the one made
        before: a second request gets the same ticket); None when it is not theirs."""
        now = datetime.now(tz=UTC)
        mine = select(photos.c.id).where(photos.c.id == photo_id, photos.c.owner == owner)
        async with session(self.engine, atomic=True) as db:
            if (await db.execute(mine.with_for_update())).first() is None:
                return None
            row = {
                "photo_id": photo_id,
                "ticket_id": ticket_id,
                "owner": owner,
                "state": TRASHED if trash_s else DELETING,
                "requested_at": now,
                "purge_after": now + timedelta(seconds=trash_s),
            }
            await db.execute(insert(deletions).values(row).on_conflict_do_nothing())
            hide = update(photos).where(photos.c.id == photo_id, photos.c.deleted_at.is_(None))
            await db.execute(hide.values(deleted_at=now, updated_at=now))
            return await self._get(db, photo_id)

    @reconnecting
    async def undo(self, photo_id: str, owner: str) -> Deletion | None:
        """Take the owner's photo out of the trash; the deletion as it was (None: no such
        deletion of theirs). Only a `trashed` one is undone: the caller checks the state."""
        async with session(self.engine, atomic=True) as db:
            found = await self._get(db, photo_id, lock=True)
            if found is None or found.owner != owner:
                return None
            if found.state == TRASHED:
                await db.execute(delete(deletions).where(deletions.c.photo_id == photo_id))
                now = datetime.now(tz=UTC)
                shown = update(photos).where(photos.c.id == photo_id)
                await db.execute(shown.values(deleted_at=None, updated_at=now))
            return found

    @reconnecting
    async def get(self, photo_id: str) -> Deletion | None:
        """A photo's deletion, or None."""
        async with session(self.engine) as db:
            return await self._get(db, photo_id)

    @reconnecting
    async def by_ticket(self, ticket_id: str) -> Deletion | None:
        """The deletion a ticket follows, or None."""
        query = select(deletions).where(deletions.c.ticket_id == ticket_id)
        async with session(self.engine) as db:
            row = (await db.execute(query)).mappings().first()
        return Deletion.of(row) if row is not None else None

    async def _get(self, db: AsyncConnection, photo_id: str, lock: bool = False) -> Deletion | None:
        query = select(deletions).where(deletions.c.photo_id == photo_id)
        row = (await db.execute(query.with_for_update() if lock else query)).mappings().first()
        return Deletion.of(row) if row is not None else None

    @reconnecting
    async def upload_ticket(self, photo_id: str) -> str | None:
        """The ticket the photo's upload was given."""
        query = select(photos.c.ticket_id).where(photos.c.id == photo_id)
        async with session(self.engine) as db:
            return (await db.execute(query)).scalar_one_or_none()

    @reconnecting
    async def trashed_of(self, owner: str, limit: int) -> list[str]:
        """Up to ``limit`` of the owner's photos in the trash."""
        if limit <= 0:
            return []
        query = (
            select(deletions.c.photo_id)
            .where(deletions.c.owner == owner, deletions.c.state == TRASHED)
            .limit(limit)
        )
        async with session(self.engine) as db:
            return list((await db.execute(query)).scalars())

    @reconnecting
    async def plan(self, photo_id: str) -> list[str]:
        """The keys the catalog knows of a photo: its objects (a tombstone aside), its original."""
        known = select(objects.c.key).where(
            objects.c.photo_id == photo_id, objects.c.kind != "tombstone"
        )
        original = select(photos.c.original_key).where(photos.c.id == photo_id)
        async with session(self.engine) as db:
            found = list((await db.execute(known)).scalars())
            found += list((await db.execute(original)).scalars())
        return sorted(set(found))

    @reconnecting
    async def start(self, deletion: Deletion, object_keys: list[str], tomb: StoredFile) -> Deletion:
        """The tombstone is on primary: record every removal, drop the photo's objects (and
        their bytes from the owner's counter), record the tombstone's object. Once only."""
        now = datetime.now(tz=UTC)
        async with session(self.engine, atomic=True) as db:
            found = await self._get(db, deletion.photo_id, lock=True)
            if found is None or found.started_at is not None:
                return found or deletion
            rows = _removal_rows(deletion.photo_id, object_keys, now)
            await db.execute(insert(removals).values(rows).on_conflict_do_nothing())
            await db.execute(_drop_objects(deletion))
            await db.execute(_tombstone_object(deletion.photo_id, tomb, now))
            started = {"state": DELETING, "started_at": now, "objects": object_keys}
            mine = deletions.c.photo_id == deletion.photo_id
            await db.execute(update(deletions).where(mine).values(started))
            await db.execute(
                update(photos).where(photos.c.id == deletion.photo_id).values(updated_at=now)
            )
            return await self._get(db, deletion.photo_id) or deletion

    @reconnecting
    async def removal_changed(
        self, key: str, copy: str, state: str, reason: str | None = None
    ) -> None:
        """One copy of one object: removed (completed), failed for good, or retried (pending)."""
        values = {
            f"{copy}_state": state,
            "reason": reason,
            "attempts": removals.c.attempts + 1,
            "changed_at": datetime.now(tz=UTC),
        }
        async with session(self.engine) as db:
            await db.execute(update(removals).where(removals.c.key == key).values(values))

    @reconnecting
    async def reopen(self, photo_id: str, object_keys: list[str]) -> None:
        """Objects found still there (the audit): pending again, and the deletion with them."""
        now = datetime.now(tz=UTC)
        again = {"primary_state": PENDING, "backup_state": PENDING, "changed_at": now}
        async with session(self.engine, atomic=True) as db:
            await db.execute(update(removals).where(removals.c.key.in_(object_keys)).values(again))
            mine = deletions.c.photo_id == photo_id
            reopened = {"state": DELETING, "completed_at": None, "receipt": None}
            await db.execute(
                update(deletions).where(mine, deletions.c.state == DELETED).values(reopened)
            )

    @reconnecting
    async def confirm_removed(self, photo_id: str) -> None:
        """Every object of the photo found gone from both copies (the audit): completed."""
        now = datetime.now(tz=UTC)
        done = {"primary_state": COMPLETED, "backup_state": COMPLETED, "changed_at": now}
        async with session(self.engine) as db:
            await db.execute(update(removals).where(removals.c.photo_id == photo_id).values(done))

    @reconnecting
    async def copies(self, photo_id: str) -> dict[str, str]:
        """The state of each copy's removal: primary, backup."""
        query = select(removals.c.primary_state, removals.c.backup_state).where(
            removals.c.photo_id == photo_id
        )
        async with session(self.engine) as db:
            rows = [(p, b) for p, b in await db.execute(query)]
        return copy_states(rows)

    @reconnecting
    async def finish_if_removed(self, photo_id: str) -> Deletion | None:
        """`deleted`, with its receipt, once every copy is removed and the tombstone is in
        backup; None while something is left (or it finished before)."""
        async with session(self.engine, atomic=True) as db:
            found = await self._get(db, photo_id, lock=True)
            if found is None or found.state != DELETING or found.started_at is None:
                return None
            now = datetime.now(tz=UTC)
            receipt = await _receipt(db, found, now)
            if receipt is None:
                return None
            done = {"state": DELETED, "completed_at": now, "receipt": receipt}
            await db.execute(update(deletions).where(deletions.c.photo_id == photo_id).values(done))
            return await self._get(db, photo_id)

    @reconnecting
    async def due(self, now: datetime, limit: int) -> list[Deletion]:
        """Deletions whose removal should be under way but has not started."""
        query = (
            select(deletions)
            .where(deletions.c.state != DELETED, deletions.c.started_at.is_(None))
            .where(deletions.c.purge_after <= now)
            .order_by(deletions.c.purge_after)
            .limit(limit)
        )
        async with session(self.engine) as db:
            return [Deletion.of(r) for r in (await db.execute(query)).mappings()]

    @reconnecting
    async def unfinished(self, limit: int) -> list[Deletion]:
        """Deletions under way, oldest first (the audit proves each one)."""
        query = (
            select(deletions)
            .where(deletions.c.state == DELETING)
            .order_by(deletions.c.purge_after)
            .limit(limit)
        )
        async with session(self.engine) as db:
            return [Deletion.of(r) for r in (await db.execute(query)).mappings()]


def _drop_objects(deletion: Deletion) -> Any:
    """Delete the photo's object rows (its tombstone's aside), their bytes off the counter."""
    gone = (
        delete(objects)
        .where(objects.c.photo_id == deletion.photo_id, objects.c.kind != "tombstone")
        .returning(objects.c.photo_id, objects.c.kind, objects.c.bytes)
        .cte("gone_objects")
    )
    return usage.counting(gone, {deletion.photo_id: deletion.owner}, sign=-1)


def _tombstone_object(photo_id: str, tomb: StoredFile, now: datetime) -> Any:
    """The tombstone's object row: backed up and verified like any object."""
    row = {
        "key": tomb.key,
        "photo_id": photo_id,
        "kind": "tombstone",
        "bytes": tomb.bytes,
        "sha256": tomb.sha256,
        "backup_state": PENDING,
        "backup_attempts": 0,
        "backup_changed_at": now,
        "created_at": now,
    }
    return insert(objects).values(row).on_conflict_do_nothing()


async def _receipt(db: AsyncConnection, found: Deletion, now: datetime) -> dict[str, Any] | None:
    """What was removed, once all of it is; None while anything is left."""
    query = select(removals.c.primary_state, removals.c.backup_state, func.count()).where(
        removals.c.photo_id == found.photo_id
    )
    counts = list(
        await db.execute(query.group_by(removals.c.primary_state, removals.c.backup_state))
    )
    if any((p, b) != (COMPLETED, COMPLETED) for p, b, _ in counts):
        return None
    tomb = select(objects.c.backup_state).where(objects.c.key == keys.tombstone(found.photo_id))
    if (await db.execute(tomb)).scalar_one_or_none() != COMPLETED:
        return None
    removed = sum(n for _, _, n in counts)
    return {
        "photo_id": found.photo_id,
        "requested_at": rfc3339(found.requested_at),
        "started_at": rfc3339(found.started_at),
        "completed_at": rfc3339(now),
        "objects_removed": removed,
        "objects": found.objects or [],
        "copies": {copy: {"state": COMPLETED, "objects_removed": removed} for copy in COPIES},
        "tombstone": keys.tombstone(found.photo_id),
    }
