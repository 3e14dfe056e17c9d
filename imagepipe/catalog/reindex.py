"""`imagepipe reindex`: rebuild the catalog from the manifests in storage.

Storage is the source of truth: every completed photo has a manifest on primary (copied to
backup like every object) holding what its catalog row needs. Reindexing walks primary's
manifests, then backup's for photos primary lacks, and indexes each one exactly as a
callback does (`PhotoCatalog.completed_many`: idempotent, so running it twice changes
nothing), except that the manifest's visibility wins over a row that exists (the last PATCH
rewrote the manifest, so a photo made private never comes back public); then makes each
owner's stored-bytes counter again from the objects (`catalog.usage`). A photo whose
tombstone primary or backup holds is deleted and never indexed, whatever manifest is left.
Each object's backup state is what backup holds now: `completed` where a copy of the same
size exists, else `pending` (the audit then copies it again).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field

from pydantic import ValidationError

from imagepipe import keys
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.catalog.usage import OwnerUsage
from imagepipe.models import BackupState, PhotoManifest, StoredFile
from imagepipe.storage import ObjectInfo, ObjectNotFound, Storage

log = logging.getLogger(__name__)
Progress = Callable[[int], None]  # photos reindexed so far


@dataclass
class ReindexReport:
    """What one reindex found and did."""

    from_primary: int = 0
    from_backup: int = 0
    objects_in_backup: int = 0
    objects_to_copy: int = 0
    unreadable: list[str] = field(default_factory=list)  # manifests that did not parse
    deleted: set[str] = field(default_factory=set)  # tombstoned photos a manifest was left of

    @property
    def photos(self) -> int:
        """Photos indexed."""
        return self.from_primary + self.from_backup


class Reindexer:
    """Rebuilds the catalog's photos and objects from manifests."""

    def __init__(
        self,
        catalog: PhotoCatalog,
        primary: Storage,
        backup: Storage,
        progress: Progress | None = None,
        only: Collection[str] = (),
    ) -> None:
        self.catalog, self.primary, self.backup = catalog, primary, backup
        self.only = sorted(only)  # the photos named (a restore of some): none means every one
        self.progress = progress or (lambda done: None)
        self.report = ReindexReport()
        self.tombstoned: set[str] = set()

    async def run(self) -> ReindexReport:
        """Index every manifest on primary, then those only backup holds."""
        self.tombstoned = await tombstoned(self.primary, self.backup)
        seen: set[str] = set()
        async for info in self.manifests(self.primary):
            if await self.index(self.primary, info.key):
                seen.add(info.key)
                self.report.from_primary += 1
        async for info in self.manifests(self.backup):
            if info.key not in seen and await self.index(self.backup, info.key):
                self.report.from_backup += 1
        await OwnerUsage(self.catalog.engine).recount()  # whatever the counters said before
        return self.report

    async def manifests(self, store: Storage) -> AsyncIterator[ObjectInfo]:
        """The store's manifests: every one, or the named photos'."""
        if not self.only:
            async for info in store.list(keys.MANIFESTS):
                yield info
        for photo_id in self.only:
            async for info in store.list(keys.manifest(photo_id)):
                yield info

    async def index(self, store: Storage, key: str) -> bool:
        """Index the photo whose manifest is ``key`` in ``store``; False if it did not parse
        or the photo is deleted."""
        if keys.photo_of(key) in self.tombstoned:
            self.report.deleted.add(keys.photo_of(key))
            return False
        try:
            raw = await store.read(key)
            manifest = PhotoManifest.model_validate_json(raw)
        except (ObjectNotFound, ValidationError) as exc:
            log.warning("manifest %s skipped: %s", key, exc)
            self.report.unreadable.append(key)
            return False
        digest = hashlib.sha256(raw).hexdigest()
        manifest_file = StoredFile(key=key, bytes=len(raw), sha256=digest)
        await self.catalog.completed_many([(manifest, manifest_file)], restore=True)
        await self.catalog.backup_found(await self.backup_states(manifest, key, len(raw)))
        self.progress(self.report.photos + 1)
        return True

    async def backup_states(
        self, manifest: PhotoManifest, manifest_key: str, manifest_bytes: int
    ) -> dict[str, BackupState]:
        """Each of the photo's objects: completed where backup holds a copy of its size."""
        sizes = {manifest.original_key: manifest.bytes, manifest_key: manifest_bytes}
        sizes |= {f.key: f.bytes for d in manifest.sizes.values() for f in d.files}
        found = await asyncio.gather(*(self._state(key, size) for key, size in sizes.items()))
        states = dict(zip(sizes, found, strict=True))  # HEADs at once: a photo has ~8 objects
        copied = [k for k, s in states.items() if s is BackupState.COMPLETED]
        self.report.objects_in_backup += len(copied)
        self.report.objects_to_copy += len(states) - len(copied)
        return states

    async def _state(self, key: str, size: int) -> BackupState:
        try:
            copy = await self.backup.head(key)
        except ObjectNotFound:
            return BackupState.PENDING
        return BackupState.COMPLETED if copy.size == size else BackupState.PENDING


async def tombstoned(*stores: Storage) -> set[str]:
    """Every photo whose tombstone any of the stores holds: deleted, whatever is left of it."""
    return {
        keys.photo_of(info.key) for store in stores async for info in store.list(keys.TOMBSTONES)
    }
