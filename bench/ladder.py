"""Row 1: the derivative ladder per photo, imagepipe vs naive Pillow vs libvips.

All three make the configured default ladder (sizes, crop, JPEG quality 85, 4:2:0, no
metadata, EXIF orientation applied, embedded ICC profiles converted to sRGB) from the same
bytes, in this one process on one thread (libvips is held to one worker thread and its
operation cache is off, so no run reuses another's work). Rounds interleave the contenders in
a shuffled order and each ratio is taken within a round: both sides saw the same machine.
Times are CPU time of this process (``time.process_time``), which a busy shared machine
disturbs far less than wall-clock time; wall-clock medians are reported beside them.
"""

from __future__ import annotations

import gc
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO

os.environ.setdefault("VIPS_CONCURRENCY", "1")  # before pyvips loads libvips: one thread

import pyvips
from PIL import Image, ImageChops, ImageCms, ImageOps, ImageStat

from bench.inputs import Photo
from bench.model import Row, table
from bench.stats import Summary, paired_ratio, summarize
from imagepipe.config import DEFAULT_SIZES, SizeSpec, parse_sizes
from imagepipe.imaging import render as imaging

LADDER = parse_sizes(DEFAULT_SIZES)
QUALITY = 85
QUALITIES = {"JPEG": QUALITY}
FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
MAX_PIXELS = 50_000_000
_SRGB = ImageCms.createProfile("sRGB")
Ladder = dict[str, bytes]
Contender = Callable[[bytes], Ladder]

pyvips.cache_set_max(0)  # every run decodes afresh, as a worker would


# -- the three contenders ---------------------------------------------------------------


def imagepipe_ladder(data: bytes) -> Ladder:
    """imagepipe's own pipeline, as the worker's sandbox child calls it."""
    rendered = imaging.render(
        data, LADDER, formats=FORMATS, max_pixels=MAX_PIXELS, qualities=QUALITIES
    )
    return {r.name: r.data for r in rendered.renditions}


def _jpeg(im: Image.Image) -> bytes:
    im.info = {}
    out = BytesIO()
    im.save(out, "JPEG", quality=QUALITY, subsampling="4:2:0")
    return out.getvalue()


def naive_ladder(data: bytes) -> Ladder:
    """Decode every pixel, then make each size from the full image with Lanczos."""
    im: Image.Image = Image.open(BytesIO(data))
    im.load()
    icc = im.info.get("icc_profile")
    im = ImageOps.exif_transpose(im)
    if icc:
        profile = ImageCms.ImageCmsProfile(BytesIO(icc))
        im = ImageCms.profileToProfile(im, profile, _SRGB, outputMode="RGB") or im
    im = im.convert("RGB")
    out = {}
    for spec in LADDER:
        if spec.crop:
            side = min(spec.edge, *im.size)
            sized = ImageOps.fit(im, (side, side), Image.Resampling.LANCZOS)
        else:
            sized = im.resize(imaging.fit(*im.size, spec.edge), Image.Resampling.LANCZOS)
        out[spec.name] = _jpeg(sized)
    return out


def _vips_jpeg(im: pyvips.Image) -> bytes:
    return bytes(im.jpegsave_buffer(Q=QUALITY, keep="none", subsample_mode="on"))


def vips_ladder(data: bytes) -> Ladder:
    """libvips's fastest way: thumbnail once to the largest size, then resize from it."""
    largest = max(s.edge for s in LADDER if not s.crop)
    header = pyvips.Image.new_from_buffer(data, "")  # reads the header only
    icc = {"export_profile": "srgb"} if header.get_typeof("icc-profile-data") else {}
    base = pyvips.Image.thumbnail_buffer(data, largest, height=largest, size="down", **icc)
    base = base.copy_memory()  # decoded once; every size below reads it from memory
    upright = _upright(header)
    out = {}
    for spec in LADDER:
        out[spec.name] = _vips_jpeg(_vips_size(base, spec, upright))
    return out


def _upright(header: pyvips.Image) -> tuple[int, int]:
    swap = header.get_typeof("orientation") and header.get("orientation") in (5, 6, 7, 8)
    return (header.height, header.width) if swap else (header.width, header.height)


