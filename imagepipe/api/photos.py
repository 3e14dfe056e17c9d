"""Photo routes: upload (the synchronous half of the flow), metadata, and derivatives."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.requests import ClientDisconnect

from imagepipe import jobs, keys, metrics
from imagepipe.api.bodies import file_stream, with_deadline
from imagepipe.api.deps import ServicesDep
from imagepipe.api.services import Services
from imagepipe.api.tickets import ticket_body
from imagepipe.api.views import iso, not_modified, sizes_view
from imagepipe.errors import (
    BadRequest,
    IdempotencyMismatch,
    ImagepipeError,
    NotFound,
    PayloadTooLarge,
)
from imagepipe.idempotency import Reservation
from imagepipe.models import PhotoManifest, Ticket
from imagepipe.storage import ObjectNotFound
from imagepipe.tickets import new_photo_id, new_ticket_id
from imagepipe.uploads import limit_bytes, store_original

router = APIRouter(tags=["photos"])
PHOTO_ID = re.compile(r"^[0-9a-f]{20}$")
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file
IMMUTABLE = "public, max-age=31536000, immutable"


async def _client_body(request: Request, idle_s: float) -> AsyncIterator[bytes]:
    try:
        async for chunk in with_deadline(request.stream(), idle_s):
            yield chunk
    except ClientDisconnect:
        raise BadRequest("the client went away mid-upload") from None


def _body(request: Request, services: Services) -> AsyncIterator[bytes]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > services.settings.max_upload_bytes + MULTIPART_SLACK:
        raise PayloadTooLarge(
            f"the upload is larger than {services.settings.max_upload_bytes} bytes"
        )
    idle_s = services.settings.upload_idle_timeout_s
    return file_stream(request.headers.get("content-type", ""), _client_body(request, idle_s))


async def _accepted(services: Services, ticket: Ticket) -> JSONResponse:
    body = await ticket_body(services, ticket)
    headers = {
        "Location": f"/tickets/{ticket.id}",
        "Retry-After": str(await services.retry_after()),
    }
    return JSONResponse(body, status_code=202, headers=headers)


async def _replay(services: Services, body: AsyncIterator[bytes], earlier: Reservation) -> Response:
    """The same key again: same content -> the same ticket; different content -> 422."""
    digest = hashlib.sha256()
    async for chunk in limit_bytes(body, services.settings.max_upload_bytes):
        digest.update(chunk)
    if digest.hexdigest() != earlier.sha256:
        raise IdempotencyMismatch("this Idempotency-Key was used for a different file")
    assert earlier.ticket_id is not None
    return await _accepted(services, await services.tickets.get(earlier.ticket_id))


@router.post("/photos", status_code=202)
async def upload_photo(
    request: Request,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Upload a photo (multipart field `file`, or the raw image); 202 with its ticket."""
    started = time.perf_counter()
    try:
        response = await _upload(request, services, idempotency_key)
    except ImagepipeError as exc:
        metrics.UPLOADS.labels(str(exc.status)).inc()
        raise
    metrics.UPLOADS.labels("accepted").inc()
    metrics.ACCEPT_SECONDS.observe(time.perf_counter() - started)
    return response


async def _upload(request: Request, services: Services, idempotency_key: str | None) -> Response:
    await services.refuse_if_overloaded()
    body = _body(request, services)
    reservation = await services.idempotency.reserve(idempotency_key) if idempotency_key else None
    if reservation is not None and reservation.ticket_id is not None:
        return await _replay(services, body, reservation)
    try:
        photo_id, ticket_id = (
            (reservation.photo_id, reservation.new_ticket_id)
            if reservation
            else (new_photo_id(), new_ticket_id())
        )
        stored = await store_original(body, services.primary, services.settings, photo_id)
        held = (services.idempotency, reservation) if reservation else None
        ticket = await jobs.register(services.redis, services.tickets, stored, ticket_id, held)
    except BaseException:
        if reservation is not None:
            await services.idempotency.release(reservation)
        raise
    metrics.UPLOAD_BYTES.inc(stored.info.size)
    metrics.TICKET_TRANSITIONS.labels("queued").inc()
    return await _accepted(services, ticket)


@router.get("/photos")
async def list_photos(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 24,
    before: Annotated[float | None, Query(description="`next` of the previous page")] = None,
) -> dict[str, Any]:
    """Recently processed photos, newest first, a page at a time."""
    top = f"({before}" if before is not None else "+inf"
    rows = await services.redis.zrevrangebyscore(
        keys.GALLERY, top, "-inf", start=0, num=limit, withscores=True
    )
    names = [s.name for s in services.settings.sizes]
    photos = [
        {
            "id": (photo_id := raw.decode()),
            "url": f"/photos/{photo_id}",
            "sizes": {name: f"/photos/{photo_id}/{name}" for name in names},
            "completed_at": iso(score),
        }
        for raw, score in rows
    ]
    return {"photos": photos, "next": rows[-1][1] if len(rows) == limit else None}


async def load_manifest(services: Services, photo_id: str) -> PhotoManifest:
    """The indexed photo's record from primary, or 404."""
    if not PHOTO_ID.match(photo_id):
        raise NotFound("no such photo")
    try:
        raw = await services.primary.read(keys.manifest(photo_id))
    except ObjectNotFound:
        raise NotFound("no such photo (or it is still processing)") from None
    return PhotoManifest.model_validate_json(raw)


@router.get("/photos/{photo_id}")
async def get_photo(photo_id: str, services: ServicesDep) -> dict[str, Any]:
    """A processed photo: dimensions, every size's URL, and the backup state."""
    manifest = await load_manifest(services, photo_id)
    object_keys = [manifest.original_key, *(d.key for d in manifest.sizes.values())]
    backup = await services.replication.backup_state([*object_keys, keys.manifest(photo_id)])
    return {
        "id": manifest.photo_id,
        "ticket_id": manifest.ticket_id,
        "format": manifest.format,
        "width": manifest.width,
        "height": manifest.height,
        "bytes": manifest.bytes,
        "sha256": manifest.sha256,
        "sizes": sizes_view(manifest.photo_id, manifest.sizes),
        "backup": backup.value,
    }


@router.get("/photos/{photo_id}/{size}")
async def get_photo_size(
    photo_id: str, size: str, request: Request, services: ServicesDep
) -> Response:
    """One derivative's bytes, cacheable forever (its URL changes if its content could)."""
    if not PHOTO_ID.match(photo_id) or services.settings.size(size) is None:
        raise NotFound("no such photo size")
    key = keys.derivative(photo_id, size)
    try:
        info = await services.primary.head(key)
    except ObjectNotFound:
        raise NotFound("no such photo size (or it is still processing)") from None
    etag = f'"{photo_id}-{size}-{info.size}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE, "X-Content-Type-Options": "nosniff"}
    if not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    headers["Content-Length"] = str(info.size)
    return StreamingResponse(services.primary.open(key), media_type="image/jpeg", headers=headers)
