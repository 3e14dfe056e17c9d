"""The audit: prove that every piece of asynchronous work finished, and repair what did not.

The catalog says what should exist; primary and backup say what does; Redis says what is in
flight. A periodic pass costs what changed, not what the library holds:

    changed    photos whose catalog row changed since the last pass (the watermark)
    stuck      photos accepted long ago and still unprocessed
    backup     objects whose backup copy is not confirmed yet (pending, failed)
    uploads    resumable uploads' bytes whose upload expired or was accepted: removed
    deletions  deletions under way (or due out of the trash): every copy proven gone, or
               the removal queued again (`replication.proof`)
    slices     a rolling few of the library's 4096 id-prefix slices, checked three ways
               (catalog, primary, backup listings): every photo is re-verified within
               `IMAGEPIPE_AUDIT_VERIFY_PERIOD_S`, at a bounded cost per pass

`imagepipe audit --full` checks every slice, listing each store's trees once, in key order
(`replication.listing`: one page and one slice in memory at a time).
What each check repairs is in `replication.checks` (a deleted photo's: `replication.proof`);
orphans found in a slice (an original with no row, anything else with no row, a copy only
backup holds) are repaired or reported; objects a tombstone marks deleted are removed.
Repairs go to the backfill lane and the replication log, so an audit never starves uploads.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis

from imagepipe import keys
from imagepipe.catalog.deletions import DeletionCatalog
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.catalog.rows import ObjectRow, PhotoRow
from imagepipe.catalog.scans import CatalogScans
from imagepipe.config import Settings
from imagepipe.replication.checks import PhotoChecks, derivative_keys, epoch
from imagepipe.replication.deletion import Deletions
from imagepipe.replication.listing import SliceListing
from imagepipe.replication.proof import DeletionProof
from imagepipe.resumable import ResumableStore
from imagepipe.storage import ObjectInfo, ObjectNotFound, Storage
from imagepipe.storage.factory import partial_uploads

Progress = Callable[[int, int], None]  # (done, total)
SLICE_DIGITS = 3
SLICES = 16**SLICE_DIGITS
WATERMARK = "audit"
# rows written by clocks a little behind this one are still seen by the next pass
WATERMARK_OVERLAP = timedelta(seconds=60)
UNCONFIRMED_GRACE = timedelta(minutes=15)  # the replication target: younger ones are in flight
UNCONFIRMED_PER_PASS = 1000
DELETIONS_PER_PASS = 1000


@dataclass
class AuditReport:
    """What one pass found and did."""

    started_at: float = field(default_factory=time.time)
    finished_at: float = 0.0
    full: bool = False
    photos: int = 0  # checked
    objects: int = 0  # checked
    slices: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per part of the pass
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
            "full": self.full,
            "photos": self.photos,
            "objects": self.objects,
            "slices": self.slices,
            "seconds": self.seconds,
            "counts": self.counts(),
            "findings": dict(self.findings),
        }


def slices_for_pass(now: float, interval_s: float, period_s: float) -> list[str]:
    """The id prefixes this pass checks: enough that every one comes round within the period.

    Chosen by the clock, so every replicator agrees and a lost Redis loses no place.
    """
    per_pass = min(SLICES, max(1, math.ceil(SLICES * interval_s / period_s)))
    start = (int(now // interval_s) * per_pass) % SLICES
    return [f"{(start + n) % SLICES:0{SLICE_DIGITS}x}" for n in range(per_pass)]


def all_slices() -> list[str]:
    """Every id prefix: the whole library."""
    return [f"{n:0{SLICE_DIGITS}x}" for n in range(SLICES)]


class Auditor:
    """One audit pass over the catalog, primary, backup and Redis."""

    def __init__(
        self,
        settings: Settings,
        redis: ArqRedis,
        catalog: PhotoCatalog,
        primary: Storage,
        backup: Storage,
        *,
        progress: Progress | None = None,
    ) -> None:
        self.settings, self.redis, self.primary, self.backup = settings, redis, primary, backup
        self.scans = CatalogScans(catalog.engine)
        self.progress = progress or (lambda done, total: None)
        self.report = AuditReport()
        self.checks = PhotoChecks(settings, redis, catalog, primary, backup, self.report.add)
        deletions = Deletions(settings, redis, primary, DeletionCatalog(catalog.engine))
        self.proof = DeletionProof(deletions, redis, backup, self.report.add)
        self.seen: set[str] = set()  # photos checked in this pass
        self.partials = partial_uploads(settings, primary)

    async def run(self, full: bool = False) -> AuditReport:
        """One pass (every slice with ``full``); repairs are enqueued, not awaited."""
        started = datetime.now(tz=UTC)
        self.report.full = full
        since = await self.scans.mark(WATERMARK) or epoch()
        parts: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("changed", lambda: self.changed(since - WATERMARK_OVERLAP)),
            ("stuck", lambda: self.stuck(started)),
            ("unconfirmed", lambda: self.unconfirmed(started)),
            ("uploads", self.expired_uploads),
            ("deletions", self.deletions),
            ("slices", lambda: self.slices(all_slices() if full else self._rolling(), full)),
        ]
        if full:
            parts.append(("temp files", self.find_temp_files))
        for name, part in parts:
            began = time.perf_counter()
            await part()
            self.report.seconds[name] = time.perf_counter() - began
        await self.scans.set_mark(WATERMARK, started)
        self.report.finished_at = time.time()
        await self.publish()
        return self.report

    def _rolling(self) -> list[str]:
        interval, period = self.settings.audit_interval_s, self.settings.audit_verify_period_s
        return slices_for_pass(time.time(), interval, period)

    async def changed(self, since: datetime) -> None:
        """Every photo whose row changed since the watermark."""
        async for row in self.scans.changed_since(since):
            await self._photo_on_primary(row)

    async def stuck(self, now: datetime) -> None:
        """Photos accepted long ago and still not processed (their ticket may be gone)."""
        before = now - timedelta(seconds=self.settings.audit_stuck_after_s)
        async for row in self.scans.stuck(before):
            if row.id not in self.seen:
                await self._photo_on_primary(row)

    async def _photo_on_primary(self, row: PhotoRow) -> None:
        """One photo, its objects looked up one by one (a listing would cost the library)."""
        stored = (await self.scans.objects_of([row.id]))[row.id]
        if row.deleted_at is not None:
            await self._deleted(row.id, stored)
            return
        expected = {row.original_key, keys.manifest(row.id), *(o.key for o in stored)}
        expected |= derivative_keys(row.id, self.settings)
        on_primary = {key: info for key in expected if (info := await self._head(key))}
        await self.checks.photo(row, stored, on_primary)
        self._count(row.id, len(stored))

    async def deletions(self) -> None:
        """Deletions under way or due: each proven, or its removal queued again."""
        due = await self.proof.catalog.due(datetime.now(tz=UTC), DELETIONS_PER_PASS)
        under_way = await self.proof.catalog.unfinished(DELETIONS_PER_PASS)
        for photo_id in dict.fromkeys(d.photo_id for d in [*due, *under_way]):
            if photo_id not in self.seen:
                await self._deleted(photo_id, (await self.scans.objects_of([photo_id]))[photo_id])

    async def _deleted(
        self,
        photo_id: str,
        stored: list[ObjectRow],
        on_primary: dict[str, ObjectInfo] | None = None,
        in_backup: dict[str, ObjectInfo] | None = None,
    ) -> None:
        """A deleted photo: nothing of it left anywhere; its tombstone in backup."""
        await self.proof.photo(photo_id, on_primary, in_backup)
        for obj in stored:  # the tombstone's row: backed up and verified like any object
            info = on_primary.get(obj.key) if on_primary is not None else await self._head(obj.key)
            if info is not None:
                await self.checks.object_backup(obj, info, in_backup)
        self._count(photo_id, len(stored))

    async def _head(self, key: str) -> ObjectInfo | None:
        try:
            return await self.primary.head(key)
        except ObjectNotFound:
            return None

    async def unconfirmed(self, now: datetime) -> None:
        """Objects whose backup copy is not confirmed: long pending, or failed."""
        for obj in await self.scans.unconfirmed(now - UNCONFIRMED_GRACE, UNCONFIRMED_PER_PASS):
            info = await self._head(obj.key)
            if info is not None:
                await self.checks.object_backup(obj, info, None)
                self.report.objects += 1

    async def slices(self, prefixes: list[str], in_order: bool) -> None:
        """Check each slice three ways: catalog, primary listing, backup listing."""
        listings = [SliceListing(store, in_order=in_order) for store in (self.primary, self.backup)]
        try:
            for done, prefix in enumerate(prefixes, 1):
                await self.slice(prefix, *listings)
                self.report.slices += 1
                self.progress(done, len(prefixes))
        finally:
            for listing in listings:
                await listing.close()

    async def slice(self, prefix: str, primary: SliceListing, backup: SliceListing) -> None:
        """Every photo whose id starts with ``prefix``, and every object such ids name."""
        rows = {row.id: row for row in await self.scans.in_slice(prefix)}
        stored = await self.scans.objects_of(list(rows))
        on_primary, in_backup = await primary.take(prefix), await backup.take(prefix)
        for photo_id, row in rows.items():
            if photo_id in self.seen:
                continue
            if row.deleted_at is not None:
                await self._deleted(photo_id, stored[photo_id], on_primary, in_backup)
                continue
            await self.checks.photo(row, stored[photo_id], on_primary, in_backup)
            self._count(photo_id, len(stored[photo_id]))
        await self.orphans(rows.keys(), on_primary, in_backup)

    async def orphans(
        self,
        indexed: Collection[str],
        on_primary: dict[str, ObjectInfo],
        in_backup: dict[str, ObjectInfo],
    ) -> None:
        """Objects whose photo the catalog has no row for: a tombstoned photo's are removed,
        originals are accepted, the rest reported; a tombstone is never an orphan."""
        unindexed = {k: i for k, i in on_primary.items() if keys.photo_of(k) not in indexed}
        only_backup = {
            k: i
            for k, i in in_backup.items()
            if k not in on_primary and keys.photo_of(k) not in indexed
        }
        await self.proof.leftovers(unindexed, only_backup)
        listed = unindexed.keys() | only_backup.keys()
        deleted = {keys.photo_of(k) for k in listed if keys.kind_of(k) == "tombstone"}
        for key, info in unindexed.items():
            if keys.photo_of(key) in deleted:
                continue
            if keys.kind_of(key) == "original":
                await self.checks.unindexed(info)
            else:
                self.report.add("orphan_objects", key)
        for key in only_backup:
            if keys.photo_of(key) not in deleted:
                self.report.add("orphans_in_backup", key)

    def _count(self, photo_id: str, objects: int) -> None:
        self.seen.add(photo_id)
        self.report.photos += 1
        self.report.objects += objects

    async def expired_uploads(self) -> None:
        """Resumable uploads' bytes with no live upload (expired, terminated while a PATCH
        wrote, or accepted by an API that died before it removed them): removed, counted.

        An upload's state is recorded before its bytes are created, so a new one is never
        taken for a dead one."""
        store = ResumableStore(self.redis)
        for upload_id, handle in await self.partials.present():
            upload = await store.get(upload_id)
            if upload is None or upload.ticket_id:
                await self.partials.discard(upload_id, handle)
                self.report.add("expired_uploads_removed", upload_id)

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
            for name in await sweeper(self.settings.audit_stuck_after_s):
                self.report.add("orphan_temp_files_removed", name)

    async def publish(self) -> None:
        """Leave the summary in Redis for /readyz and /metrics."""
        summary: dict[str, float] = dict.fromkeys(FINDING_KINDS, 0)
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
    "manifests_rewritten",
    "originals_unindexed",
    "originals_missing",
    "backup_missing",
    "backup_mismatch",
    "backup_confirmed",
    "replication_failed_retried",
    "orphan_temp_files",
    "orphan_temp_files_removed",
    "expired_uploads_removed",
    "orphan_objects",
    "orphans_in_backup",
    "unprocessable_originals",
    "deletions_started",
    "deletion_requeued",
    "deleted_objects_reappeared",
    "deletions_proven",
    "tombstones_rewritten",
)


async def audit_once(
    settings: Settings, progress: Progress | None = None, full: bool = False
) -> AuditReport:
    """Connect, run one pass, disconnect (for `imagepipe audit` and tests)."""
    from imagepipe.catalog.engine import create_engine
    from imagepipe.connections import connect
    from imagepipe.storage.factory import backup_storage, primary_storage

    redis, engine = await connect(settings), create_engine(settings)
    primary, backup = primary_storage(settings), backup_storage(settings)
    try:
        catalog = PhotoCatalog(engine)
        return await Auditor(settings, redis, catalog, primary, backup, progress=progress).run(full)
    finally:
        await backup.close()
        await primary.close()
        await engine.dispose()
        await redis.aclose()
