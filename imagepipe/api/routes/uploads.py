"""Resumable uploads (tus 1.0) under /uploads/: HTTP only; the work is `api.resumable`.

    OPTIONS /uploads/        discovery: version, extensions, Tus-Max-Size, checksums
    POST    /uploads/        creation (Upload-Length, Upload-Metadata), with an upload's
                             first bytes too: 201, Location
    HEAD    /uploads/{id}    Upload-Offset (and Link to the ticket once the photo is accepted)
    PATCH   /uploads/{id}    bytes at Upload-Offset: 204, the new Upload-Offset; the last
                             byte's answer carries ``Link: </tickets/{id}>; rel="ticket"``
    DELETE  /uploads/{id}    termination: 204

Another owner's upload is a 404, as an unknown one. `api.tus.TusEdge` adds Tus-Resumable to
every answer and refuses other tus versions (412).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from email.utils import formatdate

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from imagepipe.api import tus
from imagepipe.api.access import Writer
from imagepipe.api.bodies import Received, refusal, request_body, with_deadline
from imagepipe.api.deps import ServicesDep
from imagepipe.api.problems import render
from imagepipe.api.resumable import Body, ResumableUploads
from imagepipe.errors import BadRequest, ImagepipeError
from imagepipe.grants import Grant
from imagepipe.models import VISIBILITIES, Visibility
from imagepipe.resumable import ResumableUpload

log = logging.getLogger(__name__)
router = APIRouter(tags=["resumable uploads"])
RESYNC = (404, 409, 423)


def _headers(upload: ResumableUpload) -> dict[str, str]:
    """Where an upload stands, as tus says it."""
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Expires": formatdate(upload.expires_at, usegmt=True),
        "Cache-Control": "no-store",
    }
    if upload.ticket_id:
        headers["Link"] = f'</tickets/{upload.ticket_id}>; rel="ticket"'
    return headers


def refused(request: Request, exc: ImagepipeError, received: Received) -> Response:
    """A refusal; one that says where the upload stands (409 offset, 423 locked, 404) closes
    at once instead of reading the body: its client asks HEAD next, not sends it all again."""
    settings = request.app.state.services.settings
    if exc.status in RESYNC and not received.complete:
        context = {"status": exc.status, "reason": exc.detail}
        log.info("%s %s refused: %s", request.method, request.url.path, exc.title, extra=context)
        response = render(exc)
        response.headers["Connection"] = "close"
        return response
    return refusal(request, exc, received, settings)


def visibility_of(grant: Grant, pairs: dict[str, str]) -> Visibility:
    """Upload-Metadata's ``visibility``, else the grant's."""
    value = pairs.get("visibility", grant.visibility)
    if value not in VISIBILITIES:
        raise BadRequest(f"visibility must be one of {', '.join(VISIBILITIES)}")
    return value


def bodies(request: Request, received: Received) -> Body:
    """The request's body, given the bytes the upload has room for."""
    settings = request.app.state.services.settings

    def body(room: int) -> AsyncIterator[bytes]:
        raw = request_body(request.receive, received, room)
        return with_deadline(raw, settings.upload_idle_timeout_s, settings.upload_deadline_s)

    return body


@router.options("/uploads", include_in_schema=False)
@router.options("/uploads/", status_code=204)
@router.options("/uploads/{upload_id}", include_in_schema=False)
async def discover(services: ServicesDep) -> Response:
    """What this tus server speaks."""
    return Response(status_code=204, headers=tus.discovery(services.settings.max_upload_bytes))


@router.post("/uploads", include_in_schema=False)
@router.post("/uploads/", status_code=201)
async def create_upload(request: Request, services: ServicesDep, grant: Writer) -> Response:
    """Create an upload of Upload-Length bytes (Upload-Metadata: filename, filetype,
    visibility); with application/offset+octet-stream, its first bytes too."""
    received, headers = Received(), request.headers
    uploads = ResumableUploads(services)
    try:
        length = tus.length_of(headers)
        raw, pairs = tus.metadata(headers)
        first = tus.carries_bytes(headers)
        if first:
            tus.require_patch_type(headers)
        upload, limits = await uploads.create(grant, length, raw, visibility_of(grant, pairs))
        if first:
            body = bodies(request, received)
            upload = await uploads.patch(grant, upload.id, 0, body, tus.checksum_of(headers))
    except ImagepipeError as exc:
        return refusal(request, exc, received, services.settings)
    location = {"Location": f"/uploads/{upload.id}"}
    return Response(status_code=201, headers={**location, **_headers(upload), **limits})


@router.get("/uploads/{upload_id}")
async def upload_status(upload_id: str, services: ServicesDep, grant: Writer) -> Response:
    """HEAD: Upload-Offset and Upload-Length (GET: the same as JSON)."""
    upload = await ResumableUploads(services).status(grant, upload_id)
    headers = {**_headers(upload), "Upload-Length": str(upload.length)}
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    view = {
        "id": upload.id,
        "offset": upload.offset,
        "length": upload.length,
        "expires_at": upload.expires_at,
        "ticket": f"/tickets/{upload.ticket_id}" if upload.ticket_id else None,
    }
    return JSONResponse(view, headers=headers)


@router.patch("/uploads/{upload_id}", status_code=204)
async def append(
    upload_id: str, request: Request, services: ServicesDep, grant: Writer
) -> Response:
    """Bytes at Upload-Offset (application/offset+octet-stream; Upload-Checksum optional)."""
    received, headers = Received(), request.headers
    try:
        tus.require_patch_type(headers)
        offset, checksum = tus.offset_of(headers), tus.checksum_of(headers)
        body = bodies(request, received)
        upload = await ResumableUploads(services).patch(grant, upload_id, offset, body, checksum)
    except ImagepipeError as exc:
        return refused(request, exc, received)
    return Response(status_code=204, headers=_headers(upload))


@router.delete("/uploads/{upload_id}", status_code=204)
async def terminate(upload_id: str, services: ServicesDep, grant: Writer) -> Response:
    """Termination: the upload and its bytes are removed."""
    await ResumableUploads(services).terminate(grant, upload_id)
    return Response(status_code=204)
