"""Upload bodies at the edge, over real HTTP: every multipart part bounded, headers split across
reads joined, a total deadline for trickled bodies, and every refusal logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe.api.bodies import MAX_FIELD_BYTES, MAX_FIELDS
from imagepipe.config import Settings
from tests import images
from tests.owners import AUTH
from tests.test_badinput import multipart_named, read_status_and_body
from tests.test_photos import assert_nothing_stored

LIMIT = 1024 * 1024
BOUNDARY = "bounded-parts"
PHOTO = images.jpeg(64, 48)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """A 1 MiB upload limit; a test may change more (indirect param)."""
    return settings.model_copy(update={"max_upload_bytes": LIMIT, **getattr(request, "param", {})})


def form(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart body of (field name, data) parts, written by hand."""
    body = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for name, data in parts
    )
    return body + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """``data`` with no Content-Length, in 64 KiB pieces."""
    for at in range(0, len(data), 64 * 1024):
        yield data[at : at + 64 * 1024]


async def post_chunked(http: httpx.AsyncClient, parts: list[tuple[str, bytes]]) -> httpx.Response:
    body, content_type = form(parts)
    return await http.post("/photos", content=chunked(body), headers={"content-type": content_type})


BIG_FIELD = bytes(LIMIT // 2 * 3)  # within the limit, had it been the file
SMALL_FIELDS = [(f"field{n}", bytes(60 * 1024)) for n in range(MAX_FIELDS)]


@pytest.mark.parametrize(
    ("parts", "status"),
    [
        ([("note", BIG_FIELD), ("file", PHOTO)], 413),
        ([("file", PHOTO), ("note", BIG_FIELD)], 413),
        ([("note", bytes(MAX_FIELD_BYTES + 1)), ("file", PHOTO)], 413),
        ([*SMALL_FIELDS, ("file", PHOTO + bytes(900_000))], 413),  # every part fits; not all
        ([*SMALL_FIELDS, ("one-too-many", b"x"), ("file", PHOTO)], 400),
    ],
    ids=["big-field-first", "big-field-after", "field-over-its-bound", "total", "many-fields"],
)
async def test_every_part_counts_against_the_limits(
    http: httpx.AsyncClient,
    settings: Settings,
    redis: Redis,
    parts: list[tuple[str, bytes]],
    status: int,
) -> None:
    response = await post_chunked(http, parts)
    assert response.status_code == status, response.text
    assert response.json()["status"] == status
    await assert_nothing_stored(settings, redis)


async def test_small_fields_beside_the_file_are_accepted(http: httpx.AsyncClient) -> None:
    response = await post_chunked(http, [("title", b"a" * 100), ("file", PHOTO), ("note", b"b")])
    assert response.status_code == 202, response.text


async def test_part_headers_sent_a_byte_at_a_time_are_joined(api_url: str) -> None:
    body, content_type = multipart_named(b'filename="a.jpg"', images.jpeg(16, 16))
    url = urlsplit(api_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        b"POST /photos HTTP/1.1\r\nHost: t\r\n"
        + AUTH
        + b"Content-Type: %s\r\nContent-Length: %d\r\n\r\n" % (content_type.encode(), len(body))
    )
    for byte in body:  # each header reaches the parser in many reads
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.001)
    status, answer = await asyncio.wait_for(read_status_and_body(reader), 10)
    writer.close()
    assert status == 202, answer


@pytest.mark.parametrize(
    "settings", [{"upload_idle_timeout_s": 0.5, "upload_deadline_s": 1.5}], indirect=True
)
@pytest.mark.parametrize(
    ("first_bytes", "status"),
    [(b"\xff\xd8\xff", 408), (b"%PDF-1.7\n" + bytes(100), 415)],
    ids=["408-at-the-deadline", "refused-then-read-until-the-deadline"],
)
async def test_a_trickled_body_ends_at_the_total_deadline(
    api_url: str, settings: Settings, first_bytes: bytes, status: int
) -> None:
    url = urlsplit(api_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(
        b"POST /photos HTTP/1.1\r\nHost: t\r\n" + AUTH + b"Content-Type: image/jpeg\r\n"
        b"Content-Length: 100000\r\n\r\n" + first_bytes
    )
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(OSError):  # the server hung up
            while True:  # never idle for the 0.5 s the idle timeout waits
                await asyncio.sleep(0.1)
                writer.write(b"\0")
                await writer.drain()

    sender = asyncio.create_task(trickle())
    answer, body = await asyncio.wait_for(read_status_and_body(reader), 5)
    assert answer == status and b'"status":%d' % status in body
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then the server hangs up
    assert 1.4 < time.monotonic() - started < 3
    sender.cancel()
    writer.close()


async def test_a_refusal_is_logged_with_its_status_reason_and_client(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imagepipe.api.bodies")
    headers = {"content-type": "image/jpeg"}
    response = await http.post("/photos", content=b"a text file", headers=headers)
    assert response.status_code == 415
    [line] = [r for r in caplog.records if r.name == "imagepipe.api.bodies"]
    assert line.levelno == logging.INFO and "refused" in line.getMessage()
    assert (line.status, line.client) == (415, "127.0.0.1")  # type: ignore[attr-defined]
    assert "not an image" in line.reason  # type: ignore[attr-defined]
