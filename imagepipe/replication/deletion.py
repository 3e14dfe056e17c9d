"""Deleting photos: the owner's request, the trash, the tombstone, the removals queued.

    request(owner, photo_id)   under the photo's lock (the one a callback indexes under): the
                               catalog hides the photo and makes its deletion ticket, and the
                               upload's ticket is forgotten, so nothing serves it from then on
                               and no later callback indexes it; then, with no trash window,
                               `proceed` at once
    undo(owner, photo_id)      out of the trash again (`POST /photos/{id}/restore`)
    proceed(deletion)          the tombstone object written on primary FIRST (create-only),
                               then the catalog's removal rows, then on the replication log:
                               the tombstone's copy to backup, one removal per object
    sweep()                    a replicator's periodic round: the trash that is due, and a
                               bounded batch of each account closure

The replicator removes each object from primary, then from backup (`replication.replicator`);
the audit proves every copy gone (`replication.proof`).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from imagepipe import keys
from imagepipe.catalog.closures import ClosureCatalog
from imagepipe.catalog.deletions import TRASHED, Deletion, DeletionCatalog, tombstone_body
from imagepipe.config import Settings
from imagepipe.connections import photo_locked
from imagepipe.errors import CatalogUnavailable, Conflict, NotFound, ServiceUnavailable
from imagepipe.ids import is_photo_id, new_ticket_id
from imagepipe.models import StoredFile
from imagepipe.replication import log as replication
from imagepipe.storage import ObjectExists, Storage, StorageError

log = logging.getLogger(__name__)
NO_SUCH_PHOTO = "no such photo (or it is still processing)"
DUE_PER_SWEEP = 100
CLOSURES_PER_SWEEP = 10


class Deletions:
    """Photos' deletions: requested, undone, under way."""

    def __init__(
        self, settings: Settings, redis: Redis, primary: Storage, catalog: DeletionCatalog
    ) -> None:
        self.settings, self.redis, self.primary, self.catalog = settings, redis, primary, catalog

    async def request(self, owner: str, photo_id: str, *, trash: bool = True) -> Deletion:
        """Delete ``owner``'s photo (the same deletion again for a second request); 404 for
        anyone else's. ``trash``: keep it undoable for `IMAGEPIPE_TRASH_S` first."""
        if not is_photo_id(photo_id):
            raise NotFound(NO_SUCH_PHOTO)
        trash_s = self.settings.trash_s if trash else 0
        async with photo_locked(self.redis, photo_id):
            found = await self.catalog.request(photo_id, owner, new_ticket_id(), trash_s)
            if found is None:
                raise NotFound(NO_SUCH_PHOTO)
            await self._forget_upload(photo_id)
        if found.started_at is None and (found.due(_now()) or not trash):
            found = await self._proceed_or_leave(found)
        return found

    async def _proceed_or_leave(self, deletion: Deletion) -> Deletion:
        """`proceed` now; on a fault, leave it to the sweeper (the photo is hidden already)."""
        try:
            return await self.proceed(deletion)
        except (StorageError, RedisError, CatalogUnavailable, ServiceUnavailable) as exc:
            log.warning(
                "deletion left to the sweeper: %s", exc, extra={"photo_id": deletion.photo_id}
            )
            return deletion

    async def undo(self, owner: str, photo_id: str) -> Deletion:
        """Take ``owner``'s photo out of the trash; 409 once its removal is under way."""
        if not is_photo_id(photo_id):
            raise NotFound("no deletion of such a photo")
        async with photo_locked(self.redis, photo_id):  # never while its removal is being started
            found = await self.catalog.undo(photo_id, owner)
        if found is None:
            raise NotFound("no deletion of such a photo")
        if found.state != TRASHED:
            raise Conflict(
                f"the photo is {found.state}: past its trash window, it cannot come back"
            )
        log.info("deletion undone", extra={"photo_id": photo_id})
        return found

    async def proceed(self, deletion: Deletion) -> Deletion:
        """Start removing: the tombstone first, then every object from primary and backup.

        Under the photo's lock, reading the deletion again: an undo that came first wins (no
        tombstone is written for a photo taken out of the trash).
        """
        async with photo_locked(self.redis, deletion.photo_id):
            current = await self.catalog.get(deletion.photo_id)
            if current is None or current.started_at is not None:
                return current or deletion
            return await self._start(current)

    async def _start(self, deletion: Deletion) -> Deletion:
        planned = await self.catalog.plan(deletion.photo_id)
        every = sorted(set(planned) | self._possible_keys(deletion.photo_id))
        tomb = await self.write_tombstone(deletion, every)
        started = await self.catalog.start(deletion, every, tomb)
        await self.queue(started, started.objects or every)
        log.info("deletion started", extra={"photo_id": deletion.photo_id})
        return started

    async def queue(self, deletion: Deletion, object_keys: list[str]) -> None:
        """The tombstone's copy to backup and the removal of ``object_keys``, on the log."""
        tomb = keys.tombstone(deletion.photo_id)
        since = (deletion.started_at or _now()).timestamp()
        size = (await self.primary.head(tomb)).size
        async with self.redis.pipeline(transaction=True) as pipe:
            replication.append(pipe, {tomb: size}, self.settings.ticket_retention_s)
            replication.append_removals(pipe, object_keys, since)
            await pipe.execute()

    def _possible_keys(self, photo_id: str) -> set[str]:
        """Keys the photo may have that the catalog may not know: every size the ladder makes
        (a worker may have written some before the delete), and its manifest."""
        ladder = ((size.name, size.encodings) for size in self.settings.sizes)
        return keys.every_derivative(photo_id, ladder) | {keys.manifest(photo_id)}

    async def write_tombstone(self, deletion: Deletion, object_keys: list[str]) -> StoredFile:
        """The tombstone on primary, create-only: one written before (a retry) is kept."""
        key, body = keys.tombstone(deletion.photo_id), tombstone_body(deletion, object_keys)
        try:
            await self.primary.put_bytes(key, body, create_only=True)
        except ObjectExists:
            body = await self.primary.read(key)
        return StoredFile(
            key=key,
            bytes=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            content_type="application/json",
        )

    async def _forget_upload(self, photo_id: str) -> None:
        """The upload's ticket (and a reprocess's), its view and backup states: gone, so
        its URLs answer 404 and a job or callback that comes later finds no ticket."""
        latest = await self.redis.get(keys.photo_ticket(photo_id))
        found = [await self.catalog.upload_ticket(photo_id), latest]
        tickets = {t.decode() if isinstance(t, bytes) else t for t in found if t}
        doomed = [keys.photo_ticket(photo_id), keys.photo_backup(photo_id)]
        for ticket_id in tickets:
            doomed += [keys.ticket(ticket_id), keys.ticket_view(ticket_id)]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*doomed)
            for ticket_id in tickets:  # its event streams wake, find no ticket and end
                pipe.publish(keys.ticket_channel(ticket_id), "deleted")
            await pipe.execute()


