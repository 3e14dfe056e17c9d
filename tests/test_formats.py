"""The formats people send and get: HEIC and AVIF uploads, WebP/AVIF derivatives per size,
and the content negotiation that picks one for each client."""

from __future__ import annotations

import io
import struct

import httpx
import pytest
from PIL import Image
from pydantic import ValidationError
from redis.asyncio import Redis

from imagepipe.api.negotiation import ranked
from imagepipe.config import Settings, SizeSpec, parse_sizes
from imagepipe.imaging import render as imaging
from imagepipe.imaging.decoding import ImageRejected, NeedMoreData
from imagepipe.imaging.probe import Probe, probe
from imagepipe.imaging.render import render
from imagepipe.stack.net import free_port
from tests import images
from tests.conftest import SECRETS
from tests.owners import bearer
from tests.stack import api_server, replicate_all, run_worker_burst
from tests.test_audit import repair
from tests.test_flow import assert_backup_matches_primary

LADDER = "sq:75:crop:avif,t:100:webp,m:500:jpeg+webp+avif"
ALL = ("JPEG", "PNG", "WEBP", "GIF", "AVIF", "HEIF")
CHROME = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
OLD_SAFARI = "image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5"
FIREFOX_WEBP_ONLY = "image/webp,*/*"

PUBLIC = {"visibility": "public"}  # sizes served by their plain URLs, cached for good


def ladder(text: str = LADDER) -> tuple[SizeSpec, ...]:
    return Settings(**SECRETS, sizes=text).sizes


def rendered(data: bytes, sizes: str = LADDER) -> imaging.Rendered:
    settings = Settings(**SECRETS, sizes=sizes)
    return render(data, settings.sizes, formats=ALL, max_pixels=10**8, qualities=settings.qualities)


