"""Fault injection: real processes, real signals, real servers on loopback.

Each test breaks something the way production breaks, lets the system recover, and then
checks every invariant (tests/cluster.py), not just that nothing raised.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from imagepipe.stack.servers import EmbeddedS3
from tests import images
from tests.cluster import ACCESS, BUCKET, IN_FLIGHT, SECRET, Cluster, until
from tests.conftest import unavailable
from tests.owners import bearer

pytestmark = [pytest.mark.faults, pytest.mark.timeout(240)]


@functools.cache
def big_photo() -> bytes:
    """A 24 MP photo: its resize takes long enough to be interrupted."""
    return images.jpeg(6000, 4000)


@functools.cache
def poison() -> bytes:
    """49 MP in a 160 KB file: under the pixel limit, over a small decode memory cap."""
    return images.flat_png(7000, 7000)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(headers=bearer(), timeout=30) as http:
        yield http


@pytest.fixture
def make_cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Start a cluster (with optional env overrides); stopped after the test."""
    clusters: list[Cluster] = []

    async def start(**env: str) -> Cluster:
        cluster = Cluster(tmp_path / f"stack{len(clusters)}", env_overrides=env)
        clusters.append(cluster)
        cluster.start()
        await cluster.wait_ready()
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()


async def settle(cluster: Cluster, client: httpx.AsyncClient, timeout_s: float = 90) -> None:
    """Wait for every ticket to finish and reach backup, then check every invariant."""
    await cluster.wait_for(client, "backup", timeout_s)
    assert await cluster.violations(client) == []


async def wait_status(cluster: Cluster, client: httpx.AsyncClient, status: str) -> None:
    for _ in range(300):
        if any(t["status"] == status for t in (await cluster.tickets(client)).values()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"no ticket reached {status}")


async def upload_many(cluster: Cluster, client: httpx.AsyncClient, data: bytes, n: int) -> None:
    for _ in range(n):
        assert await cluster.upload(client, data) is not None


# -- workers ----------------------------------------------------------------------------------


