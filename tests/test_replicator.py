"""The replicator's retry pacing, on the real Valkey log with in-memory stores."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.config import Settings
from imagepipe.models import BackupState
from imagepipe.replication import log as replication
from imagepipe.replication import replicator
from imagepipe.replication.replicator import Replicator, VerificationFailed, copy_verified
from imagepipe.storage import ObjectInfo, StorageError
from imagepipe.storage.memory import MemoryStorage


class FirstPutFails(MemoryStorage):
    """A backup that refuses each key's first copy, as during a short outage."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: list[str] = []

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        if key not in self.refused:
            self.refused.append(key)
            raise StorageError("backup unreachable")
        return await super().put(key, chunks)


@pytest.fixture
def first_retry_soon_then_long(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first backoff is short; every later one far longer than the test waits."""
    waits: Iterator[float] = iter([0.2])
    monkeypatch.setattr(replicator.backoff, "delay", lambda *_, **__: next(waits, 3600.0))


@pytest.mark.usefixtures("first_retry_soon_then_long")
async def test_a_copy_that_succeeds_after_failing_wakes_the_sleeping_retries(
    settings: Settings, redis: Redis, catalog: PhotoCatalog
) -> None:
    primary, backup = MemoryStorage(), FirstPutFails()
    for key in ("originals/a.jpg", "originals/b.jpg"):
        await primary.put_bytes(key, key.encode())
    async with redis.pipeline(transaction=True) as pipe:
        replication.append(pipe, {"originals/a.jpg": 17, "originals/b.jpg": 17}, 60)
        await pipe.execute()
    worker = Replicator(settings, redis, primary, backup, catalog, consumer="test")
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(30):  # the second key's own backoff is an hour
            while await redis.zcard(keys.REPLICATION_PENDING):  # noqa: ASYNC110 (polls Redis)
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert len(backup.refused) == 2
    log = replication.ReplicationLog(redis, 60)
    for key in ("originals/a.jpg", "originals/b.jpg"):
        assert await log.backup_state([key]) is BackupState.COMPLETED


class Corrupting(MemoryStorage):
    """A backup that stores a flipped byte, and vouches for it only if told to."""

    def __init__(self, confirms: bool) -> None:
        super().__init__()
        self.confirms = confirms
        self.reads = 0

    async def put(self, key: str, chunks: AsyncIterable[bytes]) -> ObjectInfo:
        data = b"".join([chunk async for chunk in chunks])
        await super().put(key, _one(b"\x00" + data[1:]))
        return ObjectInfo(key, len(data), hashlib.sha256(data).hexdigest(), confirmed=self.confirms)

    async def sha256(self, key: str) -> str:
        self.reads += 1
        return await super().sha256(key)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_copy_the_store_does_not_vouch_for_is_read_back_and_checked() -> None:
    primary, backup = MemoryStorage(), Corrupting(confirms=False)
    await primary.put_bytes("originals/a.jpg", b"photo bytes")
    with pytest.raises(VerificationFailed):
        await copy_verified(primary, backup, "originals/a.jpg")
    assert backup.reads == 1


async def test_a_copy_the_store_vouches_for_is_not_read_back() -> None:
    primary, backup = MemoryStorage(), Corrupting(confirms=True)
    await primary.put_bytes("originals/a.jpg", b"photo bytes")
    assert await copy_verified(primary, backup, "originals/a.jpg") == len(b"photo bytes")
    assert backup.reads == 0


async def test_a_log_that_redis_lost_with_its_group_is_made_again(
    settings: Settings, redis: Redis, catalog: PhotoCatalog
) -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    await primary.put_bytes("originals/a.jpg", b"photo bytes")
    worker = Replicator(settings, redis, primary, backup, catalog, consumer="test")
    running = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(15):  # NOGROUP forever, were the group not made again
            while not await redis.exists(keys.REPLICATION_STREAM):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the group is made: the replicator is claiming
            await redis.flushall()  # Redis lost everything, the consumer group too
            async with redis.pipeline(transaction=True) as pipe:
                replication.append(pipe, {"originals/a.jpg": 11}, 60)  # the audit re-logs it
                await pipe.execute()
            while await redis.zcard(keys.REPLICATION_PENDING):  # noqa: ASYNC110 (polls Redis)
                await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert await backup.read("originals/a.jpg") == b"photo bytes"
