"""Resumable uploads (tus 1.0) over real HTTP against a real uvicorn (`api.resumable`):
every header and status the protocol names, grants, the checks of POST /photos from the
first bytes, and the last byte's ticket in the same answer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from bench.resumable import noise_png
from imagepipe import keys
from imagepipe.api.idempotency import IdempotencyKeys
from imagepipe.config import Settings
from imagepipe.replication.audit import audit_once
from imagepipe.replication.listing import TREES
from imagepipe.resumable import ResumableStore
from imagepipe.storage.partial import PART_BYTES
from tests import images
from tests.owners import OWNER, bearer
from tests.test_flow import s3_client

pytestmark = pytest.mark.resumable
TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest, s3_endpoint: str) -> Settings:
    """The test's settings, changed where it asks (indirect param); ``primary="s3"``: a
    primary bucket of its own on the S3 server."""
    update = dict(getattr(request, "param", {}))
    if update.pop("primary", None) == "s3":
        bucket = f"primary-{next(_buckets)}"
        s3_client(s3_endpoint).create_bucket(Bucket=bucket)
        update |= {"primary_s3_bucket": bucket, "primary_s3_endpoint": s3_endpoint}
    return settings.model_copy(update=update)


_buckets = itertools.count()
S3_PRIMARY = pytest.mark.parametrize("settings", [{"primary": "s3"}], indirect=True)


def big_jpeg() -> bytes:
    """A real JPEG a few hundred KB long (so a PATCH can stop mid-file)."""
    data = images.jpeg(1600, 1200)
    assert len(data) > 100_000
    return data


def metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


async def create(http: httpx.AsyncClient, length: int, **headers: str) -> httpx.Response:
    meta = metadata(filename="train.jpg", filetype="image/jpeg")
    return await http.post(
        "/uploads/",
        headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": meta, **headers},
    )


async def created(http: httpx.AsyncClient, length: int) -> str:
    response = await create(http, length)
    assert response.status_code == 201, response.text
    return response.headers["location"]


async def patch(
    http: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str
) -> httpx.Response:
    return await http.patch(
        url, content=data, headers={**PATCH, "Upload-Offset": str(offset), **headers}
    )


def partial_files(settings: Settings) -> list[Path]:
    folder = settings.primary_root / keys.PARTIAL_UPLOADS
    return sorted(folder.iterdir()) if folder.exists() else []


def originals(settings: Settings) -> list[Path]:
    folder = settings.primary_root / keys.ORIGINALS
    return sorted(folder.iterdir()) if folder.exists() else []


def ticket_of(response: httpx.Response) -> str:
    link = response.headers["link"]
    assert link.startswith("</tickets/") and link.endswith('>; rel="ticket"'), link
    return link[len("</tickets/") : link.index(">")]


async def test_discovery_names_version_extensions_size_and_checksums(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    response = await http.options("/uploads/")
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["tus-version"] == "1.0.0"
    extensions = set(response.headers["tus-extension"].split(","))
    assert {"creation", "creation-with-upload", "termination", "expiration", "checksum"} <= (
        extensions
    )
    assert response.headers["tus-max-size"] == str(settings.max_upload_bytes)
    assert set(response.headers["tus-checksum-algorithm"].split(",")) == {"sha1", "sha256"}
    assert "Upload-Offset" in response.headers["access-control-expose-headers"]


async def test_upload_in_pieces_makes_one_photo_and_the_last_patch_names_its_ticket(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    data = big_jpeg()
    response = await create(http, len(data))
    assert response.status_code == 201
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["upload-offset"] == "0"
    assert "upload-expires" in response.headers
    url = response.headers["location"]
    assert url.startswith("/uploads/")
    cut = len(data) // 3
    first = await patch(http, url, 0, data[:cut])
    assert first.status_code == 204, first.text
    assert first.headers["upload-offset"] == str(cut)
    assert "link" not in first.headers
    head = await http.head(url, headers=TUS)
    assert head.status_code == 200
    assert head.headers["upload-offset"] == str(cut)
    assert head.headers["upload-length"] == str(len(data))
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["upload-metadata"].startswith("filename ")
    last = await patch(http, url, cut, data[cut:])
    assert last.status_code == 204, last.text
    assert last.headers["upload-offset"] == str(len(data))
    ticket_id = ticket_of(last)
    # the ticket exists already: issued in that same request
    ticket = (await http.get(f"/tickets/{ticket_id}")).json()
    assert ticket["status"] == "queued"
    [original] = originals(settings)
    assert original.name.startswith(ticket["photo_id"] + ".")
    assert hashlib.sha256(original.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert partial_files(settings) == []  # the parts are gone
    # a client that lost that answer finds its ticket again
    again = await http.head(url, headers=TUS)
    assert ticket_of(again) == ticket_id
    assert again.headers["upload-offset"] == str(len(data))
    # an empty PATCH at the end changes nothing: the same ticket, still one photo
    repeat = await patch(http, url, len(data), b"")
    assert repeat.status_code == 204 and ticket_of(repeat) == ticket_id
    assert len(originals(settings)) == 1


async def test_creation_with_upload_takes_the_first_bytes(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    data = big_jpeg()
    headers = {"Content-Type": "application/offset+octet-stream"}
    response = await http.post(
        "/uploads/",
        content=data[:1000],
        headers={**TUS, **headers, "Upload-Length": str(len(data))},
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == "1000"
    last = await patch(http, response.headers["location"], 1000, data[1000:])
    assert last.status_code == 204
    ticket_of(last)


async def test_creation_with_the_whole_upload_answers_with_its_ticket(
    http: httpx.AsyncClient,
) -> None:
    data = images.jpeg(64, 48)
    response = await http.post(
        "/uploads/",
        content=data,
        headers={
            **PATCH,
            "Upload-Length": str(len(data)),
            "Upload-Checksum": "sha1 "
            + base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode(),
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["upload-offset"] == str(len(data))
    ticket_of(response)


async def test_offset_mismatch_is_409_with_the_real_offset(http: httpx.AsyncClient) -> None:
    data = big_jpeg()
    url = await created(http, len(data))
    assert (await patch(http, url, 0, data[:500])).status_code == 204
    stale = await patch(http, url, 0, data[:500])
    assert stale.status_code == 409
    assert stale.headers["upload-offset"] == "500"
    assert stale.headers["content-type"] == "application/problem+json"
    ahead = await patch(http, url, 900, data[900:1000])
    assert ahead.status_code == 409
    assert (await http.head(url, headers=TUS)).headers["upload-offset"] == "500"


async def test_wrong_checksum_is_460_and_moves_nothing(http: httpx.AsyncClient) -> None:
    data = big_jpeg()
    url = await created(http, len(data))
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    refused = await patch(http, url, 0, data[:4000], **{"Upload-Checksum": f"sha256 {wrong}"})
    assert refused.status_code == 460
    assert (await http.head(url, headers=TUS)).headers["upload-offset"] == "0"
    right = base64.b64encode(hashlib.sha256(data[:4000]).digest()).decode()
    taken = await patch(http, url, 0, data[:4000], **{"Upload-Checksum": f"sha256 {right}"})
    assert taken.status_code == 204
    assert taken.headers["upload-offset"] == "4000"
    unknown = await patch(http, url, 4000, data[4000:5000], **{"Upload-Checksum": "md5 AAAA"})
    assert unknown.status_code == 400


async def test_another_tus_version_is_412(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/uploads/", headers={"Tus-Resumable": "0.2.2", "Upload-Length": "10"}
    )
    assert response.status_code == 412
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["tus-resumable"] == "1.0.0"
    unversioned = await http.patch("/uploads/abc", content=b"x", headers={"Upload-Offset": "0"})
    assert unversioned.status_code == 412


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Upload-Length": "abc"},
        {"Upload-Length": "-1"},
        {"Upload-Length": "\u00b2"},  # latin-1's superscript two: a digit, but int() refuses it
        {"Upload-Length": "10", "Upload-Metadata": "filename not*base64"},
        {"Upload-Length": "10", "Upload-Metadata": "bad,key x"},
        {"Upload-Length": "10", "Upload-Metadata": metadata(visibility="everyone")},
        {"Upload-Length": "10", "Upload-Defer-Length": "1"},
    ],
    ids=[
        "no-length",
        "text",
        "negative",
        "arabic-digits",
        "bad-base64",
        "bad-key",
        "visibility",
        "deferred",
    ],
)
async def test_a_malformed_creation_is_400(
    http: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    if headers.get("Upload-Defer-Length"):
        del headers["Upload-Length"]
    encoded = {k: v.encode("latin-1") for k, v in headers.items()}
    response = await http.post("/uploads/", headers={**TUS, **encoded})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_malformed_patch_is_refused(http: httpx.AsyncClient) -> None:
    url = await created(http, 1000)
    wrong_type = await http.patch(
        url, content=b"x", headers={**TUS, "Upload-Offset": "0", "Content-Type": "image/jpeg"}
    )
    assert wrong_type.status_code == 415
    no_offset = await http.patch(url, content=b"x", headers=PATCH)
    assert no_offset.status_code == 400
    for bad_id in ("not-hex", "A" * 32, "0" * 31):
        assert (await patch(http, f"/uploads/{bad_id}", 0, b"x")).status_code == 404


async def test_over_tus_max_size_is_413(http: httpx.AsyncClient, settings: Settings) -> None:
    response = await create(http, settings.max_upload_bytes + 1)
    assert response.status_code == 413
    small_grant = await http.post(
        "/uploads/",
        headers={**TUS, "Upload-Length": "5000", **bearer(max_bytes=4000)},
    )
    assert small_grant.status_code == 413


async def test_a_patch_past_the_length_is_413(http: httpx.AsyncClient) -> None:
    url = await created(http, 100)
    response = await patch(http, url, 0, images.jpeg(64, 48))
    assert response.status_code == 413


async def test_termination_removes_the_upload_and_its_bytes(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    data = big_jpeg()
    url = await created(http, len(data))
    assert (await patch(http, url, 0, data[:5000])).status_code == 204
    assert len(partial_files(settings)) == 1
    gone = await http.delete(url, headers=TUS)
    assert gone.status_code == 204
    assert gone.headers["tus-resumable"] == "1.0.0"
    assert partial_files(settings) == []
    assert (await http.head(url, headers=TUS)).status_code == 404
    assert (await patch(http, url, 5000, data[5000:])).status_code == 404


async def test_another_owners_upload_is_404(http: httpx.AsyncClient) -> None:
    data = big_jpeg()
    url = await created(http, len(data))
    assert (await patch(http, url, 0, data[:5000])).status_code == 204
    stranger = bearer("someone-else")
    assert (await http.head(url, headers={**TUS, **stranger})).status_code == 404
    trespass = await patch(http, url, 5000, data[5000:], **stranger)
    assert trespass.status_code == 404
    assert (await http.delete(url, headers={**TUS, **stranger})).status_code == 404
    assert (await http.head(url, headers=TUS)).headers["upload-offset"] == "5000"
    async with httpx.AsyncClient(base_url=str(http.base_url)) as anonymous:
        assert (await anonymous.head(url, headers=TUS)).status_code == 401


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (images.pixel_flood_png() + b"\0" * 300_000, 413),
        (b"%PDF-1.4 not an image at all" + b"\0" * 300_000, 415),
    ],
    ids=["pixel-bomb", "not-an-image"],
)
async def test_a_bomb_or_a_non_image_is_refused_on_the_first_patch(
    http: httpx.AsyncClient, settings: Settings, body: bytes, status: int
) -> None:
    url = await created(http, len(body) * 100)  # announced as a long upload
    response = await patch(http, url, 0, body)
    assert response.status_code == status, response.text
    assert partial_files(settings) == []  # nothing of it is kept
    assert (await http.head(url, headers=TUS)).status_code == 404
    assert originals(settings) == []


async def test_an_expired_upload_is_gone_and_the_audit_removes_its_bytes(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    data = big_jpeg()
    url = await created(http, len(data))
    assert (await patch(http, url, 0, data[:5000])).status_code == 204
    upload_id = url.rsplit("/", 1)[1]
    # its expiry passes (as the clock would): Valkey drops the state then too
    await redis.hset(keys.resumable(upload_id), "expires_at", str(time.time() - 1))
    assert (await http.head(url, headers=TUS)).status_code == 404
    assert (await patch(http, url, 5000, data[5000:])).status_code == 404
    assert len(partial_files(settings)) == 1
    report = await audit_once(settings)
    assert report.counts().get("expired_uploads_removed") == 1
    assert partial_files(settings) == []


async def test_the_audit_keeps_live_uploads(http: httpx.AsyncClient, settings: Settings) -> None:
    data = big_jpeg()
    url = await created(http, len(data))
    assert (await patch(http, url, 0, data[:5000])).status_code == 204
    report = await audit_once(settings)
    assert "expired_uploads_removed" not in report.counts()
    assert (await patch(http, url, 5000, data[5000:])).status_code == 204


async def test_concurrent_final_patches_make_one_photo(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    data = big_jpeg()
    url = await created(http, len(data))
    cut = len(data) - 1000
    assert (await patch(http, url, 0, data[:cut])).status_code == 204
    answers = await asyncio.gather(*(patch(http, url, cut, data[cut:]) for _ in range(4)))
    statuses = sorted(a.status_code for a in answers)
    assert 204 in statuses and set(statuses) <= {204, 409, 423}, statuses
    tickets = {ticket_of(a) for a in answers if a.status_code == 204}
    assert len(tickets) == 1
    assert len(originals(settings)) == 1
    assert ticket_of(await http.head(url, headers=TUS)) in tickets


async def test_an_acceptance_a_dead_api_left_in_flight_converges_on_one_photo(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    """An API that died accepting the last byte holds the upload's key until its lease
    ends: the retry is told to come back (423), then makes the one photo, under the ids the
    key was given."""
    data = big_jpeg()
    url = await created(http, len(data))
    cut = len(data) - 1000
    assert (await patch(http, url, 0, data[:cut])).status_code == 204
    held = IdempotencyKeys(redis, 3600, lease_s=60)
    upload_id = url.rsplit("/", 1)[1]
    dead = await held.reserve(keys.resumable_idempotency(upload_id), OWNER)
    busy = await patch(http, url, cut, data[cut:])
    assert busy.status_code == 423 and busy.headers["retry-after"] == "1"
    head = await http.head(url, headers=TUS)  # the bytes are all there; no ticket yet
    assert head.headers["upload-offset"] == str(len(data)) and "link" not in head.headers
    await held.release(dead)  # as its lease running out would
    done = await http.head(url, headers=TUS)  # a HEAD finishes what the dead API began
    assert ticket_of(done) == dead.ticket_id
    [original] = originals(settings)
    assert original.name.startswith(dead.photo_id + ".")


async def exists_calls(redis: Redis) -> int:
    """How many EXISTS commands Valkey has run (the lock is looked up with EXISTS)."""
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_exists", {}).get("calls", 0))


async def test_head_waits_for_a_patch_in_progress_to_settle(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    """A client asks HEAD after its PATCH failed; that PATCH, its client gone, may still be
    making its bytes durable: HEAD tells the offset it then acknowledges, not the one before."""
    data = big_jpeg()
    url = await created(http, len(data))
    upload_id = url.rsplit("/", 1)[1]
    store = ResumableStore(redis)
    token = await store.lock(upload_id, 10_000)  # as the PATCH in progress holds it
    assert token is not None
    before = await exists_calls(redis)
    head = asyncio.create_task(http.head(url, headers=TUS))
    while await exists_calls(redis) < before + 2:  # noqa: ASYNC110 (HEAD found the lock, waits)
        await asyncio.sleep(0.01)
    assert not head.done()
    assert await store.advance(upload_id, token, 0, 5000)  # the bytes made durable
    await store.renew(upload_id, token, 0)  # and the PATCH ends
    assert (await head).headers["upload-offset"] == "5000"
    held = await store.lock(upload_id, 60_000)  # a PATCH that does not end: HEAD still answers
    assert held is not None
    assert (await http.head(url, headers=TUS)).headers["upload-offset"] == "5000"


@pytest.mark.parametrize("settings", [{"owner_storage_bytes": 1_000_000}], indirect=True)
async def test_unfinished_uploads_count_against_the_storage_quota(
    http: httpx.AsyncClient,
) -> None:
    assert (await create(http, 600_000)).status_code == 201
    refused = await create(http, 600_000)
    assert refused.status_code == 413
    body: dict[str, Any] = refused.json()
    assert body["violated-policies"] == ["storage"]
    small = await http.post(
        "/photos", content=b"x" * 500_000, headers={"content-type": "image/jpeg"}
    )
    assert small.status_code == 413


@pytest.mark.parametrize("settings", [{"resumable_max_per_owner": 2}], indirect=True)
async def test_unfinished_uploads_per_owner_are_bounded(http: httpx.AsyncClient) -> None:
    first = await created(http, 1000)
    await created(http, 1000)
    assert (await create(http, 1000)).status_code == 429
    assert (await create(http, 1000, **bearer("another-owner"))).status_code == 201
    assert (await http.delete(first, headers=TUS)).status_code == 204
    assert (await create(http, 1000)).status_code == 201


def test_partial_files_are_not_objects() -> None:
    """The parts never look like a photo's object to the audit's listings or the replicator."""
    key = keys.partial_upload("ab12")
    assert keys.kind_of(key) is None
    assert not key.startswith(TREES)


async def test_creation_is_charged_to_the_owners_rates(http: httpx.AsyncClient) -> None:
    """As a POST: one upload and its declared bytes, refused before any byte is sent."""
    rate = bearer(uploads_per_minute=1)
    first = await create(http, 1000, **rate)
    assert first.status_code == 201
    assert '"uploads";r=0' in first.headers["ratelimit"]
    refused = await create(http, 1000, **rate)
    assert refused.status_code == 429 and "retry-after" in refused.headers
    assert refused.headers["tus-resumable"] == "1.0.0"
    too_big = await create(http, 5000, **bearer("byte-counter", bytes_per_day=4000))
    assert too_big.status_code == 413
    assert too_big.json()["violated-policies"] == ["bytes"]


def bucket_keys(settings: Settings, prefix: str) -> dict[str, int]:
    client = s3_client(str(settings.primary_s3_endpoint))
    listed = client.list_objects_v2(Bucket=settings.primary_s3_bucket, Prefix=prefix)
    return {item["Key"]: item["Size"] for item in listed.get("Contents", [])}


def multipart_uploads(settings: Settings) -> list[Any]:
    client = s3_client(str(settings.primary_s3_endpoint))
    listed = client.list_multipart_uploads(Bucket=settings.primary_s3_bucket)
    return list(listed.get("Uploads", []))


@S3_PRIMARY
async def test_on_s3_primary_small_patches_become_parts_and_one_photo(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    data = noise_png(20)
    assert len(data) > 2 * PART_BYTES
    url = await created(http, len(data))
    offset, last = 0, None
    while offset < len(data):
        last = await patch(http, url, offset, data[offset : offset + 3_000_000])
        assert last.status_code == 204, last.text
        offset = int(last.headers["upload-offset"])
        # acknowledged bytes are on S3 before the answer: parts, and the unfinished one's tail
        if offset < len(data):
            tails = [k for k in bucket_keys(settings, "uploads/") if ".tail-" in k]
            assert tails, "the bytes of an unfinished part are kept durably"
    assert last is not None
    ticket_id = ticket_of(last)
    ticket = (await http.get(f"/tickets/{ticket_id}")).json()
    [(key, size)] = bucket_keys(settings, keys.ORIGINALS).items()
    assert key.startswith(f"{keys.ORIGINALS}{ticket['photo_id']}.") and size == len(data)
    assert bucket_keys(settings, keys.PARTIAL_UPLOADS) == {}
    assert multipart_uploads(settings) == []


@S3_PRIMARY
async def test_on_s3_primary_a_bomb_termination_and_expiry_leave_nothing(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    bomb = images.pixel_flood_png() + b"\0" * 300_000
    refused = await patch(http, await created(http, 10 * len(bomb)), 0, bomb)
    assert refused.status_code == 413
    data = big_jpeg()
    terminated = await created(http, len(data))
    assert (await patch(http, terminated, 0, data[:5000])).status_code == 204
    assert (await http.delete(terminated, headers=TUS)).status_code == 204
    expired = await created(http, len(data))
    assert (await patch(http, expired, 0, data[:5000])).status_code == 204
    upload_id = expired.rsplit("/", 1)[1]
    assert len(multipart_uploads(settings)) == 1
    await redis.hset(keys.resumable(upload_id), "expires_at", str(time.time() - 1))
    report = await audit_once(settings)
    assert report.counts().get("expired_uploads_removed") == 1
    assert bucket_keys(settings, keys.PARTIAL_UPLOADS) == {}
    assert multipart_uploads(settings) == []
