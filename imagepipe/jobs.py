"""(3) Register an accepted upload and enqueue its work.

One Redis transaction makes the ticket, links the photo to it, commits the idempotency key
and puts the original on the replication log; then the process_photo job is enqueued under a
deterministic id, so the queue can never hold one ticket's work twice.
"""

from __future__ import annotations

import logging

from arq.connections import ArqRedis

from imagepipe import keys, replication
from imagepipe.idempotency import IdempotencyKeys, Reservation
from imagepipe.models import CallbackEvent, Ticket
from imagepipe.tickets import TicketStore
from imagepipe.uploads import StoredOriginal

log = logging.getLogger(__name__)

PROCESS_PHOTO = "process_photo"
SEND_CALLBACK = "send_callback"


async def register(
    redis: ArqRedis,
    tickets: TicketStore,
    stored: StoredOriginal,
    ticket_id: str,
    idempotency: tuple[IdempotencyKeys, Reservation] | None = None,
    queue: str = keys.UPLOADS_QUEUE,
) -> Ticket:
    """Create the ticket, log the original for backup, and enqueue its processing."""
    ticket = Ticket(
        id=ticket_id,
        photo_id=stored.photo_id,
        original_key=stored.key,
        sha256=stored.info.sha256 or "",
        format=stored.probe.format,
        width=stored.probe.width,
        height=stored.probe.height,
        bytes=stored.info.size,
    )
    async with redis.pipeline(transaction=True) as pipe:
        tickets.create(pipe, ticket)
        replication.append(pipe, {stored.key: stored.info.size})
        if idempotency is not None:
            store, reservation = idempotency
            store.commit(pipe, reservation, ticket.id, ticket.sha256)
        await pipe.execute()
    await enqueue_processing(redis, ticket.id, queue=queue)
    log.info("upload accepted", extra={"ticket_id": ticket.id, "photo_id": ticket.photo_id})
    return ticket


async def enqueue_processing(
    redis: ArqRedis, ticket_id: str, attempt: int = 0, queue: str = keys.UPLOADS_QUEUE
) -> bool:
    """Enqueue process_photo(ticket_id); False when that job id is already queued or running."""
    job = await redis.enqueue_job(
        PROCESS_PHOTO,
        ticket_id,
        _job_id=keys.process_job_id(ticket_id, attempt),
        _queue_name=queue,
    )
    return job is not None


async def enqueue_callback(
    redis: ArqRedis, event: CallbackEvent, webhook_id: str, queue: str = keys.UPLOADS_QUEUE
) -> None:
    """Enqueue one signed callback delivery as its own small, retried job."""
    await redis.enqueue_job(
        SEND_CALLBACK,
        webhook_id,
        event.model_dump_json(),
        _job_id=keys.callback_job_id(webhook_id),
        _queue_name=queue,
    )
