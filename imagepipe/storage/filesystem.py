"""The local-filesystem backend: one file per key under a root folder, written atomically.

A put streams into ``.{name}.{random}.tmp`` beside the final file, fsyncs it, renames it into
place and fsyncs the folder. A create-only put links the temp file to the final name instead
(``link`` fails if the name exists, atomically) and removes the temp name. Temp files a crash
leaves behind are invisible to `list`, reported by `temp_files` (the audit calls them
orphans) and removed by `sweep_temp_files`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import os
import secrets
import stat
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from imagepipe.storage.base import (
    CHUNK_SIZE,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Storage,
    StorageError,
    StorageFull,
)

P = ParamSpec("P")
T = TypeVar("T")

# Small chunks (a multipart parser yields ~64 KB) are batched to this size per thread hop.
_WRITE_BATCH = 256 * 1024
_FULL = {errno.ENOSPC, errno.EDQUOT}
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)

# One scanned folder entry: (name, is_dir, size, mtime).
_Entry = tuple[str, bool, int, float]
_Keys = list[str]  # spelled here: inside the class, `list` is the method


class FilesystemStorage(Storage):
    """Objects as files under ``root``; keys are relative POSIX paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FilesystemStorage({str(self.root)!r})"

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, create_only: bool = False
    ) -> ObjectInfo:
        """Stream chunks into a temp file beside the key, then fsync and move it into place."""
        final = self.path(key)
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(8)}.tmp")
        file = await _io(key, _create, tmp)
        digest, size, pending = hashlib.sha256(), 0, bytearray()
        try:
            async for chunk in chunks:
                size += len(chunk)
                pending += chunk
                if len(pending) >= _WRITE_BATCH:
                    # hashed in the writing thread (hashlib lets go of the GIL): the event
                    # loop only copies bytes, so other requests never wait on a hash
                    await _io(key, _write, file, digest, pending)
                    pending.clear()
            modified = await _io(key, _commit, file, digest, pending, tmp, final, create_only)
            if modified is None:
                raise ObjectExists(ObjectInfo(key=key, size=size, sha256=digest.hexdigest()))
        except BaseException:
            # Inline rather than in a thread, so a cancellation cannot skip it: closing waits
            # at most for one batch write still in flight, and the unlink is metadata only.
            _discard(file, tmp)
            raise
        return ObjectInfo(key=key, size=size, sha256=digest.hexdigest(), modified=modified)

    async def put_linked(self, key: str, chunks: AsyncIterable[bytes], source: Path) -> ObjectInfo:
        """Create ``key`` from ``source``, a file already fsynced on this filesystem whose
        bytes ``chunks`` are (read through the caller's checks): linked into place, not
        copied. Create-only, as `put` with ``create_only``: ObjectExists when the key is
        taken; if the chunks raise, nothing is made."""
        digest, size, pending = hashlib.sha256(), 0, bytearray()
        async for chunk in chunks:
            size += len(chunk)
            pending += chunk
            if len(pending) >= _WRITE_BATCH:
                await _io(key, digest.update, bytes(pending))  # hashed off the event loop
                pending.clear()
        await _io(key, digest.update, bytes(pending))
        offered = ObjectInfo(key=key, size=size, sha256=digest.hexdigest())
        modified = await _io(key, _link_into_place, source, self.path(key), size)
        if modified is None:
            raise ObjectExists(offered)
        return ObjectInfo(key=key, size=size, sha256=offered.sha256, modified=modified)

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream the file in CHUNK_SIZE pieces; ObjectNotFound if it is absent."""
        file = await _read(key, _open_for_read, self.path(key))
        try:
            while chunk := await _read(key, file.read, CHUNK_SIZE):
                yield chunk
        finally:
            file.close()

    async def read(self, key: str) -> bytes:
        """The whole file in one thread hop (the worker reads every original this way)."""
        return await _read(key, self.path(key).read_bytes)

    async def read_small(self, key: str, limit: int) -> bytes | None:
        """The whole file in one thread hop when it is at most ``limit`` bytes."""
        return await _read(key, _read_up_to, self.path(key), limit)

    async def head(self, key: str) -> ObjectInfo:
        """Size and mtime from one stat (sha256 is not cheap here, so None)."""
        st = await _read(key, os.stat, self.path(key))
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(key)
        return ObjectInfo(key=key, size=st.st_size, modified=st.st_mtime)

    async def delete(self, key: str) -> None:
        """Remove the file; a missing one is fine."""
        with contextlib.suppress(ObjectNotFound):
            await _read(key, os.unlink, self.path(key))

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Walk the tree depth-first in key order, pruning folders the prefix rules out."""
        async for info in self._walk(self.root, "", prefix):
            yield info

    async def temp_files(self) -> _Keys:
        """Keys of leftover temp files (a put that died between create and rename)."""
        return await _io("", _find_temp_files, self.root)

    async def sweep_temp_files(self, idle_s: float) -> _Keys:
        """Remove the temp files dead writers left; the ones removed.

        Those a later write of their key superseded, and those nobody touched for ``idle_s``.
        """
        return await _io("", _sweep_temp_files, self.root, time.time() - idle_s)

    def path(self, key: str) -> Path:
        """The file a key lives in; ValueError for keys that could escape the root."""
        check_key(key)
        return self.root / key

    async def _walk(self, folder: Path, base: str, prefix: str) -> AsyncIterator[ObjectInfo]:
        for name, is_dir, size, mtime in await _io(base, _scan, folder):
            key = base + name
            if is_dir and _may_hold(key + "/", prefix):
                async for info in self._walk(folder / name, key + "/", prefix):
                    yield info
            elif not is_dir and key.startswith(prefix):
                yield ObjectInfo(key=key, size=size, modified=mtime)


