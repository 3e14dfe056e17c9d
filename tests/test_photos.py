"""POST /photos and photo serving, over real HTTP to a real uvicorn server."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.api.services import retry_after_for
from imagepipe.config import Settings
from tests import images

PROBLEM = "application/problem+json"


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def assert_nothing_stored(settings: Settings, redis: Redis) -> None:
    assert files_under(settings.primary_root) == []  # no original, no temp file
    assert await redis.keys(keys.ticket("*")) == []
    assert await redis.zcard(keys.UPLOADS_QUEUE) == 0


async def test_multipart_upload_is_stored_fsynced_and_queued(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    photo = images.jpeg(640, 480)
    response = await http.post("/photos", files={"file": ("x.jpg", photo, "image/jpeg")})
    assert response.status_code == 202, response.text
    ticket = response.json()
    assert response.headers["location"] == f"/tickets/{ticket['id']}"
    assert int(response.headers["retry-after"]) >= 1
    assert ticket["status"] == "queued" and ticket["backup"] == "pending"
    original = settings.primary_root / "originals" / f"{ticket['photo_id']}.jpg"
    assert original.read_bytes() == photo
    assert await redis.zcard(keys.UPLOADS_QUEUE) == 1
    assert await redis.xlen(keys.REPLICATION_STREAM) == 1


async def test_raw_body_upload_sniffs_the_format_not_the_header(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    response = await http.post(
        "/photos", content=images.png_alpha(64, 48), headers={"content-type": "image/jpeg"}
    )
    assert response.status_code == 202, response.text
    photo_id = response.json()["photo_id"]
    assert (settings.primary_root / "originals" / f"{photo_id}.png").exists()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        # text after the GIF magic: its "dimensions" read as a pixel bomb
        (b"GIF89a but not really a gif at all, just text" * 10, 413),
        (b"hello, I am a text file named photo.jpg", 415),
        (images.tiff(32, 32), 415),
        (images.pixel_flood_png(), 413),
        (images.truncated(images.jpeg(400, 300), keep=0.002), 415),
    ],
    ids=["gif-magic-then-text", "text", "tiff", "pixel-flood", "header-only-jpeg"],
)
async def test_refused_uploads_leave_nothing_behind(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, body: bytes, status: int
) -> None:
    response = await http.post("/photos", files={"file": ("photo.jpg", body, "image/jpeg")})
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    await assert_nothing_stored(settings, redis)


async def test_declared_length_over_the_limit_is_refused_before_reading(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    too_big = b"\xff\xd8\xff" + b"\0" * (settings.max_upload_bytes + 100 * 1024)
    response = await http.post("/photos", content=too_big, headers={"content-type": "image/jpeg"})
    assert response.status_code == 413
    await assert_nothing_stored(settings, redis)


async def test_chunked_body_over_the_limit_is_cut_off_while_streaming(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    settings_limit = settings.max_upload_bytes
    photo = images.jpeg(64, 64)

    async def endless() -> AsyncIterator[bytes]:
        yield photo
        sent = len(photo)
        while sent <= settings_limit:
            yield b"\0" * 1024 * 1024
            sent += 1024 * 1024

    response = await http.post("/photos", content=endless(), headers={"content-type": "image/jpeg"})
    assert response.status_code == 413
    await assert_nothing_stored(settings, redis)


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"content": b""}, 400),
        ({"files": {"other": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}}, 400),
        ({"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data"}}, 400),
        ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415),
    ],
    ids=["empty", "no-file-field", "no-boundary", "json"],
)
async def test_malformed_requests_get_a_precise_4xx(
    http: httpx.AsyncClient,
    settings: Settings,
    redis: Redis,
    kwargs: dict,
    status: int,  # type: ignore[type-arg]
) -> None:
    if "content" in kwargs:
        kwargs.setdefault("headers", {"content-type": "image/jpeg"})
    response = await http.post("/photos", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    await assert_nothing_stored(settings, redis)


async def test_idempotency_key_returns_the_same_ticket(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    photo = images.jpeg(120, 80)
    send = {"files": {"file": ("a.jpg", photo, "image/jpeg")}, "headers": {"idempotency-key": "k1"}}
    first = await http.post("/photos", **send)
    again = await http.post("/photos", **send)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert await redis.zcard(keys.UPLOADS_QUEUE) == 1  # no second job
    other = await http.post(
        "/photos",
        files={"file": ("a.jpg", images.jpeg(121, 80), "image/jpeg")},
        headers={"idempotency-key": "k1"},
    )
    assert other.status_code == 422
    assert other.headers["content-type"] == PROBLEM


async def test_idempotency_key_of_a_refused_upload_is_released(http: httpx.AsyncClient) -> None:
    headers = {"idempotency-key": "k2", "content-type": "image/jpeg"}
    assert (await http.post("/photos", content=b"nope", headers=headers)).status_code == 415
    fixed = await http.post("/photos", content=images.jpeg(50, 50), headers=headers)
    assert fixed.status_code == 202


async def test_unknown_photos_and_sizes_are_404(http: httpx.AsyncClient) -> None:
    for path in (
        "/photos/0123456789abcdef0123",
        "/photos/nope",
        "/photos/0123456789abcdef0123/t",
        "/photos/0123456789abcdef0123/huge",
    ):
        response = await http.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == PROBLEM


async def test_upload_sha256_matches_what_was_sent(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    photo = images.jpeg(300, 200)
    ticket = (await http.post("/photos", files={"file": ("a.jpg", photo, "image/jpeg")})).json()
    stored = (settings.primary_root / "originals" / f"{ticket['photo_id']}.jpg").read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(photo).digest()


async def test_an_idle_stack_says_retry_after_1_and_more_as_the_queue_grows(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/photos", files={"file": ("a.jpg", images.jpeg(40, 30), "image/jpeg")}
    )
    assert response.headers["retry-after"] == "1"  # as the README says: this upload's job only
    assert retry_after_for(1) == 1 < retry_after_for(100) < retry_after_for(1000) <= 30
