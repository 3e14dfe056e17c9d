"""The hostile corpus: malformed, oversized and disguised uploads, made with Pillow and bytes.

Every generator is deterministic (seeded RNG, fixed sizes) and bounded in count and size, so
the suite that uploads them stays fast. Each ``Hostile`` says what the pipeline may do with it:

    REFUSE      a 4xx problem at upload, with exactly ``status``
    NO_PUBLISH  refused at upload, or a ``failed`` ticket: never a published photo
    ANY         refused at upload, or a terminal ticket (failed with a reason, or completed
                with clean JPEG derivatives)
"""

from __future__ import annotations

import random
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from io import BytesIO
from typing import Any

from PIL import Image

from tests import images


class Expect(Enum):
    REFUSE = "refuse"
    NO_PUBLISH = "no-publish"
    ANY = "any"


@dataclass(frozen=True)
class Hostile:
    """One bad upload and what the pipeline is allowed to do with it."""

    name: str
    data: bytes
    expect: Expect = Expect.ANY
    status: int | None = None  # the exact status when expect is REFUSE

    def __repr__(self) -> str:  # pytest ids and failure messages: the name, not the bytes
        return self.name


def refuse(name: str, data: bytes, status: int) -> Hostile:
    return Hostile(name, data, Expect.REFUSE, status)


SEED = 20260301
BOMB_BYTES = 64 * 1024 * 1024  # what a zlib bomb inflates to (it is ~64 KB on the wire)


def _save(im: Image.Image, fmt: str, **params: Any) -> bytes:
    out = BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_with(chunk: bytes) -> bytes:
    """A real PNG with ``chunk`` inserted before its first IDAT."""
    png = images.png(64, 48)
    at = png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


# -- broken files ---------------------------------------------------------------------


def truncations() -> Iterator[Hostile]:
    """JPEG and PNG cut short inside their pixel data: never published half-grey."""
    for fmt, data in (("jpeg", images.jpeg(256, 192)), ("png", images.png(256, 192))):
        for keep in (0.02, 0.1, 0.35, 0.6, 0.95):
            yield Hostile(f"{fmt}-cut-{keep}", images.truncated(data, keep), Expect.NO_PUBLISH)


def bit_flips(count: int = 8) -> Iterator[Hostile]:
    """JPEG and PNG with a few random bits flipped past the magic bytes (seeded)."""
    rng = random.Random(SEED)
    for fmt, data in (("jpeg", images.jpeg(256, 192)), ("png", images.png(256, 192))):
        for i in range(count):
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 4)):
                flipped[rng.randrange(8, len(data))] ^= 1 << rng.randrange(8)
            yield Hostile(f"{fmt}-flip-{i}", bytes(flipped))


# -- pixel floods and impossible sizes ------------------------------------------------


def _jpeg_sized(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header claims ``width`` x ``height``."""
    data = bytearray(images.jpeg(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif_screen(width: int, height: int) -> bytes:
    data = bytearray(images.gif(8, 8))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _webp_lossy_sized(width: int, height: int) -> bytes:
    data = bytearray(images.webp(16, 16))
    assert data[12:16] == b"VP8 "
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


def pixel_floods() -> Iterator[Hostile]:
    """Tiny files whose headers claim billions of pixels, zero or 'negative' sizes."""
    yield refuse("png-50000x50000", images.pixel_flood_png(), 413)
    yield refuse("jpeg-50000x50000", _jpeg_sized(50_000, 50_000), 413)
    yield refuse("gif-50000x50000", _gif_screen(50_000, 50_000), 413)
    yield refuse("webp-16000x16000", images.pixel_flood_webp(), 413)
    # PNG sizes are unsigned 31-bit: 0xFFFFFFFF is -1 to a careless int32 reader
    yield refuse("png-negative-width", images.pixel_flood_png(0xFFFF_FFFF, 10), 413)
    yield refuse("png-zero-width", images.pixel_flood_png(0, 10), 415)
    yield refuse("png-zero-height", images.pixel_flood_png(10, 0), 415)
    yield refuse("jpeg-zero-width", _jpeg_sized(0, 16), 415)
    yield refuse("jpeg-zero-height", _jpeg_sized(16, 0), 415)  # legal only with a DNL marker
    yield refuse("webp-zero-size", _webp_lossy_sized(0, 0), 415)
    yield Hostile("gif-zero-screen", _gif_screen(0, 0))  # the frame has a size of its own


# -- decompression bombs --------------------------------------------------------------


def zlib_bombs() -> Iterator[Hostile]:
    """PNG text and ICC chunks that inflate to 64 MB each; and many that add up."""
    bomb = zlib.compress(b"\0" * BOMB_BYTES, 9)
    yield Hostile("png-ztxt-bomb", _png_with(_png_chunk(b"zTXt", b"Comment\0\0" + bomb)))
    yield Hostile("png-itxt-bomb", _png_with(_png_chunk(b"iTXt", b"Comment\0\1\0\0\0" + bomb)))
    yield Hostile("png-iccp-bomb", _png_with(_png_chunk(b"iCCP", b"icc\0\0" + bomb)))
    small = zlib.compress(b"\0" * 900_000, 9)  # each under Pillow's per-chunk limit
    many = b"".join(_png_chunk(b"zTXt", b"k%d\0\0" % i + small) for i in range(120))
    yield Hostile("png-120-ztxt-chunks", _png_with(many))


# -- animations -----------------------------------------------------------------------

_ONE_PIXEL_LZW = b"\x02\x02\x44\x01\x00"  # min code size 2: clear, index 0, end; terminator


def gif_frames(canvas: tuple[int, int], frames: list[tuple[int, int, int, int]]) -> bytes:
    """A GIF written by hand: ``frames`` are (left, top, width, height), each one pixel of data.

    Frames bigger than one pixel are short of data: a decoder that reaches them must fail.
    """
    out = bytearray(b"GIF89a" + struct.pack("<HHBBB", *canvas, 0x80, 0, 0))
    out += b"\0\0\0\xff\xff\xff"  # two-colour global table
    for left, top, width, height in frames:
        out += b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
        out += b"\x2c" + struct.pack("<HHHHB", left, top, width, height, 0)
        out += _ONE_PIXEL_LZW
    return bytes(out + b"\x3b")


def animations() -> Iterator[Hostile]:
    """Thousands of frames, and frames larger than (or far outside) the canvas."""
    dot = (0, 0, 1, 1)
    # 100 x 100 x 6000 = 60 MP: over the pixel limit, though each frame is one pixel
    yield Hostile(
        "gif-6000-frames-over-limit", gif_frames((100, 100), [dot] * 6000), Expect.NO_PUBLISH
    )
    yield Hostile("gif-3000-frames-under-limit", gif_frames((32, 32), [dot] * 3000))
    yield refuse(
        "gif-first-frame-60000-square", gif_frames((10, 10), [(0, 0, 60_000, 60_000)]), 413
    )
    yield Hostile("gif-first-frame-3000-square", gif_frames((10, 10), [(0, 0, 3000, 3000)]))
    yield Hostile("gif-later-frame-60000-square", gif_frames((1, 1), [dot, (0, 0, 60_000, 60_000)]))
    yield refuse("gif-frame-far-off-canvas", gif_frames((10, 10), [(65_000, 65_000, 1, 1)]), 413)


# -- not in the allowlist: refused from the magic bytes, before any decoder runs -------


def _psd() -> bytes:
    """A Photoshop header (8BPS) for a 32 x 32 RGB image with empty sections."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 32, 32, 8, 3)
    return header + b"\0\0\0\0" * 3 + b"\0\0" + bytes(32 * 32 * 3)


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script><rect width='10' height='10'/></svg>"
)