async def test_worker_sigkill_mid_resize_reruns_the_job(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    await upload_many(cluster, client, big_photo(), 3)
    await wait_status(cluster, client, "processing")
    cluster.kill("worker", signal.SIGKILL)
    cluster.start_role("worker")  # arq re-runs the job once its lease (timeout + 10 s) ends
    await settle(cluster, client)
    assert "try=2" in cluster.log("worker")


async def test_worker_sigterm_mid_resize_reruns_at_once(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    # a long lease: were SIGTERM to wait for it, this test would time out
    cluster = await make_cluster(IMAGEPIPE_JOB_TIMEOUT_S="300")
    await upload_many(cluster, client, big_photo(), 3)
    await wait_status(cluster, client, "processing")
    cluster.kill("worker", signal.SIGTERM)
    cluster.start_role("worker")
    await cluster.wait_for(client, "terminal", timeout_s=45)
    await settle(cluster, client)


async def test_poison_image_fails_after_bounded_tries_while_others_complete(
    make_cluster, client
) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster(IMAGEPIPE_DECODE_MEMORY_MB="220", IMAGEPIPE_JOB_MAX_TRIES="2")
    bad = await cluster.upload(client, poison())
    await upload_many(cluster, client, images.jpeg(800, 600), 3)
    tickets = await cluster.wait_for(client, "terminal", timeout_s=60)
    assert bad is not None
    poisoned = tickets.pop(bad.ticket_id)
    assert poisoned["status"] == "failed" and "memory" in poisoned["error"]
    assert poisoned["attempts"] == 2
    assert all(t["status"] == "completed" for t in tickets.values())
    await settle(cluster, client)


async def test_decode_past_its_deadline_is_killed_and_fails(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster(IMAGEPIPE_DECODE_TIMEOUT_S="0.3")
    slow = await cluster.upload(client, poison())
    quick = await cluster.upload(client, images.jpeg(640, 480))
    tickets = await cluster.wait_for(client, "terminal", timeout_s=60)
    assert slow is not None and quick is not None
    assert tickets[slow.ticket_id]["status"] == "failed"
    assert "longer than" in tickets[slow.ticket_id]["error"]
    assert tickets[quick.ticket_id]["status"] == "completed"  # the loop kept serving
    await settle(cluster, client)


# -- the API ----------------------------------------------------------------------------------


async def test_api_sigkill_right_after_a_202_keeps_the_upload(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    upload = await cluster.upload(client, images.jpeg(1200, 900))
    cluster.kill("api", signal.SIGKILL)  # at once: whatever the 202 promised was done before it
    assert upload is not None
    [original] = (cluster.primary / "originals").glob(f"{upload.photo_id}.*")
    assert hashlib.sha256(original.read_bytes()).hexdigest() == upload.sha256
    cluster.start_role("api")
    await cluster.wait_ready()
    await settle(cluster, client)  # its ticket and job were in Redis: it completes


# -- callbacks --------------------------------------------------------------------------------


async def test_web_tier_down_during_callbacks(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    await upload_many(cluster, client, images.jpeg(1200, 900), 4)
    cluster.kill("api", signal.SIGKILL)
    for _ in range(200):  # the resizes finish while nobody can hear their callbacks
        if cluster.log("worker").count("photo processed") >= 4:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)  # callbacks fail and back off
    cluster.start_role("api")
    await cluster.wait_ready()
    await settle(cluster, client)
    assert cluster.log("worker").count("photo processed") == 4  # no resize was redone
    for ticket in (await cluster.tickets(client)).values():
        # queued -> (processing) -> completed, each applied once; a started event that arrives
        # after its completion is refused (tickets only move forward), hence 2 or 3
        assert ticket["version"] in (2, 3), ticket


class DropFirstResponse:
    """A TCP proxy to the API that forwards the first request but never answers it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        pump = asyncio.create_task(_pipe(reader, upstream_w))
        drop = self.dropped == 0
        self.dropped += drop  # claimed before any await: concurrent callbacks see it
        if drop and await _first_response(upstream_r):
            pass  # delivered and applied upstream; the answer is lost
        else:
            await _pipe(upstream_r, writer)
        pump.cancel()
        writer.close()
        upstream_w.close()


async def _first_response(reader: asyncio.StreamReader) -> bool:
    return bool(await reader.readuntil(b"\r\n\r\n"))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


async def test_callback_delivered_but_response_lost_is_applied_once(tmp_path: Path, client) -> None:  # type: ignore[no-untyped-def]
    cluster = Cluster(tmp_path / "stack")
    proxy = DropFirstResponse(cluster.port)
    proxy_port = await proxy.start()
    cluster.env_overrides["IMAGEPIPE_CALLBACK_URL"] = (
        f"http://127.0.0.1:{proxy_port}/internal/callbacks"
    )
    cluster.start()
    try:
        await cluster.wait_ready()
        await cluster.upload(client, images.jpeg(640, 480))
        await settle(cluster, client)
        assert proxy.dropped == 1
        ticket = next(iter((await cluster.tickets(client)).values()))
        assert ticket["version"] in (2, 3), ticket
        for _ in range(100):  # the redelivery is recognised, acknowledged, not applied again
            if "duplicate" in cluster.log("api"):
                break
            await asyncio.sleep(0.1)
        assert "duplicate" in cluster.log("api")
        assert (await cluster.tickets(client))[ticket["id"]]["version"] == ticket["version"]
    finally:
        cluster.stop()
        await proxy.stop()


# -- replication ------------------------------------------------------------------------------


async def test_replicator_sigkill_mid_copy_reclaims_entries(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    cluster.kill("replicator", signal.SIGTERM)
    await upload_many(cluster, client, images.jpeg(2000, 1500), 6)
    await cluster.wait_for(client, "terminal", timeout_s=60)
    assert cluster.s3.pid is not None
    os.kill(cluster.s3.pid, signal.SIGSTOP)  # backup hangs: every copy stays mid-flight
    try:
        cluster.start_role("replicator")
        pid = cluster.procs["replicator"].pid
        [dead] = set((await until(cluster.claimed, "entries claimed")).values())
        assert dead.endswith(f"-{pid}")
        cluster.kill("replicator", signal.SIGKILL)
        held = {entry for entry, owner in (await cluster.claimed()).items() if owner == dead}
        assert held  # it died holding them, unacked
        # a new consumer reclaims the dead one's entries; with a slot free for each, as a
        # replicator with every slot busy (all stuck on backup) claims nothing until one frees
        cluster.start_role("replicator", {"IMAGEPIPE_REPLICATION_CONCURRENCY": "100"})

        async def moved() -> bool:
            owners = await cluster.claimed()
            return all(owners.get(entry, dead) != dead for entry in held)

        await until(moved, "the dead consumer's entries reclaimed by another")
    finally:
        os.kill(cluster.s3.pid, signal.SIGCONT)
    await settle(cluster, client)
    assert not held & (await cluster.claimed()).keys()  # each copied, verified and acked


async def test_backup_outage_keeps_objects_pending_then_catches_up(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    cluster.s3.stop()
    await upload_many(cluster, client, images.jpeg(800, 600), 3)
    await cluster.wait_for(client, "terminal", timeout_s=60)
    lags = []
    for _ in range(3):
        await asyncio.sleep(1.5)
        ready = (await client.get(f"{cluster.url}/readyz")).json()
        assert ready["replication_pending"] > 0
        lags.append(ready["replication_lag_s"])
    assert lags == sorted(lags) and lags[-1] > lags[0]  # the lag rises while backup is down
    assert all(t["backup"] == "pending" for t in (await cluster.tickets(client)).values())
    cluster.servers.s3 = EmbeddedS3(cluster.root, BUCKET, ACCESS, SECRET, port=cluster.s3.port)
    cluster.s3.start()
    await settle(cluster, client)


async def test_backup_refusing_credentials_fails_then_audit_retries(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    cluster.kill("replicator", signal.SIGTERM)
    cluster.start_role("replicator", {"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    await cluster.upload(client, images.jpeg(640, 480))
    for _ in range(300):
        tickets = await cluster.tickets(client)
        if all(t["backup"] == "failed" for t in tickets.values()):
            break
        await asyncio.sleep(0.1)
    assert all(t["backup"] == "failed" for t in tickets.values())
    cluster.kill("replicator", signal.SIGTERM)
    cluster.start_role("replicator")  # an operator fixes the credentials ...
    audit = await cluster.audit()  # ... and the audit puts the failed objects back on the log
    assert audit["counts"]["replication_failed_retried"] >= 1
    await settle(cluster, client)


# -- Redis ------------------------------------------------------------------------------------


async def test_valkey_crash_losing_its_last_second_is_rebuilt_by_the_audit(
    make_cluster, client
) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    await upload_many(cluster, client, images.jpeg(1000, 750), 2)
    await settle(cluster, client)
    on_disk = cluster.aof_on_disk()  # appendfsync everysec: later writes may never reach disk
    await upload_many(cluster, client, images.jpeg(1000, 750), 3)
    cluster.valkey_crash(on_disk)  # at once, no waiting: these three were accepted since
    await cluster.wait_ready()
    lost = cluster.uploads[2:]
    tickets = await cluster.tickets(client)
    assert [tickets[upload.ticket_id] for upload in lost] == [None] * 3  # Redis forgot them
    counts = (await cluster.audit())["counts"]
    # each got its ticket back, under the id its client holds: re-accepted, or restored
    # complete where its processing had finished before the crash
    assert counts.get("reprocessed_no_ticket", 0) + counts.get("tickets_restored", 0) == 3
    await upload_many(cluster, client, images.jpeg(1000, 750), 2)
    await settle(cluster, client)  # every upload accepted, before and after, completes


async def test_valkey_restored_from_an_older_snapshot_is_repaired_by_the_audit(
    make_cluster, client
) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    await upload_many(cluster, client, images.jpeg(800, 600), 2)
    await settle(cluster, client)
    await asyncio.sleep(1.2)
    snapshot = cluster.root / "valkey-snapshot"
    shutil.copytree(cluster.valkey.data_dir, snapshot)
    await upload_many(cluster, client, images.jpeg(900, 600), 3)  # Redis will forget these
    await cluster.wait_for(client, "backup", timeout_s=60)
    cluster.valkey.stop()
    shutil.rmtree(cluster.valkey.data_dir)
    shutil.copytree(snapshot, cluster.valkey.data_dir)  # power loss / failover to a stale replica
    cluster.restart_valkey()
    await cluster.wait_ready()
    for upload in cluster.uploads[2:]:  # their tickets are gone; the catalog and files stay
        assert (await client.get(f"{cluster.url}/tickets/{upload.ticket_id}")).status_code == 404
    audit = await cluster.audit()
    assert audit["counts"].get("reprocessed_no_ticket", 0) == 0  # photos were complete on disk
    assert audit["counts"]["tickets_restored"] == 3  # ... so their tickets come back from it
    await settle(cluster, client)  # every upload: completed, in the gallery, backed up


# -- the catalog (PostgreSQL) ----------------------------------------------------------------


async def test_postgres_sigkill_during_uploads_loses_nothing(make_cluster, client) -> None:  # type: ignore[no-untyped-def]
    cluster = await make_cluster()
    postgres = cluster.servers.postgres
    assert postgres is not None and postgres.pid is not None
    await upload_many(cluster, client, images.jpeg(900, 600), 2)
    os.kill(postgres.pid, signal.SIGKILL)  # mid-flight: callbacks and copies of these two
    await wait_unready(cluster, client, "catalog")
    refused = await client.post(
        f"{cluster.url}/photos",
        content=images.jpeg(500, 400),
        headers={"content-type": "image/jpeg"},
    )
    assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert len(list((cluster.primary / "originals").iterdir())) == 2  # the refused one: nothing
    postgres.start()  # the same data directory: a crash recovery
    await upload_many(cluster, client, images.jpeg(700, 500), 2)
    await settle(cluster, client)  # the first two completed and backed up once it came back


async def wait_unready(cluster: Cluster, client: httpx.AsyncClient, check: str) -> None:
    """Until /readyz says this check is not ok (the api has noticed)."""
    for _ in range(300):
        body = (await client.get(f"{cluster.url}/readyz")).json()
        if body.get(check) not in (None, "ok"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never reported {check} down")


# -- primary storage --------------------------------------------------------------------------


async def test_primary_disk_full_refuses_uploads_cleanly(tmp_path: Path, client) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        unavailable("the disk-full test mounts a 3 MB tmpfs, which needs root: run it as root")
    root = tmp_path / "stack"
    (root / "primary").mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(root / "primary")],
        capture_output=True,
        check=False,
    )
    assert mounted.returncode == 0, (
        f"a small filesystem is needed (run as root): {mounted.stderr!r}"
    )
    cluster = Cluster(root, env_overrides={"IMAGEPIPE_MIN_FREE_DISK_BYTES": "0"})
    try:
        cluster.start()
        await cluster.wait_ready()
        response = await client.post(
            f"{cluster.url}/photos",
            content=images.jpeg(64, 64) + bytes(5 * 1024 * 1024),  # more than the disk holds
            headers={"content-type": "image/jpeg"},
        )
        assert response.status_code == 507, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert list((root / "primary").rglob("*.*")) == []  # no partial file, no temp file
        assert await cluster.in_flight() == dict.fromkeys(IN_FLIGHT, 0)  # no ticket, no job
        assert cluster.dead_roles() == []
    finally:
        cluster.stop()
        subprocess.run(["umount", str(root / "primary")], check=False)
