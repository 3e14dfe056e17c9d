"""`POST /internal/callbacks`: the worker reports; the web tier verifies, indexes, completes.

Signed per Standard Webhooks. Each event is applied once: the ticket only moves forward, and
a replayed webhook-id is acknowledged without being applied again. When a ticket completes,
the photo's manifest is written to primary and its derivatives go onto the replication log
in the same transaction that completes the ticket.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from redis.asyncio.client import Pipeline

from imagepipe import keys, metrics, replication, webhooks
from imagepipe.api.deps import ServicesDep
from imagepipe.api.services import Services
from imagepipe.errors import BadRequest, Conflict, PayloadTooLarge
from imagepipe.models import CallbackEvent, PhotoManifest, Ticket, TicketStatus

router = APIRouter(tags=["internal"])
log = logging.getLogger(__name__)
MAX_CALLBACK_BYTES = 256 * 1024
SEEN_TTL_S = 15 * 60  # longer than the ±5 min signature window: older replays fail the signature


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """A JSON schema with its ``$defs`` references written in place (self-contained)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _documented_request() -> dict[str, Any]:
    """The signed JSON event and its Standard Webhooks headers, for the OpenAPI schema.

    The route reads the raw body itself: the signature covers its exact bytes, so it is
    verified before anything parses them.
    """
    schema = CallbackEvent.model_json_schema()
    headers = [
        {"name": name, "in": "header", "required": True, "schema": {"type": "string"}}
        for name in webhooks.HEADERS
    ]
    body = {"application/json": {"schema": _inline_refs(schema, schema.get("$defs", {}))}}
    return {"parameters": headers, "requestBody": {"required": True, "content": body}}


async def _read_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_CALLBACK_BYTES:
            raise PayloadTooLarge("callback body too large")
    return body


def _parse(body: bytes) -> CallbackEvent:
    try:
        return CallbackEvent.model_validate_json(body)
    except ValidationError as exc:
        raise BadRequest(f"not a callback event: {exc.error_count()} error(s)") from None


def _manifest(ticket: Ticket, event: CallbackEvent) -> PhotoManifest:
    facts = ticket.original_facts()
    # the manifest records the photo upright (the worker applied its EXIF orientation)
    facts.update(width=event.width or ticket.width, height=event.height or ticket.height)
    return PhotoManifest(
        **facts, ticket_id=ticket.id, created_at=ticket.created_at, sizes=event.sizes
    )


async def index_event(services: Services, event: CallbackEvent) -> Ticket | None:
    """Apply one event to its ticket; on completion index the photo and log it for backup."""
    ticket = await services.tickets.get(event.ticket_id)
    if ticket.photo_id != event.photo_id:
        raise Conflict("the event's photo is not this ticket's photo")
    extra = None
    if event.type == "processing.completed" and not ticket.status.terminal:
        manifest_key = keys.manifest(ticket.photo_id)
        # written before the ticket completes, so a completed ticket always has its manifest
        written = await services.primary.put_bytes(
            manifest_key, _manifest(ticket, event).model_dump_json(indent=1).encode()
        )
        new_objects = {f.key: f.bytes for d in event.sizes.values() for f in d.files}
        new_objects[manifest_key] = written.size

        def extra(pipe: Pipeline, updated: Ticket) -> None:
            if updated.status is TicketStatus.COMPLETED:
                replication.append(pipe, new_objects)
                pipe.zadd(keys.GALLERY, {updated.photo_id: updated.updated_at})

    return await services.tickets.apply(event, extra)


@router.post("/internal/callbacks", openapi_extra=_documented_request())
async def receive_callback(request: Request, services: ServicesDep) -> dict[str, Any]:
    """A worker's signed report (processing.started | processing.completed | processing.failed)."""
    body = await _read_body(request)
    webhook_id = webhooks.verify(services.settings.callback_secrets, request.headers, body)
    if await services.redis.exists(keys.webhook_seen(webhook_id)):
        log.info("callback %s duplicate: acknowledged, not applied again", webhook_id)
        return {"status": "duplicate", "webhook_id": webhook_id}
    event = _parse(body)
    updated = await index_event(services, event)
    await services.redis.set(keys.webhook_seen(webhook_id), "1", ex=SEEN_TTL_S)
    outcome = "applied" if updated else "unchanged"
    if updated is not None:
        metrics.TICKET_TRANSITIONS.labels(updated.status.value).inc()
    log.info(
        "callback %s %s",
        event.type,
        outcome,
        extra={"ticket_id": event.ticket_id, "photo_id": event.photo_id},
    )
    return {"status": outcome, "webhook_id": webhook_id}