def other_formats() -> Iterator[Hostile]:
    """Real images in formats outside the allowlist (EPS would run Ghostscript)."""
    im = images.photo(32, 32)
    eps = _save(im, "EPS")
    yield refuse("tiff", images.tiff(32, 32), 415)
    yield refuse("psd", _psd(), 415)
    yield refuse("eps", eps, 415)
    # DOS EPS binary header in front of the PostScript: Pillow's EPS plugin reads this too
    yield refuse(
        "eps-dos-binary",
        b"\xc5\xd0\xd3\xc6" + struct.pack("<II", 30, len(eps)) + bytes(18) + eps,
        415,
    )
    yield refuse("svg", SVG, 415)
    yield refuse("ico", _save(im, "ICO"), 415)
    yield refuse("jp2", _save(im, "JPEG2000"), 415)
    yield refuse("j2k-codestream", _save(im, "JPEG2000", no_jp2=True), 415)
    yield refuse("sgi", _save(im, "SGI"), 415)
    yield refuse("bmp", _save(im, "BMP"), 415)


def non_images() -> Iterator[Hostile]:
    """Things that are not images at all (uploaded with image names and Content-Types)."""
    zipped = BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("evil.html", "<script>alert(1)</script>")
    yield refuse("html", b"<!doctype html><html><script>alert(1)</script></html>", 415)
    yield refuse("pdf", b"%PDF-1.7\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", 415)
    yield refuse("zip", zipped.getvalue(), 415)
    yield refuse("elf", b"\x7fELF\x02\x01\x01" + bytes(120), 415)
    yield refuse("json", b'{"photo": "definitely"}', 415)
    yield refuse("one-byte", b"\xff", 415)
    yield refuse("jpeg-magic-only", b"\xff\xd8\xff", 415)
    yield refuse("png-magic-only", b"\x89PNG\r\n\x1a\n", 415)
    yield refuse("utf16-text", "a photo, honestly".encode("utf-16"), 415)
    yield refuse("empty", b"", 400)


# -- polyglots: valid images that are also something else ------------------------------

HTML = b"<html><body><script>alert(document.cookie)</script></body></html>"


def polyglots() -> Iterator[Hostile]:
    """Valid images that are also HTML or a ZIP; the reverse (HTML first) is refused."""
    photo = images.jpeg(120, 90)
    yield Hostile("jpeg+html-after-eoi", photo + HTML)
    yield Hostile("jpeg+html-in-comment", images.jpeg(120, 90, comment=HTML))
    zipped = BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("index.html", HTML)
    yield Hostile("gif+zip", images.gif(40, 30) + zipped.getvalue())
    yield refuse("html+jpeg", HTML + photo, 415)


def corpus() -> list[Hostile]:
    """The whole hostile corpus, in a stable order."""
    groups = (
        truncations,
        bit_flips,
        pixel_floods,
        zlib_bombs,
        animations,
        other_formats,
        non_images,
        polyglots,
    )
    return [case for group in groups for case in group()]
