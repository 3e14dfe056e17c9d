"""Partial uploads: a resumable upload's bytes on primary storage until its last one arrives.

Any API process can take an upload's next PATCH, so the bytes live where primary lives:

    filesystem  ``uploads/{id}`` under the primary root: one append-only file. A writer
                truncates it to the acknowledged offset (bytes a dead writer left past it
                were never acknowledged), appends, and fsyncs before the offset moves.
    S3          one multipart upload at ``uploads/{id}``: part n holds bytes
                [(n-1) * PART_BYTES, n * PART_BYTES) (S3 refuses parts under 5 MiB but the
                last); the bytes of the unfinished part are kept durably, before they are
                acknowledged, in the object ``uploads/{id}.tail-{start}``, rewritten longer
                at each sync (a dead writer's longer tail holds the acknowledged bytes as its
                prefix); assembled into ``uploads/{id}`` at the end and read from there.

The caller keeps the acknowledged offset (in Valkey) and passes it in; a writer's `sync`
makes everything written durable and returns the new end, which the caller then records.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

from imagepipe import keys
from imagepipe.storage.base import CHUNK_SIZE, ObjectNotFound, StorageError
from imagepipe.storage.filesystem import _fsync_dir, _make_dirs, _translate
from imagepipe.storage.s3 import S3Storage

P = ParamSpec("P")
T = TypeVar("T")
_WRITE_BATCH = 256 * 1024  # small chunks are batched to this size per thread hop
PART_BYTES = 8 * 1024 * 1024  # every S3 part but the last (S3's least is 5 MiB)


class PartialWriter(ABC):
    """Appends one request's bytes to a partial upload."""

    def __init__(self, offset: int) -> None:
        self.end = offset  # the durable end, once `sync` returned
        self.written = offset  # the end of what was handed to `write`

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Append bytes (durable only after `sync`)."""

    @abstractmethod
    async def sync(self) -> int:
        """Make everything written durable; the new end."""

    @abstractmethod
    async def close(self) -> None:
        """Release the writer (unsynced bytes are not acknowledged and may be lost)."""


class PartialUploads(ABC):
    """Where partial uploads' bytes are kept; ``handle`` is what `create` returned."""

    @abstractmethod
    async def create(self, upload_id: str) -> str:
        """Make an empty partial upload; its handle (kept with the upload's state)."""

    @abstractmethod
    async def writer(self, upload_id: str, handle: str, offset: int) -> PartialWriter:
        """A writer appending at the acknowledged ``offset``."""

    @abstractmethod
    def read(self, upload_id: str, handle: str, length: int) -> AsyncIterator[bytes]:
        """The first ``length`` bytes (a whole upload once `assemble` has run)."""

    @abstractmethod
    async def head(self, upload_id: str, handle: str, offset: int, limit: int) -> bytes | None:
        """The first ``min(offset, limit)`` of ``offset`` acknowledged bytes, or None where
        they cannot be read before the upload is assembled."""

    async def assemble(self, upload_id: str, handle: str, length: int) -> None:  # noqa: B027
        """Make the ``length`` bytes readable as one (nothing to do on a filesystem)."""

    def local_file(self, upload_id: str) -> Path | None:
        """The upload's bytes as one fsynced file on primary's filesystem, where they are."""
        return None

    @abstractmethod
    async def discard(self, upload_id: str, handle: str) -> None:
        """Remove everything the upload left (missing parts are fine)."""

    @abstractmethod
    async def present(self) -> list[tuple[str, str]]:
        """Every partial upload on the store: (upload id, handle)."""


class FilesystemPartials(PartialUploads):
    """One append-only file per upload under ``{root}/uploads/``."""

    def __init__(self, root: Path) -> None:
        self.folder = Path(root) / keys.PARTIAL_UPLOADS.rstrip("/")

    def path(self, upload_id: str) -> Path:
        """The upload's file (ids are made by the server: hex only)."""
        if not (upload_id.isascii() and upload_id.isalnum()):
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.folder / upload_id

    def local_file(self, upload_id: str) -> Path | None:
        """The upload's file: an original can be linked from it."""
        return self.path(upload_id)

    async def create(self, upload_id: str) -> str:
        """An empty file, its folder entry fsynced."""
        await _io(_create_empty, self.path(upload_id))
        return ""

    async def writer(self, upload_id: str, handle: str, offset: int) -> PartialWriter:
        """The file opened for append at ``offset``, cut back to it."""
        file = await _io(_open_at, self.path(upload_id), offset)
        return _FileWriter(file, offset)

    async def read(self, upload_id: str, handle: str, length: int) -> AsyncIterator[bytes]:
        """Stream the first ``length`` bytes."""
        try:
            file = await _io(self.path(upload_id).open, "rb")
        except StorageError as exc:
            raise ObjectNotFound(keys.partial_upload(upload_id)) from exc
        try:
            left = length
            while left > 0 and (chunk := await _io(file.read, min(CHUNK_SIZE, left))):
                left -= len(chunk)
                yield chunk
        finally:
            file.close()

    async def head(self, upload_id: str, handle: str, offset: int, limit: int) -> bytes | None:
        """The file's first bytes."""
        chunks = self.read(upload_id, handle, min(offset, limit))
        return b"".join([chunk async for chunk in chunks])

    async def discard(self, upload_id: str, handle: str) -> None:
        """Unlink the file."""
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path(upload_id).unlink)

    async def present(self) -> list[tuple[str, str]]:
        """The files under ``uploads/``."""
        return [(name, "") for name in await _io(_names, self.folder)]


