"""The Redis/Valkey client every role shares: a bounded pool with explicit timeouts.

arq's `create_pool` passes no read timeout to redis-py (a dead server would hang a command
forever), so the pool is built here and handed to arq as the worker's `redis_pool`. Its jobs
are JSON (`queue.encode_job`), never arq's default pickle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from arq.connections import ArqRedis
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import LockError, RedisError

from imagepipe import keys, queue
from imagepipe.config import Settings
from imagepipe.errors import ServiceUnavailable

log = logging.getLogger(__name__)
# PING a pooled connection idle this long before reusing it: a socket that died quietly
# (a restarted Valkey, a dropped NAT entry) is found before a command is lost on it
HEALTH_CHECK_S = 30
CONNECT_ATTEMPTS = 5  # while Redis starts (as arq's conn_retries did)
CONNECT_RETRY_S = 1.0


class RedisConfigError(RuntimeError):
    """Redis/Valkey is configured in a way that would lose queued work."""


def redis_client(settings: Settings) -> ArqRedis:
    """A client that connects lazily: bounded pool, connect and read timeouts from settings."""
    if not settings.redis_url:
        raise ValueError("IMAGEPIPE_REDIS_URL is not set (only `imagepipe dev` starts one)")
    # a plain pool (past the bound: an error at once), as arq's own: with redis-py's
    # BlockingConnectionPool an arq worker sometimes ran on after SIGTERM
    pool = ConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        socket_connect_timeout=settings.redis_connect_timeout_ms / 1000,
        socket_timeout=settings.redis_timeout_ms / 1000,
        health_check_interval=HEALTH_CHECK_S,
    )
    # JSON, not arq's default pickle: a job read from Redis must not be able to run code
    client = ArqRedis(pool, job_serializer=queue.encode_job, job_deserializer=queue.decode_job)
    client.auto_close_connection_pool = True  # as redis-py's from_pool: it owns the pool
    return client


async def connect(settings: Settings) -> ArqRedis:
    """`redis_client`, once Redis answers PING (retried for a few seconds while it starts)."""
    client = redis_client(settings)
    for attempt in range(1, CONNECT_ATTEMPTS):
        try:
            await client.ping()
            return client
        except (RedisError, OSError) as exc:
            log.warning("redis not answering (%s); retry %d", exc, attempt)
            await asyncio.sleep(CONNECT_RETRY_S)
    try:
        await client.ping()  # the last try: its error goes to the caller
    except BaseException:
        await client.aclose()
        raise
    return client


async def check_redis_policy(redis: Redis) -> None:
    """Refuse to run on a Redis that may evict keys: it would silently drop jobs and tickets."""
    info = await redis.info("memory")
    policy = info.get("maxmemory_policy")
    if policy is None:  # some proxies hide it; say so rather than refuse
        log.warning("cannot read Redis maxmemory-policy; it must be noeviction")
        return
    if policy != "noeviction":
        raise RedisConfigError(
            f"Redis maxmemory-policy is {policy!r}: a full Redis would evict queued jobs and "
            "tickets. Set `maxmemory-policy noeviction` (and `appendonly yes`) on the server."
        )


PHOTO_LOCK_S = 10  # what a photo's lock covers is short: a manifest rewrite, a row, a tombstone


@asynccontextmanager
async def photo_locked(redis: Redis, photo_id: str) -> AsyncIterator[None]:
    """The photo's lock, which its indexing callback, a visibility change and its deletion
    take in turn; a 503 (retry in a second) when it stays taken."""
    try:
        async with redis.lock(
            keys.photo_lock(photo_id), timeout=PHOTO_LOCK_S, blocking_timeout=PHOTO_LOCK_S
        ):
            yield
    except LockError:
        raise ServiceUnavailable("the photo is being changed; retry", retry_after=1) from None