def _vips_size(base: pyvips.Image, spec: SizeSpec, upright: tuple[int, int]) -> pyvips.Image:
    if spec.crop:
        side = min(base.width, base.height)
        square = base.crop((base.width - side) // 2, (base.height - side) // 2, side, side)
        target = min(spec.edge, *upright)
        return square if target == side else square.resize(target / side)
    width, height = imaging.fit(*upright, spec.edge)
    if (width, height) == (base.width, base.height):
        return base
    return base.resize(width / base.width, vscale=height / base.height)


CONTENDERS: dict[str, Contender] = {
    "imagepipe": imagepipe_ladder,
    "libvips": vips_ladder,
    "naive Pillow": naive_ladder,
}


# -- quality ---------------------------------------------------------------------------------


def psnr(a: bytes, b: bytes) -> float:
    """PSNR in dB between two encoded images of the same size (RGB, 8 bits); inf if equal."""
    x, y = (Image.open(BytesIO(d)).convert("RGB") for d in (a, b))
    if x.size != y.size:
        return math.nan
    sum2 = ImageStat.Stat(ImageChops.difference(x, y)).sum2
    mse = sum(sum2) / (3 * x.width * x.height)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def ladder_psnr(ours: Ladder, reference: Ladder) -> dict[str, float]:
    """PSNR of each size against the reference's same size."""
    return {name: psnr(ours[name], reference[name]) for name in reference}


# -- timing ----------------------------------------------------------------------------------


@dataclass
class Samples:
    """CPU and wall-clock milliseconds of one contender on one photo, one per round."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)


def timed(fn: Contender, data: bytes) -> tuple[float, float]:
    """(CPU ms, wall ms) of one call, with the garbage collector held off."""
    gc.collect()
    gc.disable()
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        fn(data)
        return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000
    finally:
        gc.enable()


def measure(
    photos: Sequence[Photo], contenders: dict[str, Contender], rounds: int, seed: int = 1
) -> dict[tuple[str, str], Samples]:
    """Every contender on every photo, ``rounds`` times, in a shuffled order per round."""
    rng = random.Random(seed)
    samples = {(p.name, c): Samples() for p in photos for c in contenders}
    for photo in photos:  # warm-up: imports, first allocations, libvips start-up
        for fn in contenders.values():
            fn(photo.data)
    for _ in range(rounds):
        order = [(p, c) for p in photos for c in contenders]
        rng.shuffle(order)
        for photo, name in order:
            cpu, wall = timed(contenders[name], photo.data)
            samples[photo.name, name].cpu.append(cpu)
            samples[photo.name, name].wall.append(wall)
    return samples


def totals(
    samples: dict[tuple[str, str], Samples], photos: Sequence[Photo], name: str, kind: str
) -> list[float]:
    """Per round, the milliseconds one contender spent on the whole photo set."""
    per_photo = [getattr(samples[p.name, name], kind) for p in photos]
    return [sum(values) for values in zip(*per_photo, strict=True)]


def set_ratio(
    samples: dict[tuple[str, str], Samples], photos: Sequence[Photo], a: str, b: str
) -> Summary:
    """Round by round, (time of ``a`` on the set) / (time of ``b`` on the set)."""
    return paired_ratio(totals(samples, photos, a, "cpu"), totals(samples, photos, b, "cpu"))


def photo_ratio(samples: dict[tuple[str, str], Samples], photo: str, a: str, b: str) -> Summary:
    """Round by round, time of ``a`` / time of ``b`` on one photo."""
    return paired_ratio(samples[photo, a].cpu, samples[photo, b].cpu)


def cpu_summary(samples: dict[tuple[str, str], Samples], photo: str, name: str) -> Summary:
    """CPU milliseconds of one contender on one photo."""
    return summarize(samples[photo, name].cpu)


def wall_summary(samples: dict[tuple[str, str], Samples], photo: str, name: str) -> Summary:
    """Wall-clock milliseconds of one contender on one photo."""
    return summarize(samples[photo, name].wall)


# -- where the time goes ---------------------------------------------------------------------


def step_profile(data: bytes, repeats: int) -> dict[str, Summary]:
    """CPU milliseconds of each RENDER_STEPS step on one photo."""
    per_step: dict[str, list[float]] = {s.__name__: [] for s in imaging.RENDER_STEPS}
    for _ in range(repeats + 1):  # the first pass warms up and is dropped
        job = imaging.Job(data, LADDER, FORMATS, MAX_PIXELS, QUALITIES)
        for step in imaging.RENDER_STEPS:
            started = time.process_time()
            imaging.run_step(step, job)
            per_step[step.__name__].append((time.process_time() - started) * 1000)
    return {name: summarize(values[1:]) for name, values in per_step.items()}


# -- the row -----------------------------------------------------------------------------------

VIPS_SHARE, NAIVE_TIMES, MIN_PSNR = 0.9, 8.0, 38.0


def _psnr_text(values: dict[str, float]) -> str:
    worst = min(values, key=lambda name: values[name])
    return "identical" if math.isinf(values[worst]) else f"{values[worst]:.1f} ({worst})"


def _quality(photos: Sequence[Photo]) -> dict[str, dict[str, dict[str, float]]]:
    """Per photo, per contender: PSNR of each size against the naive (reference) ladder."""
    quality = {}
    for photo in photos:
        reference = naive_ladder(photo.data)
        quality[photo.name] = {
            name: ladder_psnr(CONTENDERS[name](photo.data), reference)
            for name in ("imagepipe", "libvips")
        }
    return quality


def _photo_lines(
    samples: dict[tuple[str, str], Samples],
    photos: Sequence[Photo],
    quality: dict[str, dict[str, dict[str, float]]],
) -> list[list[str]]:
    lines = []
    for p in photos:
        cpu = {name: cpu_summary(samples, p.name, name) for name in CONTENDERS}
        lines.append(
            [
                f"{p.name} ({p.megapixels:.1f} MP)",
                cpu["imagepipe"].text("", 0),
                cpu["libvips"].text("", 0),
                cpu["naive Pillow"].text("", 0),
                f"{photo_ratio(samples, p.name, 'imagepipe', 'libvips').median:.2f}×",
                f"{photo_ratio(samples, p.name, 'naive Pillow', 'imagepipe').median:.1f}×",
                _psnr_text(quality[p.name]["imagepipe"]),
                _psnr_text(quality[p.name]["libvips"]),
            ]
        )
    return lines


def _profile_lines(profile: dict[str, Summary]) -> list[list[str]]:
    total = sum(s.median for s in profile.values())
    return [
        [name, f"{s.median:.1f}", f"{100 * s.median / total:.0f}%"]
        for name, s in profile.items()
        if s.median >= 0.05
    ]


def row(photos: Sequence[Photo], rounds: int) -> Row:
    """Row 1: every contender on every photo, paired ratios, PSNR and a step profile."""
    samples = measure(photos, CONTENDERS, rounds)
    quality = _quality(photos)
    vs_vips = set_ratio(samples, photos, "imagepipe", "libvips")
    vs_naive = set_ratio(samples, photos, "naive Pillow", "imagepipe")
    worst = min(min(q["imagepipe"].values()) for q in quality.values())
    worst_vips = min(min(q["libvips"].values()) for q in quality.values())
    biggest = max(photos, key=lambda p: (p.name.startswith("generated"), -abs(p.megapixels - 12)))
    profile = step_profile(biggest.data, max(3, rounds))
    details = [
        f"CPU ms per photo, median (p10–p90) of {rounds} interleaved rounds; ratios are "
        "medians of per-round ratios; PSNR is the worst size against the naive ladder "
        "(Lanczos from every decoded pixel, same JPEG settings).",
        "",
        *table(
            [
                "photo",
                "imagepipe",
                "libvips",
                "naive",
                "imagepipe ÷ libvips",
                "naive ÷ imagepipe",
                "PSNR imagepipe",
                "PSNR libvips",
            ],
            _photo_lines(samples, photos, quality),
        ),
        "",
        f"Whole set, per round: imagepipe ÷ libvips {vs_vips.text('×', 2)}; "
        f"naive ÷ imagepipe {vs_naive.text('×', 1)}. Worst size anywhere: imagepipe "
        f"{worst:.1f} dB, libvips {worst_vips:.1f} dB.",
        "",
        f"Where imagepipe's time goes on {biggest.name} (CPU ms per step, median):",
        "",
        *table(["step", "ms", "share"], _profile_lines(profile)),
    ]
    data = {
        "cpu_ms": {f"{p} | {c}": s.cpu for (p, c), s in samples.items()},
        "wall_ms": {f"{p} | {c}": s.wall for (p, c), s in samples.items()},
        "psnr": quality,
        "profile_ms": {name: s.median for name, s in profile.items()},
    }
    met = vs_vips.median <= VIPS_SHARE and vs_naive.median >= NAIVE_TIMES and worst >= MIN_PSNR
    return Row(
        1,
        "derivative ladder per photo (one process, one thread)",
        "naive Pillow; libvips thumbnail-once-then-resize",
        f"≤ {VIPS_SHARE}× libvips, ≥ {NAIVE_TIMES:.0f}× naive, ≥ {MIN_PSNR:.0f} dB PSNR",
        vs_vips.median,
        f"{vs_vips.median:.2f}× libvips, {vs_naive.median:.1f}× faster than naive, "
        f"worst size {worst:.1f} dB",
        met,
        details=details,
        data=data,
    )
