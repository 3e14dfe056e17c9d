"""One contract suite run over every storage backend, then each backend's own edges."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from imagepipe.config import Settings
from imagepipe.stack.servers import EmbeddedS3
from imagepipe.storage import filesystem, s3
from imagepipe.storage.base import (
    CHUNK_SIZE,
    ObjectExists,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageFull,
    StoragePermissionDenied,
)
from imagepipe.storage.factory import backup_storage, primary_storage
from imagepipe.storage.filesystem import FilesystemStorage
from imagepipe.storage.memory import MemoryStorage
from imagepipe.storage.s3 import S3Storage, translate_error
from tests.conftest import SECRETS, free_port

MiB = 1024 * 1024


def s3_store(endpoint: str, bucket: str) -> S3Storage:
    """A store on the session's moto server."""
    return S3Storage(bucket, endpoint, "us-east-1", "test", "test", 2000, 10000)


@pytest.fixture(params=["filesystem", "s3", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    """Each backend in turn, empty."""
    backend: Storage
    if request.param == "filesystem":
        backend = FilesystemStorage(tmp_path / "primary")
    elif request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        backend = s3_store(endpoint, request.getfixturevalue("s3_bucket"))
    else:
        backend = MemoryStorage()
    yield backend
    await backend.close()


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    """data as an async stream of `size`-byte chunks."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def failing(error: BaseException) -> AsyncIterator[bytes]:
    """Two chunks (more than one write batch), then the error: an upload that dies midway."""
    yield b"x" * 300_000
    yield b"y" * 300_000
    raise error


async def keys(store: Storage, prefix: str = "") -> list[str]:
    """Every key under prefix, in the order the store lists them."""
    return [info.key async for info in store.list(prefix)]


def sha(data: bytes) -> str:
    """Hex sha256 of data."""
    return hashlib.sha256(data).hexdigest()


# -- the contract --------------------------------------------------------------------------


async def test_put_reports_size_and_sha256(store: Storage) -> None:
    info = await store.put("originals/p1.jpg", chunked(b"hello world", 4))
    assert (info.key, info.size, info.sha256) == ("originals/p1.jpg", 11, sha(b"hello world"))


async def test_read_back_equals_what_was_put(store: Storage) -> None:
    await store.put_bytes("manifests/p1.json", b'{"a": 1}')
    assert await store.read("manifests/p1.json") == b'{"a": 1}'
    assert (await store.head("manifests/p1.json")).size == 8


async def test_overwrite_leaves_one_correct_object(store: Storage) -> None:
    await store.put_bytes("originals/p1.jpg", b"first version, longer")
    info = await store.put_bytes("originals/p1.jpg", b"second")
    assert info.sha256 == sha(b"second")
    assert await store.read("originals/p1.jpg") == b"second"
    assert await keys(store) == ["originals/p1.jpg"]


@pytest.mark.parametrize("create_only", [False, True], ids=["put", "create-only"])
@pytest.mark.parametrize(
    "error",
    [RuntimeError("client went away"), OSError(errno.ENOSPC, "not ours"), ObjectNotFound("src")],
    ids=["runtime", "oserror", "storage-error"],
)
async def test_failed_put_leaves_nothing_and_reraises(
    store: Storage, error: Exception, create_only: bool
) -> None:
    with pytest.raises(type(error)) as raised:
        await store.put("originals/p1.jpg", failing(error), create_only=create_only)
    assert raised.value is error  # unchanged: the iterable's error is not the store's
    assert not await store.exists("originals/p1.jpg")
    assert await keys(store) == []
    if isinstance(store, FilesystemStorage):
        assert await store.temp_files() == []


async def test_failed_overwrite_keeps_the_old_object(store: Storage) -> None:
    await store.put_bytes("originals/p1.jpg", b"old")
    with pytest.raises(RuntimeError):
        await store.put("originals/p1.jpg", failing(RuntimeError("boom")))
    assert await store.read("originals/p1.jpg") == b"old"


async def test_create_only_put_makes_a_new_object(store: Storage) -> None:
    info = await store.put("originals/p1.jpg", chunked(b"hello world", 4), create_only=True)
    assert (info.size, info.sha256) == (11, sha(b"hello world"))
    assert await store.read("originals/p1.jpg") == b"hello world"


async def test_create_only_put_never_rewrites_an_object(store: Storage) -> None:
    await store.put_bytes("originals/p1.jpg", b"first")
    with pytest.raises(ObjectExists) as raised:
        await store.put("originals/p1.jpg", chunked(b"second", 2), create_only=True)
    assert raised.value.key == "originals/p1.jpg"
    # what was offered, so a caller can tell a retry of the same bytes from a collision
    assert (raised.value.offered.size, raised.value.offered.sha256) == (6, sha(b"second"))
    with pytest.raises(ObjectExists):
        await store.put_bytes("originals/p1.jpg", b"third", create_only=True)
    assert await store.read("originals/p1.jpg") == b"first"
    assert await keys(store) == ["originals/p1.jpg"]
    if isinstance(store, FilesystemStorage):
        assert await store.temp_files() == []


async def test_missing_key_is_object_not_found(store: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        await store.head("originals/nope.jpg")
    with pytest.raises(ObjectNotFound):
        await store.read("originals/nope.jpg")
    assert not await store.exists("originals/nope.jpg")


async def test_delete_is_idempotent(store: Storage) -> None:
    await store.put_bytes("originals/p1.jpg", b"x")
    await store.delete("originals/p1.jpg")
    await store.delete("originals/p1.jpg")
    await store.delete("never/was.jpg")
    assert not await store.exists("originals/p1.jpg")


async def test_list_by_prefix_in_key_order(store: Storage) -> None:
    # "a-c" < "a/b" < "ab" as strings, though a folder walk would meet "a/" first.
    for key in ["b", "ab", "a/c/d", "a/b", "a-c", "derivatives/p1/s.jpg"]:
        await store.put_bytes(key, key.encode())
    assert await keys(store) == ["a-c", "a/b", "a/c/d", "ab", "b", "derivatives/p1/s.jpg"]
    assert await keys(store, "a") == ["a-c", "a/b", "a/c/d", "ab"]
    assert await keys(store, "a/") == ["a/b", "a/c/d"]
    assert await keys(store, "a/c") == ["a/c/d"]
    assert await keys(store, "zzz") == []


async def test_list_reports_sizes(store: Storage) -> None:
    await store.put_bytes("derivatives/p1/t.jpg", b"12345")
    [info] = [i async for i in store.list("derivatives/")]
    assert (info.key, info.size) == ("derivatives/p1/t.jpg", 5)
    assert info.modified > 0


async def test_multi_chunk_body_streams_intact(store: Storage) -> None:
    data = os.urandom(5 * MiB + 123)
    info = await store.put("originals/big.png", chunked(data, 70_000))
    assert (info.size, info.sha256) == (len(data), sha(data))
    pieces = [chunk async for chunk in store.open("originals/big.png")]
    assert len(pieces) > 1
    assert all(len(piece) <= CHUNK_SIZE for piece in pieces)
    assert b"".join(pieces) == data


async def test_sha256_helper_hashes_stored_bytes(store: Storage) -> None:
    data = os.urandom(3 * MiB)
    await store.put_bytes("originals/p2.webp", data)
    assert await store.sha256("originals/p2.webp") == sha(data)


async def test_check_passes_on_a_reachable_store(store: Storage) -> None:
    await store.check()


# -- filesystem ----------------------------------------------------------------------------

BAD_KEYS = ["", "/etc/passwd", "../x", "a/../b", "a/..", "a\\b", "a\x00b", "a//b", "a/", "./a"]


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_filesystem_rejects_bad_keys(tmp_path: Path, key: str) -> None:
    store = FilesystemStorage(tmp_path)
    with pytest.raises(ValueError, match="bad storage key"):
        await store.put_bytes(key, b"x")
    with pytest.raises(ValueError, match="bad storage key"):
        await store.head(key)
    with pytest.raises(ValueError, match="bad storage key"):
        await store.delete(key)


async def test_filesystem_temp_file_sits_beside_the_key(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path)
    seen: list[str] = []

    async def peeking() -> AsyncIterator[bytes]:
        yield b"first"
        seen.extend(await store.temp_files())  # mid-put: the temp file exists now
        yield b"second"

    await store.put("derivatives/p1/m.jpg", peeking())
    [temp] = seen
    assert re.fullmatch(r"derivatives/p1/\.m\.jpg\.[0-9a-f]+\.tmp", temp)
    assert await store.temp_files() == []
    assert (tmp_path / "derivatives/p1/m.jpg").read_bytes() == b"firstsecond"


async def test_filesystem_list_hides_leftover_temp_files(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path)
    await store.put_bytes("originals/p1.jpg", b"x")
    (tmp_path / "originals/.p2.jpg.abc123.tmp").write_bytes(b"partial")
    assert await keys(store) == ["originals/p1.jpg"]
    assert await store.temp_files() == ["originals/.p2.jpg.abc123.tmp"]


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every os.fsync from now on, as (file or folder, the path it had at that moment)."""
    seen: list[tuple[str, str]] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        seen.append((kind, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(filesystem.os, "fsync", counting)
    return seen


async def test_filesystem_put_fsyncs_the_file_before_its_rename_and_then_the_folder(
    tmp_path: Path, fsyncs: list[tuple[str, str]]
) -> None:
    store = FilesystemStorage(tmp_path)
    (tmp_path / "originals").mkdir()
    await store.put_bytes("originals/p1.jpg", b"photo")
    [(kind, path), folder] = fsyncs
    # the file is synced under its temp name: durable before the rename makes it visible
    assert kind == "file" and re.fullmatch(
        rf"{re.escape(str(tmp_path))}/originals/\.p1\.jpg\.\w+\.tmp", path
    )
    assert folder == ("folder", f"{tmp_path}/originals")  # and then the rename itself


async def test_filesystem_put_fsyncs_each_new_folder_into_its_parent(
    tmp_path: Path, fsyncs: list[tuple[str, str]]
) -> None:
    await FilesystemStorage(tmp_path).put_bytes("derivatives/p1/m.jpg", b"photo")
    folders = [path for kind, path in fsyncs if kind == "folder"]
    assert folders == [f"{tmp_path}", f"{tmp_path}/derivatives", f"{tmp_path}/derivatives/p1"]
    assert [kind for kind, _ in fsyncs].count("file") == 1


async def test_filesystem_sweep_removes_superseded_and_idle_temp_files_only(
    tmp_path: Path,
) -> None:
    store = FilesystemStorage(tmp_path)
    hour_ago = time.time() - 3600
    for name in ("p1", "p2", "p3"):  # each put killed mid-write an hour ago
        (tmp_path / "originals").mkdir(exist_ok=True)
        temp = tmp_path / f"originals/.{name}.jpg.0123456789abcdef.tmp"
        temp.write_bytes(b"part")
        os.utime(temp, (hour_ago, hour_ago))
    await store.put_bytes("originals/p1.jpg", b"whole")  # a retry finished since
    young = tmp_path / "originals/.p4.jpg.0123456789abcdef.tmp"  # a write still going on
    young.write_bytes(b"part")
    assert await store.sweep_temp_files(idle_s=7200) == ["originals/.p1.jpg.0123456789abcdef.tmp"]
    assert await store.sweep_temp_files(idle_s=60) == [
        "originals/.p2.jpg.0123456789abcdef.tmp",
        "originals/.p3.jpg.0123456789abcdef.tmp",
    ]
    assert await store.temp_files() == ["originals/.p4.jpg.0123456789abcdef.tmp"]
    assert await store.read("originals/p1.jpg") == b"whole"


def full_disk(code: int) -> Callable[[Path], io.BufferedWriter]:
    """A stand-in for filesystem._create whose file fails every write with `code`."""
    real_create = filesystem._create

    class FullFile(io.BufferedWriter):
        def write(self, data: object) -> int:
            raise OSError(code, os.strerror(code))

    def create(tmp: Path) -> io.BufferedWriter:
        return FullFile(real_create(tmp).detach())

    return create


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
async def test_filesystem_full_disk_is_storage_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setattr(filesystem, "_create", full_disk(code))
    store = FilesystemStorage(tmp_path)
    with pytest.raises(StorageFull):
        await store.put("originals/p1.jpg", chunked(b"z" * MiB, 64 * 1024))
    assert await store.temp_files() == []
    assert not await store.exists("originals/p1.jpg")


async def test_filesystem_other_write_errors_are_storage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem, "_create", full_disk(errno.EIO))
    with pytest.raises(StorageError) as raised:
        await FilesystemStorage(tmp_path).put_bytes("originals/p1.jpg", b"x")
    assert type(raised.value) is StorageError


async def test_filesystem_key_under_a_file_is_a_storage_error(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path)
    await store.put_bytes("a", b"x")
    with pytest.raises(StorageError) as raised:
        await store.put_bytes("a/b", b"y")
    assert not isinstance(raised.value, ObjectNotFound)  # a write never reports "not found"
    with pytest.raises(ObjectNotFound):
        await store.head("a/b")


async def test_filesystem_folder_is_not_an_object(tmp_path: Path) -> None:
    store = FilesystemStorage(tmp_path)
    await store.put_bytes("derivatives/p1/t.jpg", b"x")
    assert not await store.exists("derivatives/p1")
    with pytest.raises(ObjectNotFound):
        await store.read("derivatives/p1")


# -- s3 ------------------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    """A botocore ClientError as a response with this code and status would raise."""
    response = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchKey", 404, ObjectNotFound),
        ("404", 404, ObjectNotFound),
        ("NotFound", 404, ObjectNotFound),
        ("AccessDenied", 403, StoragePermissionDenied),
        ("InvalidAccessKeyId", 403, StoragePermissionDenied),
        ("SignatureDoesNotMatch", 403, StoragePermissionDenied),
        ("403", 403, StoragePermissionDenied),
        ("NoSuchBucket", 404, StorageError),
        ("InternalError", 500, StorageError),
        ("SlowDown", 503, StorageError),
    ],
)
def test_s3_client_errors_translate(code: str, status: int, expected: type[Exception]) -> None:
    error = translate_error(client_error(code, status), "originals/p1.jpg")
    assert type(error) is expected
    if expected is not ObjectNotFound:
        assert code in str(error)


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="http://s3.invalid"),
        ConnectTimeoutError(endpoint_url="http://s3.invalid"),
        ReadTimeoutError(endpoint_url="http://s3.invalid"),
    ],
)
def test_s3_connection_errors_are_transient(exc: Exception) -> None:
    error = translate_error(exc, "originals/p1.jpg")
    assert type(error) is StorageError
    assert type(exc).__name__ in str(error)