class Sweeper:
    """The periodic round: the trash that is due, then each account closure's next batch."""

    def __init__(self, deletions: Deletions, closures: ClosureCatalog) -> None:
        self.deletions, self.closures = deletions, closures
        settings = deletions.settings
        # photos a round may delete: the closures' rate over a round, saved up across rounds
        # when it is below one (at most one round's worth, or one photo)
        self.per_round = settings.owner_deletion_rate * settings.deletion_sweep_s
        self.credit = 0.0

    async def sweep(self) -> int:
        """One round; how many deletions it started."""
        started = 0
        for due in await self.deletions.catalog.due(_now(), DUE_PER_SWEEP):
            await self.deletions.proceed(due)
            started += 1
        self.credit = min(self.credit + self.per_round, max(1.0, self.per_round))
        budget = int(self.credit)
        if budget <= 0:
            return started
        for closure in await self.closures.running(CLOSURES_PER_SWEEP):
            done = await self.close_some(closure.owner, budget)
            started, budget, self.credit = started + done, budget - done, self.credit - done
            if budget <= 0:
                break
        return started

    async def close_some(self, owner: str, budget: int) -> int:
        """Up to ``budget`` more of the owner's photos deleted (no trash: the account is
        closed); the closure completed once every one is gone from every copy."""
        photo_ids = await self.closures.next_photos(owner, budget)
        photo_ids += await self.deletions.catalog.trashed_of(owner, budget - len(photo_ids))
        for photo_id in photo_ids:
            await self.deletions.request(owner, photo_id, trash=False)
        if not photo_ids:
            progress = await self.closures.progress(owner)
            if not progress["left"] and not progress.get("deleting"):
                await self.closures.complete(owner)
                log.info("account deletion completed", extra={"event": owner})
        return len(photo_ids)


def _now() -> datetime:
    return datetime.now(tz=UTC)
