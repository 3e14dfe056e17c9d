"""Serving derivatives: which stored file answers ``GET /photos/{id}/{size}`` for an Accept.

A size may be written in several formats; `negotiation` ranks the ones the client accepts,
and the first of those that exists for this photo is served. A format added to the ladder
after the photo was processed may not exist yet: the next one stands in until the audit
makes it, and is cached only briefly.
"""

from __future__ import annotations

from dataclasses import dataclass

from imagepipe import formats, keys
from imagepipe.api import negotiation
from imagepipe.config import SizeSpec
from imagepipe.errors import NotAcceptable, NotFound
from imagepipe.ids import is_photo_id
from imagepipe.storage import ObjectInfo, ObjectNotFound, Storage


@dataclass(frozen=True)
class Found:
    """The stored file that answers a request for a size."""

    info: ObjectInfo
    format: str
    preferred: bool  # the client's first choice (else a stand-in for it)

    @property
    def etag(self) -> str:
        """A strong validator: the file's name (photo, size, format) and its size."""
        return f'"{keys.derivative_name(self.info.key)}-{self.info.size}"'

    @property
    def media_type(self) -> str:
        """What the response's Content-Type says."""
        return formats.media_type(self.format)


class Derivatives:
    """The derivative files on primary storage."""

    def __init__(self, primary: Storage) -> None:
        self.primary = primary

    async def find(self, photo_id: str, spec: SizeSpec | None, accept: str | None) -> Found:
        """The best existing file of this size for ``accept``; 404 or 406 when there is none."""
        if not is_photo_id(photo_id) or spec is None:
            raise NotFound("no such photo size")
        choices = negotiation.ranked(accept, spec.encodings)
        if not choices:
            offered = ", ".join(formats.media_type(f) for f in spec.encodings)
            raise NotAcceptable(f"this size is available as {offered}")
        for fmt in choices:
            key = keys.derivative(photo_id, spec.name, formats.extension(fmt))
            try:
                return Found(await self.primary.head(key), fmt, fmt == choices[0])
            except ObjectNotFound:
                continue
        raise NotFound("no such photo size (or it is still processing)")

    async def read(self, found: Found) -> bytes:
        """The file's bytes (derivatives are small: read whole, so no open file outlives a
        client that hangs up mid-download)."""
        return await self.primary.read(found.info.key)
