"""Bad input over real HTTP: a precise 4xx problem at upload, or a terminal ticket with a reason.

Never a 5xx, never a wedged API or worker, and good uploads sent in between are unaffected.
The hostile corpus is made in ``tests/badinputs.py``; with IMAGEPIPE_CORPUS set, every file
of that folder goes through the same checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterable
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import EpsImagePlugin, Image, PngImagePlugin
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.config import Settings
from tests import badinputs, images
from tests.badinputs import Expect, Hostile
from tests.owners import AUTH
from tests.stack import run_worker_burst

pytestmark = pytest.mark.badinput

PROBLEM = "application/problem+json"
REFUSALS = {400, 413, 415}
TERMINAL = {"completed", "failed"}
# Headers and markers a derivative must never carry (APPn other than JFIF, COM) or contain.
ALLOWED_JPEG_MARKERS = {0xE0, 0xDB, 0xC0, 0xC4, 0xDD}
FORBIDDEN_INFO = {"exif", "xmp", "comment", "icc_profile", "photoshop", "adobe"}
FORBIDDEN_BYTES = (
    b"<html",
    b"<script",
    b"PK\x03\x04\x14\x00",
    b"Exif\0\0",
    b"http://ns.adobe.com/xap",
    b"secret",
)
CORPUS = os.environ.get("IMAGEPIPE_CORPUS")


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Few retries and a short decode deadline; a test may change more (indirect param)."""
    update = {"job_max_tries": 2, "decode_timeout_s": 10, **getattr(request, "param", {})}
    return settings.model_copy(update=update)


async def upload(http: httpx.AsyncClient, data: bytes, *, raw: bool = False) -> httpx.Response:
    """Upload with an image name and type, whatever the bytes are."""
    if raw:
        return await http.post("/photos", content=data, headers={"content-type": "image/png"})
    return await http.post("/photos", files={"file": ("photo.jpg", data, "image/jpeg")})


def refusal_problems(case: Hostile, response: httpx.Response) -> list[str]:
    """Why this refusal is not the precise problem+json the case calls for (empty if it is)."""
    wanted = {case.status} if case.expect is Expect.REFUSE else REFUSALS
    if response.status_code not in wanted:
        return [f"{case.name}: HTTP {response.status_code}, wanted {wanted}: {response.text[:200]}"]
    body = response.json()
    if response.headers["content-type"] != PROBLEM or body.get("status") != response.status_code:
        return [f"{case.name}: not a problem+json: {response.text[:200]}"]
    return [] if body.get("title") and body.get("detail") else [f"{case.name}: empty problem"]


def files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def jpeg_markers(data: bytes) -> list[int]:
    """The marker of every segment before the scan data."""
    markers, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        markers.append(marker)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            break
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return markers


def metadata_problems(name: str, data: bytes) -> list[str]:
    """What makes ``data`` more than a bare re-encoded JPEG (empty when it is clean)."""
    if not data.startswith(b"\xff\xd8\xff") or not data.endswith(b"\xff\xd9"):
        return [f"{name}: not a whole JPEG"]
    found = [f"marker {m:#x}" for m in jpeg_markers(data)[:-1] if m not in ALLOWED_JPEG_MARKERS]
    with Image.open(BytesIO(data)) as im:
        found += [f"info[{k}]" for k in FORBIDDEN_INFO & set(im.info)]
        found += ["EXIF tags"] if len(im.getexif()) else []
    found += [f"bytes {b!r}" for b in FORBIDDEN_BYTES if b in data]
    return [f"{name}: {what}" for what in found]


async def derivative_problems(
    http: httpx.AsyncClient, name: str, ticket: dict[str, Any]
) -> list[str]:
    """Fetch every size of a completed ticket: each a clean, nosniff, re-encoded JPEG."""
    if not (ticket.get("photo") or {}).get("sizes"):
        return [f"{name}: completed without sizes"]
    # the owner's signed URLs (the ticket's plain ones open public photos only)
    sizes = (await http.get(f"/photos/{ticket['photo_id']}")).json()["sizes"]
    problems = []
    for size, info in sizes.items():
        served = await http.get(info["url"])
        label = f"{name}/{size}"
        if served.status_code != 200 or served.headers["content-type"] != "image/jpeg":
            problems.append(f"{label}: HTTP {served.status_code} {served.headers['content-type']}")
        elif served.headers.get("x-content-type-options") != "nosniff":
            problems.append(f"{label}: served without nosniff")
        else:
            problems += metadata_problems(label, served.content)
    return problems


