"""The formats registry: every image format imagepipe knows, and everything known about it.

    name  label  extension  media types  file names  magic bytes  output (encoder options, rank)

Plain Python and no Pillow, so the CLI client sniffs files with the same table the API
sniffs uploads with. Which of these formats this installation can decode or encode is a
question for Pillow, asked in ``imaging.codecs``; which of them an upload may be is a
setting (``IMAGEPIPE_FORMATS``).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Enough bytes from the start of a file for every magic test below, ftyp brands included.
SNIFF_BYTES = 64

_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_HEIF_BRANDS |= {b"mif1", b"msf1"}  # generic HEIF containers: tested after AVIF's brands


def ftyp_brands(b: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF ``ftyp`` box at the start of ``b``."""
    if len(b) < 12 or b[4:8] != b"ftyp":
        return set()
    end = min(struct.unpack(">I", b[:4])[0], len(b))
    return {b[8:12]} | {b[i : i + 4] for i in range(16, end - 3, 4)}


@dataclass(frozen=True)
class Format:
    """One image format.

    ``output``: encoder options when derivatives may be written in it (None: input only);
    ``rank``: among output formats, the smaller its files the higher: content negotiation
    prefers it when a client names several at the same quality.
    """

    name: str  # Pillow's name for it, and the name settings use
    label: str  # what people call it: the page and every message show this one
    extension: str  # of the storage keys imagepipe writes
    media_types: tuple[str, ...]  # the first is the one imagepipe sends
    file_names: tuple[str, ...]  # the extensions browsers and cameras give such files
    magic: Callable[[bytes], bool]
    output: dict[str, Any] | None = field(default=None, compare=False)
    rank: int = 0

    @property
    def media_type(self) -> str:
        """The media type of a file in this format."""
        return self.media_types[0]


# In sniffing order: HEIF's generic brands only after AVIF's.
FORMATS: tuple[Format, ...] = (
    Format(
        "JPEG",
        "JPEG",
        "jpg",
        ("image/jpeg", "image/pjpeg"),
        (".jpg", ".jpeg", ".jpe", ".jfif"),
        lambda b: b.startswith(b"\xff\xd8\xff"),
        # baseline 4:2:0: the cheapest to encode and what every client decodes
        output={"optimize": False, "progressive": False, "subsampling": "4:2:0"},
        rank=0,
    ),
    Format(
        "PNG",
        "PNG",
        "png",
        ("image/png", "image/apng"),
        (".png", ".apng"),
        lambda b: b.startswith(b"\x89PNG\r\n\x1a\n"),
    ),
    Format(
        "GIF", "GIF", "gif", ("image/gif",), (".gif",), lambda b: b[:6] in (b"GIF87a", b"GIF89a")
    ),
    Format(
        "WEBP",
        "WebP",
        "webp",
        ("image/webp",),
        (".webp",),
        lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP",
        # method 2: a fifth of the default's time on a 2048 px rung, for files ~5% larger
        output={"method": 2},
        rank=1,
    ),
    Format(
        "TIFF",
        "TIFF",
        "tif",
        ("image/tiff",),
        (".tif", ".tiff"),
        lambda b: b[:4] in (b"II*\0", b"MM\0*"),
    ),
    Format(
        "AVIF",
        "AVIF",
        "avif",
        ("image/avif",),
        (".avif",),
        lambda b: bool(ftyp_brands(b) & _AVIF_BRANDS),
        # speed 8: likewise a fifth of the default's time, for files ~5% larger
        output={"speed": 8, "subsampling": "4:2:0"},
        rank=2,
    ),
    Format(
        "HEIF",
        "HEIC",  # what iPhones name the files, and what people know it as
        "heic",
        ("image/heic", "image/heif"),
        (".heic", ".heif"),
        lambda b: bool(ftyp_brands(b) & _HEIF_BRANDS),
    ),
)
BY_NAME: dict[str, Format] = {f.name: f for f in FORMATS}
# Derivatives may be written in these, least to most compact.
OUTPUT_FORMATS: tuple[str, ...] = tuple(
    f.name for f in sorted((f for f in FORMATS if f.output is not None), key=lambda f: f.rank)
)


def get(name: str) -> Format:
    """The format called ``name`` (case-insensitive); KeyError for one nobody knows."""
    return BY_NAME[name.upper()]


def extension(name: str) -> str:
    """The storage-key extension of a format."""
    return get(name).extension


def media_type(name: str) -> str:
    """The media type imagepipe sends a file of this format as."""
    return get(name).media_type


def labels(names: Sequence[str]) -> list[str]:
    """The display labels of these formats ("WebP", "HEIC"), in the same order."""
    return [get(name).label for name in names]


def sniff(prefix: bytes, allowed: Sequence[str] | None = None) -> str | None:
    """The format the magic bytes of ``prefix`` name, if it is ``allowed`` (default: any)."""
    found = next((f.name for f in FORMATS if f.magic(prefix)), None)
    if found is None or allowed is None:
        return found
    return found if found in {a.upper() for a in allowed} else None
