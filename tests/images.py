"""Test images made with Pillow, for every test that needs a picture.

``photo`` is the base picture: smooth gradients, a little texture and a red block in the
top-left quadrant, so ``red_corner`` can tell where an orientation step moved it.
"""

from __future__ import annotations

import struct
import zlib
from functools import lru_cache
from io import BytesIO
from typing import Any

from PIL import ExifTags, Image, ImageChops, ImageCms, ImageStat

RED = (255, 0, 0)
# sRGB's primaries adapted to D50, as an ICC matrix/TRC profile stores them.
_SRGB_RED = (0.4360747, 0.2225045, 0.0139322)
_SRGB_GREEN = (0.3850649, 0.7168786, 0.0971045)
_SRGB_BLUE = (0.1430804, 0.0606169, 0.7141733)
_D50 = (0.9642, 1.0, 0.8249)


@lru_cache(maxsize=8)
def _photo(width: int, height: int) -> Image.Image:
    across = Image.linear_gradient("L").transpose(Image.Transpose.ROTATE_90)
    down = Image.linear_gradient("L")
    noise = Image.effect_noise((max(1, width // 4), max(1, height // 4)), 40)
    # Blue stays in 110..173 so that nothing but the marker reads as red.
    texture = noise.resize((width, height), Image.Resampling.BILINEAR).point(lambda v: 110 + v // 4)
    im = Image.merge(
        "RGB",
        (
            across.resize((width, height), Image.Resampling.BILINEAR),
            down.resize((width, height), Image.Resampling.BILINEAR),
            texture,
        ),
    )
    im.paste(
        RED,
        (
            width // 8,
            height // 8,
            max(width // 8 + 1, width // 3),
            max(height // 8 + 1, height // 3),
        ),
    )
    return im


def photo(width: int, height: int) -> Image.Image:
    """A fresh RGB picture with the red marker in its top-left quadrant."""
    return _photo(width, height).copy()


def red_corner(img: Image.Image) -> str:
    """Which quadrant holds the red marker: "top-left", ..., "bottom-right" or "none"."""
    r, g, b = img.convert("RGB").split()
    red = ImageChops.multiply(
        r.point(lambda v: 255 if v > 180 else 0),
        ImageChops.multiply(
            g.point(lambda v: 255 if v < 90 else 0), b.point(lambda v: 255 if v < 90 else 0)
        ),
    )
    w, h = img.size
    quadrants = {
        "top-left": (0, 0, w // 2, h // 2),
        "top-right": (w // 2, 0, w, h // 2),
        "bottom-left": (0, h // 2, w // 2, h),
        "bottom-right": (w // 2, h // 2, w, h),
    }
    counts = {name: ImageStat.Stat(red.crop(box)).sum[0] for name, box in quadrants.items()}
    best = max(counts, key=lambda name: counts[name])
    return best if counts[best] > 0 else "none"


def _save(im: Image.Image, fmt: str, **params: Any) -> bytes:
    out = BytesIO()
    im.save(out, fmt, **params)
    return out.getvalue()


def exif_bytes(*, orientation: int | None = None, gps: bool = False) -> bytes:
    """An EXIF block with a camera make, optionally an orientation and a GPS position."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "imagepipe-tests"
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    if gps:
        ifd = exif.get_ifd(ExifTags.IFD.GPSInfo)
        ifd[ExifTags.GPS.GPSLatitudeRef] = "N"
        ifd[ExifTags.GPS.GPSLatitude] = (52.0, 22.0, 12.0)
        ifd[ExifTags.GPS.GPSLongitudeRef] = "E"
        ifd[ExifTags.GPS.GPSLongitude] = (4.0, 53.0, 40.0)
    return exif.tobytes()


XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    b'xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="secret photographer"/>'
    b"</rdf:RDF></x:xmpmeta>"
)


def jpeg(
    width: int,
    height: int,
    *,
    orientation: int | None = None,
    exif_gps: bool = False,
    icc: bytes | None = None,
    quality: int = 90,
    progressive: bool = False,
    xmp: bool = False,
    comment: bytes | None = None,
) -> bytes:
    """A JPEG of ``photo`` as stored (the marker is top-left in the stored pixels)."""
    params: dict[str, Any] = {"quality": quality, "progressive": progressive}
    params["exif"] = exif_bytes(orientation=orientation, gps=exif_gps)
    if icc is not None:
        params["icc_profile"] = icc
    if xmp:
        params["xmp"] = XMP
    if comment is not None:
        params["comment"] = comment
    return _save(photo(width, height), "JPEG", **params)


def tagged_jpeg(width: int, height: int) -> bytes:
    """A JPEG carrying every kind of metadata a derivative must drop: EXIF (orientation 6 and
    a GPS position), XMP, an sRGB ICC profile and a comment."""
    meta = {"exif_gps": True, "xmp": True, "comment": b"secret", "icc": srgb_profile()}
    return jpeg(width, height, orientation=6, **meta)


def png(width: int, height: int, *, mode: str = "RGB") -> bytes:
    """A PNG of ``photo`` in ``mode`` (P, L, I;16, 1, RGBA, ...)."""
    im = photo(width, height)
    if mode == "I;16":
        im = im.convert("L").point(lambda v: v * 257, "I").convert("I;16")
    elif mode != "RGB":
        im = im.convert(mode)
    return _save(im, "PNG")


def apng(width: int, height: int, frames: int) -> bytes:
    """An animated PNG whose frame count is in its header (acTL)."""
    images = [Image.new("RGB", (width, height), (40 * i % 256, 0, 0)) for i in range(frames)]
    return _save(images[0], "PNG", save_all=True, append_images=images[1:], duration=100)


def png_alpha(width: int, height: int) -> bytes:
    """RGBA: the left half fully transparent (black underneath), the right half opaque blue."""
    im = Image.new("RGBA", (width, height), (0, 0, 255, 255))
    im.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    return _save(im, "PNG")


def cmyk_jpeg(width: int, height: int, *, icc: bytes | None = None) -> bytes:
    """A CMYK JPEG (Adobe APP14): cyan on the left half, magenta on the right."""
    im = Image.new("CMYK", (width, height), (255, 0, 0, 0))
    im.paste((0, 255, 0, 0), (width // 2, 0, width, height))
    return _save(im, "JPEG", quality=95, **({"icc_profile": icc} if icc else {}))


def gif(width: int, height: int, frames: int = 1) -> bytes:
    """A GIF whose first frame is red and later frames green, then blue, ..."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    images = [Image.new("RGB", (width, height), colours[i % 4]) for i in range(frames)]
    return _save(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def webp(width: int, height: int, *, alpha: bool = False, frames: int = 1) -> bytes:
    """A lossy WebP of ``photo`` (half transparent with ``alpha``; animated with ``frames``)."""
    im = photo(width, height)
    if alpha:
        im.putalpha(Image.new("L", im.size, 255))
        im.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    rest = [Image.new(im.mode, im.size, (0, 40 * i, 255)) for i in range(1, frames)]
    return _save(im, "WEBP", quality=90, save_all=frames > 1, append_images=rest)


def tiff(width: int, height: int) -> bytes:
    """A TIFF of ``photo``: a real image, but not of an allowed format by default."""
    return _save(photo(width, height), "TIFF")


def truncated(data: bytes, keep: float) -> bytes:
    """The first ``keep`` fraction of ``data``."""
    return data[: int(len(data) * keep)]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def pixel_flood_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A valid PNG header claiming width x height pixels, in a file of a few dozen bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def pixel_flood_webp(width: int = 16_000, height: int = 16_000) -> bytes:
    """A WebP (VP8X) header claiming a width x height canvas and nothing else."""
    body = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0"
    body += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", len(body) + 4) + b"WEBP" + body


def srgb_profile() -> bytes:
    """The bytes of an sRGB ICC profile (lcms' built-in one)."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def swapped_rgb_profile() -> bytes:
    """An RGB profile whose red and green primaries are sRGB's green and red.

    Pure red in an image tagged with it is pure green once converted to sRGB, so a test
    can tell that the conversion really ran.
    """
    return icc_v2_rgb("red-green swapped sRGB", _SRGB_GREEN, _SRGB_RED, _SRGB_BLUE, 2.2)


def icc_jpeg(width: int, height: int) -> bytes:
    """A pure red JPEG tagged with ``swapped_rgb_profile``: it must come out green."""
    im = Image.new("RGB", (width, height), RED)
    return _save(im, "JPEG", quality=95, icc_profile=swapped_rgb_profile())


def _s15(values: tuple[float, ...]) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def icc_v2_rgb(
    description: str,
    red: tuple[float, float, float],
    green: tuple[float, float, float],
    blue: tuple[float, float, float],
    gamma: float,
) -> bytes:
    """A minimal ICC v2 matrix/TRC display profile, written by hand."""
    text = description.encode("ascii") + b"\0"
    desc = b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0\0\0" + bytes(67)
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"
    tags = [
        (b"desc", desc),
        (b"wtpt", b"XYZ \0\0\0\0" + _s15(_D50)),
        (b"rXYZ", b"XYZ \0\0\0\0" + _s15(red)),
        (b"gXYZ", b"XYZ \0\0\0\0" + _s15(green)),
        (b"bXYZ", b"XYZ \0\0\0\0" + _s15(blue)),
        (b"rTRC", curve),
        (b"gTRC", curve),
        (b"bTRC", curve),
    ]
    offset = 128 + 4 + 12 * len(tags)
    table, data = struct.pack(">I", len(tags)), b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)  # tag data is 4-byte aligned
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += bytes(12) + b"acsp" + bytes(24) + struct.pack(">I", 0) + _s15(_D50)
    header += bytes(128 - len(header))
    return header + table + data


def flat_png(width: int, height: int) -> bytes:
    """A huge canvas in a tiny file (one colour compresses to almost nothing): costly to decode."""
    return _save(Image.new("RGB", (width, height), (40, 90, 160)), "PNG", compress_level=9)


def heic(width: int, height: int, *, orientation: int | None = None) -> bytes:
    """An HEIC of ``photo`` (an iPhone's format; made with the `heif` extra's encoder)."""
    import pillow_heif  # the extra: imported here so the other images need none of it

    pillow_heif.register_heif_opener()
    exif = exif_bytes(orientation=orientation)
    return _save(photo(width, height), "HEIF", quality=80, exif=exif)


def avif(width: int, height: int, *, orientation: int | None = None) -> bytes:
    """An AVIF of ``photo`` with an EXIF orientation and an sRGB ICC profile."""
    exif = exif_bytes(orientation=orientation)
    return _save(photo(width, height), "AVIF", quality=80, exif=exif, icc_profile=srgb_profile())
