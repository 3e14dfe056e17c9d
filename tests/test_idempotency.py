"""Idempotency keys: one photo per key, even when the API dies between fsync and response."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe.api.idempotency import IdempotencyKeys
from imagepipe.api.ingest import store_original
from imagepipe.config import Settings
from imagepipe.ids import derived_ids
from imagepipe.storage.factory import primary_storage
from tests import images
from tests.stack import api_server, run_worker_burst


def test_derived_ids_are_stable_per_key_and_secret() -> None:
    assert derived_ids("s", "k") == derived_ids("s", "k")
    assert derived_ids("s", "k") != derived_ids("s", "k2") != derived_ids("s2", "k")
    photo_id, ticket_id = derived_ids("s", "k")
    assert len(photo_id) == 20 and len(ticket_id) == 24


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture
def short_lease(settings: Settings) -> Settings:
    return settings.model_copy(update={"idempotency_lease_s": 1})


async def test_retry_after_the_api_died_mid_upload_converges_on_one_photo(
    short_lease: Settings, redis: Redis
) -> None:
    settings, photo = short_lease, images.jpeg(320, 240)
    secret = settings.callback_secret.get_secret_value()
    # the first attempt: key reserved, original fsynced ... and the process dies
    dead = await IdempotencyKeys(redis, 60, lease_s=1, secret=secret).reserve("upload-1")
    await store_original(_chunks(photo), primary_storage(settings), settings, dead.photo_id)
    with api_server(settings) as url:
        async with httpx.AsyncClient(base_url=url) as http:
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
