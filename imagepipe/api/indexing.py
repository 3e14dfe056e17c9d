"""(5) Indexing: what the web tier does with a worker's callback, and the index it keeps.

apply_once(webhook_id, event)  a redelivered webhook-id is acknowledged, not reapplied;
                               otherwise the event moves the ticket forward, and on
                               completion the photo is indexed:
  manifest on primary (before the ticket completes: a completed ticket has one), then in
  the ticket's own transaction its derivatives onto the replication log and the photo
  into the gallery
manifest(photo_id)             an indexed photo's record, or 404
page(before, limit)            the gallery, newest first
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from imagepipe import keys, metrics
from imagepipe.errors import Conflict, NotFound
from imagepipe.ids import is_photo_id
from imagepipe.models import CallbackEvent, PhotoManifest, Ticket, TicketStatus
from imagepipe.replication import log as replication
from imagepipe.storage import ObjectNotFound, Storage
from imagepipe.tickets import TicketStore

log = logging.getLogger(__name__)
SEEN_TTL_S = 15 * 60  # longer than the ±5 min signature window: older replays fail the signature


def manifest_of(ticket: Ticket, event: CallbackEvent) -> PhotoManifest:
    """The photo's record from its ticket and the completion event (upright dimensions)."""
    facts = ticket.original_facts()
    facts.update(width=event.width or ticket.width, height=event.height or ticket.height)
    return PhotoManifest(
        **facts, ticket_id=ticket.id, created_at=ticket.created_at, sizes=event.sizes
    )


class PhotoIndex:
    """The web tier's index of processed photos: manifests on primary, the gallery in Redis."""

    def __init__(self, redis: Redis, primary: Storage, tickets: TicketStore) -> None:
        self.redis, self.primary, self.tickets = redis, primary, tickets

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
        if event.type != "processing.completed" or ticket.status.terminal:
            return await self.tickets.apply(event)
        manifest_key = keys.manifest(ticket.photo_id)
        record = manifest_of(ticket, event).model_dump_json(indent=1).encode()
        written = await self.primary.put_bytes(manifest_key, record)
        new_objects = {f.key: f.bytes for d in event.sizes.values() for f in d.files}
        new_objects[manifest_key] = written.size

        def index(pipe: Pipeline, updated: Ticket) -> None:
            if updated.status is TicketStatus.COMPLETED:
                replication.append(pipe, new_objects)
                pipe.zadd(keys.GALLERY, {updated.photo_id: updated.updated_at})

        return await self.tickets.apply(event, index)

    async def manifest(self, photo_id: str) -> PhotoManifest:
        """The indexed photo's record, or 404 (also while it is still processing)."""
        if not is_photo_id(photo_id):
            raise NotFound("no such photo")
        try:
            raw = await self.primary.read(keys.manifest(photo_id))
        except ObjectNotFound:
            raise NotFound("no such photo (or it is still processing)") from None
        return PhotoManifest.model_validate_json(raw)

    async def page(self, before: float | None, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` (photo id, completed at), newest first, completed before ``before``."""
        top = f"({before}" if before is not None else "+inf"
        rows = await self.redis.zrevrangebyscore(
            keys.GALLERY, top, "-inf", start=0, num=limit, withscores=True
        )
        return [(raw.decode(), score) for raw, score in rows]
