"""`imagepipe health --role R`: a container healthcheck (exit 0 healthy, 1 not).

Every role needs Redis/Valkey, reachable and under a policy that never evicts; the api must
also answer its own /healthz. Quick by design: Docker runs it every few seconds.
"""

from __future__ import annotations

import asyncio
import sys

import httpx
from redis.exceptions import RedisError

from imagepipe.config import Settings
from imagepipe.connections import RedisConfigError, check_redis_policy, redis_client
from imagepipe.stack.net import local_host

HTTP_TIMEOUT = httpx.Timeout(3.0, connect=1.0)


async def problems(settings: Settings, role: str) -> list[str]:
    """What is wrong around this role (an empty list when it is healthy)."""
    found = await _redis_problems(settings)
    if role == "api":
        found += await _api_problems(settings)
    return found


async def _redis_problems(settings: Settings) -> list[str]:
    try:
        redis = redis_client(settings)
    except ValueError as exc:
        return [str(exc)]
    try:
        await redis.ping()
        await check_redis_policy(redis)
    except (RedisError, OSError, RedisConfigError) as exc:
        return [f"redis: {exc}"]
    finally:
        await redis.aclose()
    return []


async def _api_problems(settings: Settings) -> list[str]:
    url = f"http://{local_host(settings.host)}:{settings.port}/healthz"
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http:
            response = await http.get(url)
    except httpx.HTTPError as exc:
        return [f"api: {url}: {type(exc).__name__} {exc}"]
    return [] if response.is_success else [f"api: {url} answered {response.status_code}"]


def run_health(settings: Settings, role: str) -> int:
    """Check, say what is wrong on stderr, and exit 0 (healthy) or 1."""
    found = asyncio.run(problems(settings, role))
    for problem in found:
        print(f"unhealthy: {problem}", file=sys.stderr)
    if not found:
        print(f"{role}: healthy")
    return 1 if found else 0
