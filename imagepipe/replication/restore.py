"""`imagepipe restore`: rebuild primary storage from backup, every object verified.

For when primary is lost, whole or in part. Backup's listings of manifests and originals
are walked together in key order (so photo by photo, streaming: never the whole listing in
memory), several photos at a time:

- A photo whose **tombstone** backup or primary holds is deleted: nothing of it is restored,
  even when the catalog is lost too. Tombstones themselves are restored first.
- A photo with a manifest: its original and every size are copied back, each checked against
  the sha256 its manifest names while it streams (a mismatch leaves nothing on primary), and
  the manifest last, checked against the sha256 the replicator stored with its copy. So a
  photo whose manifest is on primary is whole there.
- An original with no manifest (its photo never completed) is copied back alone; the audit
  re-accepts it and the photo is processed again.

An object already on primary with the expected bytes is left as it is, so a restore run again
after an interruption copies only what is left; one with other bytes is never rewritten
(reported as a mismatch). Then the catalog is migrated and reindexed from the manifests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import ValidationError

from imagepipe import keys
from imagepipe.models import PhotoManifest
from imagepipe.storage import ObjectExists, ObjectInfo, ObjectNotFound, Storage, StorageError

log = logging.getLogger(__name__)
Progress = Callable[[int], None]  # photos handled so far
PARALLEL = 8  # photos restored at once: S3 GETs overlap, and primary's fsyncs too
T = TypeVar("T")


class Mismatch(StorageError):
    """The bytes read from backup are not the ones the photo's record names."""


@dataclass
class RestoreReport:
    """What one restore found and did."""

    photos: int = 0  # photos with a manifest, whole on primary now
    originals_only: int = 0  # originals of photos that never completed
    deleted: int = 0  # photos skipped: tombstoned
    tombstones: int = 0  # tombstones copied back to primary
    copied: int = 0  # objects copied
    copied_bytes: int = 0
    present: int = 0  # objects primary already held, verified
    missing: list[str] = field(default_factory=list)  # named by a manifest, absent in backup
    mismatched: list[str] = field(default_factory=list)  # bytes not the ones expected
    failed: list[str] = field(default_factory=list)  # "key: reason" (storage errors)

    @property
    def ok(self) -> bool:
        """Every object restored and verified: nothing missing, mismatched or failed."""
        return not (self.missing or self.mismatched or self.failed)

    @property
    def handled(self) -> int:
        """Photos done so far (for the progress bar)."""
        return self.photos + self.originals_only + self.deleted


@dataclass(frozen=True)
class BackedUp:
    """One photo as backup's listings show it."""

    photo_id: str
    manifest: str | None = None
    original: str | None = None


