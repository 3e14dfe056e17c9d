"""An in-memory backend for narrow unit tests: a dict of bytes with the same semantics."""

from __future__ import annotations

import bisect
import hashlib
import time
from collections.abc import AsyncIterable, AsyncIterator

from imagepipe.storage.base import (
    CHUNK_SIZE,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Storage,
)


class MemoryStorage(Storage):
    """Objects in a dict; a put is stored only once its chunks have all arrived."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        self._sorted: list[str] | None = None  # the keys in order, made again after a change

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, create_only: bool = False
    ) -> ObjectInfo:
        """Collect the chunks, then store them in one assignment (atomic for readers)."""
        data = b"".join([chunk async for chunk in chunks])
        digest = hashlib.sha256(data).hexdigest()
        info = ObjectInfo(key=key, size=len(data), sha256=digest, modified=time.time())
        # no await between this check and the assignment: atomic on the event loop
        if create_only and key in self._objects:
            raise ObjectExists(info)
        if key not in self._objects:
            self._sorted = None
        self._objects[key] = (data, info)
        return info

    async def open(self, key: str) -> AsyncIterator[bytes]:
        """Yield the stored bytes in CHUNK_SIZE pieces."""
        data = self._get(key)[0]
        for start in range(0, len(data), CHUNK_SIZE):
            yield data[start : start + CHUNK_SIZE]

    async def head(self, key: str) -> ObjectInfo:
        """Size, sha256 and store time (all cheap here)."""
        return self._get(key)[1]

    async def delete(self, key: str) -> None:
        """Forget the key; a missing one is fine."""
        if self._objects.pop(key, None) is not None:
            self._sorted = None

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every key starting with prefix, sorted (found by bisection: a prefix costs its keys,
        not the store's)."""
        if self._sorted is None:
            self._sorted = sorted(self._objects)
        ordered = self._sorted
        for key in ordered[bisect.bisect_left(ordered, prefix) :]:
            if not key.startswith(prefix):
                return
            if key in self._objects:  # not deleted while the caller was iterating
                yield self._objects[key][1]

    def _get(self, key: str) -> tuple[bytes, ObjectInfo]:
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFound(key) from None
