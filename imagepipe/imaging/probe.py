"""Header probes: format, size and frames from the first bytes of an upload, before any
pixel is decoded, so a pixel bomb is refused after its header, not its body.

Pillow reads most headers without decoding; WebP, HEIF and AVIF it opens only whole (and
WebP's canvas is allocated while opening), so their sizes are read here from the header.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from imagepipe.formats import SNIFF_BYTES, sniff
from imagepipe.imaging.decoding import (
    DECODE_ERRORS,
    NOT_ALLOWED,
    NOT_DECODABLE,
    ImageRejected,
    NeedMoreData,
    enforce_pixel_limit,
    open_one,
    quiet_pillow,
)

HEADER_SIZED = ("WEBP", "HEIF", "AVIF")  # sized by the parsers here, not by Pillow's open


@dataclass(frozen=True)
class Probe:
    """What the header says, checked against the pixel limit."""

    format: str
    width: int
    height: int
    frames: int


def probe(prefix: bytes, formats: Sequence[str], max_pixels: int, complete: bool) -> Probe:
    """Read format, size and frame count from the header only, enforcing the pixel limit."""
    fmt = sniff(prefix, formats)
    if fmt is None:
        if not complete and len(prefix) < SNIFF_BYTES:
            raise NeedMoreData
        raise ImageRejected(415, NOT_ALLOWED)
    if fmt in HEADER_SIZED:
        return _probe_container(prefix, fmt, max_pixels, complete)
    with quiet_pillow():
        try:
            im = open_one(prefix, fmt)
        except DECODE_ERRORS as exc:
            if complete:
                raise ImageRejected(415, NOT_DECODABLE) from exc
            raise NeedMoreData from exc
        with im:
            frames = _header_frames(im)
            enforce_pixel_limit(im.width, im.height, frames, max_pixels)
            return Probe(fmt, im.width, im.height, frames)


def _probe_container(prefix: bytes, fmt: str, max_pixels: int, complete: bool) -> Probe:
    # Pillow opens these only whole (and allocates WebP's canvas while opening it), so the
    # size is read from the header here. Animated frames are counted by ``render``.
    size = container_size(prefix, fmt)
    if size is None:
        if complete or (fmt == "WEBP" and len(prefix) >= 30):  # WebP's header is fixed
            raise ImageRejected(415, NOT_DECODABLE)
        raise NeedMoreData
    enforce_pixel_limit(*size, 1, max_pixels)
    return Probe(fmt, *size, 1)


def _webp_size(b: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP header (VP8, VP8L or VP8X), without decoding."""
    chunk = b[12:16]
    if chunk == b"VP8 " and len(b) >= 30 and b[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", b[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(b) >= 25 and b[20] == 0x2F:
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(b) >= 30:
        return int.from_bytes(b[24:27], "little") + 1, int.from_bytes(b[27:30], "little") + 1
    return None


def _isobmff_size(b: bytes) -> tuple[int, int] | None:
    """The largest image extent (``ispe``) in a HEIF/AVIF ``meta`` box, else None.

    The largest, not the primary item's: a grid's tiles and thumbnails are smaller than
    the grid, so this is the size the decoder will allocate (or an over-estimate of it).
    """
    meta = _child_box(b, 0, len(b), b"meta")
    boxes = meta and _child_box(b, meta[0] + 4, meta[1], b"iprp")  # meta is a full box
    boxes = boxes and _child_box(b, *boxes, b"ipco")
    if not boxes:
        return None
    extents = [
        struct.unpack(">II", b[start + 4 : start + 12])  # after its version and flags
        for kind, start, end in _boxes(b, *boxes)
        if kind == b"ispe" and end - start >= 12
    ]
    return max(extents, key=lambda e: e[0] * e[1], default=None)


def _child_box(b: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    """The payload span of the first complete ``kind`` box between start and end."""
    return next(((s, e) for k, s, e in _boxes(b, start, end) if k == kind), None)


def _boxes(b: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Type and payload span of each complete ISO-BMFF box between start and end."""
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", b[start : start + 8])
        header = 8
        if size == 1 and start + 16 <= end:
            size, header = struct.unpack(">Q", b[start + 8 : start + 16])[0], 16
        if size < header or start + size > end:
            return  # size 0 (to the end of the file), garbage, or past what we hold
        yield kind, start + header, start + size
        start += size


def container_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """The size a WebP, HEIF or AVIF header declares (their decoders check it too late)."""
    if fmt == "WEBP":
        return _webp_size(data)
    return _isobmff_size(data) if fmt in HEADER_SIZED else None


def _header_frames(im: Image.Image) -> int:
    # Where ``n_frames`` is a property Pillow must scan the file for it (GIF): say 1 here.
    if isinstance(getattr(type(im), "n_frames", None), property):
        return 1
    return int(getattr(im, "n_frames", 1))