def decoded(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


# -- settings ---------------------------------------------------------------------------


def test_sizes_name_their_formats_and_the_rest_take_the_default() -> None:
    settings = Settings(
        **SECRETS, sizes="t:100,m:500:jpeg+webp,sq:75:crop:avif", output_formats="jpeg,webp"
    )
    formats = {s.name: s.formats for s in settings.sizes}
    assert formats == {"t": ("JPEG", "WEBP"), "m": ("JPEG", "WEBP"), "sq": ("AVIF",)}
    assert Settings(**SECRETS).size("m") == SizeSpec(name="m", edge=500, formats=("JPEG",))


@pytest.mark.parametrize(
    ("sizes", "complaint"),
    [
        ("m:500:png", "'PNG' is not one of JPEG, WEBP, AVIF"),
        ("m:500:jpeg:webp", "is not name:edge[:crop][:format+format]"),
        ("m:big", "is not name:edge"),
        ("m:\u00b2", "is not name:edge"),  # isdigit() alone takes a superscript two
    ],
)
def test_a_ladder_with_an_unknown_format_is_refused(sizes: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint.replace("[", r"\[").replace("+", r"\+")):
        Settings(**SECRETS, sizes=sizes)


def test_heic_and_avif_uploads_are_allowed_by_default_with_the_extra() -> None:
    assert {"HEIF", "AVIF"} <= set(Settings(**SECRETS).formats)
    with pytest.raises(ValidationError, match="cannot decode"):
        Settings(**SECRETS, formats="JPEG,BMP")


def test_parse_sizes_keeps_formats_empty_until_settings_fill_them_in() -> None:
    assert parse_sizes("m:500")[0].formats == ()
    assert parse_sizes("m:500:crop:webp")[0] == SizeSpec(
        name="m", edge=500, crop=True, formats=("WEBP",)
    )


# -- decoding HEIC and AVIF ----------------------------------------------------------------


@pytest.mark.parametrize("make", [images.heic, images.avif], ids=["heic", "avif"])
@pytest.mark.parametrize("orientation", [1, 6, 8])
def test_heic_and_avif_are_decoded_upright(make: object, orientation: int) -> None:
    assert callable(make)
    data = make(640, 480, orientation=orientation)
    result = rendered(data, "m:500")
    upright = (480, 640) if orientation in (6, 8) else (640, 480)
    assert (result.width, result.height) == upright
    im = decoded(result.renditions[0].data)
    assert im.format == "JPEG"
    assert im.size == ((375, 500) if orientation != 1 else (500, 375))
    assert images.red_corner(im) == {1: "top-left", 6: "top-right", 8: "bottom-left"}[orientation]


@pytest.mark.parametrize(
    ("make", "fmt"), [(images.heic, "HEIF"), (images.avif, "AVIF")], ids=["heic", "avif"]
)
def test_the_upload_probe_reads_heic_and_avif_sizes_from_the_header(make: object, fmt: str) -> None:
    assert callable(make)
    data = make(640, 480)
    found = next(
        probe(data[:n], [fmt], 10**8, complete=False)
        for n in range(64, len(data), 64)
        if _parses(data[:n], fmt)
    )
    assert found == Probe(fmt, 640, 480, 1)
    with pytest.raises(ImageRejected) as refused:
        probe(data, [fmt], 640 * 480 - 1, complete=True)
    assert refused.value.status == 413


def _parses(prefix: bytes, fmt: str) -> bool:
    try:
        probe(prefix, [fmt], 10**8, complete=False)
    except NeedMoreData:
        return False
    return True


def test_a_heif_whose_header_claims_a_huge_extent_is_refused_before_decoding() -> None:
    data = images.heic(64, 48)
    at = data.index(b"ispe") + 8  # past the box type and its version and flags
    bomb = data[:at] + struct.pack(">II", 60_000, 60_000) + data[at + 8 :]
    with pytest.raises(ImageRejected) as refused:
        probe(bomb, ["HEIF"], 50_000_000, complete=False)
    assert refused.value.status == 413
    with pytest.raises(ImageRejected) as in_the_worker:  # the sandbox checks before decoding
        rendered(bomb)
    assert in_the_worker.value.status == 413


def test_largesize_boxes_are_walked_and_truncated_meta_asks_for_more() -> None:
    ispe = _box(b"ispe", b"\0\0\0\0" + struct.pack(">II", 300, 200))
    meta = _box(b"meta", b"\0\0\0\0" + _box(b"iprp", _box(b"ipco", ispe)))
    ftyp = _box(b"ftyp", b"heic\0\0\0\0mif1heic")
    free = struct.pack(">I4sQ", 1, b"free", 16 + 8) + b"\0" * 8  # a 64-bit size
    data = ftyp + free + meta
    assert probe(data, ["HEIF"], 10**8, complete=False) == Probe("HEIF", 300, 200, 1)
    with pytest.raises(NeedMoreData):
        probe(data[:-3], ["HEIF"], 10**8, complete=False)
    with pytest.raises(ImageRejected):
        probe(data[:-3], ["HEIF"], 10**8, complete=True)


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def test_a_truncated_heic_fails_with_a_reason() -> None:
    with pytest.raises(ImageRejected) as refused:
        rendered(images.truncated(images.heic(320, 240), 0.6))
    assert refused.value.status == 415


# -- encoding --------------------------------------------------------------------------


def test_each_size_is_written_in_each_of_its_formats_without_metadata() -> None:
    data = images.jpeg(1200, 900, orientation=6, exif_gps=True, icc=images.srgb_profile())
    made = {(r.name, r.format): r for r in rendered(data).renditions}
    assert set(made) == {("sq", "AVIF"), ("t", "WEBP"), ("m", "JPEG"), ("m", "WEBP"), ("m", "AVIF")}
    for (name, fmt), rendition in made.items():
        im = decoded(rendition.data)
        assert im.format == fmt and im.size == (rendition.width, rendition.height)
        assert not {"exif", "icc_profile", "xmp"} & set(im.info), (name, fmt, im.info.keys())
        assert images.red_corner(im) in ("top-right", "none")  # sq crops the marker away
    assert made["m", "WEBP"].width == made["m", "JPEG"].width == 375
    assert len(made["m", "AVIF"].data) < len(made["m", "JPEG"].data)


# -- negotiation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "best"),
    [
        (CHROME, "AVIF"),
        (FIREFOX_WEBP_ONLY, "WEBP"),
        (OLD_SAFARI, "JPEG"),  # image/* promises nothing about AVIF or WebP
        ("*/*", "JPEG"),
        (None, "JPEG"),
        ("", "JPEG"),
        ("image/jpeg;q=0.5, image/webp", "WEBP"),
        ("image/avif;q=0, image/webp;q=0.9, */*;q=0.1", "WEBP"),
        ("image/avif;q=0.5, */*", "JPEG"),  # a wildcard at q=1 beats a named format at 0.5
        ("garbage, image/webp", "WEBP"),  # a malformed range is skipped
        ("garbage", "JPEG"),
        ("image/png", None),
        ("*/*;q=0", None),
    ],
)
def test_ranked_picks_what_the_client_prefers(accept: str | None, best: str | None) -> None:
    choices = ranked(accept, ("JPEG", "WEBP", "AVIF"))
    assert (choices[0] if choices else None) == best


