"""/metrics and /readyz tell an operator whether asynchronous work is finishing."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from imagepipe.config import Settings
from imagepipe.replication.audit import audit_once
from tests import images


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
