"""Queued jobs are JSON, never pickle: write access to Redis must not be code execution in
a worker. Checked on the bytes in Valkey, with the real accept path and a real worker."""

from __future__ import annotations

import json
import os
import pickle
import time
from pathlib import Path

import httpx
from arq.constants import job_key_prefix, result_key_prefix
from redis.asyncio import Redis

from imagepipe import keys, queue
from imagepipe.config import Settings
from tests.stack import run_worker_burst
from tests.test_callbacks import status_of, upload

PICKLE_PROTOCOL_2_PLUS = b"\x80"  # the opcode every pickle since protocol 2 starts with


class Planted:
    """What an attacker with Redis write access would queue: unpickling it runs code."""

    def __init__(self, proof: Path) -> None:
        self.proof = proof

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.mkdir, (str(self.proof),)


def assert_json_not_pickle(raw: bytes | None) -> dict[str, object]:
    """The record parsed as JSON, after checking it carries no pickle header."""
    assert raw is not None and not raw.startswith(PICKLE_PROTOCOL_2_PLUS), raw
    record: dict[str, object] = json.loads(raw)
    return record


async def test_a_queued_job_and_its_result_are_json(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await upload(http)
    job_id = keys.process_job_id(ticket["id"])
    job = assert_json_not_pickle(await redis.get(job_key_prefix + job_id))
    assert (job["f"], job["a"]) == (queue.PROCESS_PHOTO, [ticket["id"]])
    await run_worker_burst(settings)  # a worker still reads them
    assert await status_of(http, ticket) == "completed"
    result = assert_json_not_pickle(await redis.get(result_key_prefix + job_id))
    assert result["s"] is True and result["f"] == queue.PROCESS_PHOTO


async def test_a_planted_pickle_is_not_run(
    settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    proof = tmp_path / "code-ran"
    await redis.set(job_key_prefix + "planted", pickle.dumps({"f": Planted(proof)}))
    await redis.zadd(keys.UPLOADS_QUEUE, {"planted": time.time() * 1000})
    await run_worker_burst(settings)
    assert not proof.exists()
    result = assert_json_not_pickle(await redis.get(result_key_prefix + "planted"))
    assert result["s"] is False  # refused as undecodable, and kept as a failure