class Restorer:
    """Copies backup back to primary, photo by photo, verified; honours tombstones."""

    def __init__(
        self,
        primary: Storage,
        backup: Storage,
        only: Collection[str] = (),
        progress: Progress | None = None,
    ) -> None:
        self.primary, self.backup, self.only = primary, backup, frozenset(only)
        self.progress = progress or (lambda done: None)
        self.report = RestoreReport()
        self.deleted: set[str] = set()

    async def run(self) -> RestoreReport:
        """Tombstones first, then every photo backup holds (or the ones named)."""
        await self.restore_tombstones()
        await bounded(self.photos(), self.restore_photo, PARALLEL)
        return self.report

    async def restore_tombstones(self) -> None:
        """Copy backup's tombstones to primary; remember every deleted photo either holds."""
        async for info in self.backup.list(keys.TOMBSTONES):
            if self.wanted(keys.photo_of(info.key)):
                self.deleted.add(keys.photo_of(info.key))
                if await self.copy(info.key, await self.recorded_sha256(info.key)):
                    self.report.tombstones += 1
        async for info in self.primary.list(keys.TOMBSTONES):
            self.deleted.add(keys.photo_of(info.key))

    def wanted(self, photo_id: str) -> bool:
        """Whether this run restores the photo (all of them unless some were named)."""
        return not self.only or photo_id in self.only

    async def photos(self) -> AsyncIterator[BackedUp]:
        """Every photo backup holds a manifest or an original of, in id order."""
        if self.only:
            for photo_id in sorted(self.only):
                async for photo in by_photo(self.backup, photo_id):
                    yield photo
        else:
            async for photo in by_photo(self.backup):
                yield photo

    async def restore_photo(self, photo: BackedUp) -> None:
        """One photo: skipped if deleted; else its objects, then its manifest."""
        if photo.photo_id in self.deleted:
            self.report.deleted += 1
        elif photo.manifest is not None:
            await self.restore_whole(photo.manifest)
        elif photo.original is not None and await self.copy(
            photo.original, await self.recorded_sha256(photo.original)
        ):
            self.report.originals_only += 1
        self.progress(self.report.handled)

    async def restore_whole(self, manifest_key: str) -> None:
        """Original and sizes checked against the manifest; the manifest itself last."""
        manifest = await self.read_manifest(manifest_key)
        if manifest is None:
            return
        expected = {manifest.original_key: manifest.sha256}
        expected |= {f.key: f.sha256 for d in manifest.sizes.values() for f in d.files}
        copied = await asyncio.gather(*(self.copy(key, sha) for key, sha in expected.items()))
        if all(copied) and await self.copy(manifest_key, await self.recorded_sha256(manifest_key)):
            self.report.photos += 1

    async def read_manifest(self, key: str) -> PhotoManifest | None:
        """The photo's record from backup; None (reported) if it cannot be read or parsed."""
        try:
            return PhotoManifest.model_validate_json(await self.backup.read(key))
        except ValidationError as exc:
            self.report.mismatched.append(f"{key}: not a manifest ({exc.error_count()} errors)")
        except StorageError as exc:
            self.report.failed.append(f"{key}: {exc}")
        return None

    async def recorded_sha256(self, key: str) -> str | None:
        """The sha256 the replicator stored with backup's copy (None: put by something else)."""
        try:
            return (await self.backup.head(key)).sha256
        except ObjectNotFound:
            return None

    async def copy(self, key: str, sha256: str | None) -> bool:
        """Make primary hold ``key`` with these bytes; False (reported) when it cannot."""
        try:
            await self._copy(key, sha256)
        except ObjectNotFound:
            self.report.missing.append(key)
        except Mismatch as exc:
            self.report.mismatched.append(str(exc))
        except StorageError as exc:
            self.report.failed.append(f"{key}: {exc}")
        else:
            return True
        return False

    async def _copy(self, key: str, sha256: str | None) -> None:
        try:
            info = await self.primary.put(
                key, verified(self.backup.open(key), key, sha256), create_only=True
            )
        except ObjectExists:
            await self.check_present(key, sha256)
        else:
            self.report.copied += 1
            self.report.copied_bytes += info.size

    async def check_present(self, key: str, sha256: str | None) -> None:
        """Primary holds ``key`` already: it counts if its bytes are the expected ones."""
        held = await self.primary.sha256(key)
        expected = sha256 or await self.backup.sha256(key)
        if held != expected:
            raise Mismatch(f"{key}: primary holds other bytes ({held}) than expected ({expected})")
        self.report.present += 1


async def verified(
    chunks: AsyncIterator[bytes], key: str, sha256: str | None
) -> AsyncIterator[bytes]:
    """The chunks, raising Mismatch after the last one when they do not hash to ``sha256``.

    A put that sees its iterable raise leaves nothing behind, so bytes that fail the check
    never land on primary.
    """
    digest = hashlib.sha256()
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if sha256 is not None and digest.hexdigest() != sha256:
        raise Mismatch(f"{key}: backup's bytes hash to {digest.hexdigest()}, expected {sha256}")


async def by_photo(store: Storage, photo_id: str = "") -> AsyncIterator[BackedUp]:
    """The store's manifests and originals (of one photo, if named) merged by photo id.

    Both listings come in key order and a photo id is followed by "." in both kinds of key,
    so the two streams are sorted by photo id alike and merge in one pass.
    """
    named = f"{photo_id}." if photo_id else ""
    manifests = _keys(store.list(keys.MANIFESTS + named))
    originals = _keys(store.list(keys.ORIGINALS + named))
    manifest, original = await anext(manifests, None), await anext(originals, None)
    while manifest is not None or original is not None:
        photo_id = min(keys.photo_of(k) for k in (manifest, original) if k is not None)
        here = BackedUp(
            photo_id,
            manifest if manifest and keys.photo_of(manifest) == photo_id else None,
            original if original and keys.photo_of(original) == photo_id else None,
        )
        yield here
        if here.manifest:
            manifest = await anext(manifests, None)
        if here.original:
            original = await anext(originals, None)


async def _keys(listing: AsyncIterator[ObjectInfo]) -> AsyncIterator[str]:
    async for info in listing:
        yield info.key


async def bounded(
    items: AsyncIterator[T], work: Callable[[T], Coroutine[object, object, None]], limit: int
) -> None:
    """Run ``work`` on each item, at most ``limit`` at once, without listing ahead of them."""
    slots = asyncio.Semaphore(limit)
    async with asyncio.TaskGroup() as group:
        async for item in items:
            await slots.acquire()
            task = group.create_task(work(item))
            task.add_done_callback(lambda _: slots.release())
