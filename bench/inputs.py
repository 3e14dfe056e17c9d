"""Benchmark inputs: generated photo-like JPEGs and, when IMAGEPIPE_CORPUS is set, real ones.

The generated pictures imitate what a camera makes rather than noise: a smooth sky gradient,
ground textured with fractal (1/f) value noise that is mostly luminance, hard-edged shapes and
thin lines, a touch of lens blur and of sensor noise, saved as a 4:2:0 JPEG at quality 92.
The same seed gives the same bytes, so two runs compare like with like.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

SIZES = {"12mp": (4032, 3024), "24mp": (6000, 4000)}
QUICK_SIZES = {"quick": (1600, 1200)}
# Octaves of the ground texture: cell size as a fraction of the long edge, and weight.
_OCTAVES = ((1 / 4, 1.0), (1 / 16, 0.55), (1 / 64, 0.35), (1 / 256, 0.22), (1 / 1024, 0.12))
_PHOTO_EXTENSIONS = {".jpg", ".jpeg"}
_MIN_CORPUS_PIXELS = 2_000_000  # the ladder's benchmark is about camera-sized photos


@dataclass(frozen=True)
class Photo:
    """One benchmark input."""

    name: str
    data: bytes
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        """Width x height in millions."""
        return self.width * self.height / 1e6


def _value_noise(size: tuple[int, int], cell: int, rng: random.Random) -> Image.Image:
    """Random values on a grid of ``cell`` pixels, smoothly interpolated (one octave)."""
    w, h = size
    small = (max(2, w // cell + 2), max(2, h // cell + 2))
    grid = Image.frombytes("L", small, rng.randbytes(small[0] * small[1]))
    return grid.resize(size, Image.Resampling.BICUBIC)


def _texture(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """Fractal luminance noise: coarse octaves strong, fine ones weak, as in nature."""
    long_edge = max(size)
    texture = _value_noise(size, max(2, round(long_edge * _OCTAVES[0][0])), rng)
    total = _OCTAVES[0][1]
    for fraction, weight in _OCTAVES[1:]:
        octave = _value_noise(size, max(2, round(long_edge * fraction)), rng)
        total += weight
        texture = Image.blend(texture, octave, weight / total)
    return texture.point(lambda v: max(0, min(255, 128 + (v - 128) * 3)))  # restore contrast


def _tinted(texture: Image.Image, dark: tuple[int, ...], light: tuple[int, ...]) -> Image.Image:
    """Map a grey texture onto a colour ramp (luminance detail, little chroma detail)."""
    ramp = [
        round(d + (li - d) * v / 255) for d, li in zip(dark, light, strict=True) for v in range(256)
    ]
    return Image.merge("RGB", [texture.point(ramp[i * 256 : (i + 1) * 256]) for i in range(3)])


def _sky(size: tuple[int, int]) -> Image.Image:
    top, bottom = Image.new("RGB", size, (70, 120, 200)), Image.new("RGB", size, (200, 220, 240))
    return Image.composite(bottom, top, Image.linear_gradient("L").resize(size))


def _shapes(im: Image.Image, rng: random.Random) -> None:
    """Hard edges: buildings, trees, poles; thin lines: wires and branches."""
    draw, (w, h) = ImageDraw.Draw(im), im.size
    for _ in range(30):
        x, y = rng.randrange(w), rng.randrange(h // 3, h)
        bw, bh = rng.randrange(w // 40, w // 8), rng.randrange(h // 30, h // 5)
        colour = tuple(rng.randrange(30, 220) for _ in range(3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x, y - bh, x + bw, y), fill=colour)
    for _ in range(40):
        points = [(rng.randrange(w), rng.randrange(h)) for _ in range(2)]
        draw.line(
            points, fill=tuple(rng.randrange(0, 90) for _ in range(3)), width=rng.randrange(1, 5)
        )


def _sensor_noise(im: Image.Image, rng: random.Random) -> Image.Image:
    """A little grain (about +-3 levels), as every real sensor adds."""
    noise = Image.frombytes("L", im.size, rng.randbytes(im.width * im.height))
    grain = noise.point(lambda v: v * 6 // 255).convert("RGB")
    return ImageChops.subtract(ImageChops.add(im, grain), Image.new("RGB", im.size, (3, 3, 3)))


@lru_cache(maxsize=8)
def generated(name: str, width: int, height: int, seed: int = 4, quality: int = 92) -> Photo:
    """A photo-like JPEG of ``width`` x ``height`` (deterministic for a given seed)."""
    rng = random.Random(seed)
    size = (width, height)
    ground = _tinted(_texture(size, rng), (25, 35, 15), (170, 160, 110))
    mask = Image.new("L", size, 0)
    horizon = height * 2 // 5
    ImageDraw.Draw(mask).rectangle((0, horizon, width, height), fill=255)
    im = Image.composite(ground, _sky(size), mask.filter(ImageFilter.BoxBlur(8)))
    _shapes(im, rng)
    im = _sensor_noise(im.filter(ImageFilter.GaussianBlur(0.6)), rng)
    out = BytesIO()
    im.save(out, "JPEG", quality=quality, subsampling="4:2:0")
    return Photo(f"generated {name} {width}x{height}", out.getvalue(), width, height)


def corpus_photos(folder: str | None = None) -> list[Photo]:
    """The camera-sized JPEGs (>= 2 MP) in IMAGEPIPE_CORPUS, read in place; [] when unset."""
    folder = folder if folder is not None else os.environ.get("IMAGEPIPE_CORPUS")
    if not folder or not Path(folder).is_dir():
        return []
    photos = []
    for path in sorted(Path(folder).iterdir()):
        if path.suffix.lower() not in _PHOTO_EXTENSIONS or not path.is_file():
            continue
        with Image.open(path) as im:
            width, height = im.size
        if width * height >= _MIN_CORPUS_PIXELS:
            photos.append(Photo(path.name, path.read_bytes(), width, height))
    return photos


def ladder_inputs(quick: bool) -> list[Photo]:
    """Generated photos at the benchmark sizes, then the real ones."""
    sizes = QUICK_SIZES if quick else SIZES
    photos = [generated(name, *size) for name, size in sizes.items()]
    return photos + ([] if quick else corpus_photos())
