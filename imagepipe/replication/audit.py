"""The audit: prove that every piece of asynchronous work finished, and repair what did not.

It walks **primary storage, not Redis** (the original is the source of truth), so it repairs
what Redis forgot, for example after a restore from an older snapshot:

    original, no ticket and not fully processed   -> new ticket, processing re-enqueued
    completed ticket but derivatives missing       -> new ticket, processing re-enqueued
    ticket stuck queued/processing past a deadline -> its processing re-enqueued
    object missing from backup, or size/sha differs -> back onto the replication log
    replication entry `failed(reason)`             -> back onto the replication log
    temp files, derivatives without an original    -> reported as orphans

Repairs go to the backfill lane, so an audit never starves new uploads.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from imagepipe import formats, keys, queue
from imagepipe.api.accept import accept
from imagepipe.api.ingest import StoredOriginal
from imagepipe.config import Settings
from imagepipe.errors import NotFound
from imagepipe.ids import new_ticket_id
from imagepipe.imaging.decoding import ImageRejected
from imagepipe.imaging.probe import probe
from imagepipe.models import ReplicaState, Ticket, TicketStatus
from imagepipe.replication import log as replication
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
    manifest: bool = False


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
        await self.retry_failed_replicas()  # first: these are pending again, not "missing"
        pending = await self.pending_keys()
        for info in objects:
            await self.check_backup(info, pending)
            done += 1
            self.progress(done, total)
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
        complete = held.manifest and derivative_keys(photo_id, self.settings) <= held.derivatives
        if ticket is None or ticket.status is TicketStatus.COMPLETED:
            if not complete:
                await self.reprocess(held.original, "no ticket" if ticket is None else "missing")
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

    async def reprocess(self, original: ObjectInfo, why: str) -> None:
        """Give the original a new ticket and queue it on the backfill lane."""
        photo_id = keys.photo_of(original.key)
        try:
            data = await self.primary.read(original.key)
            found = probe(data, self.settings.formats, self.settings.max_pixels, True)
        except (ObjectNotFound, ImageRejected) as exc:
            self.report.add("unprocessable_originals", f"{original.key}: {exc}")
            return
        info = ObjectInfo(original.key, len(data), hashlib.sha256(data).hexdigest())
        stored = StoredOriginal(photo_id=photo_id, key=original.key, info=info, probe=found)
        await accept(
            self.redis, self.tickets, stored.original(), new_ticket_id(), lane=keys.BACKFILL_QUEUE
        )
        self.report.add(
            "reprocessed_no_ticket" if why == "no ticket" else "reprocessed_missing_derivatives",
            photo_id,
        )

    async def requeue_stuck(self, ticket: Ticket) -> None:
        """A ticket that stopped moving: run its processing again unless it is queued now."""
        for lane in (keys.UPLOADS_QUEUE, keys.BACKFILL_QUEUE):
            job_id = keys.process_job_id(ticket.id)
            job = Job(job_id, self.redis, _queue_name=lane, _deserializer=queue.decode_job)
            if await job.status() in ACTIVE_JOB:
                return  # just slow, not stuck
        attempt = int(time.time())  # a fresh job id: the old one may have a kept result
        await queue.enqueue_processing(self.redis, ticket.id, attempt, keys.BACKFILL_QUEUE)
        self.report.add("stuck_tickets_requeued", ticket.id)

    # -- backup ----------------------------------------------------------------------------

    async def pending_keys(self) -> set[str]:
        """Objects the replicator is still working on (not findings: they are in flight)."""
        raw = await self.redis.zrange(keys.REPLICATION_PENDING, 0, -1)
        return {k.decode() for k in raw}

    async def check_backup(self, info: ObjectInfo, pending: set[str]) -> None:
        """The backup copy must exist with the same size (and sha256 where it is known)."""
        if info.key in pending:
            return
        try:
            copy = await self.backup.head(info.key)
        except ObjectNotFound:
            await self.replicate_again(info.key, info.size, "backup_missing")
            return
        if copy.size != info.size or not await self._same_sha(info.key, copy):
            await self.replicate_again(info.key, info.size, "backup_mismatch")

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

    async def retry_failed_replicas(self) -> None:
        """`failed(reason)` entries get another chance (the cause may be fixed by now)."""
        states = await cast(
            Awaitable[dict[bytes, bytes]], self.redis.hgetall(keys.REPLICATION_STATE)
        )
        for raw_key, raw_state in states.items():
            if ReplicaState.model_validate_json(raw_state).state == "failed":
                key = raw_key.decode()
                size = await self._size_on_primary(key)
                await self.replicate_again(key, size, "replication_failed_retried")

    async def _size_on_primary(self, key: str) -> int:
        try:
            return (await self.primary.head(key)).size
        except ObjectNotFound:
            return 0  # the replicator will find it missing and say so

    async def find_temp_files(self) -> None:
        """Temp files left by a crash mid-write (reported; they hold no acknowledged data)."""
        finder = getattr(self.primary, "temp_files", None)
        if finder is not None:
            for name in await finder():
                self.report.add("orphan_temp_files", name)

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
    "backup_missing",
    "backup_mismatch",
    "replication_failed_retried",
    "orphan_temp_files",
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
            held.manifest = True
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
