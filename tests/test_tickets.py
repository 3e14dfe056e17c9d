"""Ticket state machine (pure) and the Redis-backed store (real Valkey)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.errors import Conflict, NotFound
from imagepipe.ids import new_photo_id, new_ticket_id
from imagepipe.models import CallbackEvent, Derivative, Ticket, TicketStatus
from imagepipe.tickets import TicketStore, advance


def make_ticket(status: TicketStatus = TicketStatus.QUEUED) -> Ticket:
    return Ticket(
        id=new_ticket_id(),
        photo_id=new_photo_id(),
        original_key="originals/x.jpg",
        sha256="0" * 64,
        format="JPEG",
        width=10,
        height=10,
        bytes=100,
        status=status,
    )


def event(ticket: Ticket, kind: str, attempt: int = 1, **extra: object) -> CallbackEvent:
    return CallbackEvent.model_validate(
        {
            "type": kind,
            "ticket_id": ticket.id,
            "photo_id": ticket.photo_id,
            "attempt": attempt,
            **extra,
        }
    )


SIZE = Derivative(key="derivatives/x/t.jpg", width=100, height=75, bytes=10, sha256="a" * 64)


def test_ticket_ids_are_unguessable() -> None:
    ids = {new_ticket_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 24 for i in ids)  # 18 random bytes = 144 bits


def test_forward_transitions_bump_the_version() -> None:
    ticket = make_ticket()
    started = advance(ticket, event(ticket, "processing.started"))
    assert started is not None and started.status is TicketStatus.PROCESSING
    done = advance(started, event(ticket, "processing.completed", sizes={"t": SIZE}))
    assert done is not None and done.status is TicketStatus.COMPLETED
    assert done.sizes["t"] == SIZE
    assert done.version == ticket.version + 2


def test_completion_may_arrive_before_its_start() -> None:
    ticket = make_ticket()
    done = advance(ticket, event(ticket, "processing.completed"))
    assert done is not None and done.status is TicketStatus.COMPLETED


@pytest.mark.parametrize("terminal", [TicketStatus.COMPLETED, TicketStatus.FAILED])
def test_terminal_tickets_never_move(terminal: TicketStatus) -> None:
    ticket = make_ticket(terminal)
    with pytest.raises(Conflict):
        advance(ticket, event(ticket, "processing.started"))
    other = "processing.failed" if terminal is TicketStatus.COMPLETED else "processing.completed"
    with pytest.raises(Conflict):
        advance(ticket, event(ticket, other))


def test_same_state_again_is_a_no_op_unless_a_new_attempt() -> None:
    ticket = make_ticket(TicketStatus.PROCESSING).model_copy(update={"attempts": 1})
    assert advance(ticket, event(ticket, "processing.started", attempt=1)) is None
    retried = advance(ticket, event(ticket, "processing.started", attempt=2))
    assert retried is not None and retried.attempts == 2


def test_failure_carries_its_reason() -> None:
    ticket = make_ticket()
    failed = advance(ticket, event(ticket, "processing.failed", error="not an image"))
    assert failed is not None and failed.error == "not an image"


async def test_store_roundtrip_ttl_and_batch(redis: Redis) -> None:
    store = TicketStore(redis, retention_s=60)
    ticket = make_ticket()
    async with redis.pipeline(transaction=True) as pipe:
        store.create(pipe, ticket)
        await pipe.execute()
    assert await store.get(ticket.id) == ticket
    assert 0 < await redis.ttl(keys.ticket(ticket.id)) <= 60
    assert await store.ticket_for_photo(ticket.photo_id) == ticket.id
    many = await store.get_many([ticket.id, new_ticket_id(), "bad id!"])
    assert many == [ticket, None, None]


@pytest.mark.parametrize("bad", ["", "x", "../../etc/passwd", "A" * 25, "%00" * 8])
async def test_malformed_or_unknown_ids_are_not_found(redis: Redis, bad: str) -> None:
    with pytest.raises(NotFound):
        await TicketStore(redis, 60).get(bad)


async def test_apply_is_atomic_and_keeps_the_ttl(redis: Redis) -> None:
    store = TicketStore(redis, retention_s=60)
    ticket = make_ticket()
    async with redis.pipeline(transaction=True) as pipe:
        store.create(pipe, ticket)
        await pipe.execute()
    calls: list[int] = []
    updated = await store.apply(
        event(ticket, "processing.completed"),
        extra=lambda pipe, t: calls.append(t.version),
    )
    assert updated is not None and calls == [updated.version]
    assert await store.apply(event(ticket, "processing.completed")) is None
    assert calls == [updated.version]  # the extra commands ran once, with the real transition
    assert await redis.ttl(keys.ticket(ticket.id)) > 0


async def test_creating_a_ticket_again_never_moves_it_back(redis: Redis) -> None:
    store, ticket = TicketStore(redis, retention_s=60), make_ticket()

    async def create() -> None:
        async with redis.pipeline(transaction=True) as pipe:
            store.create(pipe, ticket)
            await pipe.execute()

    await create()
    await store.apply(event(ticket, "processing.completed", sizes={"t": SIZE}))
    await create()  # the upload retried, or the audit re-accepting its photo
    assert (await store.get(ticket.id)).status is TicketStatus.COMPLETED
