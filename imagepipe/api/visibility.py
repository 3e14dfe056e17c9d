"""Who sees a photo, changed everywhere its record lives (`PATCH /photos/{id}`).

    change(owner, photo_id, visibility)  the catalog row (the owner's photo only, else 404),
                                         then its live tickets, then (processed) its manifest
    indexed(manifest)                    after a completion: settle a PATCH that raced it
    settle(photo_id)                     the manifest on primary says what the row says:
                                         rewritten, its object row updated, and put back on
                                         the replication log so backup holds the new one

The manifest is what `imagepipe reindex` restores the catalog from, so it must end with the
latest visibility. Every rewrite happens under a per-photo lock and reads the row inside it:
the last one written is the latest row's. A completion writes its manifest from the ticket
it read and indexes the row (keeping the row's visibility); if the row then says otherwise,
a PATCH came in between and the completion settles the manifest itself. A PATCH that
finds the row completed settles it after changing it. Either way the last write follows the
last change.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.catalog.rows import COMPLETED
from imagepipe.catalog.visibility import Access, VisibilityCatalog
from imagepipe.connections import photo_locked
from imagepipe.errors import BadRequest, NotFound, UnsupportedContentType
from imagepipe.ids import is_photo_id
from imagepipe.models import PhotoManifest, StoredFile, Visibility
from imagepipe.replication import log as replication
from imagepipe.storage import ObjectNotFound, Storage
from imagepipe.tickets import TicketStore

NO_SUCH_PHOTO = "no such photo (or it is still processing)"
MAX_CHANGE_BYTES = 4096
CHANGE_TYPES = ("application/merge-patch+json", "application/json")


class PhotoChange(BaseModel):
    """A PATCH of a photo (a JSON merge patch): what an owner may change."""

    model_config = ConfigDict(extra="forbid")
    visibility: Visibility


def parse_change(content_type: str | None, body: bytes) -> PhotoChange:
    """The change a PATCH body asks for; 415 when it is not JSON, 400 when it is not one."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in CHANGE_TYPES:
        raise UnsupportedContentType(f"send the change as {' or '.join(CHANGE_TYPES)}")
    try:
        return PhotoChange.model_validate_json(body)
    except ValidationError as exc:
        wrong = [f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()]
        raise BadRequest(f"not a change of a photo ({'; '.join(wrong)})") from None


async def write_manifest(primary: Storage, manifest: PhotoManifest) -> StoredFile:
    """Write the photo's manifest on primary; the file as written."""
    data = manifest.model_dump_json(indent=1).encode()
    key = keys.manifest(manifest.photo_id)
    written = await primary.put_bytes(key, data)
    digest = written.sha256 or hashlib.sha256(data).hexdigest()
    return StoredFile(key=key, bytes=written.size, sha256=digest)


class Visibilities:
    """Changes of visibility: the catalog, the live tickets and the manifest, kept in step."""

    def __init__(
        self, redis: Redis, primary: Storage, tickets: TicketStore, catalog: VisibilityCatalog
    ) -> None:
        self.redis, self.primary, self.tickets, self.catalog = redis, primary, tickets, catalog

    async def change(self, owner: str, photo_id: str, visibility: Visibility) -> Access:
        """Make ``owner``'s photo private or public; 404 for anyone else's, as for no photo."""
        valid = is_photo_id(photo_id)
        found = await self.catalog.change(photo_id, owner, visibility) if valid else None
        if found is None:
            raise NotFound(NO_SUCH_PHOTO)
        await self._revise_tickets(found, visibility)
        if found.state == COMPLETED:
            await self.settle(photo_id)
        return found

    async def _revise_tickets(self, found: Access, visibility: Visibility) -> None:
        """The photo's live tickets (its first, and a reprocess's): a completion builds the
        manifest from one."""
        latest = await self.tickets.ticket_for_photo(found.photo_id)
        for ticket_id in {found.ticket_id, latest or found.ticket_id}:
            await self.tickets.revise(ticket_id, visibility=visibility)

    async def indexed(self, manifest: PhotoManifest) -> None:
        """The photo was just indexed from ``manifest``: settle it if a PATCH came in between."""
        found = await self.catalog.access(manifest.photo_id)
        if found is not None and found.visibility != manifest.visibility:
            await self.settle(manifest.photo_id)

    async def settle(self, photo_id: str) -> None:
        """Rewrite the manifest if it disagrees with the row (under the photo's lock)."""
        async with photo_locked(self.redis, photo_id):
            await self._settle(photo_id)

    async def _settle(self, photo_id: str) -> None:
        found = await self.catalog.access(photo_id)
        manifest = await self._manifest(photo_id)
        if found is None or manifest is None or manifest.visibility == found.visibility:
            return
        written = await write_manifest(
            self.primary, manifest.model_copy(update={"visibility": found.visibility})
        )
        await self.catalog.manifest_rewritten(written)
        async with self.redis.pipeline(transaction=True) as pipe:
            replication.append(pipe, {written.key: written.bytes}, self.tickets.retention_s)
            await pipe.execute()

    async def _manifest(self, photo_id: str) -> PhotoManifest | None:
        """The manifest on primary; None when it is missing (the audit writes it from the row)
        or unreadable."""
        try:
            return PhotoManifest.model_validate_json(
                await self.primary.read(keys.manifest(photo_id))
            )
        except (ObjectNotFound, ValidationError):
            return None
