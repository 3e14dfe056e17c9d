"""The system-wide gauges (queue depth, replication and deletion backlogs, audit findings), read
from Redis.

Any role refreshes them: the API when /metrics is scraped, the replicator every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import cast

from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.metrics import (
    AUDIT_FINDINGS,
    AUDIT_LAST_RUN,
    DELETION_OLDEST,
    DELETION_PAST_TARGET,
    DELETION_PENDING,
    LANES,
    QUEUE_DEPTH,
    QUEUE_OLDEST,
    REPLICATION_LAG,
    REPLICATION_PAST_TARGET,
    REPLICATION_PENDING,
    REPLICATION_PENDING_BYTES,
)
from imagepipe.replication.log import backlog as read_backlog
from imagepipe.replication.log import deletion_backlog


async def refresh_system_gauges(redis: Redis) -> None:
    """Read the system-wide gauges from Redis (called on scrape, or periodically)."""
    now_ms = time.time() * 1000
    for lane, queue in LANES.items():
        QUEUE_DEPTH.labels(lane).set(await redis.zcard(queue))
        oldest = await redis.zrange(queue, 0, 0, withscores=True)
        # arq scores are the time a job may run (ms); a deferred job is not late yet
        QUEUE_OLDEST.labels(lane).set(max(0.0, (now_ms - oldest[0][1]) / 1000) if oldest else 0)
    backlog = await read_backlog(redis)
    REPLICATION_PENDING.set(backlog.pending)
    REPLICATION_PENDING_BYTES.set(backlog.pending_bytes)
    REPLICATION_LAG.set(backlog.oldest_age_s)
    REPLICATION_PAST_TARGET.set(backlog.past_target)
    removals = await deletion_backlog(redis)
    DELETION_PENDING.set(removals.pending)
    DELETION_OLDEST.set(removals.oldest_age_s)
    DELETION_PAST_TARGET.set(removals.past_target)
    findings = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(keys.AUDIT_LAST))
    for kind, value in findings.items():
        name = kind.decode()
        gauge = AUDIT_LAST_RUN if name == "finished_at" else AUDIT_FINDINGS.labels(name)
        gauge.set(float(value))