def test_a_size_without_jpeg_serves_its_first_format_to_wildcards() -> None:
    assert ranked("*/*", ("WEBP", "AVIF")) == ["WEBP", "AVIF"]
    assert ranked(CHROME, ("WEBP", "AVIF")) == ["AVIF", "WEBP"]


# -- over HTTP -------------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"sizes": ladder()})


async def test_an_iphone_photo_is_served_in_the_format_each_browser_takes(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    sent = images.heic(800, 600, orientation=6)
    accepted = await http.post(
        "/photos", params=PUBLIC, files={"file": ("IMG_0001.HEIC", sent, "image/heic")}
    )
    assert accepted.status_code == 202, accepted.text
    ticket = accepted.json()

    await run_worker_burst(settings)

    body = (await http.get(f"/tickets/{ticket['id']}")).json()
    assert body["status"] == "completed", body
    m = body["photo"]["sizes"]["m"]
    assert m["types"] == ["image/jpeg", "image/webp", "image/avif"]
    assert (m["width"], m["height"]) == (375, 500)
    served = {}
    for accept, media_type in [
        (CHROME, "image/avif"),
        (FIREFOX_WEBP_ONLY, "image/webp"),
        (OLD_SAFARI, "image/jpeg"),
    ]:
        got = await http.get(m["url"], headers={"accept": accept})
        assert got.status_code == 200 and got.headers["content-type"] == media_type
        assert got.headers["vary"] == "Accept" and got.headers["cache-control"] == "max-age=3600"
        assert decoded(got.content).size == (375, 500)
        served[media_type] = got.headers["etag"]
        again = await http.get(
            m["url"], headers={"accept": accept, "if-none-match": got.headers["etag"]}
        )
        assert again.status_code == 304
    assert len(set(served.values())) == 3  # one validator per representation

    refused = await http.get(m["url"], headers={"accept": "image/png"})
    assert refused.status_code == 406
    assert refused.headers["content-type"] == "application/problem+json"
    assert "image/jpeg, image/webp, image/avif" in refused.json()["detail"]
    only_avif = await http.get(body["photo"]["sizes"]["sq"]["url"], headers={"accept": "*/*"})
    assert only_avif.headers["content-type"] == "image/avif"

    await replicate_all(settings, redis)
    photo = (await http.get(f"/photos/{ticket['photo_id']}")).json()
    assert photo["format"] == "HEIF" and photo["backup"] == "completed"
    assert_backup_matches_primary(settings)  # every format of every size, backed up


async def test_a_format_added_to_a_size_later_falls_back_until_the_audit_makes_it(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    sent = images.avif(400, 300)
    ticket = (
        await http.post(
            "/photos", params=PUBLIC, content=sent, headers={"content-type": "image/avif"}
        )
    ).json()
    await run_worker_burst(settings)
    # the operator adds AVIF to `t`; the photos already processed have only its WebP
    later = settings.model_copy(
        update={
            "sizes": ladder(LADDER.replace("t:100:webp", "t:100:webp+avif")),
            "port": free_port(),
        }
    )
    url = f"/photos/{ticket['photo_id']}/t"
    with api_server(later) as base:
        async with httpx.AsyncClient(headers=bearer(), base_url=base) as client:
            before = await client.get(url, headers={"accept": CHROME})
            assert (await repair(later, redis)).get("reprocessed_missing_derivatives") == 1
            after = await client.get(url, headers={"accept": CHROME})
    assert before.status_code == 200 and before.headers["content-type"] == "image/webp"
    assert before.headers["cache-control"] == "max-age=300"  # a stand-in: cached briefly
    assert after.status_code == 200 and after.headers["content-type"] == "image/avif"
    assert after.headers["cache-control"] == "max-age=3600"
