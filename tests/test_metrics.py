"""/metrics and /readyz tell an operator whether asynchronous work is finishing."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe.config import Settings
from imagepipe.replication.audit import audit_once
from imagepipe.stack.processes import RoleProcess, stop_roles
from imagepipe.stack.roles import role_argv, role_env
from tests import images
from tests.conftest import free_port
from tests.stack import replicate_all


def sample(text: str, name: str) -> float:
    """The value of one sample (`name` with its labels, exactly as exposed)."""
    line = next(line for line in text.splitlines() if line.split(" ")[0] == name)
    return float(line.rsplit(" ", 1)[1])


async def test_metrics_count_uploads_and_report_the_backlog(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    await http.post(
        "/photos", content=images.jpeg(300, 200), headers={"content-type": "image/jpeg"}
    )
    await http.post("/photos", content=b"not an image", headers={"content-type": "image/jpeg"})
    text = (await http.get("/metrics")).text
    assert sample(text, 'imagepipe_uploads_total{outcome="accepted"}') >= 1
    assert sample(text, 'imagepipe_uploads_total{outcome="415"}') >= 1
    assert sample(text, 'imagepipe_queue_depth{lane="uploads"}') == 1
    assert sample(text, "imagepipe_replication_pending") == 1
    assert sample(text, "imagepipe_replication_pending_bytes") > 0
    assert "imagepipe_upload_accept_seconds_bucket" in text


async def test_readyz_details_backlog_and_last_audit(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    await http.post(
        "/photos", content=images.jpeg(300, 200), headers={"content-type": "image/jpeg"}
    )
    await audit_once(settings)
    ready = (await http.get("/readyz")).json()
    assert ready["status"] == "ready" and ready["redis"] == "ok" and ready["primary"] == "ok"
    assert ready["queue_depth"] == 1 and ready["replication_pending"] == 1
    assert ready["replication_pending_bytes"] > 0 and ready["replication_past_target"] == 0
    assert ready["last_audit"]["finished_at"] > 0
    assert ready["last_audit"]["backup_missing"] == 0
    text = (await http.get("/metrics")).text
    assert sample(text, "imagepipe_audit_last_run_timestamp_seconds") > 0


async def test_a_deletion_s_removals_are_counted_until_done(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    accepted = await http.post(
        "/photos", content=images.jpeg(300, 200), headers={"content-type": "image/jpeg"}
    )
    assert (await http.delete(f"/photos/{accepted.json()['photo_id']}")).status_code == 202
    objects = 2 + len(settings.sizes)  # the original, every size the ladder may make, manifest
    text = (await http.get("/metrics")).text
    assert sample(text, "imagepipe_deletion_pending") == objects
    assert sample(text, "imagepipe_deletion_past_target") == 0
    assert sample(text, "imagepipe_deletion_oldest_age_seconds") >= 0
    ready = (await http.get("/readyz")).json()
    assert ready["deletion_pending"] == objects and ready["deletion_oldest_s"] >= 0
    await replicate_all(settings, redis)
    assert sample((await http.get("/metrics")).text, "imagepipe_deletion_pending") == 0


def listening_on(port: int) -> set[str]:
    """The local IPv4 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.mark.parametrize("role", ["worker", "replicator"])
def test_a_role_serves_its_metrics_on_loopback_by_default(
    settings: Settings, tmp_path: Path, role: str
) -> None:
    port = free_port()
    env = role_env(settings, IMAGEPIPE_METRICS_PORT=str(port))
    process = RoleProcess(role, role_argv(role), env, tmp_path / f"{role}.log").start()
    try:
        deadline = time.monotonic() + 30
        while not listening_on(port):
            process.check_alive()
            assert time.monotonic() < deadline, process.log_tail()
            time.sleep(0.1)
        assert listening_on(port) == {"127.0.0.1"}
        assert "imagepipe_job_duration_seconds" in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        assert stop_roles([process]) == []
