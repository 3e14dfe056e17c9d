"""A worker's stop never strands a job: one the stop cancelled before arq's run_job reached
its own handling (so arq never put it back) is released at once, not after its whole lease.

Narrow, on a real Valkey with the real accept path: the race a SIGTERM can hit (seen once in
`test_worker_sigterm_mid_resize_reruns_at_once`) is made to happen on purpose here.
"""

from __future__ import annotations

import asyncio

import httpx
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.config import Settings
from imagepipe.worker.app import build_worker, release_unstarted
from tests.stack import run_worker_burst
from tests.test_callbacks import status_of, upload


async def test_a_job_cancelled_before_it_began_is_released_and_runs_again_at_once(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await upload(http)
    job_id = keys.process_job_id(ticket["id"])
    worker = build_worker(settings.model_copy(update={"job_timeout_s": 300}), burst=True)
    try:
        await worker.start_jobs([job_id.encode()])  # claimed: its lease is 310 s long
        task = worker.tasks[job_id]
        task.cancel()  # the stop lands before the task's first step
        await asyncio.wait([task])
        assert task.cancelled() and await redis.exists(in_progress_key_prefix + job_id)
        assert await release_unstarted(worker) == [job_id]
    finally:
        await worker.pool.aclose()
    assert not await redis.exists(in_progress_key_prefix + job_id)
    await run_worker_burst(settings)  # another worker takes it at once
    assert await status_of(http, ticket) == "completed"
