"""The accept path: everything `POST /photos` does before its 202.

    accept_upload   shed load -> reserve the Idempotency-Key -> (1) ingest the original
                    -> accept; the same key again replays the first upload's ticket
    accept          the transaction: (2) the ticket and its photo -> ticket link, (4) the
                    original onto the replication log, the key's result; then (3)
                    process_photo enqueued under a deterministic id

The audit uses `accept` too, to re-accept an original that Redis forgot.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from arq.connections import ArqRedis

from imagepipe import keys, metrics, queue
from imagepipe.api.idempotency import Reservation
from imagepipe.api.ingest import StoredOriginal, limit_bytes, store_original
from imagepipe.api.services import Services
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.errors import CatalogUnavailable, IdempotencyMismatch, PhotoIdTaken
from imagepipe.ids import new_photo_id, new_ticket_id
from imagepipe.models import Original, Ticket, Visibility
from imagepipe.replication import log as replication
from imagepipe.tickets import TicketStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    """Whose upload this is, and what its request asked for."""

    owner: str
    visibility: Visibility = "private"
    idempotency_key: str | None = None
    source: Path | None = None  # the body as an fsynced file on primary (a resumable upload)


async def accept_upload(
    services: Services, body: AsyncIterator[bytes], upload: Upload
) -> tuple[Ticket, int]:
    """Accept one upload's body: its ticket, and the queue depth it was accepted at."""
    depth = await services.refuse_if_overloaded()
    key = upload.idempotency_key
    # an owner's keys are theirs alone: another owner's same key is another upload
    reservation = await services.idempotency.reserve(key, upload.owner) if key else None
    if reservation is not None and reservation.done:
        return await _replay(services, body, reservation), depth
    # a keyed upload's ids are its key's record's, so a retry after a crash converges on one photo
    photo_id, ticket_id = (
        (reservation.photo_id, reservation.ticket_id)
        if reservation
        else (new_photo_id(), new_ticket_id())
    )
    try:
        stored = await _ingest(services, body, photo_id, reservation, upload.source)
        original = stored.original(upload.owner, upload.visibility)
        ticket = await _accept_stored(services, stored, original, ticket_id, reservation)
    except BaseException:
        if reservation is not None:
            await services.idempotency.release(reservation)
        raise
    metrics.UPLOAD_BYTES.inc(stored.info.size)
    metrics.TICKET_TRANSITIONS.labels("queued").inc()
    return ticket, depth + 1  # + this upload's job


async def _accept_stored(
    services: Services,
    stored: StoredOriginal,
    original: Original,
    ticket_id: str,
    reservation: Reservation | None,
) -> Ticket:
    """`accept`; when the catalog is down, the original just written goes again (503)."""
    try:
        return await accept(
            services.redis,
            services.tickets,
            services.catalog,
            original,
            ticket_id,
            reservation=reservation,
        )
    except CatalogUnavailable:
        if reservation is None or not reservation.retry:
            # made by this request and named by nothing: the refusal leaves nothing behind
            await services.primary.delete(stored.key)
        raise


async def _ingest(
    services: Services,
    body: AsyncIterator[bytes],
    photo_id: str,
    reservation: Reservation | None,
    source: Path | None,
) -> StoredOriginal:
    """(1) The original, written once; a retry whose photo id holds other bytes is a 422."""
    retry = reservation is not None and reservation.retry
    try:
        settings, primary = services.settings, services.primary
        return await store_original(body, primary, settings, photo_id, retry=retry, source=source)
    except PhotoIdTaken:
        if not retry:
            raise  # a fresh random id that is taken: 409, and nothing was changed
        raise IdempotencyMismatch("this Idempotency-Key was used for a different file") from None


async def _replay(services: Services, body: AsyncIterator[bytes], earlier: Reservation) -> Ticket:
    """The same key again: same content -> the same ticket; different content -> 422."""
    digest = hashlib.sha256()
    async for chunk in limit_bytes(body, services.settings.max_upload_bytes):
        digest.update(chunk)
    if digest.hexdigest() != earlier.sha256:
        raise IdempotencyMismatch("this Idempotency-Key was used for a different file")
    return await services.tickets.get(earlier.ticket_id)


async def accept(
    redis: ArqRedis,
    tickets: TicketStore,
    catalog: PhotoCatalog,
    original: Original,
    ticket_id: str,
    *,
    reservation: Reservation | None = None,
    lane: str = keys.UPLOADS_QUEUE,
) -> Ticket:
    """Record the photo in the catalog, create the ticket, log the original for backup, and
    enqueue its processing."""
    ticket = Ticket(id=ticket_id, **original.original_facts())
    await catalog.accepted(ticket)  # first: a ticket never names a photo the catalog lacks
    async with redis.pipeline(transaction=True) as pipe:
        tickets.create(pipe, ticket)
        replication.append(pipe, {ticket.original_key: ticket.bytes}, tickets.retention_s)
        if reservation is not None:
            reservation.commit(pipe, ticket.id, ticket.sha256)
        await pipe.execute()
    await queue.enqueue_processing(redis, ticket.id, queue=lane)
    log.info("upload accepted", extra={"ticket_id": ticket.id, "photo_id": ticket.photo_id})
    return ticket
