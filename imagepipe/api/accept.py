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

from arq.connections import ArqRedis

from imagepipe import keys, metrics, queue
from imagepipe.api.idempotency import Reservation
from imagepipe.api.ingest import limit_bytes, store_original
from imagepipe.api.services import Services
from imagepipe.errors import IdempotencyMismatch
from imagepipe.ids import new_photo_id, ticket_id_for
from imagepipe.models import Original, Ticket
from imagepipe.replication import log as replication
from imagepipe.tickets import TicketStore

log = logging.getLogger(__name__)


async def accept_upload(
    services: Services, body: AsyncIterator[bytes], idempotency_key: str | None
) -> tuple[Ticket, int]:
    """Accept one upload's body: its ticket, and the queue depth it was accepted at."""
    depth = await services.refuse_if_overloaded()
    reservation = await services.idempotency.reserve(idempotency_key) if idempotency_key else None
    if reservation is not None and reservation.ticket_id is not None:
        return await _replay(services, body, reservation), depth
    # a keyed upload's ids come from its key, so a retry after a crash converges on one photo;
    # any ticket id comes from its photo id, so the audit can recreate a ticket Redis lost
    photo_id = reservation.photo_id if reservation else new_photo_id()
    ticket_id = ticket_id_for(services.settings.callback_secret.get_secret_value(), photo_id)
    try:
        stored = await store_original(body, services.primary, services.settings, photo_id)
        ticket = await accept(
            services.redis, services.tickets, stored.original(), ticket_id, reservation=reservation
        )
    except BaseException:
        if reservation is not None:
            await services.idempotency.release(reservation)
        raise
    metrics.UPLOAD_BYTES.inc(stored.info.size)
    metrics.TICKET_TRANSITIONS.labels("queued").inc()
    return ticket, depth + 1  # + this upload's job


async def _replay(services: Services, body: AsyncIterator[bytes], earlier: Reservation) -> Ticket:
    """The same key again: same content -> the same ticket; different content -> 422."""
    digest = hashlib.sha256()
    async for chunk in limit_bytes(body, services.settings.max_upload_bytes):
        digest.update(chunk)
    if digest.hexdigest() != earlier.sha256:
        raise IdempotencyMismatch("this Idempotency-Key was used for a different file")
    assert earlier.ticket_id is not None
    return await services.tickets.get(earlier.ticket_id)


async def accept(
    redis: ArqRedis,
    tickets: TicketStore,
    original: Original,
    ticket_id: str,
    *,
    reservation: Reservation | None = None,
    lane: str = keys.UPLOADS_QUEUE,
) -> Ticket:
    """Create the ticket, log the original for backup, and enqueue its processing."""
    ticket = Ticket(id=ticket_id, **original.original_facts())
    async with redis.pipeline(transaction=True) as pipe:
        tickets.create(pipe, ticket)
        replication.append(pipe, {ticket.original_key: ticket.bytes})
        if reservation is not None:
            reservation.commit(pipe, ticket.id, ticket.sha256)
        await pipe.execute()
    await queue.enqueue_processing(redis, ticket.id, queue=lane)
    log.info("upload accepted", extra={"ticket_id": ticket.id, "photo_id": ticket.photo_id})
    return ticket
