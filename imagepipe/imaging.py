"""Pure imaging: bytes in, metadata-free sRGB derivatives (JPEG, WebP, AVIF) out.

The pipeline is data (imgproxy style): ``RENDER_STEPS`` lists small named steps, each a
function of one ``Job``, so reading the list is reading the algorithm and every step can
be tested alone. Nothing here touches Redis, storage or asyncio; the worker runs
``render`` inside a ``sandbox.DecodePool`` child, the API runs ``probe`` on a prefix.

Errors: ``ImageRejected`` (413 too many pixels, 415 not an allowed, decodable image) is
permanent; ``NeedMoreData`` asks the caller for a longer prefix.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from io import BytesIO
from math import ceil
from typing import Any

from PIL import Image, ImageCms, ImageFile, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from imagepipe.config import SizeSpec

try:  # the `heif` extra: iPhone photos (AVIF needs nothing extra: Pillow decodes it)
    import pillow_heif
except ImportError:  # pragma: no cover - the extra is part of `make install`
    pass
else:
    pillow_heif.register_heif_opener()

# A truncated upload is a failed upload: never publish the grey bottom half of a photo.
ImageFile.LOAD_TRUNCATED_IMAGES = False

EXTENSIONS: dict[str, str] = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "AVIF": "avif",
    "HEIF": "heic",
    "TIFF": "tif",
}
# Each derivative format: its media type and cheap-but-good encoder options (WebP's
# method 2 and AVIF's speed 8 cost a fifth of their defaults' time on a 2048 px rung, for
# files about 5% larger). Their file extensions are EXTENSIONS'.
OUTPUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "JPEG": ("image/jpeg", {"optimize": False, "progressive": False, "subsampling": "4:2:0"}),
    "WEBP": ("image/webp", {"method": 2}),
    "AVIF": ("image/avif", {"speed": 8, "subsampling": "4:2:0"}),
}
SNIFF_BYTES = 32  # enough for every magic number below, ftyp brands included
NOT_ALLOWED = "not an image of an allowed format"
NOT_DECODABLE = "not a decodable image"

# What Pillow raises on hostile or broken files (it is not consistent about it).
_DECODE_ERRORS: tuple[type[Exception], ...] = (
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
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"}
_HEIF_BRANDS |= {b"mif1", b"msf1"}  # generic HEIF containers (checked after AVIF)
_HEADER_SIZED = ("WEBP", "HEIF", "AVIF")  # sized by our header parsers, not Pillow's open
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}
# Past this many source pixels resizing switches from Lanczos to box-reduce + Hamming:
# on a 12 MP photo every rung stays >= 42 dB PSNR from Lanczos-from-the-original, in
# half the time (the first resize dominates the render); small sources keep Lanczos.
_BIG_SOURCE = 2_000_000
# libjpeg's fast IDCT and plain chroma upsampling cost ~3 dB (still ~45 dB) and save a
# quarter of a full decode; used only where the image then shrinks at least this much.
_FAST_DECODE_SHRINK = 1.5
# Shrink-on-load may land this far below the largest size, which is then upscaled to it:
# a 4032 px phone photo decodes at 1/2 (2016 px) for the 2048 rung instead of in full,
# which halves its render; on real photos that 1.6% upscale scores as well against a
# Lanczos-from-every-pixel reference as the full decode did (BENCHMARKS.md, row 1).
_DRAFT_UPSCALE = 0.025
# Below this shrink factor a big source gets Bicubic instead of Hamming: after a DCT-scaled
# decode Hamming's extra softness costs ~2 dB, and so little shrinking is cheap anyway.
_SHARP_BELOW = 1.25
# The square crop comes from a rung at least this much larger, so it is a real downscale:
# cropping the 100 px rung 1:1 would sit half a pixel off the centre and blur the crop.
_CROP_SOURCE_FACTOR = 2
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


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


@dataclass(frozen=True)
class Probe:
    """What the header says, checked against the pixel limit."""

    format: str
    width: int
    height: int
    frames: int


@dataclass(frozen=True)
class Rendition:
    """One encoded derivative."""

    name: str
    format: str  # a key of OUTPUTS
    data: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Rendered:
    """Every derivative of one photo; width and height are the upright original's."""

    format: str
    width: int
    height: int
    renditions: tuple[Rendition, ...]


# -- sniffing and probing -------------------------------------------------------------


def sniff(prefix: bytes, formats: Sequence[str]) -> str | None:
    """The allowed format named by the magic bytes of ``prefix``, else None."""
    found = _magic_format(prefix)
    return found if found in {f.upper() for f in formats} else None