async def ticket_problems(http: httpx.AsyncClient, case: Hostile, ticket_id: str) -> list[str]:
    """Why this accepted upload's ticket is not an acceptable end state (empty if it is)."""
    ticket = (await http.get(f"/tickets/{ticket_id}")).json()
    status = ticket["status"]
    if status not in TERMINAL:
        return [f"{case.name}: ticket still {status}"]
    if status == "failed":
        return [] if ticket["error"] else [f"{case.name}: failed without a reason"]
    if case.expect is not Expect.ANY:
        return [f"{case.name}: published, but it must never be"]
    return await derivative_problems(http, case.name, ticket)


async def burst(settings: Settings) -> None:
    """Run the worker until the queue is empty; a wedged worker fails the test, not CI."""
    async with asyncio.timeout(90):
        await run_worker_burst(settings)


async def run_through_pipeline(
    http: httpx.AsyncClient, settings: Settings, cases: Iterable[Hostile]
) -> list[str]:
    """Upload each case (a good photo after every fourth), process them all, check each end."""
    problems: list[str] = []
    accepted: list[tuple[Hostile, str]] = []
    good = Hostile("good", images.jpeg(96, 64), Expect.ANY)
    for i, case in enumerate(cases):
        response = await upload(http, case.data)
        if response.status_code == 202:
            accepted.append((case, response.json()["id"]))
        else:
            problems += refusal_problems(case, response)
        if i % 4 == 3:
            accepted.append((good, (await upload(http, good.data)).json()["id"]))
    accepted.append((good, (await upload(http, good.data)).json()["id"]))
    await burst(settings)
    for case, ticket_id in accepted:
        problems += await ticket_problems(http, case, ticket_id)
        if case is good:
            status = (await http.get(f"/tickets/{ticket_id}")).json()["status"]
            problems += [] if status == "completed" else [f"a good upload ended {status}"]
    assert (await http.get("/healthz")).status_code == 200
    return problems


# -- refused at upload ----------------------------------------------------------------

REFUSED_GROUPS = {
    "pixel-floods": badinputs.pixel_floods,
    "other-formats": badinputs.other_formats,
    "non-images": badinputs.non_images,
    "animations": badinputs.animations,
    "polyglots": badinputs.polyglots,
}


@pytest.mark.parametrize("group", REFUSED_GROUPS)
async def test_refused_cases_get_a_precise_problem_and_leave_nothing(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, group: str
) -> None:
    refused = [c for c in REFUSED_GROUPS[group]() if c.expect is Expect.REFUSE]
    problems, goods = [], []
    for case in refused:
        for raw in (False, True):  # as a browser's multipart, and as a raw image/png body
            problems += refusal_problems(case, await upload(http, case.data, raw=raw))
        goods.append((await upload(http, images.jpeg(48, 32))).json()["photo_id"])
    assert problems == []
    # only the good uploads in between left anything: no original, no temp file, no ticket
    assert files_under(settings.primary_root) == {keys.original(p, "jpg") for p in goods}
    assert len(await redis.keys(keys.ticket("*"))) == len(goods)


async def test_formats_outside_the_allowlist_never_reach_a_decoder(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[object] = []  # the API runs in this process: Pillow's entry points are ours
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda *a: opened.append(a))
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: opened.append(a))
    for case in badinputs.other_formats():
        assert (await upload(http, case.data)).status_code == 415, case.name
    assert opened == []


# -- accepted, then failed or processed -----------------------------------------------


