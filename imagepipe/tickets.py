"""(2) Tickets: the record of one upload's progress, with forward-only status transitions.

    queued -> processing -> completed | failed

A ticket only moves forward; a terminal ticket never changes. Every change bumps `version`
(the ETag and the SSE event id) and is announced on the ticket's pub/sub channel.

A store given a ``render`` (the web tier's) also keeps each ticket's poll view beside it,
written in the same transaction and expiring with it, so a poll is one read of Valkey
(`api.polls`). A store without one (the audit's) drops a view it cannot rewrite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import WatchError

from imagepipe import keys
from imagepipe.errors import Conflict, NotFound
from imagepipe.ids import is_ticket_id
from imagepipe.models import CallbackEvent, Ticket, TicketStatus, now

EVENT_STATUS = {
    "processing.started": TicketStatus.PROCESSING,
    "processing.completed": TicketStatus.COMPLETED,
    "processing.failed": TicketStatus.FAILED,
}

Extra = Callable[[Pipeline, Ticket], None]
Render = Callable[[Ticket], bytes]  # a ticket's poll view, as `keys.ticket_view` holds it


def advance(ticket: Ticket, event: CallbackEvent) -> Ticket | None:
    """The ticket after ``event``, or None when the event is already reflected in it."""
    target = EVENT_STATUS[event.type]
    if ticket.status.terminal:
        if target is ticket.status:
            return None
        raise Conflict(f"ticket is already {ticket.status.value}")
    if target.rank < ticket.status.rank:
        raise Conflict(f"ticket is {ticket.status.value}; {event.type} would move it backwards")
    if target is ticket.status and event.attempt <= ticket.attempts:
        return None
    completed = target is TicketStatus.COMPLETED
    return ticket.model_copy(
        update={
            "status": target,
            "attempts": max(ticket.attempts, event.attempt),
            "error": event.error if target is TicketStatus.FAILED else None,
            "sizes": event.sizes if completed else ticket.sizes,
            **(_upright(event) if completed else {}),
            "updated_at": now(),
            "version": ticket.version + 1,
        }
    )


def _upright(event: CallbackEvent) -> dict[str, int]:
    """The photo's size as it is shown (EXIF orientation applied), where the event has it.

    Until then the ticket holds the size the upload's header gave, in stored orientation.
    """
    return {"width": event.width, "height": event.height} if event.width and event.height else {}


class TicketStore:
    """Tickets in Redis, kept for the published retention."""

    def __init__(self, redis: Redis, retention_s: int, render: Render | None = None) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.render = render

    def _write_view(self, pipe: Pipeline, ticket: Ticket, ttl_ms: int, nx: bool = False) -> None:
        """The ticket's poll view, expiring with it; without a renderer (or a TTL to give it),
        no view, never a stale one."""
        view = keys.ticket_view(ticket.id)
        if self.render is None or ttl_ms <= 0:
            pipe.delete(view)
        else:
            pipe.set(view, self.render(ticket), px=ttl_ms, nx=nx)

    def create(self, pipe: Pipeline, ticket: Ticket) -> None:
        """Write a new ticket (and the photo -> ticket link) inside the caller's transaction."""
        # NX: a second accept of the same ticket (a retry that raced its first attempt) never
        # resets it; ticket ids are random, so only that retry can name an existing one
        pipe.set(keys.ticket(ticket.id), ticket.model_dump_json(), ex=self.retention_s, nx=True)
        pipe.set(keys.photo_ticket(ticket.photo_id), ticket.id, ex=self.retention_s)
        self._write_view(pipe, ticket, self.retention_s * 1000, nx=True)

    async def restore(self, ticket: Ticket, ttl_s: int) -> bool:
        """Put back a ticket Redis lost, for the ``ttl_s`` of retention it had left.

        Never over a ticket that exists (it may have moved on); False when one did.
        """
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.ticket(ticket.id), ticket.model_dump_json(), ex=ttl_s, nx=True)
            pipe.set(keys.photo_ticket(ticket.photo_id), ticket.id, ex=ttl_s, nx=True)
            # whichever ticket is there now, a view of it left from before is not to be
            # trusted: polls read the ticket itself until its next change writes a view
            pipe.delete(keys.ticket_view(ticket.id))
            created, *_ = await pipe.execute()
        return bool(created)

    async def get(self, ticket_id: str) -> Ticket:
        """The ticket, or NotFound for unknown, expired or malformed ids."""
        if not is_ticket_id(ticket_id):
            raise NotFound("no such ticket")
        raw = await self.redis.get(keys.ticket(ticket_id))
        if raw is None:
            raise NotFound("no such ticket (unknown or expired)")
        return Ticket.model_validate_json(raw)

    async def get_many(self, ticket_ids: Sequence[str]) -> list[Ticket | None]:
        """Tickets in the order asked (None where unknown), in one round trip."""
        wellformed = [t if is_ticket_id(t) else None for t in ticket_ids]
        lookups = [keys.ticket(t) for t in wellformed if t]
        raws = iter(await self.redis.mget(lookups) if lookups else [])
        found = [next(raws) if t else None for t in wellformed]
        return [Ticket.model_validate_json(r) if r else None for r in found]

    async def ticket_for_photo(self, photo_id: str) -> str | None:
        """The id of the ticket that made this photo, while it is retained."""
        raw = await self.redis.get(keys.photo_ticket(photo_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def revise(self, ticket_id: str, **facts: Any) -> None:
        """Change facts of the photo that its ticket carries (visibility), keeping status,
        version and TTL: nothing a client sees of the ticket changes. A gone ticket is left."""
        key = keys.ticket(ticket_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return
                    revised = Ticket.model_validate_json(raw).model_copy(update=facts)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, revised.model_dump_json(), keepttl=True)
                    await pipe.execute()
                    return
                except WatchError:
                    continue  # it moved on meanwhile: revise what it is now

    async def apply(self, event: CallbackEvent, extra: Extra | None = None) -> Ticket | None:
        """Apply a callback event atomically; returns the new ticket, or None if a no-op.

        ``extra`` adds commands to the same transaction, so (for example) the derivatives go on
        the replication log exactly when the ticket completes, never twice.
        """
        key = keys.ticket(event.ticket_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    return await self._apply_once(pipe, key, event, extra)
                except WatchError:
                    continue  # someone else changed it first: re-read and decide again

    async def _apply_once(
        self, pipe: Pipeline, key: str, event: CallbackEvent, extra: Extra | None
    ) -> Ticket | None:
        await pipe.watch(key)
        raw = await pipe.get(key)
        if raw is None:
            raise NotFound("no such ticket")
        ttl_ms = int(await pipe.pttl(key)) if self.render else 0  # the view expires with it
        updated = advance(Ticket.model_validate_json(raw), event)
        if updated is None:
            await pipe.unwatch()  # type: ignore[no-untyped-call]
            return None
        pipe.multi()  # type: ignore[no-untyped-call]
        pipe.set(key, updated.model_dump_json(), keepttl=True)
        self._write_view(pipe, updated, ttl_ms)
        if extra is not None:
            extra(pipe, updated)
        pipe.publish(keys.ticket_channel(updated.id), str(updated.version))
        await pipe.execute()
        return updated
