"""Idempotency keys: one photo per key, even when the API dies between fsync and response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.api.idempotency import IdempotencyKeys
from imagepipe.api.ingest import store_original
from imagepipe.config import Settings
from imagepipe.errors import Conflict, PhotoIdTaken
from imagepipe.storage.factory import primary_storage
from tests import images
from tests.owners import OWNER, bearer
from tests.stack import api_server, run_worker_burst


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def short_lease(settings: Settings) -> Settings:
    return settings.model_copy(update={"idempotency_lease_s": 1})


async def test_retry_after_the_api_died_mid_upload_converges_on_one_photo(
    short_lease: Settings, redis: Redis
) -> None:
    settings, photo = short_lease, images.jpeg(320, 240)
    # the first attempt: key reserved, original fsynced ... and the process dies
    dead = await IdempotencyKeys(redis, 60, lease_s=1).reserve("upload-1", OWNER)
    await store_original(_chunks(photo), primary_storage(settings), settings, dead.photo_id)
    with api_server(settings) as url:
        async with httpx.AsyncClient(headers=bearer(), base_url=url) as http:
            send = {
                "content": photo,
                "headers": {"content-type": "image/jpeg", "idempotency-key": "upload-1"},
            }
            busy = await http.post("/photos", **send)
            assert busy.status_code == 409 and busy.headers["retry-after"]
            await asyncio.sleep(1.2)  # the dead request's lease runs out
            retry = await http.post("/photos", **send)
            assert retry.status_code == 202, retry.text
            assert retry.json()["photo_id"] == dead.photo_id
            await run_worker_burst(settings)
            done = (await http.get(f"/tickets/{retry.json()['id']}")).json()
    assert done["status"] == "completed"
    originals = list((settings.primary_root / "originals").iterdir())
    assert [p.name for p in originals] == [f"{dead.photo_id}.jpg"]  # one photo, not two


# -- a key used again after its record expired -----------------------------------------


async def _forget_every_key(redis: Redis) -> None:
    """What 24 h do to the idempotency records (their TTL runs out)."""
    async for key in redis.scan_iter(keys.idempotency("*")):
        await redis.delete(key)


async def _keyed(http: httpx.AsyncClient, key: str, body: bytes) -> httpx.Response:
    headers = {"content-type": "image/jpeg", "idempotency-key": key}
    return await http.post("/photos", content=body, headers=headers)


async def _photo_of_an_expired_key(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> tuple[dict[str, Any], Path, bytes]:
    """A photo uploaded under ``photo-1`` and processed, then the key's record expired."""
    photo = images.jpeg(320, 240)
    accepted = await _keyed(http, "photo-1", photo)
    assert accepted.status_code == 202, accepted.text
    await run_worker_burst(settings)
    ticket = (await http.get(f"/tickets/{accepted.json()['id']}")).json()
    await _forget_every_key(redis)
    return ticket, settings.primary_root / "originals" / f"{ticket['photo_id']}.jpg", photo


async def test_same_key_after_its_record_expired_makes_a_new_photo(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    first, original, sent = await _photo_of_an_expired_key(http, settings, redis)
    second = await _keyed(http, "photo-1", images.jpeg(200, 100))
    assert second.status_code == 202, second.text
    assert second.json()["photo_id"] != first["photo_id"]
    assert second.json()["id"] != first["id"]
    assert original.read_bytes() == sent  # the first photo is untouched
    assert (await http.get(f"/tickets/{first['id']}")).json()["status"] == "completed"
    assert (await http.get(f"/photos/{first['photo_id']}")).status_code == 200


async def test_truncated_body_under_an_old_key_deletes_nothing(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    first, original, sent = await _photo_of_an_expired_key(http, settings, redis)
    refused = await _keyed(http, "photo-1", sent[:200])
    assert refused.status_code == 415, refused.text
    assert original.read_bytes() == sent
    assert (await http.get(f"/photos/{first['photo_id']}")).status_code == 200
    assert sorted(p.name for p in original.parent.iterdir()) == [original.name]  # no temp left


# -- the reservation: random ids, kept with the key --------------------------------------


async def test_a_reservation_keeps_its_random_ids_until_the_key_expires(redis: Redis) -> None:
    idempotency = IdempotencyKeys(redis, 60, lease_s=60)
    first = await idempotency.reserve("k")
    with pytest.raises(Conflict):
        await idempotency.reserve("k")  # in flight
    await idempotency.release(first)  # refused: the lease ends, the ids stay
    retry = await idempotency.reserve("k")
    assert (retry.photo_id, retry.ticket_id) == (first.photo_id, first.ticket_id)
    await _forget_every_key(redis)
    later = await idempotency.reserve("k")
    assert later.photo_id != first.photo_id and later.ticket_id != first.ticket_id


async def test_two_uploads_never_write_the_same_original(settings: Settings) -> None:
    primary, photo_id, photo = primary_storage(settings), "0" * 20, images.jpeg(64, 48)
    first = await store_original(_chunks(photo), primary, settings, photo_id)
    with pytest.raises(PhotoIdTaken) as raised:
        await store_original(_chunks(images.jpeg(48, 64)), primary, settings, photo_id)
    assert raised.value.status == 409
    assert await primary.read(first.key) == photo
    # the same bytes again (a retry) converge on the original instead
    again = await store_original(_chunks(photo), primary, settings, photo_id)
    assert again.original() == first.original()
    with pytest.raises(PhotoIdTaken):  # nor may a retry add an original in another format
        await store_original(
            _chunks(images.png_alpha(8, 8)), primary, settings, photo_id, retry=True
        )
    assert [o.key async for o in primary.list("originals/")] == [first.key]


async def test_takeover_with_different_bytes_is_422_and_keeps_the_original(
    short_lease: Settings, redis: Redis
) -> None:
    settings, photo = short_lease, images.jpeg(320, 240)
    dead = await IdempotencyKeys(redis, 60, lease_s=1).reserve("upload-1", OWNER)
    stored = await store_original(
        _chunks(photo), primary_storage(settings), settings, dead.photo_id
    )
    original = settings.primary_root / stored.key
    await asyncio.sleep(1.2)  # the dead request's lease runs out
    with api_server(settings) as url:
        async with httpx.AsyncClient(headers=bearer(), base_url=url) as http:
            other = await _keyed(http, "upload-1", images.jpeg(200, 100))
            assert other.status_code == 422, other.text
            assert original.read_bytes() == photo
            retry = await _keyed(http, "upload-1", photo)  # the ids were kept for it
            assert retry.status_code == 202, retry.text
            assert retry.json()["photo_id"] == dead.photo_id


async def test_one_owner_s_key_never_replays_another_owner_s_upload(
    http: httpx.AsyncClient,
) -> None:
    mine = await _keyed(http, "shared-key", images.jpeg(320, 240))
    assert mine.status_code == 202, mine.text
    theirs = await http.post(
        "/photos",
        content=images.jpeg(320, 240),
        headers={
            "content-type": "image/jpeg",
            "idempotency-key": "shared-key",
            **bearer("mallory"),
        },
    )
    assert theirs.status_code == 202, theirs.text  # their own upload, not a replay of mine
    assert theirs.json()["id"] != mine.json()["id"]
    assert theirs.json()["photo_id"] != mine.json()["photo_id"]
    again = await _keyed(http, "shared-key", images.jpeg(320, 240))
    assert again.json()["id"] == mine.json()["id"]  # while my own retry still replays mine
