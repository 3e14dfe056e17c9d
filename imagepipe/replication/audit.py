"""The audit: prove that every piece of asynchronous work finished, and repair what did not.

It walks **primary storage, not Redis** (the original is the source of truth), so it repairs
what Redis forgot, for example after a crash inside the AOF's last second or a restore from
an older snapshot:

    original, no ticket and not fully processed   -> its ticket again (the id the client
                                                     holds, within the retention; else a
                                                     new one), processing re-enqueued
    complete photo, its ticket or gallery entry    -> put back (replication/rebuild.py)
      gone
    completed ticket but derivatives missing       -> new ticket, processing re-enqueued
    ticket stuck queued/processing past a deadline -> its processing re-enqueued
    object missing from backup, or size/sha differs -> back onto the replication log
    backup copy sound, its state not `completed`   -> state `completed` again
    replication entry `failed(reason)`             -> back onto the replication log
    temp files, derivatives without an original    -> reported as orphans; temp files
                                                     superseded or long idle, removed

Repairs go to the backfill lane, so an audit never starves new uploads.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from imagepipe import formats, keys, queue
from imagepipe.api.accept import accept
from imagepipe.api.ingest import StoredOriginal
from imagepipe.config import Settings
from imagepipe.errors import NotFound
from imagepipe.ids import new_ticket_id, ticket_id_for
from imagepipe.imaging.decoding import ImageRejected
from imagepipe.imaging.probe import probe
from imagepipe.models import BackupState, ReplicaState, Ticket, TicketStatus
from imagepipe.replication import log as replication
from imagepipe.replication.rebuild import Rebuild
from imagepipe.storage import ObjectInfo, ObjectNotFound, Storage
from imagepipe.tickets import TicketStore

Progress = Callable[[int, int], None]  # (done, total)
ACTIVE_JOB = {JobStatus.queued, JobStatus.deferred, JobStatus.in_progress}


@dataclass
class AuditReport:
    """What one pass found and did."""

    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    photos: int = 0
    objects: int = 0
    findings: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, kind: str, subject: str) -> None:
        """Record one finding (kind, and the key or id it concerns)."""
        self.findings[kind].append(subject)

    def counts(self) -> dict[str, int]:
        """Findings per kind."""
        return {kind: len(subjects) for kind, subjects in sorted(self.findings.items())}

    def to_json(self) -> dict[str, object]:
        """The whole report, for `imagepipe audit --json`."""
        return {
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "photos": self.photos,
            "objects": self.objects,
            "counts": self.counts(),
            "findings": dict(self.findings),
        }


@dataclass
class PhotoObjects:
    """What primary holds for one photo."""

    original: ObjectInfo | None = None
    derivatives: set[str] = field(default_factory=set)  # storage keys
    manifest: ObjectInfo | None = None


class Auditor:
    """One audit pass over primary, Redis and backup."""

    def __init__(
        self,
        settings: Settings,
        redis: ArqRedis,
        primary: Storage,
        backup: Storage,
        *,
        stuck_after_s: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings, self.redis = settings, redis
        self.primary, self.backup = primary, backup
        self.tickets = TicketStore(redis, settings.ticket_retention_s)
        self.stuck_after_s = stuck_after_s or settings.audit_stuck_after_s
        self.progress = progress or (lambda done, total: None)
        self.report = AuditReport()
        self.replicas = replication.ReplicationLog(redis)
        self.rebuild = Rebuild(redis, primary, self.tickets, self.report.add)

    async def run(self) -> AuditReport:
        """Check everything once; repairs are enqueued, not awaited."""
        objects = [info async for info in self.primary.list()]
        photos = group_by_photo(objects)
        self.report.photos, self.report.objects = len(photos), len(objects)
        total, done = len(photos) + len(objects), 0
        for photo_id, held in photos.items():
            await self.check_photo(photo_id, held)
            done += 1
            self.progress(done, total)
        states = await self.replicas.states()
        await self.retry_failed_replicas(states)  # first: these are pending again, not "missing"
        pending, sound = await self.pending_keys(), []
        for info in objects:
            if await self.check_backup(info, pending) and not _completed(states.get(info.key)):
                sound.append(info.key)
            done += 1
            self.progress(done, total)
        await self.confirm(sound)
        await self.find_temp_files()
        self.report.finished_at = time.time()
        await self.publish()
        return self.report

    # -- processing ------------------------------------------------------------------------

    async def check_photo(self, photo_id: str, held: PhotoObjects) -> None:
        """An original's processing must have finished, with every size on primary."""
        if held.original is None:
            self.report.add("orphan_derivatives", photo_id)
            return
        ticket = await self._ticket(photo_id)
        complete = derivative_keys(photo_id, self.settings) <= held.derivatives
        if ticket is None or ticket.status is TicketStatus.COMPLETED:
            if held.manifest is None or not complete:
                await self.reprocess(held.original, ticket)
            else:
                await self.rebuild.photo(photo_id, held.manifest, ticket)
        elif not ticket.status.terminal and time.time() - ticket.updated_at > self.stuck_after_s:
            await self.requeue_stuck(ticket)

    async def _ticket(self, photo_id: str) -> Ticket | None:
        ticket_id = await self.tickets.ticket_for_photo(photo_id)
        if ticket_id is None:
            return None
        try:
            return await self.tickets.get(ticket_id)
        except NotFound:
            return None

    async def reprocess(self, original: ObjectInfo, ticket: Ticket | None) -> None:
        """Give the original a ticket again and queue its processing on the backfill lane."""
        photo_id = keys.photo_of(original.key)
        try:
            data = await self.primary.read(original.key)
            found = probe(data, self.settings.formats, self.settings.max_pixels, True)
        except (ObjectNotFound, ImageRejected) as exc:
            self.report.add("unprocessable_originals", f"{original.key}: {exc}")
            return
        info = ObjectInfo(original.key, len(data), hashlib.sha256(data).hexdigest())
        stored = StoredOriginal(photo_id=photo_id, key=original.key, info=info, probe=found)
        ticket_id = self._reissued_ticket_id(original) if ticket is None else new_ticket_id()
        await accept(
            self.redis, self.tickets, stored.original(), ticket_id, lane=keys.BACKFILL_QUEUE
        )
        if ticket is None:
            # a run from before the loss may still hold this job id: its kept result blocks
            # the job accept queued, its finish deletes it. So one under a fresh id as well
            # (it skips a ticket already completed)
            attempt = int(time.time())
            await queue.enqueue_processing(self.redis, ticket_id, attempt, keys.BACKFILL_QUEUE)
        self.report.add(
            "reprocessed_no_ticket" if ticket is None else "reprocessed_missing_derivatives",
            photo_id,
        )

    def _reissued_ticket_id(self, original: ObjectInfo) -> str:
        """The id the client holds while its ticket is within retention; else a new one.

        A ticket that expired normally is not brought back (the original's age is the ticket's).
        """
        if time.time() - original.modified >= self.settings.ticket_retention_s:
            return new_ticket_id()
        secret = self.settings.callback_secret.get_secret_value()
        return ticket_id_for(secret, keys.photo_of(original.key))

    async def requeue_stuck(self, ticket: Ticket) -> None:
        """A ticket that stopped moving: run its processing again unless it is queued now."""
        if await self._processing_active(ticket.id):
            return  # just slow, not stuck
        attempt = int(time.time())  # a fresh job id: the old one may have a kept result
        await queue.enqueue_processing(self.redis, ticket.id, attempt, keys.BACKFILL_QUEUE)
        self.report.add("stuck_tickets_requeued", ticket.id)

    async def _processing_active(self, ticket_id: str) -> bool:
        """Whether the ticket's first processing job is queued or running on either lane."""
        for lane in (keys.UPLOADS_QUEUE, keys.BACKFILL_QUEUE):
            job = Job(keys.process_job_id(ticket_id), self.redis, _queue_name=lane)
            if await job.status() in ACTIVE_JOB:
                return True
        return False

    # -- backup ----------------------------------------------------------------------------

    async def pending_keys(self) -> set[str]:
        """Objects the replicator is still working on (not findings: they are in flight)."""
        raw = await self.redis.zrange(keys.REPLICATION_PENDING, 0, -1)
        return {k.decode() for k in raw}

    async def check_backup(self, info: ObjectInfo, pending: set[str]) -> bool:
        """The backup copy must exist with the same size (and sha256 where it is known).

        True when it does (an object still pending is neither: it is in flight).
        """
        if info.key in pending:
            return False
        try:
            copy = await self.backup.head(info.key)
        except ObjectNotFound:
            await self.replicate_again(info.key, info.size, "backup_missing")
            return False
        if copy.size != info.size or not await self._same_sha(info.key, copy):
            await self.replicate_again(info.key, info.size, "backup_mismatch")
            return False
        return True

    async def confirm(self, object_keys: list[str]) -> None:
        """Sound backup copies whose state Redis lost (or never finished) are `completed`."""
        await self.replicas.confirm(object_keys)
        for key in object_keys:
            self.report.add("backup_state_restored", key)

    async def _same_sha(self, key: str, copy: ObjectInfo) -> bool:
        if not self.settings.audit_deep and copy.sha256 is None:
            return True  # nothing cheap to compare against; --deep reads both sides
        expected = await self.primary.sha256(key)
        actual = copy.sha256 if copy.sha256 and not self.settings.audit_deep else None
        return expected == (actual or await self.backup.sha256(key))

    async def replicate_again(self, key: str, size: int, kind: str) -> None:
        """Put one object back on the replication log."""
        async with self.redis.pipeline(transaction=True) as pipe:
            replication.append(pipe, {key: size})
            await pipe.execute()
        self.report.add(kind, key)

    async def retry_failed_replicas(self, states: dict[str, ReplicaState]) -> None:
        """`failed(reason)` entries get another chance (the cause may be fixed by now)."""
        for key, state in states.items():
            if state.state is BackupState.FAILED:
                size = await self._size_on_primary(key)
                await self.replicate_again(key, size, "replication_failed_retried")

    async def _size_on_primary(self, key: str) -> int:
        try:
            return (await self.primary.head(key)).size
        except ObjectNotFound:
            return 0  # the replicator will find it missing and say so

    async def find_temp_files(self) -> None:
        """Temp files left by a crash mid-write (reported; they hold no acknowledged data).

        Removed once a later write of their key superseded them, or once idle past the
        stuck deadline (a live write touches its temp file far more often).
        """
        finder = getattr(self.primary, "temp_files", None)
        if finder is not None:
            for name in await finder():
                self.report.add("orphan_temp_files", name)
        sweeper = getattr(self.primary, "sweep_temp_files", None)
        if sweeper is not None:
            for name in await sweeper(self.stuck_after_s):
                self.report.add("orphan_temp_files_removed", name)

    async def publish(self) -> None:
        """Leave the summary in Redis for /readyz and /metrics."""
        summary: dict[str, float] = {kind: 0 for kind in FINDING_KINDS}
        summary.update(self.report.counts())
        summary["finished_at"] = self.report.finished_at
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.AUDIT_LAST)
            pipe.hset(keys.AUDIT_LAST, mapping=summary)
            await pipe.execute()


