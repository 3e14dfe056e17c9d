"""imaging: sniff and probe, each render step alone, whole renders, then real photos."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageChops, ImageOps, ImageStat, JpegImagePlugin

from imagepipe import formats
from imagepipe.config import DEFAULT_SIZES, Settings, SizeSpec, parse_sizes
from imagepipe.formats import sniff
from imagepipe.imaging import render as imaging
from imagepipe.imaging.decoding import ImageRejected, NeedMoreData
from imagepipe.imaging.probe import Probe, probe
from imagepipe.imaging.render import Rendered, render
from tests import images
from tests.conftest import SECRETS

FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
LADDER = parse_sizes(DEFAULT_SIZES)
MAX_PIXELS = 50_000_000
QUALITIES = Settings(**SECRETS).qualities
METADATA_KEYS = ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment")
# Bytes of the test photos' metadata, in any container: EXIF (its camera make), XMP, comment.
METADATA_MARKERS = (
    b"Exif\0\0",
    b"ICC_PROFILE",
    b"http://ns.adobe.com/xap",
    b"secret",
    b"imagepipe-tests",
    b"adobe:ns:meta",
)
EVERY_OUTPUT = parse_sizes("m:500:jpeg+webp+avif")
# Where the stored top-left marker lands once each EXIF orientation is applied.
MARKER_AFTER = {
    1: "top-left",
    2: "top-right",
    3: "bottom-right",
    4: "bottom-left",
    5: "top-left",
    6: "top-right",
    7: "bottom-right",
    8: "bottom-left",
}


def do_render(
    data: bytes,
    sizes: Sequence[SizeSpec] = LADDER,
    formats: Sequence[str] = FORMATS,
    max_pixels: int = MAX_PIXELS,
) -> Rendered:
    return render(data, sizes, formats=formats, max_pixels=max_pixels, qualities=QUALITIES)


def dims(rendered: Rendered) -> dict[str, tuple[int, int]]:
    return {r.name: (r.width, r.height) for r in rendered.renditions}


def opened(rendered: Rendered, name: str) -> Image.Image:
    data = next(r.data for r in rendered.renditions if r.name == name)
    im = Image.open(BytesIO(data))
    im.load()
    return im


def job_after(data: bytes, last_step: str, sizes: Sequence[SizeSpec] = LADDER) -> imaging.Job:
    """A Job run through the render steps up to and including ``last_step``."""
    job = imaging.Job(data, tuple(sizes), FORMATS, MAX_PIXELS, QUALITIES)
    for step in imaging.RENDER_STEPS:
        imaging.run_step(step, job)
        if step.__name__ == last_step:
            return job
    raise AssertionError(f"no step {last_step}")


def bare_job(im: Image.Image) -> imaging.Job:
    job = imaging.Job(b"", LADDER, FORMATS, MAX_PIXELS, QUALITIES)
    job.image, job.stored_size = im, im.size
    return job


def assert_no_metadata(data: bytes, fmt: str = "JPEG") -> None:
    im = Image.open(BytesIO(data))
    assert im.format == fmt
    assert not [key for key in METADATA_KEYS if key in im.info], (fmt, im.info.keys())
    assert not im.getexif() and not im.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    for marker in METADATA_MARKERS:
        assert marker not in data, (fmt, marker)


def mean_rgb(im: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, ...]:
    return tuple(ImageStat.Stat(im.convert("RGB").crop(box)).mean)


def near(colour: Sequence[float], expected: Sequence[float], tolerance: float = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


# -- sniff ---------------------------------------------------------------------------

AVIF_HEADER = b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf" + b"\0" * 8
HEIC_HEADER = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 8


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: images.jpeg(20, 10), "JPEG"),
        (lambda: images.png(20, 10), "PNG"),
        (lambda: images.gif(20, 10), "GIF"),
        (lambda: images.webp(20, 10), "WEBP"),
        (lambda: images.tiff(20, 10), None),
        (lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>", None),
        (lambda: b"", None),
        (lambda: AVIF_HEADER, None),
    ],
)
def test_sniff_default_allowlist(make: Callable[[], bytes], expected: str | None) -> None:
    assert sniff(make()[:64], FORMATS) == expected


def test_sniff_only_names_allowlisted_formats() -> None:
    assert sniff(images.tiff(20, 10), [*FORMATS, "TIFF"]) == "TIFF"
    assert sniff(images.png(20, 10), ["jpeg"]) is None
    assert sniff(images.jpeg(20, 10), ["jpeg"]) == "JPEG"


def test_sniff_recognises_heif_and_avif_brands_when_allowed() -> None:
    assert sniff(AVIF_HEADER, ["AVIF", "HEIF"]) == "AVIF"
    assert sniff(HEIC_HEADER, ["AVIF", "HEIF"]) == "HEIF"
    assert sniff(HEIC_HEADER, ["AVIF"]) is None


def test_extensions() -> None:
    assert [formats.extension(f) for f in FORMATS] == ["jpg", "png", "webp", "gif"]


# -- probe ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: images.jpeg(4000, 3000), Probe("JPEG", 4000, 3000, 1)),
        (lambda: images.png(300, 200, mode="P"), Probe("PNG", 300, 200, 1)),
        (lambda: images.gif(40, 30, frames=3), Probe("GIF", 40, 30, 1)),
        (lambda: images.webp(40, 30, frames=3), Probe("WEBP", 40, 30, 1)),
        (lambda: images.apng(20, 10, 3), Probe("PNG", 20, 10, 3)),
    ],
)
def test_probe_reads_the_header(make: Callable[[], bytes], expected: Probe) -> None:
    data = make()
    assert probe(data, FORMATS, MAX_PIXELS, complete=True) == expected
    assert probe(data[:4096], FORMATS, MAX_PIXELS, complete=False) == expected


@pytest.mark.parametrize("length", [4, 40, 300])
def test_probe_asks_for_more_of_a_short_prefix(length: int) -> None:
    data = images.jpeg(400, 300, exif_gps=True)
    with pytest.raises(NeedMoreData):
        probe(data[:length], FORMATS, MAX_PIXELS, complete=False)
    with pytest.raises(ImageRejected) as info:
        probe(data[:length], FORMATS, MAX_PIXELS, complete=True)
    assert info.value.status == 415


def test_probe_rejects_what_is_not_an_allowed_image() -> None:
    for data in (b"GIF90a" + bytes(60), images.tiff(20, 10), b"%PDF-1.7" + bytes(60)):
        with pytest.raises(ImageRejected) as info:
            probe(data, FORMATS, MAX_PIXELS, complete=False)
        assert info.value.status == 415


@pytest.mark.parametrize(
    "data",
    [
        images.pixel_flood_png(),  # Pillow's own bomb error
        images.pixel_flood_png(10_000, 10_000),  # Pillow only warns: our limit decides
        images.pixel_flood_webp(),
    ],
)
def test_probe_refuses_a_pixel_flood_from_the_header(data: bytes) -> None:
    assert len(data) < 100
    for complete in (False, True):
        with pytest.raises(ImageRejected) as info:
            probe(data, FORMATS, MAX_PIXELS, complete=complete)
        assert info.value.status == 413


def test_probe_counts_header_frames_against_the_limit() -> None:
    with pytest.raises(ImageRejected) as info:
        probe(images.apng(100, 100, 3), FORMATS, 100 * 100 * 2, complete=True)
    assert info.value.status == 413


def test_probe_refuses_a_zero_size() -> None:
    with pytest.raises(ImageRejected) as info:
        probe(images.pixel_flood_png(0, 10), FORMATS, MAX_PIXELS, complete=True)
    assert info.value.status == 415


def test_image_rejected_survives_pickling() -> None:
    copy = pickle.loads(pickle.dumps(ImageRejected(413, "too big")))  # noqa: S301 (our own bytes)
    assert (copy.status, copy.reason, str(copy)) == (413, "too big", "too big")


# -- the steps, each alone --------------------------------------------------------------


def test_the_pipeline_reads_as_the_algorithm() -> None:
    assert [step.__name__ for step in imaging.RENDER_STEPS] == [
        "open_image",
        "check_pixels",
        "plan_draft",
        "decode",
        "normalize_mode",
        "shrink_to_base",
        "orient",
        "flatten_alpha",
        "to_srgb",
        "cascade",
        "encode",
    ]


@pytest.mark.parametrize(
    ("ladder", "drafted"),
    [
        ("l:1024,m:500", (1000, 750)),  # 1/4, then a 2.4% upscale to 1024
        ("m:500,sq:75:crop", (500, 375)),  # 1/8
        ("sq:75:crop", (500, 375)),  # a square needs its short edge, 75 <= 375
        (DEFAULT_SIZES, (2000, 1500)),  # 1/2, then a 2.4% upscale to 2048: see _DRAFT_UPSCALE
        ("xl:2060", (4000, 3000)),  # 1/2 would fall 2.9% short: every pixel is decoded
    ],
)
def test_plan_draft_shrinks_a_jpeg_on_load(ladder: str, drafted: tuple[int, int]) -> None:
    job = job_after(images.jpeg(4000, 3000), "plan_draft", parse_sizes(ladder))
    assert job.image.size == drafted
    assert job.stored_size == (4000, 3000)


def test_a_phone_photo_decodes_at_half_scale_then_reaches_2048() -> None:
    # 4032 px is the commonest phone size: 1/2 falls 1.6% short of 2048, within the slack
    job = job_after(images.jpeg(4032, 3024), "shrink_to_base")
    assert job.image.size == (2048, 1536)
    assert job_after(images.jpeg(4032, 3024), "decode").image.size == (2016, 1512)


def test_plan_draft_is_orientation_blind_and_decode_honours_it() -> None:
    job = job_after(images.jpeg(4000, 3000, orientation=6), "decode", parse_sizes("l:1024"))
    assert job.image.size == (1000, 750)  # 1/4 of the stored pixels, as for orientation 1
    assert (job.orientation, job.upright_size) == (6, (3000, 4000))


def test_plan_draft_leaves_other_formats_alone() -> None:
    job = job_after(images.png(800, 600), "plan_draft", parse_sizes("t:100"))
    assert job.image.size == (800, 600)


def test_ladder_geometry() -> None:
    assert imaging.fit(600, 450, 2048) == (600, 450)
    assert imaging.fit(4000, 3000, 1024) == (1024, 768)
    assert imaging.fit(3000, 4000, 100) == (75, 100)
    assert imaging.fit(10000, 10, 100) == (100, 1)
    assert imaging.base_scale(4000, 3000, parse_sizes("sq:75:crop")) == 75 / 3000
    assert imaging.base_scale(4000, 3000, parse_sizes("sq:75:crop,t:100")) == 100 / 4000
    assert imaging.base_scale(60, 40, LADDER) == 1.0


def test_shrink_to_base_lands_on_the_largest_size_in_stored_orientation() -> None:
    job = job_after(images.jpeg(4000, 3000, orientation=8), "shrink_to_base")
    assert job.image.size == (2048, 1536)
    imaging.orient(job)
    assert job.image.size == (1536, 2048)


@pytest.mark.parametrize("orientation", sorted(MARKER_AFTER))
def test_orient_alone(orientation: int) -> None:
    job = bare_job(images.photo(80, 60))
    job.orientation = orientation
    imaging.orient(job)
    assert images.red_corner(job.image) == MARKER_AFTER[orientation]
    assert job.image.size == ((60, 80) if orientation >= 5 else (80, 60))


def test_decode_tolerates_corrupt_exif() -> None:
    im = images.photo(40, 30)
    out = BytesIO()
    im.save(out, "JPEG", exif=b"Exif\0\0MM\0*garbage")
    job = job_after(out.getvalue(), "decode")
    assert job.orientation == 1


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("P", "RGB"), ("1", "L"), ("I;16", "L"), ("L", "L"), ("LA", "LA"), ("RGBA", "RGBA")],
)
def test_normalize_mode(mode: str, expected: str) -> None:
    job = job_after(images.png(40, 30, mode=mode), "normalize_mode")
    assert job.image.mode == expected


def test_normalize_mode_scales_16_bit_samples_instead_of_clipping() -> None:
    job = job_after(images.png(40, 30, mode="I;16"), "normalize_mode")
    assert job.image.getextrema() == images.photo(40, 30).convert("L").getextrema()


def test_normalize_mode_keeps_palette_transparency() -> None:
    im = Image.new("P", (10, 10), 1)
    im.putpalette([0, 0, 0, 255, 0, 0])
    im.info["transparency"] = 1
    assert imaging.working_mode(im).mode == "RGBA"


def test_flatten_alone() -> None:
    job = bare_job(Image.open(BytesIO(images.png_alpha(40, 20))).convert("RGBA"))
    imaging.flatten_alpha(job)
    assert job.image.mode == "RGB"
    assert job.image.getpixel((5, 5)) == (255, 255, 255)
    assert job.image.getpixel((35, 5)) == (0, 0, 255)
    grey = bare_job(Image.new("LA", (4, 4), (0, 0)))
    imaging.flatten_alpha(grey)
    assert (grey.image.mode, grey.image.getpixel((0, 0))) == ("L", 255)


def test_to_srgb_converts_an_embedded_profile() -> None:
    job = bare_job(Image.new("RGB", (4, 4), images.RED))
    job.icc = images.swapped_rgb_profile()
    imaging.to_srgb(job)
    assert near(mean_rgb(job.image, (0, 0, 4, 4)), (0, 255, 0), 2)


@pytest.mark.parametrize("icc", [images.srgb_profile(), b"not a profile", None])
def test_to_srgb_leaves_srgb_untagged_and_broken_profiles_alone(icc: bytes | None) -> None:
    job = bare_job(Image.new("RGB", (4, 4), images.RED))
    job.icc = icc
    imaging.to_srgb(job)
    assert job.image.getpixel((0, 0)) == images.RED


def test_to_srgb_turns_untagged_cmyk_into_rgb() -> None:
    job = bare_job(Image.new("CMYK", (4, 4), (255, 0, 0, 0)))
    imaging.to_srgb(job)
    assert (job.image.mode, job.image.getpixel((0, 0))) == ("RGB", (0, 255, 255))


def test_cascade_crops_from_the_smallest_adequate_rung() -> None:
    job = bare_job(images.photo(1600, 900))
    job.sizes = parse_sizes("sq:75:crop,t:100,s:240")
    imaging.cascade(job)
    assert {name: im.size for name, im in job.rungs.items()} == {
        "s": (240, 135),
        "t": (100, 56),
        "sq": (75, 75),
    }


def test_encode_drops_metadata_the_image_still_carries() -> None:
    job = bare_job(images.photo(40, 30))
    job.image.info.update(comment=b"secret", exif=images.exif_bytes(gps=True), icc_profile=b"x")
    job.rungs = {spec.name: job.image for spec in LADDER}
    imaging.encode(job)
    assert len({r.data for r in job.renditions}) == 1  # one image, encoded once
    assert_no_metadata(job.renditions[0].data)


def test_encode_drops_metadata_in_every_output_format() -> None:
    job = bare_job(images.photo(40, 30))
    job.image.info.update(
        comment=b"secret",
        exif=images.exif_bytes(orientation=6, gps=True),
        icc_profile=images.srgb_profile(),
        xmp=images.XMP,
    )
    job.sizes, job.rungs = EVERY_OUTPUT, {"m": job.image}
    imaging.encode(job)
    assert [r.format for r in job.renditions] == ["JPEG", "WEBP", "AVIF"]
    for rendition in job.renditions:
        assert_no_metadata(rendition.data, rendition.format)


def test_run_step_names_the_failing_step() -> None:
    def explode(job: imaging.Job) -> None:
        raise OSError("broken data stream")

    with pytest.raises(ImageRejected) as info:
        imaging.run_step(explode, bare_job(images.photo(4, 4)))
    assert info.value.status == 415
    assert "explode: broken data stream" in info.value.reason


# -- whole renders ---------------------------------------------------------------------


def test_render_ladder_landscape() -> None:
    rendered = do_render(images.jpeg(4000, 3000))
    assert (rendered.format, rendered.width, rendered.height) == ("JPEG", 4000, 3000)
    assert dims(rendered) == {
        "xl": (2048, 1536),
        "l": (1024, 768),
        "m": (500, 375),
        "s": (240, 180),
        "t": (100, 75),
        "sq": (75, 75),
    }
    for r in rendered.renditions:
        assert opened(rendered, r.name).size == (r.width, r.height)
    assert images.red_corner(opened(rendered, "xl")) == "top-left"


def test_render_ladder_portrait() -> None:
    rendered = do_render(images.png(900, 1200))
    assert dims(rendered) == {
        "xl": (900, 1200),
        "l": (768, 1024),
        "m": (375, 500),
        "s": (180, 240),
        "t": (75, 100),
        "sq": (75, 75),
    }


def test_render_never_upscales() -> None:
    assert dims(do_render(images.jpeg(600, 450)))["xl"] == (600, 450)
    assert dims(do_render(images.jpeg(600, 450)))["m"] == (500, 375)
    tiny = dims(do_render(images.jpeg(50, 40)))
    assert set(tiny.values()) == {(50, 40), (40, 40)}
    assert tiny["sq"] == (40, 40)


@pytest.mark.parametrize("orientation", sorted(MARKER_AFTER))
def test_render_applies_exif_orientation(orientation: int) -> None:
    data = images.jpeg(400, 300, orientation=orientation)
    rendered = do_render(data)
    upright = (300, 400) if orientation >= 5 else (400, 300)
    assert (rendered.width, rendered.height) == upright
    assert dims(rendered)["xl"] == upright
    oracle = ImageOps.exif_transpose(Image.open(BytesIO(data)))
    assert images.red_corner(opened(rendered, "xl")) == images.red_corner(oracle)
    assert images.red_corner(opened(rendered, "xl")) == MARKER_AFTER[orientation]


def test_render_orientation_6_and_8_on_a_drafted_photo() -> None:
    right = do_render(images.jpeg(4000, 3000, orientation=6))
    left = do_render(images.jpeg(4000, 3000, orientation=8))
    assert dims(right)["xl"] == dims(left)["xl"] == (1536, 2048)
    assert dims(right)["t"] == (75, 100)
    assert images.red_corner(opened(right, "l")) == "top-right"
    assert images.red_corner(opened(left, "l")) == "bottom-left"


def test_render_cmyk_to_rgb() -> None:
    rendered = do_render(images.cmyk_jpeg(400, 200))
    xl = opened(rendered, "xl")
    assert xl.mode == "RGB"
    assert near(mean_rgb(xl, (10, 10, 150, 190)), (0, 255, 255), 20)
    assert near(mean_rgb(xl, (250, 10, 390, 190)), (255, 0, 255), 20)


def test_render_flattens_alpha_onto_white() -> None:
    for data in (images.png_alpha(400, 200), images.webp(400, 200, alpha=True)):
        xl = opened(do_render(data), "xl")
        assert near(mean_rgb(xl, (10, 10, 150, 190)), (255, 255, 255), 3)


def test_render_converts_icc_to_srgb() -> None:
    xl = opened(do_render(images.icc_jpeg(300, 200)), "xl")
    assert near(mean_rgb(xl, (0, 0, 300, 200)), (0, 255, 0), 6)


def test_render_strips_every_piece_of_metadata() -> None:
    data = images.jpeg(
        1200,
        900,
        orientation=1,
        exif_gps=True,
        icc=images.srgb_profile(),
        xmp=True,
        comment=b"secret",
    )
    for rendition in do_render(data).renditions:
        assert_no_metadata(rendition.data)
    for rendition in do_render(images.icc_jpeg(300, 200)).renditions:
        assert_no_metadata(rendition.data)


@pytest.mark.parametrize(
    "make",
    [
        lambda: images.tagged_jpeg(900, 600),
        lambda: images.icc_jpeg(300, 200),
        lambda: images.heic(640, 480, orientation=6),
    ],
    ids=["jpeg-with-everything", "adobe-rgb", "heic"],
)
def test_render_strips_metadata_from_webp_and_avif_too(make: Callable[[], bytes]) -> None:
    rendered = render(
        make(), EVERY_OUTPUT, formats=[*FORMATS, "HEIF"], max_pixels=MAX_PIXELS, qualities=QUALITIES
    )
    assert [r.format for r in rendered.renditions] == ["JPEG", "WEBP", "AVIF"]
    for rendition in rendered.renditions:
        assert_no_metadata(rendition.data, rendition.format)


def test_render_encodes_baseline_4_2_0() -> None:
    xl = opened(do_render(images.jpeg(800, 600, progressive=True)), "xl")
    assert "progressive" not in xl.info and "progression" not in xl.info
    assert JpegImagePlugin.get_sampling(xl) == 2  # Pillow's code for 4:2:0


def test_render_takes_the_first_frame_of_an_animation() -> None:
    for data in (images.gif(120, 80, frames=3), images.webp(120, 80, frames=3)):
        rendered = do_render(data)
        assert dims(rendered)["xl"] == (120, 80)
    gif = opened(do_render(images.gif(120, 80, frames=3)), "xl")
    assert near(mean_rgb(gif, (0, 0, 120, 80)), images.RED, 8)


def test_render_counts_every_frame_against_the_limit() -> None:
    for data in (images.gif(100, 100, frames=6), images.webp(100, 100, frames=6)):
        with pytest.raises(ImageRejected) as info:
            do_render(data, max_pixels=100 * 100 * 5)
        assert info.value.status == 413


def test_render_grayscale_and_16_bit() -> None:
    grey = opened(do_render(images.png(300, 200, mode="L")), "xl")
    assert grey.mode in ("L", "RGB")
    deep = opened(do_render(images.png(300, 200, mode="I;16")), "xl")
    assert ImageStat.Stat(deep).mean[0] < 240  # scaled, not clipped to white


@pytest.mark.parametrize(
    "data",
    [
        images.truncated(images.jpeg(800, 600), 0.5),
        images.truncated(images.jpeg(800, 600, progressive=True), 0.5),
        images.truncated(images.png(800, 600), 0.5),
        images.truncated(images.webp(800, 600), 0.5),
        images.jpeg(40, 30)[:200],
        b"\xff\xd8\xff" + bytes(500),
        b"\x89PNG\r\n\x1a\n" + bytes(500),
    ],
)
def test_render_rejects_broken_files(data: bytes) -> None:
    with pytest.raises(ImageRejected) as info:
        do_render(data)
    assert info.value.status == 415


@pytest.mark.parametrize(
    "data",
    [images.pixel_flood_png(), images.pixel_flood_png(10_000, 10_000), images.pixel_flood_webp()],
)
def test_render_refuses_a_pixel_flood(data: bytes) -> None:
    with pytest.raises(ImageRejected) as info:
        do_render(data)
    assert info.value.status == 413


def test_render_refuses_formats_outside_the_allowlist() -> None:
    data = images.tiff(200, 100)
    assert sniff(data, FORMATS) is None
    with pytest.raises(ImageRejected) as info:
        do_render(data)
    assert info.value.status == 415
    assert dims(do_render(data, formats=[*FORMATS, "TIFF"]))["xl"] == (200, 100)
    with pytest.raises(ImageRejected):
        do_render(images.png(20, 10), formats=["JPEG"])


# -- real photos -------------------------------------------------------------------------

CORPUS = os.environ.get("IMAGEPIPE_CORPUS")
CORPUS_FILES = sorted(p for p in Path(CORPUS).iterdir() if p.is_file()) if CORPUS else []


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_file_renders_or_is_rejected(path: Path) -> None:
    data = path.read_bytes()
    if sniff(data, FORMATS) is None:
        with pytest.raises(ImageRejected):
            do_render(data)
        return
    rendered = do_render(data)
    assert {r.name for r in rendered.renditions} == {s.name for s in LADDER}
    for rendition in rendered.renditions:
        assert_no_metadata(rendition.data)
        assert opened(rendered, rendition.name).size == (rendition.width, rendition.height)
        assert max(rendition.width, rendition.height) <= max(rendered.width, rendered.height)


@pytest.mark.skipif(not CORPUS, reason="IMAGEPIPE_CORPUS is not set")
def test_corpus_orientations_all_come_out_upright() -> None:
    assert CORPUS is not None
    folder = Path(CORPUS)
    if not (folder / "Landscape_8.jpg").exists():
        pytest.skip("no Landscape_N.jpg in the corpus")
    upright = opened(do_render((folder / "Landscape_1.jpg").read_bytes()), "m")
    for n in range(2, 9):
        m = opened(do_render((folder / f"Landscape_{n}.jpg").read_bytes()), "m")
        assert m.size == upright.size
        assert ImageStat.Stat(ImageChops.difference(m, upright)).mean[0] < 12, n
