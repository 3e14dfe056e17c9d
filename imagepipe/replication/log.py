"""(4) The replication log: append at upload and at indexing; claim, ack, fail in the replicator.

Removals of a deleted photo's objects travel on the same log (entries with ``op`` delete,
their own pending set `keys.DELETION_PENDING`): claimed, retried and reclaimed like copies.

A Redis stream with one consumer group (every replicator process is a consumer), a sorted
set of what is still pending (its oldest score is the replication lag) and, per photo, a
hash of its objects' backup states that lives as long as its ticket (polls read it). The
durable backup state of every object is the catalog's. Entries are acknowledged only after
a verified copy, so a replicator that dies leaves its entries to be reclaimed by another.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from imagepipe import keys
from imagepipe.models import BackupState, Ticket

REPLICATION_TARGET_S = 15 * 60  # S3 Replication Time Control's promise: 99.99 % within this
COPY, DELETE = "copy", "delete"


@dataclass(frozen=True)
class Entry:
    """One claimed log entry: copy this storage key to backup, or remove it from both."""

    entry_id: str
    key: str
    op: str = COPY


@dataclass(frozen=True)
class Backlog:
    """How far behind backup is."""

    pending: int
    pending_bytes: int
    oldest_age_s: float
    past_target: int  # pending for longer than the 15-minute replication target


def append(pipe: Pipeline, objects: Mapping[str, int], retention_s: int) -> None:
    """Queue these objects (key -> size in bytes) for backup inside the caller's transaction.

    Each photo's objects are also noted `pending` in its backup hash, kept ``retention_s``
    (as long as its ticket), which ticket polls read.
    """
    if not objects:
        return
    stamp = time.time()
    for key in objects:  # one log entry per object: each is claimed and copied on its own
        pipe.xadd(keys.REPLICATION_STREAM, {"key": key})
    # the bookkeeping goes in one command per structure, not one per object
    pipe.zadd(keys.REPLICATION_PENDING, dict.fromkeys(objects, stamp), nx=True)
    pipe.hset(keys.REPLICATION_PENDING_BYTES, mapping={k: str(size) for k, size in objects.items()})
    for photo_id, photo_keys in _by_photo(objects).items():
        pending = dict.fromkeys(photo_keys, BackupState.PENDING.value)
        note_backup(pipe, photo_id, pending, retention_s)


def append_removals(pipe: Pipeline, object_keys: Iterable[str], since: float) -> None:
    """Queue the removal of these objects from primary and backup (a deletion under way
    since ``since``: what the oldest-pending gauge measures from)."""
    listed = list(object_keys)
    for key in listed:
        pipe.xadd(keys.REPLICATION_STREAM, {"key": key, "op": DELETE})
    if listed:
        pipe.zadd(keys.DELETION_PENDING, dict.fromkeys(listed, since), nx=True)


def _by_photo(object_keys: Iterable[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key in object_keys:
        found.setdefault(keys.photo_of(key), []).append(key)
    return found


def note_backup(pipe: Pipeline, photo_id: str, states: Mapping[str, str], ttl_s: int) -> None:
    """Set objects' states in the photo's backup hash (made here, or before, for ``ttl_s``)."""
    key = keys.photo_backup(photo_id)
    pipe.hset(key, mapping=dict(states))
    pipe.expire(key, ttl_s, nx=True)  # made here or before: it lives as long as the ticket


class ReplicationLog:
    """The consumer side of the log, plus read-only views of replica state."""

    def __init__(self, redis: Redis, retention_s: int) -> None:
        self.redis = redis
        self.retention_s = retention_s  # of a photo's backup hash: its ticket's retention

    async def ensure_group(self) -> None:
        """Create the stream and its consumer group once (safe to call from every process)."""
        try:
            await self.redis.xgroup_create(
                keys.REPLICATION_STREAM, keys.REPLICATION_GROUP, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def claim(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """New entries for this consumer (blocks up to block_ms when there are none)."""
        reply = await self.redis.xreadgroup(
            keys.REPLICATION_GROUP,
            consumer,
            {keys.REPLICATION_STREAM: ">"},
            count=count,
            block=block_ms,
        )
        return [_entry(entry_id, fields) for _, batch in reply or [] for entry_id, fields in batch]

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Entries another (dead) consumer held for longer than min_idle_ms."""
        reply = await self.redis.xautoclaim(
            keys.REPLICATION_STREAM,
            keys.REPLICATION_GROUP,
            consumer,
            min_idle_time=min_idle_ms,
            start_id="0-0",
            count=count,
        )
        return [_entry(entry_id, fields) for entry_id, fields in reply[1] if fields]

    async def keep_alive(self, consumer: str, entry: Entry) -> None:
        """Reset the entry's idle time, so a live but retrying owner is not robbed of it."""
        await self.redis.xclaim(
            keys.REPLICATION_STREAM,
            keys.REPLICATION_GROUP,
            consumer,
            min_idle_time=0,
            message_ids=[entry.entry_id],
            justid=True,
        )

    async def complete(self, entry: Entry) -> None:
        """The copy is verified: acknowledge and mark the object completed."""
        await self._finish(entry, BackupState.COMPLETED, None)

    async def fail(self, entry: Entry, reason: str) -> None:
        """A permanent failure: acknowledge and leave `failed(reason)` for the audit to retry."""
        await self._finish(entry, BackupState.FAILED, reason)

    async def finish_removal(self, entry: Entry) -> None:
        """A removal is done (or failed for good, for the audit to retry): acknowledge it."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.DELETION_PENDING, entry.key)
            pipe.xack(keys.REPLICATION_STREAM, keys.REPLICATION_GROUP, entry.entry_id)
            pipe.xdel(keys.REPLICATION_STREAM, entry.entry_id)
            await pipe.execute()

    async def _finish(self, entry: Entry, outcome: BackupState, reason: str | None) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            photo_id = keys.photo_of(entry.key)
            note_backup(pipe, photo_id, {entry.key: outcome.value}, self.retention_s)
            pipe.zrem(keys.REPLICATION_PENDING, entry.key)
            pipe.hdel(keys.REPLICATION_PENDING_BYTES, entry.key)
            pipe.xack(keys.REPLICATION_STREAM, keys.REPLICATION_GROUP, entry.entry_id)
            pipe.xdel(keys.REPLICATION_STREAM, entry.entry_id)
            await pipe.execute()

    async def backup_state(self, object_keys: Sequence[str]) -> BackupState:
        """A photo's backup state while its ticket lives: completed only when every one of
        its objects is, failed when one failed."""
        if not object_keys:
            return BackupState.PENDING
        photo_id = keys.photo_of(object_keys[0])
        lookup = self.redis.hmget(keys.photo_backup(photo_id), list(object_keys))
        states = await cast(Awaitable[list[bytes | None]], lookup)
        if BackupState.FAILED.value.encode() in states:
            return BackupState.FAILED
        if all(s == BackupState.COMPLETED.value.encode() for s in states):
            return BackupState.COMPLETED
        return BackupState.PENDING

    async def ticket_backup(self, ticket: Ticket) -> BackupState:
        """The backup state of a ticket's photo, as far as its processing has got."""
        backup = await self.backup_state(ticket.object_keys())
        if not ticket.status.terminal and backup is BackupState.COMPLETED:
            backup = BackupState.PENDING  # the original is copied, the derivatives are to come
        return backup

    async def backlog(self) -> Backlog:
        """Pending count and the age of the oldest unreplicated object."""
        return await backlog(self.redis)


