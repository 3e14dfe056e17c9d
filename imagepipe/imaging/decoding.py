"""Opening bytes as an image: exactly one decoder, the pixel limit, and one error for all.

Errors: ``ImageRejected`` (413 too many pixels, 415 not an allowed, decodable image) is
permanent; ``NeedMoreData`` asks the caller for a longer prefix.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO

from PIL import Image, ImageCms, ImageFile

try:  # the `heif` extra: iPhone photos (AVIF needs nothing extra: Pillow decodes it)
    import pillow_heif
except ImportError:  # pragma: no cover - the extra is part of `make install`
    pass
else:
    pillow_heif.register_heif_opener()

# A truncated upload is a failed upload: never publish the grey bottom half of a photo.
ImageFile.LOAD_TRUNCATED_IMAGES = False

NOT_ALLOWED = "not an image of an allowed format"
NOT_DECODABLE = "not a decodable image"

# What Pillow raises on hostile or broken files (it is not consistent about it).
DECODE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    ArithmeticError,
    ImageCms.PyCMSError,
    RuntimeError,  # how pillow-heif reports libheif's errors
)


class ImageRejected(Exception):
    """A permanent fault: the bytes are not an acceptable image (HTTP ``status``)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageRejected], tuple[int, str]]:
        # Crosses the sandbox pipe: rebuild from status and reason, not from ``args``.
        return type(self), (self.status, self.reason)


class NeedMoreData(Exception):
    """The header could not be parsed from this prefix yet."""


def enforce_pixel_limit(width: int, height: int, frames: int, max_pixels: int) -> None:
    """Refuse an invalid size, or width x height x frames over ``max_pixels`` (413)."""
    if width <= 0 or height <= 0:
        raise ImageRejected(415, f"image has an invalid size {width}x{height}")
    if width * height * frames > max_pixels:
        raise ImageRejected(
            413, f"image has {width}x{height}x{frames} pixels, over the limit of {max_pixels}"
        )


def open_one(data: bytes, fmt: str) -> Image.Image:
    """Open with exactly one decoder: the one the magic bytes named."""
    try:
        return Image.open(BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"image has too many pixels ({exc})") from exc


@contextmanager
def quiet_pillow() -> Iterator[None]:
    """Pillow's advisory warnings stay quiet: our own limits and errors decide."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield
