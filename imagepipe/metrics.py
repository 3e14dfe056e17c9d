"""Prometheus metrics for every role (names follow the conventions: `_total`, `_seconds`).

Counters and histograms are per process (each role exports its own). Gauges that describe
the whole system (queue depth, replication backlog, audit findings) are read from Redis
when scraped, so any process reports the same truth.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import cast

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.replication import ReplicationLog

UPLOADS = Counter("imagepipe_uploads_total", "Uploads answered, by outcome", ["outcome"])
UPLOAD_BYTES = Counter("imagepipe_upload_bytes_total", "Bytes of accepted originals")
ACCEPT_SECONDS = Histogram(
    "imagepipe_upload_accept_seconds",
    "Time from request to 202 (the synchronous half)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TICKET_TRANSITIONS = Counter(
    "imagepipe_ticket_transitions_total", "Tickets entering each status", ["status"]
)
JOB_SECONDS = Histogram(
    "imagepipe_job_duration_seconds",
    "process_photo duration by photo size class and outcome",
    ["size", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CALLBACK_ATTEMPTS = Counter(
    "imagepipe_callback_attempts_total", "Signed callback POSTs, by outcome", ["outcome"]
)
REPLICATION_COPIES = Counter(
    "imagepipe_replication_copies_total", "Backup copies attempted, by outcome", ["outcome"]
)
REPLICATION_BYTES = Counter("imagepipe_replication_bytes_total", "Bytes copied to backup")

QUEUE_DEPTH = Gauge("imagepipe_queue_depth", "Jobs waiting, by lane", ["lane"])
QUEUE_OLDEST = Gauge("imagepipe_queue_oldest_age_seconds", "Age of the oldest queued job", ["lane"])
REPLICATION_PENDING = Gauge("imagepipe_replication_pending", "Objects not yet in backup")
REPLICATION_PENDING_BYTES = Gauge(
    "imagepipe_replication_pending_bytes", "Bytes of the objects not yet in backup"
)
REPLICATION_LAG = Gauge(
    "imagepipe_replication_lag_seconds", "Age of the oldest object not yet in backup"
)
REPLICATION_PAST_TARGET = Gauge(
    "imagepipe_replication_past_target", "Objects pending for longer than 15 minutes"
)
AUDIT_FINDINGS = Gauge("imagepipe_audit_findings", "Findings of the last audit", ["kind"])
AUDIT_LAST_RUN = Gauge("imagepipe_audit_last_run_timestamp_seconds", "When the audit last ran")

LANES = {"uploads": keys.UPLOADS_QUEUE, "backfill": keys.BACKFILL_QUEUE}


def size_class(pixels: int) -> str:
    """A coarse label for a photo's size (keeps label cardinality small)."""
    megapixels = pixels / 1_000_000
    return (
        "<2MP"
        if megapixels < 2
        else "2-8MP"
        if megapixels < 8
        else "8-24MP"
        if megapixels < 24
        else ">24MP"
    )


async def refresh_system_gauges(redis: Redis) -> None:
    """Read the system-wide gauges from Redis (called on scrape, or periodically)."""
    now_ms = time.time() * 1000
    for lane, queue in LANES.items():
        QUEUE_DEPTH.labels(lane).set(await redis.zcard(queue))
        oldest = await redis.zrange(queue, 0, 0, withscores=True)
        # arq scores are the time a job may run (ms); a deferred job is not late yet
        QUEUE_OLDEST.labels(lane).set(max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0)
    backlog = await ReplicationLog(redis).backlog()
    REPLICATION_PENDING.set(backlog.pending)
    REPLICATION_PENDING_BYTES.set(backlog.pending_bytes)
    REPLICATION_LAG.set(backlog.oldest_age_s)
    REPLICATION_PAST_TARGET.set(backlog.past_target)
    findings = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(keys.AUDIT_LAST))
    for kind, value in findings.items():
        name = kind.decode()
        gauge = AUDIT_LAST_RUN if name == "finished_at" else AUDIT_FINDINGS.labels(name)
        gauge.set(float(value))


def serve(port: int) -> None:
    """Expose this process's metrics on ``port`` (0 = not at all)."""
    if port:
        start_http_server(port, addr="0.0.0.0")  # scraped from other hosts
