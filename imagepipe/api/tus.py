"""tus 1.0 on the wire: its headers read and written, and its edge (version, CORS).

tus 1.0.0 (https://tus.io/protocols/resumable-upload) with the extensions creation,
creation-with-upload, termination, expiration and checksum (sha1, sha256). The domain work
is `api.resumable`; the routes are `api.routes.uploads`.

Why not a library: the one FastAPI tus server on PyPI (tuspyserver) keeps uploads as files
and JSON on one local disk, with no S3 and no way to run our checks between a PATCH's bytes
and its acknowledgement (grants, quotas, the header sniff, the accept path). The protocol is
a handful of headers; this module is all of it, and `tuspy` tests it from outside.

`TusEdge` (pure ASGI, for every path under /uploads/) answers 412 to a request in a tus
version other than 1.0.0, and adds ``Tus-Resumable`` and the CORS exposure of the tus
headers to every answer, errors included.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagepipe.api.problems import render
from imagepipe.errors import BadRequest, PreconditionFailed, UnsupportedMediaType

VERSION = "1.0.0"
EXTENSIONS = "creation,creation-with-upload,termination,expiration,checksum"
CHECKSUMS = {"sha1": hashlib.sha1, "sha256": hashlib.sha256}
PATCH_TYPE = "application/offset+octet-stream"
PATH = re.compile(r"/uploads(/.*)?")
EXPOSED = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, Tus-Resumable, "
    "Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm, Link"
)
MAX_METADATA_CHARS = 4096
_KEY = re.compile(r"^[A-Za-z0-9._~-]{1,64}$")


def discovery(max_size: int) -> dict[str, str]:
    """What OPTIONS tells a client about this server."""
    return {
        "Tus-Version": VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    }


def length_of(headers: Headers) -> int:
    """Upload-Length (400 without one: Upload-Defer-Length is not offered)."""
    return number(headers, "upload-length")


def offset_of(headers: Headers) -> int:
    """Upload-Offset of a PATCH."""
    return number(headers, "upload-offset")


def number(headers: Headers, name: str) -> int:
    """A header field holding a non-negative integer (400 if missing or malformed)."""
    value = headers.get(name)
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise BadRequest(f"{name} must be a non-negative integer")
    return int(value)


def metadata(headers: Headers) -> tuple[str, dict[str, str]]:
    """Upload-Metadata as sent (echoed by HEAD), and its pairs decoded (400 if malformed)."""
    raw = headers.get("upload-metadata", "").strip()
    if len(raw) > MAX_METADATA_CHARS:
        raise BadRequest(f"Upload-Metadata is longer than {MAX_METADATA_CHARS} characters")
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        key, _, value = item.partition(" ")
        if not _KEY.match(key) or key in pairs:
            raise BadRequest(f"Upload-Metadata has a bad or repeated key {key[:64]!r}")
        pairs[key] = _decoded(key, value.strip())
    return raw, pairs


def _decoded(key: str, value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise BadRequest(f"Upload-Metadata {key!r} is not base64 of UTF-8 text") from None


@dataclass(frozen=True)
class Checksum:
    """Upload-Checksum: the algorithm and the digest a PATCH's bytes must have."""

    algorithm: str
    digest: bytes

    def hasher(self) -> Any:
        """A fresh hash object of the algorithm."""
        return CHECKSUMS[self.algorithm](usedforsecurity=False)


def checksum_of(headers: Headers) -> Checksum | None:
    """Upload-Checksum (400 for an algorithm not offered, or a digest not base64)."""
    value = headers.get("upload-checksum")
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUMS:
        raise BadRequest(f"Upload-Checksum algorithm must be one of {', '.join(CHECKSUMS)}")
    try:
        return Checksum(algorithm, base64.b64decode(encoded.strip(), validate=True))
    except binascii.Error:
        raise BadRequest("Upload-Checksum's digest is not base64") from None


def require_patch_type(headers: Headers) -> None:
    """A PATCH (or a creation with an upload) carries application/offset+octet-stream."""
    if headers.get("content-type", "").split(";")[0].strip().lower() != PATCH_TYPE:
        raise UnsupportedMediaType(f"send the bytes as Content-Type: {PATCH_TYPE}")


def carries_bytes(headers: Headers) -> bool:
    """Whether a creation also carries the first bytes (creation-with-upload)."""
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers


class TusEdge:
    """412 for another tus version; Tus-Resumable and CORS exposure on every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not PATH.fullmatch(scope["path"]):
            await self.app(scope, receive, send)
            return
        version = Headers(scope=scope).get("tus-resumable")
        if scope["method"] != "OPTIONS" and version != VERSION:
            refused = PreconditionFailed(
                f"this server speaks tus {VERSION}; send Tus-Resumable: {VERSION}",
                headers={"Tus-Version": VERSION},
            )
            await render(refused)(scope, receive, _tus_headers(send))
            return
        await self.app(scope, receive, _tus_headers(send))


def _tus_headers(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            extra = [
                (b"tus-resumable", VERSION.encode()),
                (b"access-control-expose-headers", EXPOSED.encode()),
            ]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending
