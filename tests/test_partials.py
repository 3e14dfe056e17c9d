"""Partial uploads on primary storage (`storage.partial`), on a real filesystem and a real S3
server (moto): appends at the acknowledged offset, a dead writer's unacknowledged bytes
dropped, S3's 5 MiB part minimum respected, and nothing left after a discard."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from imagepipe.storage import ObjectExists, StorageError
from imagepipe.storage.filesystem import FilesystemStorage
from imagepipe.storage.partial import (
    PART_BYTES,
    FilesystemPartials,
    PartialUploads,
    S3Partials,
)
from imagepipe.storage.s3 import S3Storage
from tests.test_flow import s3_client

pytestmark = pytest.mark.resumable
DATA = os.urandom(2 * PART_BYTES + 12345)


@pytest.fixture(params=["filesystem", "s3"])
async def partials(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> AsyncIterator[PartialUploads]:
    if request.param == "filesystem":
        yield FilesystemPartials(FilesystemStorage(tmp_path).root)
        return
    store = S3Storage(s3_bucket, s3_endpoint, "us-east-1", "test", "test")
    yield S3Partials(store)
    await store.close()


async def append(partials: PartialUploads, handle: str, offset: int, data: bytes) -> int:
    writer = await partials.writer("abc123", handle, offset)
    try:
        for start in range(0, len(data), 1_000_000):
            await writer.write(data[start : start + 1_000_000])
        return await writer.sync()
    finally:
        await writer.close()


async def whole(partials: PartialUploads, handle: str, length: int) -> bytes:
    await partials.assemble("abc123", handle, length)
    return b"".join([chunk async for chunk in partials.read("abc123", handle, length)])


async def test_small_and_large_appends_across_part_boundaries(partials: PartialUploads) -> None:
    handle = await partials.create("abc123")
    offset = 0
    for size in (1000, 3_000_000, PART_BYTES + 7, 5, len(DATA)):
        piece = DATA[offset : offset + size]
        assert await append(partials, handle, offset, piece) == offset + len(piece)
        offset += len(piece)
    assert offset == len(DATA)
    head = await partials.head("abc123", handle, 1000, 4096)
    assert head is None or head == DATA[:1000]
    assert hashlib.sha256(await whole(partials, handle, len(DATA))).digest() == (
        hashlib.sha256(DATA).digest()
    )
    assert [upload_id for upload_id, _ in await partials.present()] == ["abc123"]
    await partials.discard("abc123", handle)
    assert await partials.present() == []


async def test_a_dead_writers_unacknowledged_bytes_are_dropped(partials: PartialUploads) -> None:
    """A writer that synced past the acknowledged offset and died: the next one writes at
    the acknowledged offset, and the result holds only acknowledged bytes."""
    handle = await partials.create("abc123")
    acknowledged = await append(partials, handle, 0, DATA[: PART_BYTES - 100])
    # synced, but never acknowledged: different bytes, reaching into the next part
    await append(partials, handle, acknowledged, os.urandom(PART_BYTES))
    end = await append(partials, handle, acknowledged, DATA[acknowledged:])
    assert end == len(DATA)
    assert await whole(partials, handle, len(DATA)) == DATA
    await partials.discard("abc123", handle)


async def test_s3_parts_are_at_least_5_mib_but_the_last(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3Storage(s3_bucket, s3_endpoint, "us-east-1", "test", "test")
    partials = S3Partials(store)
    handle = await partials.create("abc123")
    end = 0
    for start in range(0, len(DATA), 700_000):  # small PATCHes, each acknowledged
        end = await append(partials, handle, end, DATA[start : start + 700_000])
    client = s3_client(s3_endpoint)
    parts = client.list_parts(Bucket=s3_bucket, Key="uploads/abc123", UploadId=handle)["Parts"]
    assert [part["Size"] for part in parts] == [PART_BYTES, PART_BYTES]
    assert await whole(partials, handle, len(DATA)) == DATA
    await partials.discard("abc123", handle)
    left = client.list_objects_v2(Bucket=s3_bucket, Prefix="uploads/").get("Contents", [])
    assert left == []
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    await store.close()


async def _chunks(data: bytes, fail: bool = False) -> AsyncIterator[bytes]:
    yield data[: len(data) // 2]
    if fail:
        raise ValueError("refused mid-stream")
    yield data[len(data) // 2 :]


async def test_a_finished_file_is_linked_into_place_not_copied(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path / "primary")
    partials = FilesystemPartials(store.root)
    await partials.create("abc123")
    await append(partials, "", 0, DATA)
    source = partials.local_file("abc123")
    assert source is not None
    with pytest.raises(ValueError, match="refused"):
        await store.put_linked("originals/x.png", _chunks(DATA, fail=True), source)
    assert not await store.exists("originals/x.png")  # refused in the stream: nothing made
    with pytest.raises(StorageError):  # the chunks were not the file's bytes
        await store.put_linked("originals/x.png", _chunks(DATA[:-1]), source)
    info = await store.put_linked("originals/x.png", _chunks(DATA), source)
    assert info.size == len(DATA) and info.sha256 == hashlib.sha256(DATA).hexdigest()
    assert store.path("originals/x.png").stat().st_ino == source.stat().st_ino
    with pytest.raises(ObjectExists):  # create-only, as every original
        await store.put_linked("originals/x.png", _chunks(DATA), source)
    await partials.discard("abc123", "")
    assert await store.read("originals/x.png") == DATA
