"""The storage interface: a few async, streaming methods, and the typed errors.

Backends translate their own errors (OSError, botocore) into these at the boundary and
only there; nothing else in imagepipe imports botocore.

    StorageError                 any backend failure (transient unless a subclass says so)
    ├── ObjectNotFound           the key does not exist
    ├── ObjectExists             a create-only put found the key taken (nothing was written)
    ├── StorageFull              no space left (primary disk full)          -> 507
    └── StoragePermissionDenied  credentials refused (S3 403)              -> failed(reason)
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

CHUNK_SIZE = 1024 * 1024


class StorageError(Exception):
    """A backend failed; assume transient unless a subclass says otherwise."""


class ObjectNotFound(StorageError):
    """The key does not exist."""


class ObjectExists(StorageError):
    """A create-only put found the key taken; the existing object was left as it was."""

    def __init__(self, offered: ObjectInfo) -> None:
        super().__init__(f"{offered.key}: already exists")
        self.key = offered.key
        self.offered = offered  # size and sha256 of the bytes that were not written


class StorageFull(StorageError):
    """The backend has no space left for the write."""


class StoragePermissionDenied(StorageError):
    """The backend refused our credentials (permanent until an operator fixes them)."""


@dataclass(frozen=True)
class ObjectInfo:
    """What `put` and `head` report about one stored object."""

    key: str
    size: int
    sha256: str | None = None  # known after put; head reports it only where it is cheap
    modified: float = 0.0
    # put only: the store itself vouched for the bytes it holds (an S3 ETag equal to their
    # MD5), so reading them back to check adds nothing
    confirmed: bool = False


class Storage(ABC):
    """An object store keyed by server-made keys such as ``originals/abc.jpg``."""

    @abstractmethod
    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, create_only: bool = False
    ) -> ObjectInfo:
        """Store the chunks under key atomically, hashing as they stream; return size+sha256.

        Readers never see a partial object. If the iterable raises, nothing is left behind
        (no temp file, no object) and the exception propagates unchanged. Putting the same key
        twice leaves one correct object. With ``create_only`` an existing object is never
        rewritten: the put raises ObjectExists (carrying what was offered) and leaves nothing.
        """

    @abstractmethod
    def open(self, key: str) -> AsyncIterator[bytes]:
        """Stream an object's bytes; raises ObjectNotFound on first iteration if absent."""

    @abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """Size (and sha256 where cheap) of an object; raises ObjectNotFound."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error."""

    @abstractmethod
    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with prefix, in key order."""

    async def exists(self, key: str) -> bool:
        """Whether the key exists."""
        try:
            await self.head(key)
        except ObjectNotFound:
            return False
        return True

    async def read(self, key: str) -> bytes:
        """The whole object in memory (for small objects and images the worker decodes)."""
        return b"".join([chunk async for chunk in self.open(key)])

    async def read_small(self, key: str, limit: int) -> bytes | None:
        """The whole object if it is at most ``limit`` bytes and reading it whole is cheap
        here; None means stream it with `open` instead (the default)."""
        return None

    async def put_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> ObjectInfo:
        """Store a bytes value (manifests, derivatives)."""
        return await self.put(key, _single(data), create_only=create_only)

    async def sha256(self, key: str) -> str:
        """Hash an object's stored bytes (reads it whole, streaming)."""
        digest = hashlib.sha256()
        async for chunk in self.open(key):
            digest.update(chunk)
        return digest.hexdigest()

    async def check(self) -> None:
        """Raise StorageError when the backend is unreachable (for /readyz)."""
        async for _ in self.list("\x00-readiness-probe/"):
            break

    async def close(self) -> None:  # noqa: B027 (optional hook)
        """Release clients and threads."""


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data
