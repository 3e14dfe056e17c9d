"""The replicator role: claim -> copy primary to backup -> verify -> ack, forever.

Backup writes may lag but must always happen. A transient failure (backup down, timeouts)
keeps the entry pending and retries it with capped backoff for as long as it takes; a
permanent one (credentials refused, original gone) becomes `failed(reason)` for the audit to
retry. An entry is acknowledged only after the copy is verified (the server's checksum of
what it stored, else a read-back sha256), so nothing half-written ever counts as done;
entries held by a dead replicator are reclaimed.

A deleted photo's objects travel the same way (entries with op ``delete``): each is removed
from primary, then from backup, each copy's state recorded, retried like a copy. A copy never
resurrects a deleted object: after its verified write it looks for the photo's tombstone
(written before any removal starts) and takes back what it wrote if the tombstone is there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import TypeVar

from arq.connections import ArqRedis
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from imagepipe import backoff, keys, loopwatch, metrics, shutdown
from imagepipe.catalog.closures import ClosureCatalog
from imagepipe.catalog.deletions import COMPLETED, FAILED, PENDING, DeletionCatalog
from imagepipe.catalog.engine import create_engine
from imagepipe.catalog.migrate import require_current_schema
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.config import Settings
from imagepipe.connections import check_redis_policy, connect
from imagepipe.errors import CatalogUnavailable, ImagepipeError
from imagepipe.models import BackupState
from imagepipe.replication.audit import Auditor
from imagepipe.replication.deletion import Deletions, Sweeper
from imagepipe.replication.gauges import refresh_system_gauges
from imagepipe.replication.log import DELETE, Entry, ReplicationLog
from imagepipe.storage import ObjectNotFound, Storage, StorageError, StoragePermissionDenied
from imagepipe.storage.factory import backup_storage, primary_storage

log = logging.getLogger(__name__)
T = TypeVar("T")
Wait = Callable[[Entry, int, str], Awaitable[None]]  # (entry, attempt, reason): back off
CLAIM_BLOCK_MS = 1000
GAUGE_REFRESH_S = 5.0
RECLAIM_EVERY_S = 10.0
SMALL_COPY_BYTES = 8 * 2**20  # copies up to this size are read whole (times the concurrency)
# removals waiting out a backoff (backup down) give up their slot, so the removals behind
# them still clear primary; at most this many times the concurrency wait at once
WAITING_REMOVALS_PER_SLOT = 15


class VerificationFailed(StorageError):
    """The backup copy does not match the original (transient: copy again)."""


async def copy_verified(primary: Storage, backup: Storage, key: str) -> int:
    """Copy one object and prove the backup holds the same bytes; the bytes copied.

    The proof is the store's own when it gives one (S3 checks the PUT's Content-MD5 and
    answers with the MD5 of what it stored); otherwise the copy is read back and hashed.
    """
    whole = await primary.read_small(key, SMALL_COPY_BYTES)
    if whole is not None:  # read in one go, hashed and sent in one thread hop
        written = await backup.put_bytes(key, whole)
    else:
        written = await backup.put(key, primary.open(key))
    if written.confirmed:
        return written.size
    copy_sha = await backup.sha256(key)
    if copy_sha != written.sha256:
        raise VerificationFailed(f"backup sha256 {copy_sha} != original {written.sha256}")
    return written.size


class Replicator:
    """One consumer of the replication log."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        primary: Storage,
        backup: Storage,
        catalog: PhotoCatalog,
        consumer: str | None = None,
    ) -> None:
        self.settings = settings
        self.log = ReplicationLog(redis, settings.ticket_retention_s)
        self.catalog = catalog
        self.removals = DeletionCatalog(catalog.engine)
        self.primary, self.backup = primary, backup
        self.consumer = consumer or consumer_name()
        self.tasks: set[asyncio.Task[None]] = set()
        self.waiting_removals = 0  # removal tasks sleeping out a backoff
        self.slot_freed = asyncio.Event()
        self.next_reclaim = 0.0
        # set (and replaced) when a copy succeeds after failing: backup is back, so every
        # entry sleeping out its backoff retries now instead of up to a backoff cap later
        self.recovered = asyncio.Event()

    async def run(self) -> None:
        """Claim and copy until cancelled."""
        await self.log.ensure_group()
        while True:
            try:
                await self._claim_more()
            except RedisError as exc:
                log.warning("replication log unreachable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                if "NOGROUP" in str(exc):  # Redis lost the log, group and all: make them again
                    with suppress(RedisError):
                        await self.log.ensure_group()

    async def _claim_more(self) -> None:
        """One round: reclaim orphaned entries now and then, then fill free copy slots."""
        loop = asyncio.get_running_loop()
        if loop.time() >= self.next_reclaim:
            await self._start_all(
                await self.log.reclaim(
                    self.consumer, self.settings.replication_claim_idle_ms, count=100
                )
            )
            self.next_reclaim = loop.time() + RECLAIM_EVERY_S
        free = self._free_slots()
        if free <= 0:
            self.slot_freed.clear()
            await self.slot_freed.wait()
            return
        await self._start_all(await self.log.claim(self.consumer, free, CLAIM_BLOCK_MS))

    async def drain(self) -> None:
        """Wait for every copy in flight (tests and graceful shutdown)."""
        if self.tasks:
            await asyncio.wait(self.tasks)

    async def _start_all(self, entries: list[Entry]) -> None:
        for entry in entries:
            task = asyncio.create_task(self.replicate(entry))
            self.tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.slot_freed.set()

    def _free_slots(self) -> int:
        """Copy slots free: a removal sleeping out its backoff holds none (up to a bound)."""
        slots = self.settings.replication_concurrency
        waiting = min(self.waiting_removals, slots * WAITING_REMOVALS_PER_SLOT)
        return slots - len(self.tasks) + waiting

    async def replicate(self, entry: Entry) -> None:
        """Copy one entry until it is verified, or fails permanently (or remove it, for a
        deletion's entry)."""
        if entry.op == DELETE:
            await self.remove(entry)
            return
        try:
            copied, attempt = await self._until_done(
                entry, lambda: self._copy(entry), metrics.REPLICATION_COPIES, self._wait_and_retry
            )
        except ObjectNotFound:
            await self._source_missing(entry)
            return
        except StoragePermissionDenied as exc:
            await self._fail(entry, f"access_denied: {exc}")
            return
        metrics.REPLICATION_BYTES.inc(copied)
        log.info("replicated", extra={"key": entry.key, "attempt": attempt})

    async def _until_done(
        self, entry: Entry, once: Callable[[], Awaitable[T]], outcomes: Counter, wait: Wait
    ) -> tuple[T, int]:
        """Run ``once`` until it succeeds: transient failures wait (``wait``) and retry, for
        as long as it takes; a missing source or refused credentials are raised. Its result
        and the attempts it took."""
        attempt = 0
        while True:
            attempt += 1
            try:
                done = await once()
            except (ObjectNotFound, StoragePermissionDenied):
                raise
            except (StorageError, RedisError, CatalogUnavailable) as exc:
                outcomes.labels("retry").inc()
                await wait(entry, attempt, f"{type(exc).__name__}: {exc}")
                continue
            outcomes.labels("completed").inc()
            self._recovered(attempt)
            return done, attempt

    async def _copy(self, entry: Entry) -> int:
        """Copy, verify, record; a copy of a deleted photo's object is taken back."""
        copied = await copy_verified(self.primary, self.backup, entry.key)
        if await self._tombstoned(entry.key):
            await self.backup.delete(entry.key)  # the deletion may have passed backup already
            await self.log.complete(entry)
            return 0
        # the catalog first: an entry is acked only once its durable state says so
        await self.catalog.backup_changed(entry.key, BackupState.COMPLETED, None)
        await self.log.complete(entry)
        if keys.kind_of(entry.key) == "tombstone":  # the last thing a deletion waits for
            await self.removals.finish_if_removed(keys.photo_of(entry.key))
        return copied

    async def _tombstoned(self, key: str) -> bool:
        """Whether ``key`` is an object (not the tombstone) of a photo whose deletion began."""
        if keys.kind_of(key) == "tombstone":
            return False
        return await self.primary.exists(keys.tombstone(keys.photo_of(key)))

    async def _source_missing(self, entry: Entry) -> None:
        """Not on primary: removed by a deletion (done), or lost (failed, for the audit)."""
        try:
            if await self._tombstoned(entry.key):
                await self.log.complete(entry)
                return
        except (StorageError, RedisError) as exc:
            log.warning("could not look for a tombstone (%s)", exc, extra={"key": entry.key})
            return  # left claimed: reclaimed and tried again
        await self._fail(entry, "source_missing: the object is not on primary")

    def _recovered(self, attempt: int) -> None:
        if attempt > 1:
            self.recovered.set()
            self.recovered = asyncio.Event()

    async def remove(self, entry: Entry) -> None:
        """Remove one object of a deleted photo from primary, then backup, until both are
        gone, or one copy fails permanently (`failed(reason)`, for the audit to retry)."""
        left = [("primary", self.primary), ("backup", self.backup)]

        async def once() -> None:
            while left:
                await self._remove_from(*left[0], entry.key)
                left.pop(0)
            await self.log.finish_removal(entry)
            await self.removals.finish_if_removed(keys.photo_of(entry.key))

        try:
            _, attempt = await self._until_done(
                entry, once, metrics.DELETION_REMOVALS, self._removal_backoff
            )
        except StoragePermissionDenied:
            metrics.DELETION_REMOVALS.labels("failed").inc()
            with suppress(RedisError):  # else left claimed: reclaimed and tried again
                await self.log.finish_removal(entry)
            return
        log.info("removed", extra={"key": entry.key, "attempt": attempt})

    async def _removal_backoff(self, entry: Entry, attempt: int, reason: str) -> None:
        """`_wait_and_retry`, its slot lent to the next entry meanwhile."""
        self.waiting_removals += 1
        self.slot_freed.set()
        try:
            await self._wait_and_retry(entry, attempt, reason)
        finally:
            self.waiting_removals -= 1

    async def _remove_from(self, copy: str, store: Storage, key: str) -> None:
        """One copy of one object removed, and its state recorded (failed for good on a
        refusal of our credentials)."""
        try:
            await store.delete(key)
        except StoragePermissionDenied as exc:
            log.error("removal failed: %s", exc, extra={"key": key, "event": copy})
            with suppress(CatalogUnavailable):
                await self.removals.removal_changed(key, copy, FAILED, f"access_denied: {exc}")
            raise
        await self.removals.removal_changed(key, copy, COMPLETED)

    async def _fail(self, entry: Entry, reason: str) -> None:
        metrics.REPLICATION_COPIES.labels("failed").inc()
        log.error("replication failed: %s", reason, extra={"key": entry.key})
        try:
            await self.catalog.backup_changed(entry.key, BackupState.FAILED, reason)
            await self.log.fail(entry, reason)
        except (RedisError, CatalogUnavailable) as exc:
            # left claimed: another try reclaims it once it has been idle long enough
            log.warning("could not record the failure (%s)", exc, extra={"key": entry.key})

    async def _wait_and_retry(self, entry: Entry, attempt: int, reason: str) -> None:
        wait = backoff.delay(attempt, cap_s=self.settings.replication_backoff_cap_s)
        log.warning(
            "replication retry in %.1f s: %s",
            wait,
            reason,
            extra={"key": entry.key, "attempt": attempt},
        )
        with suppress(RedisError, CatalogUnavailable):
            await self.log.keep_alive(self.consumer, entry)  # still ours: don't reclaim it
            # for operators: attempts and the last reason, on the object's catalog row
            if entry.op == DELETE:
                await self.removals.removal_changed(entry.key, "backup", PENDING, reason)
            else:
                await self.catalog.backup_changed(entry.key, BackupState.PENDING, reason)
        with suppress(TimeoutError):
            await asyncio.wait_for(self.recovered.wait(), wait)


async def audit_periodically(
    settings: Settings, redis: ArqRedis, catalog: PhotoCatalog, primary: Storage, backup: Storage
) -> None:
    """Run the audit every interval, on one replicator at a time (a Redis lease decides)."""
    while True:
        await asyncio.sleep(settings.audit_interval_s * random.uniform(0.9, 1.1))
        try:
            lease = int(settings.audit_interval_s * 0.9)
            if await redis.set(keys.AUDIT_LOCK, consumer_name(), nx=True, ex=max(1, lease)):
                report = await Auditor(settings, redis, catalog, primary, backup).run()
                log.info("audit finished: %s", report.counts() or "nothing to repair")
        except (StorageError, RedisError, ImagepipeError) as exc:
            log.warning(
                "audit pass failed (%s); next one in %.0f s", exc, settings.audit_interval_s
            )


async def sweep_periodically(settings: Settings, redis: ArqRedis, sweeper: Sweeper) -> None:
    """Empty the trash that is due and advance account closures, on one replicator at a time."""
    while True:
        await asyncio.sleep(settings.deletion_sweep_s)
        try:
            lease = max(1, int(settings.deletion_sweep_s * 10))  # freed when the round ends
            if await redis.set(keys.DELETION_SWEEP, consumer_name(), nx=True, ex=lease):
                try:
                    await sweeper.sweep()
                finally:
                    await redis.delete(keys.DELETION_SWEEP)
        except (StorageError, RedisError, ImagepipeError) as exc:
            log.warning("deletion sweep failed (%s); next one soon", exc)


def sweeper_for(
    settings: Settings, redis: Redis, primary: Storage, catalog: PhotoCatalog
) -> Sweeper:
    """The sweeper of a replicator (or a test)."""
    deletions = Deletions(settings, redis, primary, DeletionCatalog(catalog.engine))
    return Sweeper(deletions, ClosureCatalog(catalog.engine))


async def refresh_gauges_periodically(redis: ArqRedis) -> None:
    """Keep the system gauges of this process's /metrics fresh."""
    while True:
        with suppress(RedisError):
            await refresh_system_gauges(redis)
        await asyncio.sleep(GAUGE_REFRESH_S)


def consumer_name() -> str:
    """This process's name in the consumer group (and in logs)."""
    return f"{socket.gethostname()}-{os.getpid()}"


async def _main(settings: Settings) -> None:
    redis = await connect(settings)
    await check_redis_policy(redis)
    engine = create_engine(settings)
    await require_current_schema(engine)
    primary, backup = primary_storage(settings), backup_storage(settings)
    catalog = PhotoCatalog(engine)
    replicator = Replicator(settings, redis, primary, backup, catalog)
    metrics.serve(settings.metrics_port, settings.metrics_host)
    helpers = [
        asyncio.create_task(audit_periodically(settings, redis, catalog, primary, backup)),
        asyncio.create_task(refresh_gauges_periodically(redis)),
        asyncio.create_task(
            sweep_periodically(settings, redis, sweeper_for(settings, redis, primary, catalog))
        ),
        asyncio.create_task(loopwatch.watch(settings.loop_stall_ms, "replicator")),
    ]
    runner = asyncio.create_task(replicator.run())

    def stop() -> None:
        runner.cancel()
        shutdown.exit_after(settings.stop_grace_s, "replicator")

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("replicator started", extra={"event": replicator.consumer})
    try:
        await runner
    except asyncio.CancelledError:
        log.info("replicator stopping; unacked entries will be reclaimed")
    finally:
        for task in [*helpers, *replicator.tasks]:
            task.cancel()
        await asyncio.gather(*helpers, *replicator.tasks, return_exceptions=True)
        await backup.close()
        await primary.close()
        await engine.dispose()
        await redis.aclose()


def run_replicator(settings: Settings) -> None:
    """Run the replicator role until SIGTERM/SIGINT."""
    asyncio.run(_main(settings))