FINDING_KINDS = (
    "reprocessed_no_ticket",
    "reprocessed_missing_derivatives",
    "stuck_tickets_requeued",
    "tickets_restored",
    "gallery_restored",
    "backup_missing",
    "backup_mismatch",
    "backup_state_restored",
    "replication_failed_retried",
    "orphan_temp_files",
    "orphan_temp_files_removed",
    "orphan_derivatives",
    "unprocessable_originals",
)


def derivative_keys(photo_id: str, settings: Settings) -> set[str]:
    """Every derivative the configured ladder makes of a photo, each size in each format.

    So a format added to a size later is made for the photos already processed, too.
    """
    return {
        keys.derivative(photo_id, size.name, formats.extension(fmt))
        for size in settings.sizes
        for fmt in size.encodings
    }


def _completed(state: ReplicaState | None) -> bool:
    return state is not None and state.state is BackupState.COMPLETED


def group_by_photo(objects: list[ObjectInfo]) -> dict[str, PhotoObjects]:
    """Primary's objects, gathered per photo."""
    photos: defaultdict[str, PhotoObjects] = defaultdict(PhotoObjects)
    for info in objects:
        kind = keys.kind_of(info.key)
        if kind is None:
            continue  # not ours to judge
        held = photos[keys.photo_of(info.key)]
        if kind == "original":
            held.original = info
        elif kind == "derivative":
            held.derivatives.add(info.key)
        else:
            held.manifest = info
    return dict(photos)


async def audit_once(settings: Settings, progress: Progress | None = None) -> AuditReport:
    """Connect, run one pass, disconnect (for `imagepipe audit` and tests)."""
    from imagepipe.connections import connect
    from imagepipe.storage.factory import backup_storage, primary_storage

    redis = await connect(settings)
    primary, backup = primary_storage(settings), backup_storage(settings)
    try:
        return await Auditor(settings, redis, primary, backup, progress=progress).run()
    finally:
        await backup.close()
        await primary.close()
        await redis.aclose()