def check_key(key: str) -> None:
    """Refuse keys that are absolute, climb out, or could not round-trip as a path."""
    # Keys are made by the server; this is defence in depth, not input validation.
    if not key or key.startswith("/") or ".." in key or "\\" in key or "\x00" in key:
        raise ValueError(f"bad storage key {key!r}")
    segments = key.split("/")
    if any(s in ("", ".") for s in segments) or _is_temp(segments[-1]):
        raise ValueError(f"bad storage key {key!r}")


async def _io(key: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking file I/O in a thread, translating OSError at this boundary."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except OSError as exc:
        raise _translate(exc, key) from exc


async def _read(key: str, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Like `_io`, but a missing file (or a folder where the file should be) is ObjectNotFound."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except _MISSING as exc:
        raise ObjectNotFound(key) from exc
    except OSError as exc:
        raise _translate(exc, key) from exc


def _translate(exc: OSError, key: str) -> StorageError:
    if exc.errno in _FULL:
        return StorageFull(f"{key}: {exc.strerror}")
    return StorageError(f"{key}: {exc}")


def _create(tmp: Path) -> io.BufferedWriter:
    _make_dirs(tmp.parent)
    # Buffered on purpose: its close() waits for a write still running in a thread (the
    # object holds a lock), so _discard after a cancellation cannot race that write.
    return tmp.open("xb")


def _make_dirs(folder: Path) -> None:
    """``mkdir -p`` that fsyncs each new folder's parent, so the new entries survive a crash."""
    if folder.is_dir():
        return
    _make_dirs(folder.parent)
    try:
        folder.mkdir()
    except FileExistsError:
        return  # another writer made it first
    _fsync_dir(folder.parent)


def _write(file: io.BufferedWriter, digest: Any, data: bytearray) -> None:
    digest.update(data)
    file.write(data)


def _read_up_to(path: Path, limit: int) -> bytes | None:
    with path.open("rb") as file:
        return file.read() if os.fstat(file.fileno()).st_size <= limit else None


def _commit(
    file: io.BufferedWriter,
    digest: Any,
    tail: bytearray,
    tmp: Path,
    final: Path,
    create_only: bool,
) -> float | None:
    """Hash and write the tail, fsync and publish the temp file; its mtime, or None if
    create_only found one."""
    _write(file, digest, tail)
    file.flush()
    os.fsync(file.fileno())
    file.close()
    if create_only:
        try:
            # link is atomic and fails if the name exists: an object is never rewritten
            os.link(tmp, final)
        except FileExistsError:
            return None  # the caller's _discard removes the temp file
        # published: a temp name left by a failed unlink is only an orphan the audit reports
        with contextlib.suppress(OSError):
            tmp.unlink()
    else:
        # The rename is atomic: readers see the old object or the whole new one, never a part.
        os.replace(tmp, final)
    # fsync the folder so the new entry itself survives a power cut.
    _fsync_dir(final.parent)
    return final.stat().st_mtime


def _link_into_place(source: Path, final: Path, size: int) -> float | None:
    """Link the (fsynced) source to the final name; its mtime, or None if the name is taken."""
    if source.stat().st_size != size:
        raise OSError(errno.EIO, f"{source.name} holds other bytes than were read")
    _make_dirs(final.parent)
    try:
        os.link(source, final)  # atomic, and fails if the name exists
    except FileExistsError:
        return None
    _fsync_dir(final.parent)
    return final.stat().st_mtime


def _discard(file: io.BufferedWriter, tmp: Path) -> None:
    # Never let cleanup mask the exception that brought us here.
    with contextlib.suppress(OSError):
        file.close()
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_for_read(path: Path) -> io.BufferedReader:
    return path.open("rb")


def _scan(folder: Path) -> list[_Entry]:
    """One folder's objects and subfolders, sorted so that a depth-first walk is in key order."""
    try:
        with os.scandir(folder) as it:
            entries = [_entry(e) for e in it if not _is_temp(e.name)]
    except FileNotFoundError:
        return []  # an empty store, or a folder removed while we walked
    # A folder sorts as "name/": every key below it starts with that.
    found = [e for e in entries if e is not None]
    return sorted(found, key=lambda e: e[0] + "/" if e[1] else e[0])


def _entry(entry: os.DirEntry[str]) -> _Entry | None:
    if entry.is_dir(follow_symlinks=False):
        return (entry.name, True, 0, 0.0)
    if not entry.is_file(follow_symlinks=False):
        return None  # symlinks, sockets: never made by us
    st = entry.stat(follow_symlinks=False)
    return (entry.name, False, st.st_size, st.st_mtime)


def _may_hold(folder_key: str, prefix: str) -> bool:
    return folder_key.startswith(prefix) or prefix.startswith(folder_key)


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def _find_temp_files(root: Path) -> list[str]:
    found = [
        (Path(folder) / name).relative_to(root).as_posix()
        for folder, _, names in os.walk(root)
        for name in names
        if _is_temp(name)
    ]
    return sorted(found)


def _sweep_temp_files(root: Path, idle_before: float) -> list[str]:
    removed = [name for name in _find_temp_files(root) if _abandoned(root / name, idle_before)]
    for name in removed:
        (root / name).unlink(missing_ok=True)
    return removed


def _abandoned(temp: Path, idle_before: float) -> bool:
    """Untouched since ``idle_before``, or older than a finished object of its key.

    Either way it holds no acknowledged data (a put acknowledges only after its rename); were
    its writer alive after all, its rename fails and the write is retried.
    """
    final = temp.with_name(temp.name[1:].rsplit(".", 2)[0])  # .{name}.{token}.tmp -> {name}
    try:
        touched = temp.stat().st_mtime
    except FileNotFoundError:
        return False  # renamed into place or discarded meanwhile
    try:
        superseded = final.stat().st_mtime > touched
    except FileNotFoundError:
        superseded = False
    return touched < idle_before or superseded
