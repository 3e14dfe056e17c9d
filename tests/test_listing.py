"""The audit's slice listings: a full pass lists each tree once and still hands every slice
exactly the keys a listing of that slice alone would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from imagepipe import keys
from imagepipe.replication.audit import all_slices
from imagepipe.replication.listing import TREES, SliceListing
from imagepipe.storage import ObjectInfo
from imagepipe.storage.memory import MemoryStorage

IDS = ["000" + "1" * 17, "000" + "2" * 17, "0a0" + "0" * 17, "7ff" + "f" * 17, "fff" + "0" * 17]


class CountingStorage(MemoryStorage):
    """Counts LIST calls, as S3 would bill them."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[str] = []

    def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        self.lists.append(prefix)
        return super().list(prefix)


async def library() -> CountingStorage:
    store = CountingStorage()
    for photo_id in IDS:
        await store.put_bytes(keys.original(photo_id, "jpg"), b"o")
        await store.put_bytes(keys.derivative(photo_id, "t", "jpg"), b"t")
        await store.put_bytes(keys.manifest(photo_id), b"{}")
    await store.put_bytes("originals/not-a-photo", b"x")  # sorts after every hex id
    store.lists.clear()
    return store


async def test_a_full_pass_lists_each_tree_once_and_finds_what_each_slice_holds() -> None:
    store = await library()
    listing = SliceListing(store, in_order=True)
    found = {prefix: await listing.take(prefix) for prefix in all_slices()}
    await listing.close()
    assert sorted(store.lists) == sorted(TREES)
    one_by_one = SliceListing(store, in_order=False)
    for prefix in ("000", "0a0", "7ff", "fff", "123"):
        assert found[prefix] == await one_by_one.take(prefix)
    assert len(found["000"]) == 6 and len(found["123"]) == 0
    every = {key for objects in found.values() for key in objects}
    assert every == {key for key in store._objects if key != "originals/not-a-photo"}


async def test_a_rolling_pass_lists_only_its_slices() -> None:
    store = await library()
    taken = await SliceListing(store, in_order=False).take("7ff")
    assert set(taken) == {
        keys.original(IDS[3], "jpg"),
        keys.derivative(IDS[3], "t", "jpg"),
        keys.manifest(IDS[3]),
    }
    assert store.lists == [tree + "7ff" for tree in TREES]


async def test_slices_asked_out_of_order_are_refused() -> None:
    listing = SliceListing(await library(), in_order=True)
    await listing.take("0a0")
    with pytest.raises(ValueError, match="out of order"):
        await listing.take("000")
    await listing.close()
