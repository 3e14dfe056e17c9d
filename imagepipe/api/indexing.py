"""(5) Indexing: what the web tier does with a worker's callback, and the index it keeps.

apply_once(webhook_id, event)  a redelivered webhook-id is acknowledged, not reapplied;
                               otherwise the event moves the ticket forward, and on
                               completion the photo is indexed:
  manifest on primary, then the catalog (the photo completed, its objects), then in the
  ticket's own transaction its derivatives onto the replication log
manifest(photo_id)             an indexed photo's record, or 404
page(before, limit, owner)     an owner's photos, or the public stream, newest first

The catalog is written before the ticket changes: a completed or failed ticket always has
its photo indexed, and a callback retried after a failure in between finds the catalog
already right (every catalog write is idempotent).

A completion indexes under the photo's lock, the one a DELETE takes: a photo deleted first
is never indexed (the callback is answered 404, and its worker gives up), and a photo indexed
first has every object in the catalog when its deletion lists what to remove.
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from imagepipe import keys, metrics
from imagepipe.api.visibility import NO_SUCH_PHOTO, Visibilities, write_manifest
from imagepipe.catalog.photos import Cursor, GalleryRow, PhotoCatalog
from imagepipe.connections import photo_locked
from imagepipe.errors import Conflict, NotFound
from imagepipe.ids import is_photo_id
from imagepipe.models import CallbackEvent, PhotoManifest, Ticket, TicketStatus, now
from imagepipe.replication import log as replication
from imagepipe.storage import Storage
from imagepipe.tickets import TicketStore

log = logging.getLogger(__name__)
SEEN_TTL_S = 15 * 60  # longer than the ±5 min signature window: older replays fail the signature


def manifest_of(ticket: Ticket, event: CallbackEvent) -> PhotoManifest:
    """The photo's record from its ticket and the completion event (upright dimensions)."""
    facts = ticket.original_facts()
    facts.update(width=event.width or ticket.width, height=event.height or ticket.height)
    return PhotoManifest(
        **facts,
        ticket_id=ticket.id,
        created_at=ticket.created_at,
        completed_at=now(),
        sizes=event.sizes,
    )


class PhotoIndex:
    """The web tier's index of processed photos: manifests on primary, rows in the catalog."""

    def __init__(
        self,
        redis: Redis,
        primary: Storage,
        tickets: TicketStore,
        catalog: PhotoCatalog,
        visibilities: Visibilities,
    ) -> None:
        self.redis, self.primary, self.tickets, self.catalog = redis, primary, tickets, catalog
        self.visibilities = visibilities

    async def apply_once(self, webhook_id: str, event: CallbackEvent) -> str:
        """Apply a verified callback: ``applied``, ``unchanged`` or ``duplicate``."""
        if await self.redis.exists(keys.webhook_seen(webhook_id)):
            log.info("callback %s duplicate: acknowledged, not applied again", webhook_id)
            return "duplicate"
        updated = await self.apply(event)
        await self.redis.set(keys.webhook_seen(webhook_id), "1", ex=SEEN_TTL_S)
        if updated is not None:
            metrics.TICKET_TRANSITIONS.labels(updated.status.value).inc()
        outcome = "applied" if updated else "unchanged"
        ids = {"ticket_id": event.ticket_id, "photo_id": event.photo_id}
        log.info("callback %s %s", event.type, outcome, extra=ids)
        return outcome

    async def apply(self, event: CallbackEvent) -> Ticket | None:
        """Apply one event to its ticket; on completion index the photo and log it for backup."""
        ticket = await self.tickets.get(event.ticket_id)
        if ticket.photo_id != event.photo_id:
            raise Conflict("the event's photo is not this ticket's photo")
        if ticket.status.terminal or event.type == "processing.started":
            return await self.tickets.apply(event)
        if event.type == "processing.failed":
            await self.catalog.failed(ticket.photo_id, event.error)
            return await self.tickets.apply(event)
        manifest, new_objects = await self._index_unless_deleted(ticket, event)
        await self.visibilities.indexed(manifest)  # a PATCH while it was processing

        def log_for_backup(pipe: Pipeline, updated: Ticket) -> None:
            if updated.status is TicketStatus.COMPLETED:
                replication.append(pipe, new_objects, self.tickets.retention_s)

        return await self.tickets.apply(event, log_for_backup)

    async def _index_unless_deleted(
        self, ticket: Ticket, event: CallbackEvent
    ) -> tuple[PhotoManifest, dict[str, int]]:
        """`_index`, under the photo's lock; 404 once its owner deleted it."""
        async with photo_locked(self.redis, ticket.photo_id):
            if await self.catalog.deleted(ticket.photo_id):
                raise NotFound(f"{NO_SUCH_PHOTO}: deleted")
            return await self._index(ticket, event)

    async def _index(
        self, ticket: Ticket, event: CallbackEvent
    ) -> tuple[PhotoManifest, dict[str, int]]:
        """Write the manifest, then the catalog; the new objects (key -> bytes) to back up."""
        manifest = manifest_of(ticket, event)
        written = await write_manifest(self.primary, manifest)
        await self.catalog.completed(manifest, written)
        new_objects = {f.key: f.bytes for d in event.sizes.values() for f in d.files}
        new_objects[written.key] = written.bytes
        return manifest, new_objects

    async def manifest(self, photo_id: str) -> PhotoManifest:
        """The indexed photo's record, or 404 (also while it is still processing)."""
        found = await self.catalog.manifest(photo_id) if is_photo_id(photo_id) else None
        if found is None:
            raise NotFound(NO_SUCH_PHOTO)
        return found

    async def page(
        self, before: str | None, limit: int, owner: str | None
    ) -> tuple[list[GalleryRow], str | None]:
        """Up to ``limit`` completed photos of ``owner`` (None: public ones), newest first,
        after the cursor ``before``; the cursor of the next page (None: this was the last)."""
        cursor = Cursor.decode(before) if before else None
        rows = await self.catalog.page(cursor, limit, owner=owner)
        last = rows[-1] if len(rows) == limit else None
        return rows, Cursor(last.completed_at, last.photo_id).encode() if last else None
