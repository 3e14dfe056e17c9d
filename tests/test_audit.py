"""The audit repairs what Redis forgot, what primary lost and what backup lacks, from the
catalog."""

from __future__ import annotations

import os
import time

import boto3
import httpx
import pytest
from arq.constants import result_key_prefix
from redis.asyncio import Redis
from sqlalchemy import update

from imagepipe import keys
from imagepipe.catalog.photos import PhotoCatalog, at
from imagepipe.catalog.schema import photos
from imagepipe.config import Settings
from imagepipe.models import BackupState, Ticket
from imagepipe.replication.audit import audit_once
from tests import images
from tests.stack import replicate_all, run_worker_burst
from tests.test_flow import assert_backup_matches_primary


def s3(settings: Settings):  # type: ignore[no-untyped-def]
    return boto3.client(
        "s3",
        endpoint_url=settings.backup_s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


async def processed_photo(http: httpx.AsyncClient, settings: Settings, redis: Redis) -> dict:  # type: ignore[type-arg]
    """One photo taken all the way: processed, indexed and backed up."""
    sent = await http.post(
        "/photos", content=images.jpeg(400, 300), headers={"content-type": "image/jpeg"}
    )
    await run_worker_burst(settings)
    await replicate_all(settings, redis)
    return (await http.get(f"/tickets/{sent.json()['id']}")).json()  # type: ignore[no-any-return]


async def accepted(http: httpx.AsyncClient, width: int, height: int) -> dict:  # type: ignore[type-arg]
    """One photo uploaded: the ticket its 202 carried."""
    sent = await http.post(
        "/photos", content=images.jpeg(width, height), headers={"content-type": "image/jpeg"}
    )
    return sent.json()  # type: ignore[no-any-return]


async def accepted_at(catalog: PhotoCatalog, photo_id: str, created_at: float) -> None:
    """Make the catalog say the photo was accepted then (its ticket's retention runs from it)."""
    async with catalog.engine.begin() as db:
        await db.execute(
            update(photos).where(photos.c.id == photo_id).values(created_at=at(created_at))
        )


async def repair(settings: Settings, redis: Redis) -> dict[str, int]:
    """One audit pass, then let the backfill worker and the replicator do the repairs."""
    counts = (await audit_once(settings)).counts()
    await run_worker_burst(settings, keys.BACKFILL_QUEUE)
    await run_worker_burst(settings)  # a completed repair queues nothing here, but callbacks may
    await replicate_all(settings, redis)
    return counts


async def test_a_clean_system_has_no_findings(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    await processed_photo(http, settings, redis)
    report = await audit_once(settings)
    assert report.counts() == {} and report.photos == 1 and report.objects == 8
    assert (await redis.hget(keys.AUDIT_LAST, "finished_at")) is not None


async def test_redis_losing_everything_is_repaired_from_the_catalog(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    sent = await http.post(
        "/photos", content=images.jpeg(300, 200), headers={"content-type": "image/jpeg"}
    )
    ticket_id = sent.json()["id"]
    await redis.flushall()  # a restore from before the upload: ticket, job and log are gone
    counts = await repair(settings, redis)
    # the same ticket is back (the client's URL keeps working) and the photo was processed
    assert counts.get("tickets_restored") == 1 and counts.get("backup_missing") == 1
    ticket = Ticket.model_validate_json(await redis.get(keys.ticket(ticket_id)))
    assert ticket.status == "completed"
    assert (await redis.get(keys.photo_ticket(ticket.photo_id))).decode() == ticket_id
    assert_backup_matches_primary(settings)
    assert (await audit_once(settings)).counts() == {}


async def test_missing_derivative_is_made_again(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await processed_photo(http, settings, redis)
    lost = settings.primary_root / "derivatives" / ticket["photo_id"] / "m.jpg"
    lost.unlink()
    assert (await repair(settings, redis)).get("reprocessed_missing_derivatives") == 1
    assert lost.exists()


async def test_stuck_ticket_whose_job_vanished_is_requeued(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    sent = (
        await http.post(
            "/photos", content=images.jpeg(200, 100), headers={"content-type": "image/jpeg"}
        )
    ).json()
    await redis.delete(keys.UPLOADS_QUEUE, f"arq:job:{keys.process_job_id(sent['id'])}")
    stuck = settings.model_copy(update={"audit_stuck_after_s": 0.001})
    assert (await repair(stuck, redis)).get("stuck_tickets_requeued") == 1
    assert (await http.get(f"/tickets/{sent['id']}")).json()["status"] == "completed"


async def test_slow_but_queued_ticket_is_left_alone(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    await http.post(
        "/photos", content=images.jpeg(200, 100), headers={"content-type": "image/jpeg"}
    )
    stuck = settings.model_copy(update={"audit_stuck_after_s": 0.001})
    assert "stuck_tickets_requeued" not in (await audit_once(stuck)).counts()


@pytest.mark.parametrize("damage", ["delete", "truncate"])
async def test_backup_copy_missing_or_wrong_is_replicated_again(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, damage: str
) -> None:
    ticket = await processed_photo(http, settings, redis)
    key = f"derivatives/{ticket['photo_id']}/l.jpg"
    if damage == "delete":
        s3(settings).delete_object(Bucket=settings.backup_s3_bucket, Key=key)
    else:
        s3(settings).put_object(Bucket=settings.backup_s3_bucket, Key=key, Body=b"short")
    kind = "backup_missing" if damage == "delete" else "backup_mismatch"
    assert (await repair(settings, redis)).get(kind) == 1
    assert_backup_matches_primary(settings)


async def test_failed_replicas_are_retried(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, catalog: PhotoCatalog
) -> None:
    ticket = await processed_photo(http, settings, redis)
    key = f"originals/{ticket['photo_id']}.jpg"
    await catalog.backup_changed(key, BackupState.FAILED, "access_denied: 403")
    assert (await repair(settings, redis)).get("replication_failed_retried") == 1
    assert (await http.get(f"/tickets/{ticket['id']}")).json()["backup"] == "completed"


async def test_orphans_are_reported(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await processed_photo(http, settings, redis)
    root = settings.primary_root
    (root / "originals" / ".x.jpg.0123456789abcdef.tmp").write_bytes(b"half")
    stray = root / "derivatives" / "ffffffffffffffffffff"
    stray.mkdir()
    (stray / "t.jpg").write_bytes(images.jpeg(10, 10))
    counts = (await audit_once(settings, full=True)).counts()  # orphans: the slices find them
    assert counts["orphan_temp_files"] == 1 and counts["orphan_objects"] == 1
    assert ticket["status"] == "completed"


async def test_a_lost_ticket_is_processed_even_where_an_old_run_kept_its_job_id(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    sent = await accepted(http, 300, 200)
    await redis.flushall()
    # the run from before the loss finished after it: arq keeps its result under the job id
    await redis.set(result_key_prefix + keys.process_job_id(sent["id"]), b"kept", ex=3600)
    assert (await repair(settings, redis)).get("tickets_restored") == 1
    assert (await http.get(f"/tickets/{sent['id']}")).json()["status"] == "completed"


async def test_an_unprocessed_photo_older_than_the_retention_gets_a_new_ticket(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, catalog: PhotoCatalog
) -> None:
    sent = await accepted(http, 300, 200)
    await accepted_at(catalog, sent["photo_id"], time.time() - settings.ticket_retention_s - 60)
    await redis.flushall()  # its ticket would have expired by now anyway
    assert (await repair(settings, redis)).get("reprocessed_no_ticket") == 1
    assert (await http.get(f"/tickets/{sent['id']}")).status_code == 404  # not resurrected
    newer = (await redis.get(keys.photo_ticket(sent["photo_id"]))).decode()
    assert newer != sent["id"]
    assert (await http.get(f"/tickets/{newer}")).json()["status"] == "completed"


async def test_redis_losing_a_processed_photo_gets_its_ticket_back_for_what_retention_is_left(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, catalog: PhotoCatalog
) -> None:
    before = await processed_photo(http, settings, redis)
    await accepted_at(catalog, before["photo_id"], time.time() - settings.ticket_retention_s + 600)
    await redis.flushall()  # the ticket and its backup states are gone; the catalog stays
    assert (await audit_once(settings)).counts() == {"tickets_restored": 1}
    after = (await http.get(f"/tickets/{before['id']}")).json()
    assert after["status"] == "completed" and after["backup"] == "completed"
    assert after["photo"] == before["photo"]
    assert 500 < await redis.ttl(keys.ticket(before["id"])) <= 600
    assert 500 < await redis.ttl(keys.photo_ticket(before["photo_id"])) <= 600
    await assert_indexed_and_backed_up(http, before["photo_id"])
    assert (await audit_once(settings)).counts() == {}  # all put back: nothing left to find


async def test_a_ticket_that_expired_normally_stays_expired(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, catalog: PhotoCatalog
) -> None:
    before = await processed_photo(http, settings, redis)
    await accepted_at(catalog, before["photo_id"], time.time() - settings.ticket_retention_s - 60)
    await redis.flushall()
    assert (await audit_once(settings)).counts() == {}
    assert (await http.get(f"/tickets/{before['id']}")).status_code == 404
    await assert_indexed_and_backed_up(http, before["photo_id"])


async def assert_indexed_and_backed_up(http: httpx.AsyncClient, photo_id: str) -> None:
    """The photo is in the gallery, and its backup reads completed."""
    gallery = (await http.get("/photos")).json()["photos"]
    assert [photo["id"] for photo in gallery] == [photo_id]
    assert (await http.get(f"/photos/{photo_id}")).json()["backup"] == "completed"


async def test_a_temp_file_a_later_write_superseded_is_removed(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await processed_photo(http, settings, redis)
    folder = settings.primary_root / "derivatives" / ticket["photo_id"]
    left = folder / ".m.jpg.0123456789abcdef.tmp"  # a worker killed mid-write, then re-run
    left.write_bytes(b"half")
    os.utime(left, (time.time() - 60, time.time() - 60))
    counts = (await audit_once(settings, full=True)).counts()
    assert counts == {"orphan_temp_files": 1, "orphan_temp_files_removed": 1}
    assert not left.exists() and (folder / "m.jpg").exists()
