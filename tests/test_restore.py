"""`imagepipe restore` in narrow unit tests: backup copied back to primary, photo by photo,
every object verified, tombstones honoured, and a second run goes on from the first.

The stores are in-memory here (the same semantics as the real backends); the restore drill
against the real stack is in tests/test_restore_drill.py.
"""

from __future__ import annotations

import hashlib
import json

from imagepipe import ids, keys
from imagepipe.models import Derivative, PhotoManifest
from imagepipe.replication.restore import BackedUp, Restorer, by_photo
from imagepipe.storage.memory import MemoryStorage


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def backed_up_photo(backup: MemoryStorage, photo_id: str | None = None) -> PhotoManifest:
    """A completed photo as the replicator leaves it in backup: original, two sizes, manifest."""
    photo_id = photo_id or ids.new_photo_id()
    original = f"original of {photo_id}".encode()
    sizes = {}
    for name, edge in (("t", 100), ("m", 500)):
        data = f"{name} of {photo_id}".encode()
        key = keys.derivative(photo_id, name, "jpg")
        await backup.put_bytes(key, data)
        sizes[name] = Derivative(
            key=key, bytes=len(data), sha256=sha(data), width=edge, height=edge
        )
    manifest = PhotoManifest(
        photo_id=photo_id,
        original_key=keys.original(photo_id, "jpg"),
        sha256=sha(original),
        format="JPEG",
        width=800,
        height=800,
        bytes=len(original),
        owner="tester",
        ticket_id=ids.new_ticket_id(),
        created_at=1.0,
        sizes=sizes,
    )
    await backup.put_bytes(manifest.original_key, original)
    await backup.put_bytes(keys.manifest(photo_id), manifest.model_dump_json().encode())
    return manifest


def every_key(manifest: PhotoManifest) -> list[str]:
    return [*manifest.object_keys(), keys.manifest(manifest.photo_id)]


async def tombstone(store: MemoryStorage, manifest: PhotoManifest) -> None:
    body = {"photo_id": manifest.photo_id, "owner": manifest.owner, "objects": every_key(manifest)}
    await store.put_bytes(keys.tombstone(manifest.photo_id), json.dumps(body).encode())


async def held(store: MemoryStorage) -> dict[str, bytes]:
    return {info.key: await store.read(info.key) async for info in store.list()}


async def test_every_object_comes_back_byte_for_byte() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    photos = [await backed_up_photo(backup) for _ in range(3)]
    seen: list[int] = []
    report = await Restorer(primary, backup, progress=seen.append).run()
    assert await held(primary) == await held(backup)
    assert (report.photos, report.copied, report.present) == (3, 12, 0)
    assert report.ok and report.copied_bytes == sum(len(v) for v in (await held(backup)).values())
    assert sorted(seen)[-1] == 3 and len(photos) == 3


async def test_a_tombstoned_photo_is_never_restored_and_its_tombstone_is() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    kept, deleted = await backed_up_photo(backup), await backed_up_photo(backup)
    await tombstone(backup, deleted)  # its deletion had not reached backup's copies yet
    report = await Restorer(primary, backup).run()
    restored = await held(primary)
    assert set(restored) == {*every_key(kept), keys.tombstone(deleted.photo_id)}
    assert (report.photos, report.deleted, report.tombstones) == (1, 1, 1)


async def test_a_tombstone_left_on_primary_alone_is_honoured_too() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    deleted = await backed_up_photo(backup)
    await tombstone(primary, deleted)
    report = await Restorer(primary, backup).run()
    assert set(await held(primary)) == {keys.tombstone(deleted.photo_id)}
    assert report.deleted == 1 and report.photos == 0


async def test_bytes_that_do_not_match_the_manifest_never_land_and_fail_the_run() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    photo = await backed_up_photo(backup)
    rotten = photo.sizes["m"].key
    await backup.put_bytes(rotten, b"bit rot in backup")
    report = await Restorer(primary, backup).run()
    restored = await held(primary)
    assert rotten not in restored
    assert keys.manifest(photo.photo_id) not in restored  # the photo is not whole on primary
    assert not report.ok and report.photos == 0
    assert [m.split(":")[0] for m in report.mismatched] == [rotten]


async def test_an_object_backup_lacks_is_reported_missing() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    photo = await backed_up_photo(backup)
    await backup.delete(photo.sizes["t"].key)
    report = await Restorer(primary, backup).run()
    assert report.missing == [photo.sizes["t"].key] and not report.ok


async def test_a_second_run_goes_on_from_the_first_and_copies_nothing_twice() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    first, second = await backed_up_photo(backup), await backed_up_photo(backup)
    await Restorer(primary, backup, only=[first.photo_id]).run()  # "interrupted" after one
    assert set(await held(primary)) == set(every_key(first))
    report = await Restorer(primary, backup).run()
    assert (report.photos, report.copied, report.present) == (2, 4, 4)
    assert await held(primary) == await held(backup) and second.photo_id


async def test_other_bytes_already_on_primary_are_never_rewritten() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    photo = await backed_up_photo(backup)
    await primary.put_bytes(photo.original_key, b"someone else's bytes")
    report = await Restorer(primary, backup).run()
    assert await primary.read(photo.original_key) == b"someone else's bytes"
    assert [m.split(":")[0] for m in report.mismatched] == [photo.original_key]


async def test_an_original_that_never_completed_comes_back_alone() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    photo_id = ids.new_photo_id()
    await backup.put_bytes(keys.original(photo_id, "png"), b"an upload still processing")
    report = await Restorer(primary, backup).run()
    assert set(await held(primary)) == {keys.original(photo_id, "png")}
    assert report.originals_only == 1 and report.photos == 0 and report.ok


async def test_only_the_photos_named_are_restored() -> None:
    primary, backup = MemoryStorage(), MemoryStorage()
    named, other = await backed_up_photo(backup), await backed_up_photo(backup)
    report = await Restorer(primary, backup, only=[named.photo_id]).run()
    assert set(await held(primary)) == set(every_key(named)) and other.photo_id
    assert report.photos == 1


async def test_listings_merge_by_photo_id() -> None:
    backup = MemoryStorage()
    a, b, c = sorted(ids.new_photo_id() for _ in range(3))
    await backup.put_bytes(keys.original(a, "jpg"), b"a")
    await backup.put_bytes(keys.manifest(a), b"{}")
    await backup.put_bytes(keys.manifest(b), b"{}")  # its original is missing
    await backup.put_bytes(keys.original(c, "webp"), b"c")  # never completed
    found = [photo async for photo in by_photo(backup)]
    assert found == [
        BackedUp(a, keys.manifest(a), keys.original(a, "jpg")),
        BackedUp(b, keys.manifest(b), None),
        BackedUp(c, None, keys.original(c, "webp")),
    ]
    assert [p async for p in by_photo(backup, c)] == [found[2]]
