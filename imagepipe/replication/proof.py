"""The audit's proof that a deletion reached every copy, and its repair when it did not.

    photo(photo_id)        a deleted photo: trash due -> its removal started; any of its
                           objects still on primary or in backup -> its removal queued again
                           (and the deletion reopened if it had completed: counted apart);
                           nothing left -> every removal confirmed and the ticket completed
                           with its receipt (once its tombstone is in backup too)
    leftovers(listing)     objects of a photo the catalog has no row for but whose tombstone
                           a store holds (a catalog rebuilt, a crash): queued for removal

A tombstone itself is an object like the others (backed up and verified by `checks`); it is
never removed, and never an orphan.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.catalog.deletions import DELETED, Deletion
from imagepipe.replication import log as replication
from imagepipe.replication.checks import Finding
from imagepipe.replication.deletion import Deletions
from imagepipe.storage import ObjectInfo, ObjectNotFound, Storage

Listed = Mapping[str, ObjectInfo] | None  # a store's listing of the slice, or None: look up


class DeletionProof:
    """Deletions checked against primary and backup, one photo at a time."""

    def __init__(self, deletions: Deletions, redis: Redis, backup: Storage, found: Finding):
        self.deletions, self.catalog = deletions, deletions.catalog
        self.redis, self.primary, self.backup = redis, deletions.primary, backup
        self.found = found

    async def photo(
        self, photo_id: str, on_primary: Listed = None, in_backup: Listed = None
    ) -> None:
        """Prove one photo's deletion, or repair it (see the module's docstring)."""
        deletion = await self.catalog.get(photo_id)
        if deletion is None:
            return
        if deletion.started_at is None:
            if deletion.due(datetime.now(tz=UTC)):
                await self.deletions.proceed(deletion)
                self.found("deletions_started", photo_id)
            return
        left = await self._left(deletion.objects or [], on_primary, in_backup)
        if left:
            await self._again(deletion, left)
        elif deletion.state != DELETED and not await self._in_flight(deletion.objects or []):
            await self.catalog.confirm_removed(photo_id)  # gone, though no removal said so
            if await self.catalog.finish_if_removed(photo_id):
                self.found("deletions_proven", photo_id)
        await self._tombstone_kept(deletion, on_primary)

    async def _left(
        self, object_keys: list[str], on_primary: Listed, in_backup: Listed
    ) -> list[str]:
        """The keys still on primary or in backup."""
        left = []
        for key in object_keys:
            if await _holds(self.primary, key, on_primary) or await _holds(
                self.backup, key, in_backup
            ):
                left.append(key)
        return left

    async def _in_flight(self, object_keys: list[str]) -> bool:
        if not object_keys:
            return False
        scores = await self.redis.zmscore(keys.DELETION_PENDING, object_keys)
        return any(score is not None for score in scores)

    async def _again(self, deletion: Deletion, left: list[str]) -> None:
        """Queue the removal of what is left (what is on the log already is on its way)."""
        scores = await self.redis.zmscore(keys.DELETION_PENDING, left)
        lost = [key for key, score in zip(left, scores, strict=True) if score is None]
        if not lost:
            return
        await self.catalog.reopen(deletion.photo_id, lost)
        await self.requeue(lost, deletion.started_at or datetime.now(tz=UTC))
        for key in lost:
            self.found("deletion_requeued", key)
            if deletion.state == DELETED:
                self.found("deleted_objects_reappeared", key)

    async def requeue(self, object_keys: list[str], since: datetime) -> None:
        """Removals onto the log again."""
        async with self.redis.pipeline(transaction=True) as pipe:
            replication.append_removals(pipe, object_keys, since.timestamp())
            await pipe.execute()

    async def _tombstone_kept(self, deletion: Deletion, on_primary: Listed) -> None:
        """The tombstone is on primary: written again (the same body) when it is not."""
        if not await _holds(self.primary, keys.tombstone(deletion.photo_id), on_primary):
            await self.deletions.write_tombstone(deletion, deletion.objects or [])
            self.found("tombstones_rewritten", keys.tombstone(deletion.photo_id))

    async def leftovers(
        self, on_primary: Mapping[str, ObjectInfo], in_backup: Mapping[str, ObjectInfo]
    ) -> None:
        """Objects of unindexed photos that a tombstone marks deleted: queued for removal."""
        listed = on_primary.keys() | in_backup.keys()
        tombstoned = {keys.photo_of(k) for k in listed if keys.kind_of(k) == "tombstone"}
        left = [
            key
            for key in sorted(listed)
            if keys.photo_of(key) in tombstoned and keys.kind_of(key) != "tombstone"
        ]
        scores = await self.redis.zmscore(keys.DELETION_PENDING, left) if left else []
        lost = [key for key, score in zip(left, scores, strict=True) if score is None]
        if lost:
            await self.requeue(lost, datetime.now(tz=UTC))
            for key in lost:
                self.found("deletion_requeued", key)


async def _holds(store: Storage, key: str, listed: Listed) -> bool:
    if listed is not None:
        return key in listed
    try:
        await store.head(key)
    except ObjectNotFound:
        return False
    return True