async def test_s3_head_reports_sha256_from_metadata(s3_endpoint: str, s3_bucket: str) -> None:
    store = s3_store(s3_endpoint, s3_bucket)
    put = await store.put_bytes("originals/p1.jpg", b"abc")
    assert (await store.head("originals/p1.jpg")).sha256 == sha(b"abc")
    assert put.confirmed  # the server's ETag is the MD5 of what it stored
    await store.close()


async def test_s3_head_of_foreign_object_has_no_sha256(s3_endpoint: str, s3_bucket: str) -> None:
    raw = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    raw.put_object(Bucket=s3_bucket, Key="by-hand.txt", Body=b"hi")
    store = s3_store(s3_endpoint, s3_bucket)
    info = await store.head("by-hand.txt")
    assert (info.size, info.sha256) == (2, None)
    await store.close()


async def test_s3_large_body_goes_multipart(
    s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shrink the threshold rather than upload 64 MiB: parts must still be >= 5 MiB.
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 5 * MiB)
    transfer = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    monkeypatch.setattr(s3, "_TRANSFER", transfer)
    store = s3_store(s3_endpoint, s3_bucket)
    data = os.urandom(11 * MiB)
    info = await store.put("originals/huge.png", chunked(data, MiB))
    head = await store.head("originals/huge.png")
    assert info.sha256 == head.sha256 == sha(data)
    assert not info.confirmed  # a multipart ETag is no MD5: the replicator reads it back
    assert await store.sha256("originals/huge.png") == sha(data)
    await store.close()


