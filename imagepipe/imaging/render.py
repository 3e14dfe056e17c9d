"""The render: bytes in, metadata-free sRGB derivatives (JPEG, WebP, AVIF) out.

The pipeline is data (imgproxy style): ``RENDER_STEPS`` lists small named steps, each a
function of one ``Job``, so reading the list is reading the algorithm and every step can
be tested alone. The worker runs ``render`` inside a decode-sandbox child.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from io import BytesIO
from math import ceil
from typing import Any

from PIL import Image, ImageCms, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from imagepipe import formats
from imagepipe.config import SizeSpec
from imagepipe.imaging.decoding import (
    DECODE_ERRORS,
    NOT_ALLOWED,
    NOT_DECODABLE,
    ImageRejected,
    enforce_pixel_limit,
    open_one,
    quiet_pillow,
)
from imagepipe.imaging.probe import container_size

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


@dataclass(frozen=True)
class Rendition:
    """One encoded derivative."""

    name: str
    format: str  # one of formats.OUTPUT_FORMATS
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
    fmt = formats.sniff(job.data, job.formats)
    if fmt is None:
        raise ImageRejected(415, NOT_ALLOWED)
    if size := container_size(job.data, fmt):
        enforce_pixel_limit(*size, 1, job.max_pixels)  # before the decoder allocates anything
    job.format, job.image = fmt, open_one(job.data, fmt)
    job.stored_size = job.image.size


def check_pixels(job: Job) -> None:
    """Refuse width x height x frames over the limit before anything is decoded."""
    frames = int(getattr(job.image, "n_frames", 1))  # GIF: a cheap scan of block headers
    enforce_pixel_limit(*job.stored_size, frames, job.max_pixels)


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
        with quiet_pillow():
            step(job)
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, f"image has too many pixels ({exc})") from exc
    except DECODE_ERRORS as exc:
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
    except DECODE_ERRORS:
        return None  # a broken or mismatched profile: the pixels are still a photo


def _is_srgb(profile: ImageCms.ImageCmsProfile) -> bool:
    description = profile.profile.profile_description or ""
    return description.strip().lower().startswith("srgb")


def _orientation(im: Image.Image) -> int:
    try:
        value: Any = im.getexif().get(_ORIENTATION_TAG, 1)
    except DECODE_ERRORS:
        return 1  # corrupt EXIF is no reason to refuse the pixels
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def encoded_bytes(im: Image.Image, fmt: str, quality: int) -> bytes:
    """``im`` as ``fmt`` (JPEG: baseline 4:2:0), with no EXIF, XMP, ICC profile or comment."""
    im.info = {}  # Pillow copies ``info["comment"]`` (and more) into the file unless told
    out = BytesIO()
    im.save(out, fmt, quality=quality, **(formats.get(fmt).output or {}))
    return out.getvalue()