async def test_hostile_uploads_end_refused_failed_or_clean(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    cases = [c for c in badinputs.corpus() if c.expect is not Expect.REFUSE]
    assert await run_through_pipeline(http, settings, cases) == []


def read_corpus(folder: Path) -> list[Hostile]:
    """Every file of the folder, read in place (never copied), as a case that may go either way."""
    return [Hostile(p.name, p.read_bytes()) for p in sorted(folder.iterdir()) if p.is_file()]


@pytest.mark.skipif(not CORPUS, reason="IMAGEPIPE_CORPUS names no folder")
async def test_every_corpus_file_is_refused_or_reaches_a_terminal_ticket(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    assert CORPUS is not None
    cases = await asyncio.to_thread(read_corpus, Path(CORPUS))
    assert await run_through_pipeline(http, settings, cases) == []


def _png_with_metadata() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret comment")
    info.add_itxt("XML:com.adobe.xmp", images.XMP.decode())
    out = BytesIO()
    exif = images.exif_bytes(orientation=3, gps=True)
    images.photo(400, 300).save(out, "PNG", pnginfo=info, exif=exif)
    return out.getvalue()


def _webp_with_metadata() -> bytes:
    out = BytesIO()
    exif = images.exif_bytes(gps=True)
    images.photo(400, 300).save(out, "WEBP", exif=exif, xmp=images.XMP, quality=80)
    return out.getvalue()


def _gif_with_comment() -> bytes:
    out = BytesIO()
    images.photo(120, 90).convert("P").save(out, "GIF", comment=b"secret comment")
    return out.getvalue()


async def test_derivatives_carry_no_exif_gps_xmp_icc_or_comment(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    sources = {
        "jpeg": images.jpeg(
            900,
            600,
            orientation=6,
            exif_gps=True,
            xmp=True,
            comment=b"secret comment",
            icc=images.swapped_rgb_profile(),
        ),
        "png": _png_with_metadata(),
        "webp": _webp_with_metadata(),
        "gif": _gif_with_comment(),
    }
    tickets = {name: (await upload(http, data)).json()["id"] for name, data in sources.items()}
    await burst(settings)
    problems = []
    for name, ticket_id in tickets.items():
        ticket = (await http.get(f"/tickets/{ticket_id}")).json()
        assert ticket["status"] == "completed", ticket
        problems += await derivative_problems(http, name, ticket)
    assert problems == []


# -- hostile file names ---------------------------------------------------------------

# name -> (Content-Disposition parameters, the status they get)
HOSTILE_NAMES = {
    "dot-dot": (b'filename="../../x.jpg"', 202),
    "absolute": (b'filename="/tmp/x.jpg"', 202),
    "backslashes": (b'filename="..\\\\..\\\\x.jpg"', 202),
    "nul": (b'filename="x.jpg\x00.html"', 202),
    "rtl-override": ('filename="x\u202egpj.html"'.encode(), 202),
    "rfc5987": (b"filename*=UTF-8''..%2F..%2Fx%00.jpg", 202),
    "4kb": (b'filename="' + b"n" * 4000 + b'.jpg"', 202),
    # the multipart parser bounds a part's header line at ~4 KB: a precise 400, not a crash
    "10kb": (b'filename="' + b"n" * 10_240 + b'.jpg"', 400),
}


def multipart_named(disposition: bytes, data: bytes) -> tuple[bytes, str]:
    """A multipart body written by hand, so the file name goes out byte for byte."""
    boundary = "hostile-names-boundary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; '
        + disposition
        + b"\r\nContent-Type: image/jpeg\r\n\r\n"
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


async def test_client_file_names_are_never_used(
    http: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    photo_ids = []
    for name, (disposition, status) in HOSTILE_NAMES.items():
        body, content_type = multipart_named(disposition, images.jpeg(80, 60))
        response = await http.post("/photos", content=body, headers={"content-type": content_type})
        assert response.status_code == status, (name, response.text)
        if status == 202:
            photo_ids.append(response.json()["photo_id"])
    await burst(settings)
    sizes = [s.name for s in settings.sizes]
    expected = {
        f"storage/primary/{key}"
        for p in photo_ids
        for key in [keys.original(p, "jpg"), keys.manifest(p)]
        + [keys.derivative(p, s, "jpg") for s in sizes]
    }
    assert files_under(tmp_path) == expected  # nothing beside the server-made keys
    for base in (Path.cwd(), settings.primary_root, settings.primary_root / "originals"):
        assert not (base / "../../x.jpg").exists() and not (base / "x.jpg").exists()


# -- oversized and slow bodies --------------------------------------------------------

LIMIT = 1024 * 1024
TWO_GB = 2 * 1024**3
CHUNK = 64 * 1024
# Loopback socket buffers take a few MB the server never reads; far from 2 GB either way.
SENT_SLACK = 16 * 1024 * 1024


def post_2gb(api_url: str, declared: bool) -> tuple[bytes, int]:
    """POST a 2 GB body as curl does: keep sending until the server answers or hangs up.

    Returns the response's first bytes and how many body bytes went out. Blocking sockets on
    purpose: the kernel hands over a response that arrived before the server's reset, where
    asyncio's transport drops it once a write fails.
    """
    url = urlsplit(api_url)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    framing = b"Content-Length: %d" % TWO_GB if declared else b"Transfer-Encoding: chunked"
    sock.sendall(
        b"POST /photos HTTP/1.1\r\nHost: t\r\n"
        + AUTH
        + b"Content-Type: image/jpeg\r\n%s\r\n\r\n" % framing
    )
    sent = 0

    def pump() -> None:
        nonlocal sent
        data = images.jpeg(64, 64)  # a real image first: the limit, not the sniff, refuses it
        with contextlib.suppress(OSError):  # the server hung up: stop, as a client would
            while sent < TWO_GB:
                sock.sendall(data if declared else b"%x\r\n%s\r\n" % (len(data), data))
                sent += len(data)
                data = bytes(min(CHUNK, TWO_GB - sent))

    sender = threading.Thread(target=pump, daemon=True)
    sender.start()
    response = b""
    with sock:
        while b"\r\n\r\n" not in response and (chunk := sock.recv(65536)):
            response += chunk
        sender.join(10)  # ends at the server's reset; a server still reading fails the test
    return response, sent


@pytest.mark.parametrize("settings", [{"max_upload_bytes": LIMIT}], indirect=True)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_2gb_body_is_cut_off_at_the_limit(
    http: httpx.AsyncClient, api_url: str, settings: Settings, redis: Redis, declared: bool
) -> None:
    response, sent = await asyncio.to_thread(post_2gb, api_url, declared)
    assert response.startswith(b"HTTP/1.1 413 "), response[:200]
    assert sent < LIMIT + SENT_SLACK, sent  # the server stopped reading near the limit
    assert files_under(settings.primary_root) == set()  # no original, no temp file
    assert await redis.keys(keys.ticket("*")) == []
    assert (await upload(http, images.jpeg(40, 30))).status_code == 202  # nothing wedged


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """``data`` as a body without a Content-Length, in 64 KB pieces."""
    for at in range(0, len(data), CHUNK):
        yield data[at : at + CHUNK]


@pytest.mark.parametrize(
    "body",
    [
        b"%PDF-1.7\n" + bytes(3 * 1024 * 1024),  # refused from its first bytes, 3 MB unread
        images.truncated(images.jpeg(400, 300), 0.02),  # refused once all of it is in
    ],
    ids=["refused-early", "refused-at-the-end"],
)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_refused_body_within_the_limit_gets_its_answer_promptly(
    http: httpx.AsyncClient, body: bytes, framing: str
) -> None:
    # httpx reads nothing until it has sent everything: a server that hung up early, or
    # waited for bytes that had all arrived, would show here as a reset or a 30 s wait
    multipart, content_type = multipart_named(b'filename="a.jpg"', body)
    content = multipart if framing == "content-length" else chunked(multipart)
    started = time.monotonic()
    refused = await http.post("/photos", content=content, headers={"content-type": content_type})
    assert refused.status_code == 415 and refused.json()["status"] == 415
    assert time.monotonic() - started < 5
    assert (await upload(http, images.jpeg(40, 30))).status_code == 202


def _stalled_request(body_start: bytes, chunked: bool) -> bytes:
    """Request headers and the first bytes of a body the client then stops sending."""
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 100000"
    data = b"%x\r\n%s\r\n" % (len(body_start), body_start) if chunked and body_start else body_start
    return (
        b"POST /photos HTTP/1.1\r\nHost: t\r\n"
        + AUTH
        + b"Content-Type: image/jpeg\r\n"
        + framing
        + b"\r\n\r\n"
        + data
    )


async def read_status_and_body(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The status and (the start of) the body of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), await reader.read(4096)


@pytest.mark.parametrize("settings", [{"upload_idle_timeout_s": 0.5}], indirect=True)
@pytest.mark.parametrize(
    ("body_start", "chunked"),
    [
        (b"", False),
        (b"\xff\xd8\xff\xe0" + bytes(3000), False),
        (images.jpeg(400, 300)[:5000], True),
    ],
    ids=["no-body", "length-declared", "chunked"],
)
async def test_a_stalled_body_gets_408_while_others_upload(
    http: httpx.AsyncClient, settings: Settings, api_url: str, body_start: bytes, chunked: bool
) -> None:
    url = urlsplit(api_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(_stalled_request(body_start, chunked))
    await writer.drain()
    started = time.monotonic()
    good = await upload(http, images.jpeg(64, 48))  # the stalled client holds nothing up
    assert good.status_code == 202
    status, body = await asyncio.wait_for(read_status_and_body(reader), 5)
    writer.close()
    assert status == 408 and b'"status":408' in body
    assert time.monotonic() - started < 3
    assert files_under(settings.primary_root) == {keys.original(good.json()["photo_id"], "jpg")}