async def test_s3_ensure_bucket_creates_once(s3_endpoint: str, s3_bucket: str) -> None:
    store = s3_store(s3_endpoint, s3_bucket + "-new")
    await store.ensure_bucket()
    await store.ensure_bucket()  # already there: fine
    await store.put_bytes("k", b"v")
    assert await keys(store) == ["k"]
    await store.close()


async def test_s3_missing_bucket_is_not_object_not_found(s3_endpoint: str) -> None:
    store = s3_store(s3_endpoint, "no-such-bucket-here")
    with pytest.raises(StorageError) as raised:
        await store.put_bytes("k", b"v")
    assert not isinstance(raised.value, ObjectNotFound)
    await store.close()


async def test_s3_unreachable_endpoint_is_storage_error() -> None:
    store = s3_store(f"http://127.0.0.1:{free_port()}", "any")
    with pytest.raises(StorageError, match="EndpointConnectionError") as raised:
        await store.head("originals/p1.jpg")
    assert type(raised.value) is StorageError
    with pytest.raises(StorageError):
        await store.check()
    await store.close()


# -- factory -------------------------------------------------------------------------------


def test_primary_storage_is_the_filesystem_under_primary_root(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, **SECRETS)
    store = primary_storage(settings)
    assert isinstance(store, FilesystemStorage)
    assert store.root == tmp_path / "primary"