async def deletion_backlog(redis: Redis) -> Backlog:
    """Removals not done yet: how many, the oldest deletion's age, how many past target."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.DELETION_PENDING)
        pipe.zrange(keys.DELETION_PENDING, 0, 0, withscores=True)
        pipe.zcount(keys.DELETION_PENDING, "-inf", now - REPLICATION_TARGET_S)
        pending, oldest, past = await pipe.execute()
    age = now - oldest[0][1] if oldest else 0.0
    return Backlog(pending, 0, max(0.0, age), past)


async def backlog(redis: Redis) -> Backlog:
    """How far behind backup is: pending count and bytes, the oldest pending object's age."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zcard(keys.REPLICATION_PENDING)
        pipe.zrange(keys.REPLICATION_PENDING, 0, 0, withscores=True)
        pipe.hvals(keys.REPLICATION_PENDING_BYTES)
        pipe.zcount(keys.REPLICATION_PENDING, "-inf", now - REPLICATION_TARGET_S)
        pending, oldest, sizes, past = await pipe.execute()
    age = now - oldest[0][1] if oldest else 0.0
    return Backlog(pending, sum(int(s) for s in sizes), max(0.0, age), past)


def _entry(entry_id: bytes | str, fields: dict[bytes, bytes]) -> Entry:
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    op = fields.get(b"op", COPY.encode()).decode()
    return Entry(entry_id=ident, key=fields[b"key"].decode(), op=op)
