"""The queue contract: the arq jobs there are, what they take, and how they are enqueued.

    process_photo(ticket_id)         uploads lane (new photos) or backfill lane (repairs)
    send_callback(webhook_id, body)  a callback whose first, inline delivery failed

Jobs carry ids, never payloads, and are enqueued under deterministic ids, so the queue
can never hold one ticket's processing (or one callback's delivery) twice.

Jobs and their results are stored as JSON (`encode_job`, `decode_job`), never as arq's
default pickle: unpickling runs code, so whoever could write to Redis could run it in a worker.
"""

from __future__ import annotations

import json
from typing import Any, cast

from arq.connections import ArqRedis

from imagepipe import keys

PROCESS_PHOTO = "process_photo"
SEND_CALLBACK = "send_callback"


def encode_job(record: dict[str, Any]) -> bytes:
    """An arq job or result record as JSON; what JSON cannot hold (a failed job's exception
    as its result) as its repr."""
    return json.dumps(record, default=repr, separators=(",", ":")).encode()


def decode_job(data: bytes) -> dict[str, Any]:
    """An arq job or result record from its JSON."""
    return cast(dict[str, Any], json.loads(data))


async def enqueue_processing(
    redis: ArqRedis, ticket_id: str, attempt: int = 0, queue: str = keys.UPLOADS_QUEUE
) -> bool:
    """Enqueue process_photo(ticket_id); False when that job id is already queued or running."""
    job = await redis.enqueue_job(
        PROCESS_PHOTO,
        ticket_id,
        _job_id=keys.process_job_id(ticket_id, attempt),
        _queue_name=queue,
    )
    return job is not None


async def enqueue_callback(
    redis: ArqRedis, webhook_id: str, body: str, queue: str = keys.UPLOADS_QUEUE
) -> None:
    """Enqueue one signed callback delivery (its JSON body) as its own small, retried job."""
    await redis.enqueue_job(
        SEND_CALLBACK,
        webhook_id,
        body,
        _job_id=keys.callback_job_id(webhook_id),
        _queue_name=queue,
    )
