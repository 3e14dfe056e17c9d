"""Ticket routes, the ones browsers call most: poll one (ETag/304, Retry-After), poll many,
or follow one's event stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from imagepipe.api.deps import ServicesDep
from imagepipe.api.polls import poll_many
from imagepipe.api.services import Services
from imagepipe.api.views import cached_content, json_bytes, ticket_json, ticket_view, versioned_json
from imagepipe.errors import BadRequest, NotFound

router = APIRouter(tags=["tickets"])
MAX_BATCH = 100
HEARTBEAT_S = 15


@router.get("/tickets/{ticket_id}")
async def get_ticket(ticket_id: str, request: Request, services: ServicesDep) -> Response:
    """One ticket; poll it until `status` is completed or failed (honour Retry-After)."""
    ticket = await services.tickets.get(ticket_id)
    backup = await services.replication.ticket_backup(ticket)
    headers = {} if ticket.status.terminal else {"Retry-After": str(await services.retry_after())}
    # the body is a function of these three: a poll that changes nothing is answered with
    # no body built at all
    etag = f'"{ticket.id}-{ticket.version}-{backup.value}"'
    return versioned_json(request, etag, lambda: ticket_view(ticket, backup), headers)


@router.get("/tickets")
async def get_tickets(
    request: Request, services: ServicesDep, ids: Annotated[str, Query(max_length=4000)]
) -> Response:
    """Many tickets at once (`?ids=a,b,c`); unknown ids come back as null."""
    wanted = list(dict.fromkeys(i.strip() for i in ids.split(",") if i.strip()))
    if not 0 < len(wanted) <= MAX_BATCH:
        raise BadRequest(f"ids must name 1 to {MAX_BATCH} tickets")
    content, waiting = await poll_many(services, wanted)
    headers = {"Retry-After": str(await services.retry_after())} if waiting else {}
    return cached_content(request, content, headers=headers)


@router.get("/tickets/{ticket_id}/events")
async def ticket_events(
    ticket_id: str,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Server-Sent Events: the ticket on every change, ending after a terminal state."""
    await services.tickets.get(ticket_id)  # 404 before the stream starts
    seen = _event_id(last_event_id or "")
    return EventSourceResponse(_changes(services, ticket_id, seen), ping=HEARTBEAT_S)


def _event_id(header: str) -> int:
    """A Last-Event-ID as a ticket version; 0 when it is none (int() would 500 on "²")."""
    return int(header) if header.isascii() and header.isdigit() and len(header) <= 18 else 0


async def _changes(services: Services, ticket_id: str, seen: int) -> AsyncIterator[ServerSentEvent]:
    with services.events.watch(ticket_id) as changed:
        while True:
            changed.clear()  # clear before reading: a change after this read still wakes us
            try:
                ticket = await services.tickets.get(ticket_id)
            except NotFound:
                return  # its photo was deleted (or the ticket expired): the stream ends

            if ticket.version > seen:
                seen = ticket.version
                body = json_bytes(await ticket_json(services.replication, ticket)).decode()
                yield ServerSentEvent(data=body, id=str(ticket.version), event="ticket")
            if ticket.status.terminal:
                return
            # re-read at least every heartbeat: a missed wake-up costs one heartbeat at most
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), HEARTBEAT_S)
