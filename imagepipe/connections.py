"""The Redis/Valkey connection pool every role shares, with bounded size and timeouts."""

from __future__ import annotations

from arq.connections import ArqRedis, RedisSettings, create_pool

from imagepipe.config import Settings


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings from ours (the URL is required outside `imagepipe dev`)."""
    if not settings.redis_url:
        raise ValueError("IMAGEPIPE_REDIS_URL is not set (only `imagepipe dev` starts one)")
    redis = RedisSettings.from_dsn(settings.redis_url)
    redis.conn_timeout = max(1, settings.redis_timeout_ms // 1000)
    redis.max_connections = settings.redis_max_connections
    redis.conn_retries = 5
    return redis


async def connect(settings: Settings) -> ArqRedis:
    """A pooled client that can also enqueue arq jobs."""
    pool: ArqRedis = await create_pool(redis_settings(settings))
    return pool