class _FileWriter(PartialWriter):
    def __init__(self, file: io.BufferedRandom, offset: int) -> None:
        super().__init__(offset)
        self.file, self.pending = file, bytearray()

    async def write(self, data: bytes) -> None:
        self.pending += data
        self.written += len(data)
        if len(self.pending) >= _WRITE_BATCH:
            await self._flush()

    async def sync(self) -> int:
        await self._flush()
        await _io(_fsync, self.file)
        self.end = self.written
        return self.end

    async def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()

    async def _flush(self) -> None:
        data, self.pending = bytes(self.pending), bytearray()
        await _io(self.file.write, data)


async def _io(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Blocking file I/O in a thread; OSError becomes the storage error tree."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        raise _translate(exc, keys.PARTIAL_UPLOADS) from exc


def _create_empty(path: Path) -> None:
    _make_dirs(path.parent)
    with path.open("xb") as file:
        os.fsync(file.fileno())
    _fsync_dir(path.parent)


def _open_at(path: Path, offset: int) -> io.BufferedRandom:
    file = path.open("r+b")
    file.truncate(offset)  # a dead writer's unacknowledged bytes
    file.seek(offset)
    return file


def _fsync(file: io.BufferedRandom) -> None:
    file.flush()
    os.fsync(file.fileno())


def _names(folder: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
    except FileNotFoundError:
        return []


class S3Partials(PartialUploads):
    """Multipart uploads (and their tails) in the primary bucket."""

    def __init__(self, store: S3Storage) -> None:
        self.store = store

    async def create(self, upload_id: str) -> str:
        """A multipart upload; its id is the handle."""
        return await self.store.start_multipart(keys.partial_upload(upload_id))

    async def writer(self, upload_id: str, handle: str, offset: int) -> PartialWriter:
        """Parts from the one ``offset`` falls in; its acknowledged bytes from its tail."""
        start = offset - offset % PART_BYTES
        held = await self.store.read_start(_tail(upload_id, start), offset - start)
        return _PartWriter(self.store, upload_id, handle, start, held)

    async def head(self, upload_id: str, handle: str, offset: int, limit: int) -> bytes | None:
        """The first bytes while they are all in the first part's tail."""
        if offset > PART_BYTES:
            return None
        return await self.store.read_start(_tail(upload_id, 0), min(offset, limit))

    async def assemble(self, upload_id: str, handle: str, length: int) -> None:
        """The full parts, and the tail as the last one, joined into ``uploads/{id}``."""
        key = keys.partial_upload(upload_id)
        with contextlib.suppress(ObjectNotFound):
            if (await self.store.head(key)).size == length:
                return  # assembled before (an API died before it was read)
        parts, rest = divmod(length, PART_BYTES)
        if rest:
            tail = await self.store.read_start(_tail(upload_id, length - rest), rest)
            await self.store.put_part(key, handle, parts + 1, tail)
        await self.store.finish_multipart(key, handle, parts + (rest > 0))

    async def read(self, upload_id: str, handle: str, length: int) -> AsyncIterator[bytes]:
        """The assembled object."""
        async for chunk in self.store.open(keys.partial_upload(upload_id)):
            yield chunk

    async def discard(self, upload_id: str, handle: str) -> None:
        """Abort the multipart upload; delete the assembled object and the tails."""
        key = keys.partial_upload(upload_id)
        if handle:
            await self.store.abort_multipart(key, handle)
        leftovers = [info.key async for info in self.store.list(key)]
        for leftover in leftovers:
            if leftover == key or leftover.startswith(f"{key}.tail-"):
                await self.store.delete(leftover)

    async def present(self) -> list[tuple[str, str]]:
        """Multipart uploads under ``uploads/``, and objects left there without one."""
        prefix = keys.PARTIAL_UPLOADS
        found = {
            key.removeprefix(prefix): handle
            for key, handle in await self.store.multipart_uploads(prefix)
        }
        async for info in self.store.list(prefix):
            found.setdefault(info.key.removeprefix(prefix).split(".", 1)[0], "")
        return sorted(found.items())


def _tail(upload_id: str, start: int) -> str:
    return f"{keys.partial_upload(upload_id)}.tail-{start}"


class _PartWriter(PartialWriter):
    """Full parts go to S3 as they fill; `sync` puts the rest as the tail object."""

    def __init__(
        self, store: S3Storage, upload_id: str, handle: str, start: int, held: bytes
    ) -> None:
        super().__init__(start + len(held))
        self.store, self.upload_id, self.handle = store, upload_id, handle
        self.start, self.buffer = start, bytearray(held)  # the unfinished part's bytes

    async def write(self, data: bytes) -> None:
        self.buffer += data
        self.written += len(data)
        while len(self.buffer) >= PART_BYTES:
            number = self.start // PART_BYTES + 1
            part = bytes(self.buffer[:PART_BYTES])
            await self.store.put_part(
                keys.partial_upload(self.upload_id), self.handle, number, part
            )
            self.start += PART_BYTES
            del self.buffer[:PART_BYTES]

    async def sync(self) -> int:
        if self.buffer:
            await self.store.put_bytes(_tail(self.upload_id, self.start), bytes(self.buffer))
        self.end = self.written
        return self.end

    async def close(self) -> None:
        self.buffer = bytearray()
