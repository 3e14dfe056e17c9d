"""Request bodies as a stream of the uploaded file's bytes: raw ``image/*`` or multipart.

Multipart is parsed incrementally (python-multipart's push parser) so the file streams
straight through to storage: never held whole in memory, never spooled to a temp file.
Every part is bounded: the raw body by the byte limit (plus MULTIPART_SLACK), each other
field by MAX_FIELD_BYTES, their number by MAX_FIELDS; the body by an idle and a total deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from imagepipe.api.problems import render
from imagepipe.config import Settings
from imagepipe.errors import (
    BadRequest,
    ImagepipeError,
    MissingFile,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)
FILE_FIELD = b"file"
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file
MAX_FIELD_BYTES = 64 * 1024  # each multipart part that is not the file
MAX_FIELDS = 8  # parts besides the file


@dataclass
class Received:
    """How many bytes of the request body the route has read, and whether that was all."""

    bytes: int = 0
    complete: bool = False


async def request_body(
    receive: Receive, received: Received, max_bytes: int
) -> AsyncIterator[bytes]:
    """The raw body as it arrives, noting in ``received`` how much came and whether all.

    Every byte counts against ``max_bytes`` (framing and other fields too), chunked or not.
    ``complete`` is set before the last chunk is yielded, so a refusal after it knows that
    nothing is left to read.
    """
    while not received.complete:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away mid-upload")
        chunk = message.get("body", b"")
        received.bytes += len(chunk)
        if received.bytes > max_bytes:
            raise PayloadTooLarge(f"the request body is larger than {max_bytes} bytes")
        received.complete = not message.get("more_body", False)
        if chunk:
            yield chunk


async def with_deadline(
    stream: AsyncIterator[bytes], idle_s: float, total_s: float
) -> AsyncIterator[bytes]:
    """Fail with 408 when the client sends nothing for ``idle_s``, or is not done in ``total_s``.

    The total bounds a client that trickles a byte now and then, never idle for long.
    """
    loop = asyncio.get_running_loop()
    ends = loop.time() + total_s
    while True:
        wait = min(idle_s, ends - loop.time())
        try:
            async with asyncio.timeout(wait):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(_too_slow(idle_s, total_s, wait < idle_s)) from None
        yield chunk


def _too_slow(idle_s: float, total_s: float, past_deadline: bool) -> str:
    if past_deadline:
        return f"the body did not arrive within {total_s:g} s"
    return f"no body bytes received for {idle_s:g} s"


async def drain(receive: Receive, budget: int, idle_s: float, total_s: float) -> None:
    """Read and drop the rest of a body while it keeps coming: ``budget`` bytes, ``total_s``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(total_s):
            while budget >= 0:
                async with asyncio.timeout(idle_s):
                    message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return  # the end, or the client went away
                budget -= len(message.get("body", b""))


class LingeringResponse(Response):
    """``response`` sent at once; the rest of the request body read and dropped; then a close.

    A refused upload's body is mostly unread. Kept alive, uvicorn would read all of it (2 GB,
    or forever) before the next request; closed at once, a client still sending sees a reset
    and never reads the answer. So, like a web server's lingering close: the answer goes out
    now, the body is read on for at most ``budget`` bytes and ``total_s``, and the
    connection then closes.
    """

    def __init__(self, response: Response, budget: int, idle_s: float, total_s: float) -> None:
        super().__init__(response.body, response.status_code)
        self.raw_headers = [*response.raw_headers, (b"connection", b"close")]
        self.budget, self.idle_s, self.total_s = budget, idle_s, total_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        await drain(receive, self.budget, self.idle_s, self.total_s)
        await send({"type": "http.response.body", "body": b""})


def declared_length(headers: Headers) -> int | None:
    """The Content-Length a request declares, if any."""
    declared = headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


