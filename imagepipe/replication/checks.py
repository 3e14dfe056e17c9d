"""The audit's checks of one photo (its catalog row, its objects on primary and backup, its
ticket in Redis) and the repair of whatever is wrong.

    processing  accepted but stuck -> its job again; ticket lost -> the ticket back, requeued;
                completed but a size missing on primary -> reprocessed on the backfill lane
    tickets     a ticket Redis lost (within the retention) -> put back as the catalog says
    objects     a manifest missing on primary -> written again from the catalog;
                an original missing -> reported (backup holds it: `imagepipe restore`)
    backup      missing or different in backup -> back onto the replication log;
                `failed` -> retried; a sound copy the catalog does not know of -> confirmed

Repairs go to the backfill lane and the replication log; none is awaited.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from imagepipe import keys, queue
from imagepipe.api.accept import accept
from imagepipe.api.ingest import StoredOriginal
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.catalog.rows import ACCEPTED, COMPLETED, ObjectRow, PhotoRow
from imagepipe.config import Settings
from imagepipe.errors import NotFound
from imagepipe.ids import new_ticket_id
from imagepipe.imaging.decoding import ImageRejected
from imagepipe.imaging.probe import probe
from imagepipe.models import BackupState, Original, Ticket, TicketStatus
from imagepipe.replication import log as replication
from imagepipe.storage import ObjectInfo, ObjectNotFound, Storage
from imagepipe.tickets import TicketStore

Finding = Callable[[str, str], None]  # (kind, subject)
ACTIVE_JOB = {JobStatus.queued, JobStatus.deferred, JobStatus.in_progress}
# past queued (1) -> processing (2) -> completed (3): a client's cached ETag or event id
# names an older version, so it fetches the restored ticket once
RESTORED_VERSION = 4
STATUS = {ACCEPTED: TicketStatus.QUEUED, COMPLETED: TicketStatus.COMPLETED}


def derivative_keys(photo_id: str, settings: Settings) -> set[str]:
    """Every derivative the configured ladder makes of a photo, each size in each format.

    So a format added to a size later is made for the photos already processed, too.
    """
    return keys.every_derivative(photo_id, ((s.name, s.encodings) for s in settings.sizes))


def restored_ticket(row: PhotoRow) -> Ticket:
    """The ticket the catalog's row stands for (its attempt count is not kept: 1)."""
    manifest = row.manifest()
    return Ticket(
        id=row.ticket_id,
        **manifest.original_facts(),
        status=STATUS.get(row.state, TicketStatus.FAILED),
        created_at=row.created_at.timestamp(),
        updated_at=row.updated_at.timestamp(),
        attempts=1,
        error=row.error,
        version=RESTORED_VERSION,
        sizes=manifest.sizes,
    )


