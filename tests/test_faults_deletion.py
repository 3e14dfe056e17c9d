"""Deletion under faults: real processes, real signals, real servers on loopback.

Each test deletes some photos while something breaks, lets the system recover, and checks
both invariants (tests/cluster.py): every copy of a deleted photo ends removed (its tombstone
aside) and nothing deleted reappears; every kept photo is whole on primary and in backup.
"""

from __future__ import annotations

import functools
import os
import signal

import httpx
import pytest

from imagepipe.stack.servers import EmbeddedS3
from tests import images
from tests.cluster import ACCESS, BUCKET, SECRET, Cluster, until
from tests.owners import OWNER, bearer
from tests.test_faults import client, make_cluster, settle, upload_many, wait_status

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]
__all__ = ["client", "make_cluster"]  # the fixtures, shared with test_faults


@functools.cache
def photo() -> bytes:
    return images.jpeg(1200, 900)


async def upload_and_back_up(cluster: Cluster, client, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    """``n`` photos, processed and in backup; their ids."""
    await upload_many(cluster, client, photo(), n)
    await cluster.wait_for(client, "backup", timeout_s=90)
    return [u.photo_id for u in cluster.uploads[-n:]]


async def proven(cluster: Cluster, client) -> None:  # type: ignore[no-untyped-def]
    """Every deletion done; after an audit (which also sweeps the temp files a killed writer
    left), nothing deleted reappeared and every invariant holds."""
    await cluster.wait_deleted(client, timeout_s=90)
    audit = await cluster.audit()
    assert not audit["counts"].get("deleted_objects_reappeared"), audit["findings"]
    await settle(cluster, client)


async def test_replicator_sigkill_mid_deletion_is_resumed_by_another(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    doomed = await upload_and_back_up(cluster, client, 4)
    assert cluster.s3.pid is not None
    os.kill(cluster.s3.pid, signal.SIGSTOP)  # backup hangs: every removal stays mid-flight
    try:
        for photo_id in doomed[:3]:
            await cluster.delete(client, photo_id)
        pid = cluster.procs["replicator"].pid
        held = await until(cluster.claimed, "removals claimed")
        assert all(owner.endswith(f"-{pid}") for owner in held.values())
        cluster.kill("replicator", signal.SIGKILL)
        cluster.start_role("replicator", {"IMAGEPIPE_REPLICATION_CONCURRENCY": "100"})
    finally:
        os.kill(cluster.s3.pid, signal.SIGCONT)
    await proven(cluster, client)
    assert not held.keys() & (await cluster.claimed()).keys()  # reclaimed, done and acked


async def test_backup_down_during_deletions_removes_from_primary_then_catches_up(
    make_cluster, client
) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    doomed = await upload_and_back_up(cluster, client, 3)
    cluster.s3.stop()
    for photo_id in doomed[:2]:
        await cluster.delete(client, photo_id)

    async def primary_done() -> bool:
        found = (await cluster.deletions(client)).values()
        return all(d["copies"] == {"primary": "completed", "backup": "pending"} for d in found)

    await until(primary_done, "removed from primary while backup is down")
    scraped = (await client.get(f"{cluster.url}/metrics")).text.splitlines()
    [pending] = [line for line in scraped if line.startswith("imagepipe_deletion_pending ")]
    assert float(pending.split()[1]) > 0  # counted while backup is down
    assert all(d["status"] == "deleting" for d in (await cluster.deletions(client)).values())
    cluster.servers.s3 = EmbeddedS3(cluster.root, BUCKET, ACCESS, SECRET, port=cluster.s3.port)
    cluster.s3.start()
    await proven(cluster, client)


async def test_a_photo_deleted_while_it_is_processed_leaves_nothing(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    await upload_many(cluster, client, images.jpeg(6000, 4000), 2)
    await upload_many(cluster, client, photo(), 1)  # kept
    await wait_status(cluster, client, "processing")
    for upload in cluster.uploads[:2]:
        await cluster.delete(client, upload.photo_id)
    await proven(cluster, client)
    # the worker's job ran on: whatever it wrote after the removal, it (or the audit) took back
    await until(lambda: _worker_done(cluster), "the worker's jobs finished")
    assert await cluster.violations(client) == []


async def test_a_copy_in_flight_when_its_photo_is_deleted_does_not_come_back(
    make_cluster, client
) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    await upload_and_back_up(cluster, client, 1)  # kept
    assert cluster.s3.pid is not None
    os.kill(cluster.s3.pid, signal.SIGSTOP)  # copies hang mid-flight
    try:
        await upload_many(cluster, client, photo(), 2)
        await cluster.wait_for(client, "terminal", timeout_s=60)
        await until(cluster.claimed, "copies in flight")
        for upload in cluster.uploads[1:]:
            await cluster.delete(client, upload.photo_id)
    finally:
        os.kill(cluster.s3.pid, signal.SIGCONT)  # the copies land, after or before removals
    await proven(cluster, client)


async def _worker_done(cluster: Cluster) -> bool:
    counts = await cluster.in_flight()
    return counts["queued"] == 0 and "deleted while it was processed" in cluster.log("worker")


async def test_backup_refusing_credentials_fails_removals_then_the_audit_retries(
    make_cluster, client
) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    _, doomed = await upload_and_back_up(cluster, client, 2)  # the first is kept
    cluster.kill("replicator", signal.SIGTERM)
    cluster.start_role("replicator", {"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    await cluster.delete(client, doomed)

    async def backup_failed() -> bool:
        found = (await cluster.deletions(client))[doomed]
        return found["copies"] == {"primary": "completed", "backup": "failed"}

    await until(backup_failed, "the backup copies' removal failed for good")
    assert (await cluster.deletions(client))[doomed]["status"] == "deleting"
    cluster.kill("replicator", signal.SIGTERM)
    cluster.start_role("replicator")  # an operator fixes the credentials ...
    audit = await cluster.audit()  # ... and the audit puts the removals back on the log
    assert audit["counts"]["deletion_requeued"] >= 1
    await proven(cluster, client)


async def test_an_account_closure_resumes_after_its_replicator_is_killed(
    make_cluster, client
) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster(IMAGEPIPE_OWNER_DELETION_RATE="1")  # one photo a second
    photos = await upload_and_back_up(cluster, client, 4)
    async with httpx.AsyncClient(headers=bearer("someone-else"), timeout=30) as other:
        assert await cluster.upload(other, photo(), owner="someone-else")  # kept
    admin = {"headers": bearer("operator", ("photos:admin",))}
    answer = await client.delete(f"{cluster.url}/owners/{OWNER}/photos", **admin)
    assert answer.status_code == 202, answer.text
    progress = f"{cluster.url}{answer.headers['location']}"

    async def under_way() -> bool:
        return 0 < (await client.get(progress, **admin)).json()["photos"]["left"] < len(photos)

    await until(under_way, "the closure under way")
    cluster.kill("replicator", signal.SIGKILL)  # mid-closure
    cluster.start_role("replicator")

    async def closed() -> bool:
        return (await client.get(progress, **admin)).json()["status"] == "completed"

    await until(closed, "the closure completed by the restarted replicator", 90)
    for photo_id in photos:  # a DELETE of a deleted photo answers its ticket
        await cluster.delete(client, photo_id)
    await proven(cluster, client)
