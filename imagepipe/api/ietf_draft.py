"""The IETF Resumable Uploads for HTTP draft on the wire: its headers read and written.

Interop version 6 (``Upload-Draft-Interop-Version: 6``), the one of
draft-ietf-httpbis-resumable-upload-04 and -05: the most recent that tusd's experimental
protocol (``-enable-experimental-protocol``) and tus-js-client's ``ietf-draft-05`` speak.
Later drafts (-06 on: versions 7, 8) changed the wire again; no well-kept server or client
speaks them yet, so neither do we. Version 6 appends with ``Content-Type:
application/partial-upload``; any other interop version is refused (400), naming ours.

It is a thin skin over the tus machinery (`api.resumable`): the same state, partial storage,
checks, accept path and ticket. What the draft lets a server choose, and what we chose:

- The length is known at creation (``Upload-Length``, or ``Content-Length`` with
  ``Upload-Complete: ?1``); a creation with neither is refused (400). The draft lets a
  server refuse what it cannot do, and fair use, quotas and the byte limit are charged on
  the declared length, as for a tus upload or a ``POST /photos``.
- Only ``Upload-Complete: ?1`` completes an upload: a request with ``?0`` may not carry the
  last byte, and one with ``?1`` must end at the length (400 otherwise; what arrived is kept).
- No ``104 (Upload Resumption Supported)``: uvicorn sends no informational responses. The
  draft makes the 104 optional for a server, and a client learns the upload's URL from the
  201's ``Location`` (creating with ``?0`` and no body first, as tus-js-client does).
- Offset mismatches are 409 with the draft's problem type ``mismatching-upload-offset``
  (``expected-offset``, ``provided-offset``); an append to a completed upload is 400
  ``completed-upload``.
"""

from __future__ import annotations

from starlette.datastructures import Headers

from imagepipe.api import tus
from imagepipe.errors import BadRequest, ImagepipeError, OffsetMismatch, UnsupportedMediaType

INTEROP_VERSION = "6"
PATCH_TYPE = "application/partial-upload"
PROBLEMS = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = f"{PROBLEMS}mismatching-upload-offset"
COMPLETED_UPLOAD = f"{PROBLEMS}completed-upload"
EXPOSED = "Location, Upload-Offset, Upload-Complete, Upload-Length, Upload-Limit, Link"
BOOLEANS = {"?1": True, "?0": False}


def require_version(headers: Headers) -> None:
    """400 unless the request speaks our interop version."""
    version = headers.get("upload-draft-interop-version")
    if version != INTEROP_VERSION:
        raise BadRequest(
            f"this server speaks interop version {INTEROP_VERSION} of the resumable upload "
            f"draft; send Upload-Draft-Interop-Version: {INTEROP_VERSION}",
            headers={"Upload-Draft-Interop-Version": INTEROP_VERSION},
        )


def complete_of(headers: Headers) -> bool:
    """Upload-Complete, a structured Boolean (400 if missing or malformed)."""
    value = BOOLEANS.get(headers.get("upload-complete", "").strip())
    if value is None:
        raise BadRequest("Upload-Complete must be ?0 or ?1")
    return value


def creation_length(headers: Headers, complete: bool) -> int:
    """The upload's length: Upload-Length, or Content-Length with Upload-Complete: ?1 (both
    must agree); 400 with neither."""
    declared = _optional(headers, "upload-length")
    content = _optional(headers, "content-length") if complete else None
    if declared is not None and content is not None and declared != content:
        raise BadRequest(f"Upload-Length {declared} and Content-Length {content} differ")
    length = declared if declared is not None else content
    if length is None:
        raise BadRequest(
            "send Upload-Length (or Upload-Complete: ?1 with a Content-Length): this server "
            "needs an upload's length when it is created"
        )
    return length


def _optional(headers: Headers, name: str) -> int | None:
    return tus.number(headers, name) if name in headers else None


def forbid(headers: Headers, *names: str) -> None:
    """400 for a header field the request must not carry (HEAD, DELETE, creation)."""
    for name in names:
        if name in headers:
            raise BadRequest(f"this request must not carry {name.title()}")


def require_patch_type(headers: Headers) -> None:
    """An append carries application/partial-upload (interop version 6)."""
    if headers.get("content-type", "").split(";")[0].strip().lower() != PATCH_TYPE:
        raise UnsupportedMediaType(f"send the bytes as Content-Type: {PATCH_TYPE}")


def limit(max_size: int, expires_in: float | None = None) -> str:
    """Upload-Limit: the most an upload may hold, and for how many seconds more it lives."""
    value = f"max-size={max_size}"
    return value if expires_in is None else f"{value},expires={max(0, int(expires_in))}"


def with_problem_type(exc: ImagepipeError, provided: int | None = None) -> ImagepipeError:
    """An offset mismatch as the draft's problem type, its offsets as members."""
    if isinstance(exc, OffsetMismatch):
        expected = int(exc.headers.get("Upload-Offset", "0"))
        exc.extra = {**exc.extra, "type": MISMATCHING_OFFSET, "expected-offset": expected}
        if provided is not None:
            exc.extra["provided-offset"] = provided
    return exc


def completed(ticket: str) -> BadRequest:
    """400 completed-upload: nothing more can be appended (its ticket linked)."""
    headers = {"Link": f'<{ticket}>; rel="ticket"'} if ticket else {}
    return BadRequest(
        "the upload is complete; nothing more can be appended",
        headers=headers,
        extra={"type": COMPLETED_UPLOAD},
    )
