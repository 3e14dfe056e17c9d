"""Photo routes: upload (the synchronous half of the flow), metadata, and derivatives."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from imagepipe import imaging, jobs, keys, metrics
from imagepipe.api import negotiation
from imagepipe.api.bodies import (
    LingeringResponse,
    Received,
    file_stream,
    request_body,
    with_deadline,
)
from imagepipe.api.deps import ServicesDep
from imagepipe.api.problems import problem
from imagepipe.api.services import Services, retry_after_for
from imagepipe.api.tickets import ticket_body
from imagepipe.api.views import iso, not_modified, sizes_view
from imagepipe.errors import (
    IdempotencyMismatch,
    ImagepipeError,
    NotAcceptable,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
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
STAND_IN = "public, max-age=300"
# The route streams the body itself; this documents it (and lets schema fuzzers send one).
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


def _declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isdigit() else None


def _body(request: Request, services: Services, received: Received) -> AsyncIterator[bytes]:
    declared = _declared_length(request)
    if declared is not None and declared > services.settings.max_upload_bytes + MULTIPART_SLACK:
        raise PayloadTooLarge(
            f"the upload is larger than {services.settings.max_upload_bytes} bytes"
        )
    idle_s = services.settings.upload_idle_timeout_s
    content_type = request.headers.get("content-type", "")
    body = with_deadline(request_body(request.receive, received), idle_s)
    return file_stream(content_type, body)


async def _accepted(services: Services, ticket: Ticket, retry_after: int) -> JSONResponse:
    body = await ticket_body(services, ticket)
    headers = {
        "Location": f"/tickets/{ticket.id}",
        "Retry-After": str(retry_after),
    }
    return JSONResponse(body, status_code=202, headers=headers)


async def _replay(
    services: Services, body: AsyncIterator[bytes], earlier: Reservation, depth: int
) -> Response:
    """The same key again: same content -> the same ticket; different content -> 422."""
    digest = hashlib.sha256()
    async for chunk in limit_bytes(body, services.settings.max_upload_bytes):
        digest.update(chunk)
    if digest.hexdigest() != earlier.sha256:
        raise IdempotencyMismatch("this Idempotency-Key was used for a different file")
    assert earlier.ticket_id is not None
    ticket = await services.tickets.get(earlier.ticket_id)
    return await _accepted(services, ticket, retry_after_for(depth))


def _refused(
    request: Request, services: Services, received: Received, exc: ImagepipeError
) -> Response:
    """The problem; a body still arriving is read on (and dropped) up to twice the limit.

    So a client that sends it all before reading gets the answer, not a reset, unless it
    sends more than that; then, or when it has stalled, the connection closes.
    """
    response = problem(exc.status, exc.title, exc.detail, exc.retry_after)
    if received.complete:
        return response
    budget = 2 * services.settings.max_upload_bytes + MULTIPART_SLACK - received.bytes
    declared = _declared_length(request)
    if isinstance(exc, RequestTimeout) or (declared or 0) - received.bytes > budget:
        response.headers["Connection"] = "close"  # it could never finish within the budget
        return response
    return LingeringResponse(response, budget, services.settings.upload_idle_timeout_s)


@router.post("/photos", status_code=202, openapi_extra={"requestBody": UPLOAD_BODY})
async def upload_photo(
    request: Request,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> Response:
    """Upload a photo (multipart field `file`, or the raw image); 202 with its ticket."""
    started, received = time.monotonic(), Received()
    try:
        response = await _upload(request, services, idempotency_key, received)
    except ImagepipeError as exc:
        metrics.UPLOADS.labels(str(exc.status)).inc()
        return _refused(request, services, received, exc)
    metrics.UPLOADS.labels("accepted").inc()
    metrics.ACCEPT_SECONDS.observe(time.monotonic() - started)
    return response


async def _upload(
    request: Request, services: Services, idempotency_key: str | None, received: Received
) -> Response:
    depth = await services.refuse_if_overloaded()
    body = _body(request, services, received)
    reservation = await services.idempotency.reserve(idempotency_key) if idempotency_key else None
    if reservation is not None and reservation.ticket_id is not None:
        return await _replay(services, body, reservation, depth)
    # a keyed upload's ids come from its key, so a retry after a crash converges on one photo
    photo_id, ticket_id = (
        (reservation.photo_id, reservation.new_ticket_id)
        if reservation
        else (new_photo_id(), new_ticket_id())
    )
    try:
        stored = await store_original(body, services.primary, services.settings, photo_id)
        held = (services.idempotency, reservation) if reservation else None
        ticket = await jobs.register(services.redis, services.tickets, stored, ticket_id, held)
    except BaseException:
        if reservation is not None:
            await services.idempotency.release(reservation)
        raise
    metrics.UPLOAD_BYTES.inc(stored.info.size)
    metrics.TICKET_TRANSITIONS.labels("queued").inc()
    return await _accepted(services, ticket, retry_after_for(depth + 1))  # + this upload's job


@router.get("/photos")
async def list_photos(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 24,
    before: Annotated[
        # NaN would reach Redis as a malformed score range (a 503): finite numbers only
        float | None, Query(description="`next` of the previous page", allow_inf_nan=False)
    ] = None,
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
    object_keys = [*manifest.object_keys(), keys.manifest(photo_id)]
    backup = await services.replication.backup_state(object_keys)
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
    """One derivative, in the best of its formats for `Accept`; cacheable forever."""
    spec = services.settings.size(size)
    if not PHOTO_ID.match(photo_id) or spec is None:
        raise NotFound("no such photo size")
    choices = negotiation.ranked(request.headers.get("accept"), spec.encodings)
    if not choices:
        offered = ", ".join(imaging.media_type(f) for f in spec.encodings)
        raise NotAcceptable(f"this size is available as {offered}")
    for fmt in choices:  # a format added to the ladder later may not exist for this photo yet
        key = keys.derivative(photo_id, size, imaging.EXTENSIONS[fmt])
        # a stand-in for the preferred format is cached briefly: the audit will make that one
        lifetime = IMMUTABLE if fmt == choices[0] else STAND_IN
        try:
            return await _derivative(request, services, key, fmt, lifetime)
        except ObjectNotFound:
            continue
    raise NotFound("no such photo size (or it is still processing)")


async def _derivative(
    request: Request, services: Services, key: str, fmt: str, cache_control: str
) -> Response:
    info = await services.primary.head(key)
    photo_and_file = key.removeprefix(keys.DERIVATIVES).replace("/", "-")  # {id}-{size}.{ext}
    headers = {
        "ETag": f'"{photo_and_file}-{info.size}"',
        "Cache-Control": cache_control,
        "Vary": "Accept",  # the same URL is JPEG, WebP or AVIF depending on the request
        "X-Content-Type-Options": "nosniff",
    }
    if not_modified(request, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    # derivatives are small (the largest rung is well under a few MB): read whole, so no open
    # file outlives a client that hangs up mid-download
    data = await services.primary.read(key)
    return Response(data, media_type=imaging.media_type(fmt), headers=headers)
