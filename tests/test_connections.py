"""The shared Redis client: bounded pool, explicit timeouts, and the eviction-policy guard."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeout

from imagepipe import keys
from imagepipe.api.events import TicketEvents
from imagepipe.config import Settings
from imagepipe.connections import RedisConfigError, check_redis_policy, redis_client
from imagepipe.stack.net import free_port
from imagepipe.stack.roles import role_argv, role_env


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    server.close()
    await server.wait_closed()


@pytest.fixture
async def evicting(redis: Redis) -> AsyncIterator[None]:
    """The session's Valkey under an evicting policy, for one test."""
    await redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")


def test_the_pool_is_bounded_and_has_both_timeouts(settings: Settings) -> None:
    tuned = settings.model_copy(
        update={"redis_max_connections": 7, "redis_connect_timeout_ms": 1234}
    )
    pool = redis_client(tuned).connection_pool
    assert pool.max_connections == 7
    assert pool.connection_kwargs["socket_connect_timeout"] == 1.234
    assert pool.connection_kwargs["socket_timeout"] == settings.redis_timeout_ms / 1000


async def test_a_hung_redis_times_out_instead_of_hanging(
    settings: Settings, silent_server: str
) -> None:
    client = redis_client(
        settings.model_copy(update={"redis_url": silent_server, "redis_timeout_ms": 1500})
    )
    started = time.monotonic()
    with pytest.raises(RedisTimeout):
        await client.ping()
    assert 1.4 < time.monotonic() - started < 5
    await client.aclose()


async def test_an_evicting_policy_is_refused(redis: Redis, evicting: None) -> None:
    with pytest.raises(RedisConfigError, match="noeviction"):
        await check_redis_policy(redis)


async def test_noeviction_is_accepted(redis: Redis) -> None:
    await check_redis_policy(redis)


async def test_ticket_events_survive_a_quiet_spell_longer_than_the_read_timeout(
    settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_client(settings.model_copy(update={"redis_timeout_ms": 1500}))
    events = TicketEvents(client)
    await events.start()
    try:
        with events.watch("t1") as changed:
            await asyncio.sleep(2.0)  # longer than the read timeout, with nothing published
            await redis.publish(keys.ticket_channel("t1"), "changed")
            await asyncio.wait_for(changed.wait(), 5)
    finally:
        await events.stop()
        await client.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.e2e
async def test_every_role_refuses_to_start_on_an_evicting_redis(
    settings: Settings, evicting: None
) -> None:
    env = role_env(settings, IMAGEPIPE_LOG_FORMAT="text", IMAGEPIPE_WORKER_CONCURRENCY="2")
    commands = {
        "api": role_argv("api", "--port", str(settings.port)),
        "worker": role_argv("worker"),
        "replicator": role_argv("replicator"),
    }
    procs = {
        name: await asyncio.create_subprocess_exec(*argv, env=env, stdout=PIPE, stderr=STDOUT)
        for name, argv in commands.items()
    }
    for name, proc in procs.items():
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode != 0, name
        assert b"maxmemory-policy is 'allkeys-lru'" in output, (name, output[-2000:])


async def test_a_worker_waiting_for_redis_stops_on_sigterm(settings: Settings) -> None:
    """A worker keeps reconnecting while Redis is away, yet SIGTERM still stops it: else it
    outlives its operator's stop and works for whatever Redis appears on that port next."""
    gone = f"redis://127.0.0.1:{free_port()}/0"
    env = role_env(settings, IMAGEPIPE_REDIS_URL=gone, IMAGEPIPE_WORKER_CONCURRENCY="1")
    proc = await asyncio.create_subprocess_exec(
        *role_argv("worker"), env=env, stdout=PIPE, stderr=STDOUT
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):  # until it is in its reconnect loop (it says so)
        while b"reconnecting" not in await proc.stdout.readline():
            pass
    proc.send_signal(signal.SIGTERM)
    output, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, output[-2000:]
