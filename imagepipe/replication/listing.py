"""A store's objects cut into the audit's id-prefix slices.

A rolling pass asks for a few slices: each is listed on its own (four LISTs per slice).
A full pass asks for every slice in order: then each tree (originals, derivatives,
manifests, tombstones) is listed once, from the start, and handed out slice by slice as the
listing goes by, so a full pass costs the library's pages, not 4096 x 4 requests, and holds
one page and one slice in memory. Both rely on `Storage.list` returning keys in key order.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from imagepipe import keys
from imagepipe.storage import ObjectInfo, Storage

TREES = (keys.ORIGINALS, keys.DERIVATIVES, keys.MANIFESTS, keys.TOMBSTONES)


class _Cursor:
    """One ordered listing, read forward: the run of keys under each prefix asked for."""

    def __init__(self, listing: AsyncIterator[ObjectInfo]) -> None:
        self.listing = listing
        self.head: ObjectInfo | None = None
        self.exhausted = False
        self.last = ""

    async def take(self, prefix: str) -> list[ObjectInfo]:
        """The keys under ``prefix``; keys before it (no slice asked for them) are passed."""
        if prefix < self.last:
            raise ValueError(f"slices asked out of order: {prefix} after {self.last}")
        self.last = prefix
        while (head := await self._peek()) is not None and head.key < prefix:
            self.head = None
        run: list[ObjectInfo] = []
        while (head := await self._peek()) is not None and head.key.startswith(prefix):
            run.append(head)
            self.head = None
        return run

    async def _peek(self) -> ObjectInfo | None:
        if self.head is None and not self.exhausted:
            try:
                self.head = await anext(self.listing)
            except StopAsyncIteration:
                self.exhausted = True
        return self.head

    async def close(self) -> None:
        """Stop the listing (an async generator left open warns at exit)."""
        close = getattr(self.listing, "aclose", None)
        if close is not None:
            await close()


class SliceListing:
    """A store's objects by id-prefix slice; ``in_order`` promises ascending prefixes."""

    def __init__(self, store: Storage, *, in_order: bool) -> None:
        self.store = store
        self.cursors = {tree: _Cursor(store.list(tree)) for tree in TREES} if in_order else {}

    async def take(self, prefix: str) -> dict[str, ObjectInfo]:
        """Every object of photos whose ids start with ``prefix``, by key."""
        found: dict[str, ObjectInfo] = {}
        for tree in TREES:
            for info in await self._run(tree, tree + prefix):
                found[info.key] = info
        return found

    async def _run(self, tree: str, prefix: str) -> list[ObjectInfo]:
        cursor = self.cursors.get(tree)
        if cursor is None:
            return [info async for info in self.store.list(prefix)]
        return await cursor.take(prefix)

    async def close(self) -> None:
        """Stop every listing still open."""
        for cursor in self.cursors.values():
            await cursor.close()