def _magic_format(b: bytes) -> str | None:
    if b.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if b.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if b[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return "WEBP"
    if b[:4] in (b"II*\0", b"MM\0*"):
        return "TIFF"
    brands = _ftyp_brands(b)
    if brands & _AVIF_BRANDS:
        return "AVIF"
    return "HEIF" if brands & _HEIF_BRANDS else None


def _ftyp_brands(b: bytes) -> set[bytes]:
    """Major and compatible brands of an ISO-BMFF ``ftyp`` box at the start of ``b``."""
    if len(b) < 12 or b[4:8] != b"ftyp":
        return set()
    end = min(struct.unpack(">I", b[:4])[0], len(b))
    return {b[8:12]} | {b[i : i + 4] for i in range(16, end - 3, 4)}


def probe(prefix: bytes, formats: Sequence[str], max_pixels: int, complete: bool) -> Probe:
    """Read format, size and frame count from the header only, enforcing the pixel limit."""
    fmt = sniff(prefix, formats)
    if fmt is None:
        if not complete and len(prefix) < SNIFF_BYTES:
            raise NeedMoreData
        raise ImageRejected(415, NOT_ALLOWED)
    if fmt in _HEADER_SIZED:
        return _probe_header(prefix, fmt, max_pixels, complete)
    with _quiet_pillow():
        try:
            im = _open(prefix, fmt)
        except _DECODE_ERRORS as exc:
            if complete:
                raise ImageRejected(415, NOT_DECODABLE) from exc
            raise NeedMoreData from exc
        with im:
            frames = _header_frames(im)
            _check_pixels(im.width, im.height, frames, max_pixels)
            return Probe(fmt, im.width, im.height, frames)


def _probe_header(prefix: bytes, fmt: str, max_pixels: int, complete: bool) -> Probe:
    # Pillow opens these only whole (and allocates WebP's canvas while opening it), so the
    # size is read from the header here. Animated frames are counted by ``render``.
    size = _container_size(prefix, fmt)
    if size is None:
        if complete or (fmt == "WEBP" and len(prefix) >= 30):  # WebP's header is fixed
            raise ImageRejected(415, NOT_DECODABLE)
        raise NeedMoreData
    _check_pixels(*size, 1, max_pixels)
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


def _container_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """The size a WebP, HEIF or AVIF header declares (their decoders check it too late)."""
    if fmt == "WEBP":
        return _webp_size(data)
    return _isobmff_size(data) if fmt in _HEADER_SIZED else None


def media_type(fmt: str) -> str:
    """The media type of an output format (a key of OUTPUTS)."""
    return OUTPUTS[fmt][0]


def _header_frames(im: Image.Image) -> int:
    # Where ``n_frames`` is a property Pillow must scan the file for it (GIF): say 1 here.
    if isinstance(getattr(type(im), "n_frames", None), property):
        return 1
    return int(getattr(im, "n_frames", 1))


def _check_pixels(width: int, height: int, frames: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageRejected(415, f"image has an invalid size {width}x{height}")
    if width * height * frames > max_pixels:
        raise ImageRejected(
            413, f"image has {width}x{height}x{frames} pixels, over the limit of {max_pixels}"
        )


def _open(data: bytes, fmt: str) -> Image.Image:
    """Open with exactly one decoder: the one the magic bytes named."""
    try:
        return Image.open(BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"image has too many pixels ({exc})") from exc


@contextmanager
def _quiet_pillow() -> Iterator[None]:
    """Pillow's advisory warnings stay quiet: our own limits and errors decide."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


# -- rendering: the steps -------------------------------------------------------------


@dataclass
class Job:
    """The state one render threads through its steps."""

    data: bytes
    sizes: tuple[SizeSpec, ...]
    formats: tuple[str, ...]
    max_pixels: int
    qualities: Mapping[str, int]
    format: str = ""
    image: Image.Image = field(init=False)
    stored_size: tuple[int, int] = (0, 0)  # as decoded from the file, before any draft
    orientation: int = 1
    icc: bytes | None = None
    rungs: dict[str, Image.Image] = field(default_factory=dict)
    renditions: list[Rendition] = field(default_factory=list)

    @property
    def upright_size(self) -> tuple[int, int]:
        """The original's size once its EXIF orientation is applied."""
        w, h = self.stored_size
        return (h, w) if self.orientation in _SWAPS_AXES else (w, h)


def open_image(job: Job) -> None:
    """Sniff the format and open the header with that one decoder."""
    fmt = sniff(job.data, job.formats)
    if fmt is None:
        raise ImageRejected(415, NOT_ALLOWED)
    if size := _container_size(job.data, fmt):
        _check_pixels(*size, 1, job.max_pixels)  # before the decoder allocates anything
    job.format, job.image = fmt, _open(job.data, fmt)
    job.stored_size = job.image.size


def check_pixels(job: Job) -> None:
    """Refuse width x height x frames over the limit before anything is decoded."""
    frames = int(getattr(job.image, "n_frames", 1))  # GIF: a cheap scan of block headers
    _check_pixels(*job.stored_size, frames, job.max_pixels)


def plan_draft(job: Job) -> None:
    """JPEG shrink-on-load: the smallest 1/2^n scale that covers every size (near enough)."""
    im = job.image
    if not isinstance(im, JpegImageFile):  # MPO is a JpegImageFile too
        return
    target = scaled(*job.stored_size, base_scale(*job.stored_size, job.sizes))
    slack = 1 - _DRAFT_UPSCALE
    im.draft("RGB", (ceil(target[0] * slack), ceil(target[1] * slack)))  # either orientation
    if im.width >= _FAST_DECODE_SHRINK * target[0] and len(im.decoderconfig) == 2:
        im.decoderconfig = (im.decoderconfig[0], 1)  # Pillow's JPEG (scale, fast) pair


def decode(job: Job) -> None:
    """The one decode (first frame of an animation), then orientation and ICC profile."""
    job.image.load()
    job.orientation = _orientation(job.image)
    icc = job.image.info.get("icc_profile")
    job.icc = icc if isinstance(icc, bytes) and icc else None


def normalize_mode(job: Job) -> None:
    """Bring odd modes (palette, 1-bit, 16-bit) to ones that resize and convert well."""
    job.image = working_mode(job.image)


def shrink_to_base(job: Job) -> None:
    """Resize once to the largest size needed, before the costlier per-pixel steps."""
    w, h = job.stored_size
    target = scaled(w, h, base_scale(w, h, job.sizes))
    sharp = job.image.size == job.stored_size  # decoded in full: no DCT scaling softened it
    job.image = resize(job.image, target, area=sharp)


def orient(job: Job) -> None:
    """Apply the EXIF orientation (after the draft and the first resize: fewer pixels)."""
    if job.orientation in _TRANSPOSE:
        job.image = job.image.transpose(_TRANSPOSE[job.orientation])


def flatten_alpha(job: Job) -> None:
    """Composite transparency onto white: JPEG has no alpha."""
    job.image = flatten(job.image)


def to_srgb(job: Job) -> None:
    """Convert the embedded ICC profile to sRGB; untagged images are taken as sRGB."""
    transform = _transform(job.icc, job.image.mode) if job.icc else None
    if transform is not None:
        job.image = transform.apply(job.image)
    elif job.image.mode not in ("RGB", "L"):
        job.image = job.image.convert("RGB")  # CMYK without a profile: best effort


def cascade(job: Job) -> None:
    """Each size from the one above it, largest first; squares from the smallest fit."""
    width, height = job.upright_size
    ladder = [job.image]
    for spec in sorted((s for s in job.sizes if not s.crop), key=lambda s: -s.edge):
        ladder.append(resize(ladder[-1], fit(width, height, spec.edge)))
        job.rungs[spec.name] = ladder[-1]
    for spec in (s for s in job.sizes if s.crop):
        side = min(spec.edge, width, height)
        big_enough = [im for im in ladder if min(im.size) >= _CROP_SOURCE_FACTOR * side]
        source = big_enough[-1] if big_enough else ladder[0]  # ladder is largest first
        job.rungs[spec.name] = ImageOps.fit(source, (side, side), _resample(source))


def encode(job: Job) -> None:
    """Encode every rung in each of its formats (JPEG by default), without any metadata."""
    encoded: dict[tuple[int, str], bytes] = {}  # a photo smaller than several sizes: once
    for spec in job.sizes:
        im = job.rungs[spec.name]
        for fmt in spec.encodings:
            data = encoded.get((id(im), fmt))
            if data is None:
                data = encoded[id(im), fmt] = encoded_bytes(im, fmt, job.qualities[fmt])
            job.renditions.append(Rendition(spec.name, fmt, data, im.width, im.height))


RENDER_STEPS: tuple[Callable[[Job], None], ...] = (
    open_image,
    check_pixels,
    plan_draft,
    decode,
    normalize_mode,
    shrink_to_base,
    orient,
    flatten_alpha,
    to_srgb,
    cascade,
    encode,
)


def render(
    data: bytes,
    sizes: Sequence[SizeSpec],
    *,
    formats: Sequence[str],
    max_pixels: int,
    qualities: Mapping[str, int],
) -> Rendered:
    """Decode once; every size of the ladder in each of its formats, metadata-free sRGB.

    ``formats``: the upload formats allowed; ``qualities``: encoder quality per output format.
    """
    job = Job(data, tuple(sizes), tuple(f.upper() for f in formats), max_pixels, qualities)
    for step in RENDER_STEPS:
        run_step(step, job)
    width, height = job.upright_size
    return Rendered(job.format, width, height, tuple(job.renditions))


def run_step(step: Callable[[Job], None], job: Job) -> None:
    """Run one step, turning whatever Pillow raises on a bad file into ImageRejected."""
    try:
        with _quiet_pillow():
            step(job)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"image has too many pixels ({exc})") from exc
    except _DECODE_ERRORS as exc:
        raise ImageRejected(415, f"{NOT_DECODABLE} ({step.__name__}: {exc})") from exc


# -- rendering: the pieces the steps are made of --------------------------------------


def base_scale(width: int, height: int, sizes: Sequence[SizeSpec]) -> float:
    """The smallest scale of the original that still covers every size (at most 1)."""
    need = max(s.edge / (min(width, height) if s.crop else max(width, height)) for s in sizes)
    return min(1.0, need)


def scaled(width: int, height: int, scale: float) -> tuple[int, int]:
    """``width`` x ``height`` times ``scale``, rounded, never below one pixel."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def fit(width: int, height: int, edge: int) -> tuple[int, int]:
    """The size with long edge ``edge``, never upscaled."""
    return scaled(width, height, min(1.0, edge / max(width, height)))


def resize(im: Image.Image, size: tuple[int, int], *, area: bool = False) -> Image.Image:
    """Resize ``im`` to ``size``: a downscale, or the slight upscale a draft may need.

    ``area``: ``im`` is sharp (decoded in full), so a big one may shrink by less than 2x with
    a box filter (pixel area averaging): 40% cheaper than Hamming and >= 42 dB on photos.
    """
    if im.size == size:
        return im
    if size[0] > im.width:  # only the few percent a draft decode may fall short
        return im.resize(size, Image.Resampling.BICUBIC)
    resample = _resample(im)
    if area and resample is Image.Resampling.HAMMING and im.width < 2 * size[0]:
        return im.resize(size, Image.Resampling.BOX)
    if resample is Image.Resampling.HAMMING and im.width < _SHARP_BELOW * size[0]:
        return im.resize(size, Image.Resampling.BICUBIC)
    # Big sources box-reduce by the whole factor first; small ones only when it is large.
    gap = 1.0 if resample is Image.Resampling.HAMMING else 3.0
    return im.resize(size, resample, reducing_gap=gap)


def _resample(im: Image.Image) -> Image.Resampling:
    big = im.width * im.height > _BIG_SOURCE
    return Image.Resampling.HAMMING if big else Image.Resampling.LANCZOS


def working_mode(im: Image.Image) -> Image.Image:
    """RGB, RGBA, L, LA or CMYK: modes that resize, flatten and convert correctly."""
    if im.mode in ("RGB", "RGBA", "L", "LA", "CMYK"):
        return im
    if im.mode.startswith("I"):
        # 16-bit samples: Pillow's convert to L clips instead of scaling.
        return im.convert("I").point(lambda v: v / 256).convert("L")
    if im.mode == "1":
        return im.convert("L")
    if im.mode in ("PA", "RGBa") or (im.mode == "P" and im.has_transparency_data):
        return im.convert("RGBA")
    return im.convert("RGB")


def flatten(im: Image.Image) -> Image.Image:
    """``im`` without its alpha channel, composited onto white."""
    if im.mode not in ("RGBA", "LA"):
        return im
    flat = Image.new(im.mode[:-1], im.size, "white")
    flat.paste(im, mask=im.getchannel("A"))
    return flat


@lru_cache(maxsize=32)
def _transform(icc: bytes, mode: str) -> ImageCms.ImageCmsTransform | None:
    """A cached profile-to-sRGB transform; None when it is sRGB already or unusable."""
    try:
        profile = ImageCms.ImageCmsProfile(BytesIO(icc))
        if mode == "RGB" and _is_srgb(profile):
            return None
        return ImageCms.buildTransform(profile, _SRGB, mode, "RGB")
    except _DECODE_ERRORS:
        return None  # a broken or mismatched profile: the pixels are still a photo


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    description = profile.profile.profile_description or ""
    return description.strip().lower().startswith("srgb")


def _orientation(im: Image.Image) -> int:
    try:
        value: Any = im.getexif().get(_ORIENTATION_TAG, 1)
    except _DECODE_ERRORS:
        return 1  # corrupt EXIF is no reason to refuse the pixels
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def encoded_bytes(im: Image.Image, fmt: str, quality: int) -> bytes:
    """``im`` as ``fmt`` (JPEG: baseline 4:2:0), with no EXIF, XMP, ICC profile or comment."""
    im.info = {}  # Pillow copies ``info["comment"]`` (and more) into the file unless told
    out = BytesIO()
    im.save(out, fmt, quality=quality, **OUTPUTS[fmt][1])
    return out.getvalue()
