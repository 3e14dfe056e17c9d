"""Prometheus metrics for every role (names follow the conventions: `_total`, `_seconds`).

Counters and histograms are per process (each role exports its own). Gauges that describe
the whole system (queue depth, replication backlog, audit findings) are read from Redis
when scraped (`replication.gauges`), so any process reports the same truth.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from imagepipe import keys

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
DELETION_REMOVALS = Counter(
    "imagepipe_deletion_removals_total",
    "Removals of a deleted photo's objects (primary and backup), by outcome",
    ["outcome"],
)
REPLICATION_BYTES = Counter("imagepipe_replication_bytes_total", "Bytes copied to backup")
LOOP_STALLS = Counter(
    "imagepipe_event_loop_stalls_total", "Event loop blocked past the threshold", ["role"]
)

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
DELETION_PENDING = Gauge(
    "imagepipe_deletion_pending", "Objects of deleted photos not yet removed from every copy"
)
DELETION_OLDEST = Gauge(
    "imagepipe_deletion_oldest_age_seconds", "Age of the oldest deletion not yet complete"
)
DELETION_PAST_TARGET = Gauge(
    "imagepipe_deletion_past_target", "Objects pending removal for longer than 15 minutes"
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


def serve(port: int, host: str) -> None:
    """Expose this process's metrics on ``host:port`` (port 0 = not at all).

    ``host`` is IMAGEPIPE_METRICS_HOST: loopback unless a scraper elsewhere needs it.
    """
    if port:
        start_http_server(port, addr=host)
