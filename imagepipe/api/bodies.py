"""Request bodies as a stream of the uploaded file's bytes: raw ``image/*`` or multipart.

Multipart is parsed incrementally (python-multipart's push parser) so the file streams
straight through to storage: never held whole in memory, never spooled to a temp file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from imagepipe.errors import BadRequest, MissingFile, RequestTimeout, UnsupportedMediaType

FILE_FIELD = b"file"


@dataclass
class Received:
    """How many bytes of the request body the route has read, and whether that was all."""

    bytes: int = 0
    complete: bool = False


async def request_body(receive: Receive, received: Received) -> AsyncIterator[bytes]:
    """The raw body as it arrives, noting in ``received`` how much came and whether all.

    ``complete`` is set before the last chunk is yielded: a parser that stops there (the
    multipart file ended) leaves nothing unread, and the route must not wait for more.
    """
    while not received.complete:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away mid-upload")
        chunk = message.get("body", b"")
        received.bytes += len(chunk)
        received.complete = not message.get("more_body", False)
        if chunk:
            yield chunk


async def with_deadline(stream: AsyncIterator[bytes], idle_s: float) -> AsyncIterator[bytes]:
    """Fail with 408 when the client sends nothing for ``idle_s`` (a slow-body client)."""
    while True:
        try:
            async with asyncio.timeout(idle_s):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise RequestTimeout(f"no body bytes received for {idle_s:g} s") from None
        yield chunk


async def drain(receive: Receive, budget: int, idle_s: float) -> None:
    """Read and drop the rest of a body, up to ``budget`` bytes, while it keeps coming."""
    while budget >= 0:
        try:
            async with asyncio.timeout(idle_s):
                message = await receive()
        except TimeoutError:
            return
        if message["type"] != "http.request" or not message.get("more_body", False):
            return  # the end, or the client went away
        budget -= len(message.get("body", b""))


class LingeringResponse(Response):
    """``response`` sent at once; the rest of the request body read and dropped; then a close.

    A refused upload's body is mostly unread. Kept alive, uvicorn would read all of it (2 GB,
    or forever) before the next request; closed at once, a client still sending sees a reset
    and never reads the answer. So, like a web server's lingering close: the answer goes out
    now, the body is read on for at most ``budget`` bytes, and the connection then closes.
    """

    def __init__(self, response: Response, budget: int, idle_s: float) -> None:
        super().__init__(response.body, response.status_code)
        self.raw_headers = [*response.raw_headers, (b"connection", b"close")]
        self.budget, self.idle_s = budget, idle_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": self.status_code}
        await send({**start, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        await drain(receive, self.budget, self.idle_s)
        await send({"type": "http.response.body", "body": b""})


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
    """Collects the data of the `file` field as the push parser finds it."""

    def __init__(self) -> None:
        self.header_field = b""
        self.in_file = False
        self.seen_file = False
        self.finished = False
        self.pending: list[bytes] = []

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field = data[start:end].lower()

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        if self.header_field == b"content-disposition" and not self.seen_file:
            _, options = parse_options_header(data[start:end])
            self.in_file = options.get(b"name") == FILE_FIELD
            self.seen_file = self.in_file

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.pending.append(data[start:end])

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
                "on_header_field": part.on_header_field,
                "on_header_value": part.on_header_value,
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
        if part.finished:
            return  # the rest of the body (other fields) is of no interest
    if not part.finished:
        raise MissingFile("the multipart body has no complete `file` field")
