"""Resumable uploads as the IETF draft has them (interop version 6) under /resumable/: HTTP
only; the wire is `api.ietf_draft`, the work `api.resumable`, as for tus under /uploads/.

    OPTIONS /resumable/      Upload-Limit (max-size)
    POST    /resumable/      creation (Upload-Complete ?0 or ?1, Upload-Length), with or
                             without the first bytes: 201, Location, Upload-Offset
    HEAD    /resumable/{id}  204: Upload-Offset, Upload-Complete, Upload-Length, no-store
    PATCH   /resumable/{id}  application/partial-upload at Upload-Offset: 201; the answer
                             that completes it carries ``Link: </tickets/{id}>; rel="ticket"``
    DELETE  /resumable/{id}  cancellation: 204

A sibling of /uploads/, not the same paths told apart by a header: tus's edge (412 for a
request without Tus-Resumable) stays as it is, and each route speaks one protocol. Both sit
on the same uploads: an upload made by either can be resumed by either.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.datastructures import Headers

from imagepipe.api import ietf_draft, tus
from imagepipe.api.access import Writer
from imagepipe.api.bodies import Received, declared_length, refusal
from imagepipe.api.deps import ServicesDep
from imagepipe.api.ietf_draft import INTEROP_VERSION, with_problem_type
from imagepipe.api.resumable import Body, ResumableUploads
from imagepipe.api.routes.uploads import bodies, refused, visibility_of
from imagepipe.errors import BadRequest, ImagepipeError, PayloadTooLarge
from imagepipe.grants import Grant
from imagepipe.resumable import ResumableUpload

router = APIRouter(tags=["resumable uploads (IETF draft)"])
GONE = (413, 415)  # refusals of the image itself: its upload was removed


def _speaks_draft(request: Request) -> None:
    ietf_draft.require_version(request.headers)


Draft = Annotated[None, Depends(_speaks_draft)]


def _state(upload: ResumableUpload) -> dict[str, str]:
    """Where an upload stands, as the draft says it."""
    headers = {
        "Upload-Draft-Interop-Version": INTEROP_VERSION,
        "Upload-Offset": str(upload.offset),
        "Upload-Complete": "?1" if upload.complete else "?0",
        "Upload-Length": str(upload.length),
        "Upload-Limit": ietf_draft.limit(upload.length, upload.expires_at - time.time()),
        "Cache-Control": "no-store",
        "Access-Control-Expose-Headers": ietf_draft.EXPOSED,
    }
    if upload.ticket_id:
        headers["Link"] = f'</tickets/{upload.ticket_id}>; rel="ticket"'
        headers["Content-Location"] = f"/tickets/{upload.ticket_id}"
    return headers


def _bodies(request: Request, received: Received, complete: bool) -> Body:
    """The body, bounded by the room the upload has left; without Upload-Complete: ?1 the
    last byte is out of bounds. Past the bound is a 400 (the draft's), not tus's 413."""
    body = bodies(request, received)

    def bounded(room: int) -> AsyncIterator[bytes]:
        return _past_the_end(body(room if complete else room - 1), complete)

    return bounded


async def _past_the_end(stream: AsyncIterator[bytes], complete: bool) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield chunk
    except PayloadTooLarge:
        if complete:
            raise BadRequest("the bytes go past the upload's length") from None
        raise BadRequest(
            "the bytes reach the upload's end: send its last bytes with Upload-Complete: ?1"
        ) from None


def _ends(upload: ResumableUpload, complete: bool) -> None:
    """A request with Upload-Complete: ?1 ended the upload (what arrived is kept)."""
    if complete and not upload.complete:
        raise BadRequest(
            f"Upload-Complete: ?1, but the upload is at {upload.offset} of {upload.length}",
            headers={"Upload-Offset": str(upload.offset)},
        )


@router.options("/resumable", include_in_schema=False)
@router.options("/resumable/", status_code=204)
@router.options("/resumable/{upload_id}", include_in_schema=False)
async def discover(services: ServicesDep) -> Response:
    """The limits an upload here has."""
    headers = {
        "Upload-Limit": ietf_draft.limit(services.settings.max_upload_bytes),
        "Upload-Draft-Interop-Version": INTEROP_VERSION,
    }
    return Response(status_code=204, headers=headers)


@router.post("/resumable", include_in_schema=False)
@router.post("/resumable/", status_code=201)
async def create_upload(
    request: Request, services: ServicesDep, grant: Writer, _: Draft
) -> Response:
    """Create an upload (Upload-Complete, Upload-Length; Upload-Metadata as tus's, for
    visibility), with or without its first bytes."""
    received, headers = Received(), request.headers
    uploads, upload = ResumableUploads(services), None
    try:
        ietf_draft.forbid(headers, "upload-offset")
        complete = ietf_draft.complete_of(headers)
        length = ietf_draft.creation_length(headers, complete)
        raw, pairs = tus.metadata(headers)
        created, limits = await uploads.create(grant, length, raw, visibility_of(grant, pairs))
        upload = created
        if complete or tus.carries_bytes(headers):
            body = _bodies(request, received, complete)
            upload = await uploads.patch(grant, upload.id, 0, body, None)
            _ends(upload, complete)
    except ImagepipeError as exc:
        if upload is not None and exc.status not in GONE:  # the upload lives on: resume it
            exc.headers.setdefault("Location", f"/resumable/{upload.id}")
        return refusal(request, with_problem_type(exc, 0), received, services.settings)
    location = {"Location": f"/resumable/{upload.id}"}
    return Response(status_code=201, headers={**location, **_state(upload), **limits})


@router.get("/resumable/{upload_id}", status_code=204)
async def offset_retrieval(
    upload_id: str, request: Request, services: ServicesDep, grant: Writer, _: Draft
) -> Response:
    """HEAD: Upload-Offset, Upload-Complete, Upload-Length (and the ticket once accepted)."""
    ietf_draft.forbid(request.headers, "upload-offset", "upload-complete", "upload-length")
    upload = await ResumableUploads(services).status(grant, upload_id)
    return Response(status_code=204, headers=_state(upload))


@router.patch("/resumable/{upload_id}", status_code=201)
async def append(
    upload_id: str, request: Request, services: ServicesDep, grant: Writer, _: Draft
) -> Response:
    """application/partial-upload at Upload-Offset; Upload-Complete: ?1 with the last bytes."""
    received, headers = Received(), request.headers
    uploads, offset = ResumableUploads(services), None
    try:
        ietf_draft.require_patch_type(headers)
        offset, complete = tus.offset_of(headers), ietf_draft.complete_of(headers)
        await _appendable(uploads, grant, upload_id, offset, complete, headers)
        body = _bodies(request, received, complete)
        upload = await uploads.patch(grant, upload_id, offset, body, None)
        _ends(upload, complete)
    except ImagepipeError as exc:
        return refused(request, with_problem_type(exc, offset), received)
    return Response(status_code=201, headers=_state(upload))


async def _appendable(
    uploads: ResumableUploads,
    grant: Grant,
    upload_id: str,
    offset: int,
    complete: bool,
    headers: Headers,
) -> None:
    """400 for an upload already complete, or a last append whose Content-Length does not
    end it (at the right offset: a wrong one is the 409 that follows)."""
    upload = await uploads.find(grant, upload_id)
    if upload.complete:
        ticket = f"/tickets/{upload.ticket_id}" if upload.ticket_id else ""
        raise ietf_draft.completed(ticket)
    declared = declared_length(headers) if complete else None
    if declared is not None and offset == upload.offset and offset + declared != upload.length:
        raise BadRequest(
            f"Upload-Complete: ?1, but {offset} + {declared} bytes is not the upload's "
            f"length {upload.length}",
            headers={"Upload-Offset": str(upload.offset)},
        )


@router.delete("/resumable/{upload_id}", status_code=204)
async def cancel(
    upload_id: str, request: Request, services: ServicesDep, grant: Writer, _: Draft
) -> Response:
    """Cancellation: the upload and its bytes are removed (a photo it made stays)."""
    ietf_draft.forbid(request.headers, "upload-offset", "upload-complete")
    await ResumableUploads(services).terminate(grant, upload_id)
    return Response(status_code=204)