async def test_backup_storage_talks_to_the_configured_bucket(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    settings = Settings(
        data_dir=tmp_path, backup_s3_endpoint=s3_endpoint, backup_s3_bucket=s3_bucket, **SECRETS
    )
    store = backup_storage(settings)
    await store.put_bytes("originals/p1.jpg", b"x")
    head = await store.head("originals/p1.jpg")
    assert (head.size, head.sha256) == (1, sha(b"x"))
    await store.close()


def test_backup_storage_needs_an_endpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="BACKUP_S3_ENDPOINT"):
        backup_storage(Settings(data_dir=tmp_path, backup_s3_endpoint=None, **SECRETS))


# -- create-only on S3 servers with and without conditional writes -------------------------


async def test_s3_create_only_uses_if_none_match_where_the_server_honours_it(
    s3_endpoint: str, s3_bucket: str
) -> None:
    store = s3_store(s3_endpoint, s3_bucket)
    assert await store.conditional_writes()  # moto answers 412 to a second If-None-Match: *
    assert await keys(store) == []  # the probe leaves nothing behind
    await store.close()


async def test_s3_create_only_checks_first_where_the_server_ignores_if_none_match(
    tmp_path: Path,
) -> None:
    # rclone serve s3 (the embedded backup) accepts the header and overwrites anyway
    with EmbeddedS3(tmp_path, "bucket", "test", "test-secret") as server:
        store = S3Storage("bucket", server.url, "us-east-1", "test", "test-secret")
        assert not await store.conditional_writes()
        await store.put_bytes("originals/p1.jpg", b"first", create_only=True)
        with pytest.raises(ObjectExists):
            await store.put_bytes("originals/p1.jpg", b"second", create_only=True)
        assert await store.read("originals/p1.jpg") == b"first"
        assert await keys(store) == ["originals/p1.jpg"]
        await store.close()


async def test_s3_create_only_multipart_never_rewrites(
    s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3, "MULTIPART_THRESHOLD", 5 * MiB)
    store = s3_store(s3_endpoint, s3_bucket)
    await store.put_bytes("originals/huge.png", b"first")
    with pytest.raises(ObjectExists):
        await store.put("originals/huge.png", chunked(os.urandom(6 * MiB), MiB), create_only=True)
    assert await store.read("originals/huge.png") == b"first"
    await store.close()
