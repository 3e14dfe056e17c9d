"""Photo routes: upload (the synchronous half of the flow), listing, metadata, derivatives.

HTTP only: the body is streamed to `api.accept`, the index answers for photos, and
`api.serving` finds the file a derivative request gets.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from imagepipe import metrics
from imagepipe.api.accept import Upload, accept_upload
from imagepipe.api.access import Caller, Writer, require
from imagepipe.api.bodies import (
    MULTIPART_SLACK,
    Received,
    declared_length,
    file_stream,
    read_small,
    refusal,
    request_body,
    with_deadline,
)
from imagepipe.api.deps import ServicesDep
from imagepipe.api.fairuse import Allowance
from imagepipe.api.services import Services, retry_after_for
from imagepipe.api.serving import Derivatives
from imagepipe.api.views import cached_json, not_modified, ticket_json
from imagepipe.api.visibility import MAX_CHANGE_BYTES, parse_change
from imagepipe.errors import ImagepipeError
from imagepipe.grants import READ
from imagepipe.models import Ticket, Visibility

router = APIRouter(tags=["photos"])
# `public` is implied (no Authorization); every cache may keep a public photo's derivative,
# for `IMAGEPIPE_PUBLIC_MAX_AGE_S`: not a year, so a deleted photo leaves shared caches soon
STAND_IN_S = 300
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


def _body(
    request: Request, services: Services, received: Received, allowance: Allowance
) -> AsyncIterator[bytes]:
    settings = services.settings
    raw = request_body(request.receive, received, allowance.max_bytes + MULTIPART_SLACK)
    metered = allowance.metered(raw)  # the owner's bytes and storage quotas
    body = with_deadline(metered, settings.upload_idle_timeout_s, settings.upload_deadline_s)
    return allowance.capped(file_stream(request.headers.get("content-type", ""), body))


async def _accepted(
    services: Services, ticket: Ticket, depth: int, allowance: Allowance
) -> JSONResponse:
    body = await ticket_json(services.replication, ticket)
    headers = {
        "Location": f"/tickets/{ticket.id}",
        "Retry-After": str(retry_after_for(depth)),
        **allowance.headers(),
    }
    return JSONResponse(body, status_code=202, headers=headers)


@router.post("/photos", status_code=202, openapi_extra={"requestBody": UPLOAD_BODY})
async def upload_photo(
    request: Request,
    services: ServicesDep,
    grant: Writer,
    idempotency_key: Annotated[str | None, Header()] = None,
    visibility: Annotated[
        Visibility | None, Query(description="who may see it (default: the grant's, private)")
    ] = None,
) -> Response:
    """Upload a photo (multipart field `file`, or the raw image); 202 with its ticket."""
    started, received = time.monotonic(), Received()
    upload = Upload(grant.owner, visibility or grant.visibility, idempotency_key)
    try:
        # the owner's limits, on the headers alone: refused before the body is read
        async with services.fair_use.upload(grant, declared_length(request.headers)) as allowance:
            body = _body(request, services, received, allowance)
            ticket, depth = await accept_upload(services, body, upload)
            response = await _accepted(services, ticket, depth, allowance)
    except ImagepipeError as exc:
        metrics.UPLOADS.labels(str(exc.status)).inc()
        return refusal(request, exc, received, services.settings)
    metrics.UPLOADS.labels("accepted").inc()
    metrics.ACCEPT_SECONDS.observe(time.monotonic() - started)
    return response


@router.get("/photos")
async def list_photos(
    services: ServicesDep,
    grant: Caller,
    limit: Annotated[int, Query(ge=1, le=100)] = 24,
    before: Annotated[
        str | None, Query(max_length=200, description="`next` of the previous page")
    ] = None,
    visibility: Annotated[
        Literal["public"] | None,
        Query(description="`public`: everyone's public photos (no grant needed)"),
    ] = None,
) -> dict[str, Any]:
    """The caller's processed photos (photos:read), or the public stream; newest first."""
    reader = require(grant, READ) if visibility is None else None
    return await services.reads.page(reader, before, limit)


@router.get("/photos/{photo_id}")
async def get_photo(
    photo_id: str, request: Request, services: ServicesDep, grant: Caller
) -> Response:
    """A processed photo: the owner's in full (signed URLs), anyone else's only if public;
    `ETag`/`304`."""
    seen = await services.reads.photo(grant, photo_id)
    # revalidated (backup changes); one representation per caller
    headers = {"Vary": "Authorization"}
    if seen.private:
        headers["Cache-Control"] = "private, no-cache"
    return cached_json(request, seen.body, headers=headers)


@router.patch("/photos/{photo_id}")
async def change_photo(
    photo_id: str, request: Request, services: ServicesDep, grant: Writer
) -> dict[str, Any]:
    """Make your photo `private` or `public`: `{"visibility": "public"}` as
    `application/merge-patch+json` (or `application/json`); anyone else's photo is 404."""
    body = await read_small(request, MAX_CHANGE_BYTES, "a change")
    change = parse_change(request.headers.get("content-type"), body)
    await services.visibilities.change(grant.owner, photo_id, change.visibility)
    return {"id": photo_id, "visibility": change.visibility}


def _public_ages(services: Services) -> tuple[str, str]:
    """Cache-Control of a public size: its preferred format, and a stand-in for it."""
    max_age = services.settings.public_max_age_s
    return f"max-age={max_age}", f"max-age={min(max_age, STAND_IN_S)}"


@router.get("/photos/{photo_id}/{size}")
async def get_photo_size(
    photo_id: str,
    size: str,
    request: Request,
    services: ServicesDep,
    exp: Annotated[str | None, Query(description="a signed URL's expiry")] = None,
    sig: Annotated[str | None, Query(description="a signed URL's signature")] = None,
) -> Response:
    """One derivative, in the best of its formats for `Accept`: a public photo's cacheable for
    `IMAGEPIPE_PUBLIC_MAX_AGE_S`, a private one's only through the signed URL its owner was
    given; a deleted photo's: 404."""
    served = await services.reads.derivative(photo_id, size, request.method, exp, sig)
    files = Derivatives(services.primary)
    found = await files.find(photo_id, services.settings.size(size), request.headers.get("accept"))
    headers = {
        "ETag": found.etag,
        # a stand-in for the preferred format is cached briefly: the audit will make that one
        "Cache-Control": served.cache_control(found.preferred, *_public_ages(services)),
        "Vary": "Accept",  # the same URL is JPEG, WebP or AVIF depending on the request
        "X-Content-Type-Options": "nosniff",
    }
    if not_modified(request, found.etag):
        return Response(status_code=304, headers=headers)
    return Response(await files.read(found), media_type=found.media_type, headers=headers)
