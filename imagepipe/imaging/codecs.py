"""Which formats this installation can decode and encode (Pillow's build, the `heif` extra)."""

from __future__ import annotations

import importlib.util

from PIL import features

from imagepipe import formats


def decodable_formats() -> tuple[str, ...]:
    """The upload formats decodable here by default (HEIC needs the `heif` extra; TIFF is
    opt-in)."""
    found = ["JPEG", "PNG", "WEBP", "GIF"]
    if features.check("avif"):
        found.append("AVIF")
    if importlib.util.find_spec("pillow_heif") is not None:
        found.append("HEIF")
    return tuple(found)


def can_decode(name: str) -> bool:
    """Whether an upload may be allowed in this format here (TIFF: only by naming it)."""
    return name in decodable_formats() or name == "TIFF"


def can_encode(name: str) -> bool:
    """Whether derivatives can be written in this format here."""
    if name not in formats.OUTPUT_FORMATS:
        return False
    return name == "JPEG" or bool(features.check(name.lower()))