def refusal(
    request: Request, exc: ImagepipeError, received: Received, settings: Settings
) -> Response:
    """The logged problem; a body still arriving is read on (and dropped) up to twice the limit.

    So a client that sends it all before reading gets the answer, not a reset, unless it
    sends more than that; then, or when it has stalled, the connection closes.
    """
    client = request.client.host if request.client else "-"
    context = {"status": exc.status, "reason": exc.detail, "client": client}
    log.info("%s %s refused: %s", request.method, request.url.path, exc.title, extra=context)
    response = render(exc)
    if received.complete:
        return response
    budget = 2 * settings.max_upload_bytes + MULTIPART_SLACK - received.bytes
    unread = (declared_length(request.headers) or 0) - received.bytes
    if isinstance(exc, RequestTimeout) or unread > budget:
        response.headers["Connection"] = "close"  # it could never finish within the budget
        return response
    idle_s, total_s = settings.upload_idle_timeout_s, settings.upload_deadline_s
    return LingeringResponse(response, budget, idle_s, total_s)


def file_stream(content_type: str, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The uploaded file's bytes, whichever way the client sent them."""
    media_type, options = parse_options_header(content_type)
    if media_type == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadRequest("multipart body without a boundary")
        return _multipart_file(boundary, body)
    if media_type.startswith(b"image/") or media_type == b"application/octet-stream":
        return body
    raise UnsupportedMediaType(
        "send multipart/form-data with a `file` field, or the image itself as image/*"
    )


class _FilePart:
    """Collects the data of the `file` field as the push parser finds it; bounds the rest.

    The parser hands over a header in as many pieces as it arrived in reads: they are
    joined, and the header is judged at its end.
    """

    def __init__(self) -> None:
        self.header_field = self.header_value = b""
        self.in_file = self.seen_file = self.finished = False
        self.fields = self.field_bytes = 0
        self.pending: list[bytes] = []

    def on_part_begin(self) -> None:
        self.field_bytes = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_field.lower() == b"content-disposition" and not self.seen_file:
            _, options = parse_options_header(self.header_value)
            self.in_file = self.seen_file = options.get(b"name") == FILE_FIELD
        self.header_field = self.header_value = b""

    def on_headers_finished(self) -> None:
        if self.in_file:
            return
        self.fields += 1
        if self.fields > MAX_FIELDS:
            raise BadRequest(f"the multipart body has more than {MAX_FIELDS} fields besides `file`")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.pending.append(data[start:end])
            return
        self.field_bytes += end - start
        if self.field_bytes > MAX_FIELD_BYTES:
            raise PayloadTooLarge(f"a multipart field is larger than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        if self.in_file:
            self.in_file, self.finished = False, True

    def take(self) -> list[bytes]:
        chunks, self.pending = self.pending, []
        return chunks


async def _multipart_file(boundary: bytes, body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    part = _FilePart()
    try:
        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": part.on_part_begin,
                "on_header_field": part.on_header_field,
                "on_header_value": part.on_header_value,
                "on_header_end": part.on_header_end,
                "on_headers_finished": part.on_headers_finished,
                "on_part_data": part.on_part_data,
                "on_part_end": part.on_part_end,
            },
        )
    except FormParserError as exc:  # e.g. a boundary longer than the parser allows
        raise BadRequest(f"malformed multipart boundary: {exc}") from None
    async for chunk in body:
        try:
            parser.write(chunk)
        except FormParserError as exc:
            raise BadRequest(f"malformed multipart body: {exc}") from None
        for data in part.take():
            yield data
    # read to the end, fields after the file too: left unread, the server would read on
    # (unbounded) after the answer; read here, they count against the limits
    if not part.finished:
        raise MissingFile("the multipart body has no complete `file` field")


async def read_small(request: Request, max_bytes: int, what: str) -> bytes:
    """A small body (a callback, a JSON patch) read whole, but never past ``max_bytes``."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise PayloadTooLarge(f"{what} larger than {max_bytes} bytes")
    return body