class PhotoChecks:
    """Checks and repairs, photo by photo, for one audit pass."""

    def __init__(
        self,
        settings: Settings,
        redis: ArqRedis,
        catalog: PhotoCatalog,
        primary: Storage,
        backup: Storage,
        found: Finding,
    ) -> None:
        self.settings, self.redis, self.catalog = settings, redis, catalog
        self.primary, self.backup, self.found = primary, backup, found
        self.tickets = TicketStore(redis, settings.ticket_retention_s)

    # -- one photo --------------------------------------------------------------------------

    async def photo(
        self,
        row: PhotoRow,
        stored: list[ObjectRow],
        on_primary: Mapping[str, ObjectInfo],
        in_backup: Mapping[str, ObjectInfo] | None = None,
    ) -> None:
        """Check a photo against what primary (and backup, when listed) hold, and repair."""
        if row.original_key not in on_primary:
            self.found("originals_missing", row.original_key)
            return
        await self.processing(row, stored, on_primary)
        await self.manifest(row, on_primary)
        for obj in stored:
            if obj.key in on_primary:
                await self.object_backup(obj, on_primary[obj.key], in_backup)

    async def processing(
        self, row: PhotoRow, stored: list[ObjectRow], on_primary: Mapping[str, ObjectInfo]
    ) -> None:
        """Its processing finished (or runs), its sizes are all on primary, its ticket kept."""
        ticket = await self._latest_ticket(row)
        if ticket is not None and not ticket.status.terminal:
            if self._stuck(ticket):  # else it is just running: its outcome is still to come
                await self.requeue_stuck(ticket)
            return
        complete = derivative_keys(row.id, self.settings) <= on_primary.keys()
        if row.state == COMPLETED and not complete:
            if ticket is not None and ticket.status is TicketStatus.FAILED:
                self.found("unprocessable_originals", f"{row.original_key}: {ticket.error}")
                return  # its reprocessing failed for good: say so, do not loop
            await self.reaccept(row, "reprocessed_missing_derivatives")
        elif ticket is None:
            await self.ticket_lost(row, stored)

    async def ticket_lost(self, row: PhotoRow, stored: list[ObjectRow]) -> None:
        """Redis forgot the ticket: put it back while it would still be kept (with the backup
        states polls read), and run an unfinished photo's processing again."""
        ttl_s = int(row.created_at.timestamp() + self.tickets.retention_s - time.time())
        if ttl_s <= 0:
            if row.state == ACCEPTED:  # expired unprocessed: a new ticket for it
                await self.reaccept(row, "reprocessed_no_ticket")
            return  # a finished photo's ticket expired as published
        if await self.tickets.restore(restored_ticket(row), ttl_s):
            self.found("tickets_restored", row.ticket_id)
            states = {obj.key: obj.backup_state.value for obj in stored}
            async with self.redis.pipeline(transaction=True) as pipe:
                replication.note_backup(pipe, row.id, states, ttl_s)
                await pipe.execute()
        if row.state == ACCEPTED:  # a fresh job id: the old one may have a kept result
            attempt = int(time.time())
            await queue.enqueue_processing(self.redis, row.ticket_id, attempt, keys.BACKFILL_QUEUE)

    def _stuck(self, ticket: Ticket) -> bool:
        return time.time() - ticket.updated_at > self.settings.audit_stuck_after_s

    async def _latest_ticket(self, row: PhotoRow) -> Ticket | None:
        """The photo's newest ticket (a reprocess makes another), else the one it began with."""
        ticket_id = await self.tickets.ticket_for_photo(row.id) or row.ticket_id
        try:
            return await self.tickets.get(ticket_id)
        except NotFound:
            return None

    async def requeue_stuck(self, ticket: Ticket) -> None:
        """A ticket that stopped moving: run its processing again unless it is queued now."""
        for lane in (keys.UPLOADS_QUEUE, keys.BACKFILL_QUEUE):
            job_id = keys.process_job_id(ticket.id)
            job = Job(job_id, self.redis, _queue_name=lane, _deserializer=queue.decode_job)
            if await job.status() in ACTIVE_JOB:
                return  # just slow, not stuck
        attempt = int(time.time())  # a fresh job id: the old one may have a kept result
        await queue.enqueue_processing(self.redis, ticket.id, attempt, keys.BACKFILL_QUEUE)
        self.found("stuck_tickets_requeued", ticket.id)

    async def reaccept(self, row: PhotoRow, kind: str) -> None:
        """Give the photo a new ticket and queue its processing on the backfill lane."""
        original = Original(**row.manifest().original_facts())
        await self._accept(original, kind)

    async def unindexed(self, info: ObjectInfo) -> None:
        """An original on primary that the catalog has no row for: accept it as a photo."""
        try:
            data = await self.primary.read(info.key)
            found = probe(data, self.settings.formats, self.settings.max_pixels, True)
        except (ObjectNotFound, ImageRejected) as exc:
            self.found("unprocessable_originals", f"{info.key}: {exc}")
            return
        digest = hashlib.sha256(data).hexdigest()
        facts = ObjectInfo(info.key, len(data), digest)
        stored = StoredOriginal(keys.photo_of(info.key), info.key, facts, found)
        await self._accept(stored.original(), "originals_unindexed")

    async def _accept(self, original: Original, kind: str) -> None:
        lane = keys.BACKFILL_QUEUE
        await accept(self.redis, self.tickets, self.catalog, original, new_ticket_id(), lane=lane)
        self.found(kind, original.photo_id)

    async def manifest(self, row: PhotoRow, on_primary: Mapping[str, ObjectInfo]) -> None:
        """A completed photo's manifest is on primary (written again from its row if not)."""
        key = keys.manifest(row.id)
        if row.state == COMPLETED and key not in on_primary:
            await self.primary.put_bytes(key, row.manifest().model_dump_json(indent=1).encode())
            self.found("manifests_rewritten", key)

    # -- one object's backup copy -----------------------------------------------------------

    async def object_backup(
        self, obj: ObjectRow, info: ObjectInfo, in_backup: Mapping[str, ObjectInfo] | None
    ) -> None:
        """The backup copy exists with the same size (and sha256 where cheap, or --deep)."""
        if await self._in_flight(obj.key):
            return  # the replicator has it: not a finding
        copy = in_backup.get(obj.key) if in_backup is not None else await self._head(obj.key)
        if obj.backup_state is BackupState.FAILED:  # the cause may be fixed by now
            await self.replicate_again(obj.key, info.size, "replication_failed_retried")
        elif copy is None:
            await self.replicate_again(obj.key, info.size, "backup_missing")
        elif copy.size != info.size or not await self._same_sha(obj.key, copy):
            await self.replicate_again(obj.key, info.size, "backup_mismatch")
        elif obj.backup_state is not BackupState.COMPLETED:
            await self.catalog.backup_found({obj.key: BackupState.COMPLETED})
            self.found("backup_confirmed", obj.key)

    async def _in_flight(self, key: str) -> bool:
        return await self.redis.zscore(keys.REPLICATION_PENDING, key) is not None

    async def _head(self, key: str) -> ObjectInfo | None:
        try:
            return await self.backup.head(key)
        except ObjectNotFound:
            return None

    async def _same_sha(self, key: str, copy: ObjectInfo) -> bool:
        if not self.settings.audit_deep and copy.sha256 is None:
            return True  # nothing cheap to compare against; --deep reads both sides
        expected = await self.primary.sha256(key)
        actual = copy.sha256 if copy.sha256 and not self.settings.audit_deep else None
        return expected == (actual or await self.backup.sha256(key))

    async def replicate_again(self, key: str, size: int, kind: str) -> None:
        """Put one object back on the replication log (its catalog state: pending again)."""
        await self.catalog.backup_found({key: BackupState.PENDING})
        async with self.redis.pipeline(transaction=True) as pipe:
            replication.append(pipe, {key: size}, self.tickets.retention_s)
            await pipe.execute()
        self.found(kind, key)


def epoch() -> datetime:
    """The start of time, as the catalog stores it (a first pass looks at everything)."""
    return datetime.fromtimestamp(0, tz=UTC)
