"""The whole flow inside one test process: real HTTP API, burst worker, replicator."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import boto3
import httpx
from PIL import Image
from redis.asyncio import Redis

from imagepipe.config import Settings
from tests import images
from tests.stack import replicate_all, run_worker_burst


async def test_upload_is_resized_called_back_served_and_backed_up(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    sent = images.jpeg(1600, 1200)
    public = {"visibility": "public"}  # its sizes by their plain URLs, cached for good
    ticket = (
        await http.post("/photos", params=public, files={"file": ("a.jpg", sent, "image/jpeg")})
    ).json()

    await run_worker_burst(settings)

    polled = await http.get(f"/tickets/{ticket['id']}")
    body = polled.json()
    assert body["status"] == "completed", body
    assert "retry-after" not in polled.headers  # terminal: nothing to wait for
    sizes = body["photo"]["sizes"]
    assert set(sizes) == {s.name for s in settings.sizes}
    assert (sizes["l"]["width"], sizes["l"]["height"]) == (1024, 768)
    assert (sizes["xl"]["width"], sizes["xl"]["height"]) == (1600, 1200)  # never upscaled
    served = await http.get(sizes["sq"]["url"])
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["cache-control"] == "max-age=3600"  # IMAGEPIPE_PUBLIC_MAX_AGE_S
    assert Image.open(io.BytesIO(served.content)).size == (75, 75)
    again = await http.get(sizes["sq"]["url"], headers={"if-none-match": served.headers["etag"]})
    assert again.status_code == 304

    await replicate_all(settings, redis)
    assert (await http.get(f"/tickets/{ticket['id']}")).json()["backup"] == "completed"
    photo = (await http.get(f"/photos/{ticket['photo_id']}")).json()
    assert photo["backup"] == "completed" and photo["sha256"] == hashlib.sha256(sent).hexdigest()
    assert_backup_matches_primary(settings)


def s3_client(endpoint: str | None) -> Any:
    """A boto3 client on the test S3 server (moto's credentials)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def primary_objects(settings: Settings) -> dict[str, bytes]:
    """Every object on primary storage, key -> bytes, whether a folder or a bucket."""
    if settings.primary_s3_bucket is None:
        root = settings.primary_root
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }
    s3 = s3_client(settings.primary_s3_endpoint)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.primary_s3_bucket)
    found = [item["Key"] for page in pages for item in page.get("Contents", [])]
    return {
        key: s3.get_object(Bucket=settings.primary_s3_bucket, Key=key)["Body"].read()
        for key in found
    }


def assert_backup_matches_primary(settings: Settings) -> None:
    """Every object on primary is in the backup bucket with the same sha256."""
    s3 = s3_client(settings.backup_s3_endpoint)
    for key, data in primary_objects(settings).items():
        copy = s3.get_object(Bucket=settings.backup_s3_bucket, Key=key)["Body"].read()
        assert hashlib.sha256(copy).digest() == hashlib.sha256(data).digest(), key


async def test_ticket_etag_and_batch_polling(http: httpx.AsyncClient) -> None:
    first = (
        await http.post(
            "/photos", content=images.jpeg(50, 40), headers={"content-type": "image/jpeg"}
        )
    ).json()
    response = await http.get(f"/tickets/{first['id']}")
    assert response.headers["etag"]
    cached = await http.get(
        f"/tickets/{first['id']}", headers={"if-none-match": response.headers["etag"]}
    )
    assert cached.status_code == 304 and cached.headers["retry-after"]
    batch = (await http.get("/tickets", params={"ids": f"{first['id']},{'B' * 24}"})).json()
    assert batch["tickets"][first["id"]]["status"] == "queued"
    assert batch["tickets"]["B" * 24] is None


async def test_undecodable_image_fails_its_ticket_with_a_reason(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    broken = images.truncated(images.jpeg(800, 600), keep=0.5)
    ticket = (
        await http.post("/photos", content=broken, headers={"content-type": "image/jpeg"})
    ).json()
    await run_worker_burst(settings)
    body = (await http.get(f"/tickets/{ticket['id']}")).json()
    assert body["status"] == "failed" and body["error"]
    assert body["attempts"] == 1  # permanent: not retried


async def test_gallery_lists_processed_photos_newest_first(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    for width in (60, 70, 80):
        await http.post(
            "/photos", content=images.jpeg(width, 50), headers={"content-type": "image/jpeg"}
        )
    await run_worker_burst(settings)
    first = (await http.get("/photos", params={"limit": 2})).json()
    assert len(first["photos"]) == 2 and first["next"] is not None
    rest = (await http.get("/photos", params={"limit": 2, "before": first["next"]})).json()
    assert len(rest["photos"]) == 1 and rest["next"] is None
    ids = [p["id"] for p in first["photos"] + rest["photos"]]
    assert len(set(ids)) == 3
    thumb = await http.get(first["photos"][0]["sizes"]["t"])
    assert thumb.status_code == 200
