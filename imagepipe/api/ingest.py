"""(1) Ingest an upload: sniff, enforce limits, stream the original into primary while hashing.

Everything here happens before the 202. The bytes flow once, from the socket to a temp file
beside their final name; on the way they are counted (byte limit), sniffed (the format comes
from magic bytes, never from a name or a Content-Type) and the header is probed for its
pixel count, so a pixel bomb is refused after reading its header, not its body.

An original is written once: the put is create-only, and every check runs inside the stream,
so a refused body is dropped with its temp file and never becomes an object. A refusal
therefore never deletes anything: the key may hold an earlier upload's original.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from imagepipe import formats, keys
from imagepipe.config import Settings
from imagepipe.errors import (
    BadRequest,
    ImagepipeError,
    InsufficientStorage,
    PayloadTooLarge,
    PhotoIdTaken,
    ServiceUnavailable,
    TooManyPixels,
    UnsupportedMediaType,
)
from imagepipe.imaging import probe as header
from imagepipe.imaging.decoding import ImageRejected, NeedMoreData
from imagepipe.models import Original, Visibility
from imagepipe.storage import ObjectExists, ObjectInfo, Storage, StorageError, StorageFull

PROBE_STEPS = (16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024)


@dataclass(frozen=True)
class StoredOriginal:
    """An original that is on primary storage, fsynced, and known to be an allowed image."""

    photo_id: str
    key: str
    info: ObjectInfo
    probe: header.Probe

    def original(self, owner: str = "", visibility: Visibility = "private") -> Original:
        """What the ticket and manifest record about this original (and whose it is)."""
        return Original(
            owner=owner,
            visibility=visibility,
            photo_id=self.photo_id,
            original_key=self.key,
            sha256=self.info.sha256 or "",
            format=self.probe.format,
            width=self.probe.width,
            height=self.probe.height,
            bytes=self.info.size,
        )


def rejection(exc: ImageRejected) -> ImagepipeError:
    """The HTTP error for an image the pipeline refuses."""
    return TooManyPixels(exc.reason) if exc.status == 413 else UnsupportedMediaType(exc.reason)


async def limit_bytes(chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """Pass chunks through, failing with 413 the moment the total passes ``max_bytes``."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise PayloadTooLarge(f"the upload is larger than {max_bytes} bytes")
        yield chunk


class HeaderProbe:
    """Buffers the first bytes until the image header parses, then lets the rest flow by."""

    def __init__(self, formats: Sequence[str], max_pixels: int) -> None:
        self.formats, self.max_pixels = formats, max_pixels
        self.buffer = bytearray()
        self.result: header.Probe | None = None
        self.steps = iter(PROBE_STEPS)
        self.next_try = next(self.steps)

    def feed(self, chunk: bytes) -> None:
        """Add bytes; try the header parse each time the buffer passes the next step."""
        if self.result is not None:
            return
        self.buffer += chunk
        if len(self.buffer) >= self.next_try:
            self.next_try = next(self.steps, 1 << 62)
            self._try(complete=False)

    def finish(self) -> header.Probe:
        """The probe, once the whole body has been read."""
        if self.result is None:
            self._try(complete=True)
        assert self.result is not None
        return self.result

    def _try(self, complete: bool) -> None:
        try:
            self.result = header.probe(bytes(self.buffer), self.formats, self.max_pixels, complete)
        except NeedMoreData:
            return
        except ImageRejected as exc:
            raise rejection(exc) from None
        self.buffer = bytearray()  # parsed: stop holding bytes


async def _read_prefix(chunks: AsyncIterator[bytes]) -> bytes:
    """At least SNIFF_BYTES from the start of the body (less only if the body is shorter)."""
    prefix = b""
    async for chunk in chunks:
        prefix += chunk
        if len(prefix) >= formats.SNIFF_BYTES:
            break
    return prefix


async def _replay(prefix: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield prefix
    async for chunk in rest:
        yield chunk


async def _tee(chunks: AsyncIterator[bytes], probe: HeaderProbe) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        probe.feed(chunk)
        yield chunk
    # the final check inside the stream: a refused body makes the put discard its temp file
    probe.finish()


def sniffed(prefix: bytes, settings: Settings) -> str:
    """The format the first bytes show (415 unless it is one the settings accept)."""
    image_format = formats.sniff(prefix, settings.formats)
    if image_format is None:
        allowed = ", ".join(formats.labels(settings.formats))
        raise UnsupportedMediaType(f"not an image in an accepted format ({allowed})")
    return image_format


async def _no_other_original(primary: Storage, settings: Settings, photo_id: str, key: str) -> None:
    """A reused photo id (a retry) must not gain a second original in another format."""
    others = {keys.original(photo_id, formats.extension(f)) for f in settings.formats} - {key}
    for other in sorted(others):
        if await primary.exists(other):
            raise PhotoIdTaken("another upload holds this photo id; nothing was changed")


async def _put_once(
    primary: Storage, key: str, chunks: AsyncIterator[bytes], source: Path | None
) -> ObjectInfo:
    """Create the original; if the key holds the very same bytes already, converge on them.

    A ``source`` file (a finished resumable upload) is linked into place where the store
    can (a filesystem), after its bytes passed every check; else they are written."""
    linked = getattr(primary, "put_linked", None) if source is not None else None
    try:
        if linked is not None:
            return await linked(key, chunks, source)  # type: ignore[no-any-return]
        return await primary.put(key, chunks, create_only=True)
    except ObjectExists as taken:
        # a retry after the API died between fsync and response finds its own original
        if await primary.sha256(key) != taken.offered.sha256:
            raise PhotoIdTaken("another upload holds this photo id; nothing was changed") from None
        return taken.offered


async def store_original(
    body: AsyncIterator[bytes],
    primary: Storage,
    settings: Settings,
    photo_id: str,
    *,
    retry: bool = False,
    source: Path | None = None,
) -> StoredOriginal:
    """Stream one upload into ``originals/{photo_id}.{ext}``; raise a 4xx/507 error if refused.

    The original is created, never rewritten: a key that holds other bytes (or, for a
    ``retry`` of an earlier attempt's photo id, an original in another format) is PhotoIdTaken.
    ``source``: the body's bytes as an fsynced file on primary's filesystem (`_put_once`).
    """
    chunks = limit_bytes(body, settings.max_upload_bytes)
    prefix = await _read_prefix(chunks)
    if not prefix:
        raise BadRequest("the upload is empty")
    image_format = sniffed(prefix, settings)
    key = keys.original(photo_id, formats.extension(image_format))
    probe = HeaderProbe([image_format], settings.max_pixels)
    try:
        if retry:
            await _no_other_original(primary, settings, photo_id, key)
        info = await _put_once(primary, key, _tee(_replay(prefix, chunks), probe), source)
    except StorageFull:
        raise InsufficientStorage("primary storage is full", retry_after=60) from None
    except StorageError as exc:
        raise ServiceUnavailable(f"primary storage unavailable: {exc}", retry_after=5) from None
    return StoredOriginal(photo_id=photo_id, key=key, info=info, probe=probe.finish())
