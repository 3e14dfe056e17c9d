"""Photo routes: upload (the synchronous half of the flow), listing, metadata, derivatives.

HTTP only: the body is streamed to `api.accept`, the index answers for photos, and
`api.serving` finds the file a derivative request gets.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from imagepipe import keys, metrics
from imagepipe.api.accept import accept_upload
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
from imagepipe.api.serving import Derivatives
from imagepipe.api.views import gallery_view, not_modified, photo_view, ticket_json
from imagepipe.errors import ImagepipeError, PayloadTooLarge, RequestTimeout
from imagepipe.models import Ticket

router = APIRouter(tags=["photos"])
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


async def _accepted(services: Services, ticket: Ticket, depth: int) -> JSONResponse:
    body = await ticket_json(services.replication, ticket)
    headers = {
        "Location": f"/tickets/{ticket.id}",
        "Retry-After": str(retry_after_for(depth)),
    }
    return JSONResponse(body, status_code=202, headers=headers)


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
        body = _body(request, services, received)
        ticket, depth = await accept_upload(services, body, idempotency_key)
        response = await _accepted(services, ticket, depth)
    except ImagepipeError as exc:
        metrics.UPLOADS.labels(str(exc.status)).inc()
        return _refused(request, services, received, exc)
    metrics.UPLOADS.labels("accepted").inc()
    metrics.ACCEPT_SECONDS.observe(time.monotonic() - started)
    return response


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
    rows = await services.index.page(before, limit)
    return gallery_view(rows, [s.name for s in services.settings.sizes], limit)


@router.get("/photos/{photo_id}")
async def get_photo(photo_id: str, services: ServicesDep) -> dict[str, Any]:
    """A processed photo: dimensions, every size's URL, and the backup state."""
    manifest = await services.index.manifest(photo_id)
    object_keys = [*manifest.object_keys(), keys.manifest(photo_id)]
    return photo_view(manifest, await services.replication.backup_state(object_keys))


@router.get("/photos/{photo_id}/{size}")
async def get_photo_size(
    photo_id: str, size: str, request: Request, services: ServicesDep
) -> Response:
    """One derivative, in the best of its formats for `Accept`; cacheable forever."""
    files = Derivatives(services.primary)
    found = await files.find(photo_id, services.settings.size(size), request.headers.get("accept"))
    headers = {
        "ETag": found.etag,
        # a stand-in for the preferred format is cached briefly: the audit will make that one
        "Cache-Control": IMMUTABLE if found.preferred else STAND_IN,
        "Vary": "Accept",  # the same URL is JPEG, WebP or AVIF depending on the request
        "X-Content-Type-Options": "nosniff",
    }
    if not_modified(request, found.etag):
        return Response(status_code=304, headers=headers)
    return Response(await files.read(found), media_type=found.media_type, headers=headers)
