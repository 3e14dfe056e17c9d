"""`imagepipe health --role R`, the containers' healthcheck."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from imagepipe import cli, logs
from imagepipe.config import Settings
from imagepipe.stack.healthcheck import problems
from imagepipe.stack.roles import settings_env
from tests.conftest import free_port


@pytest.fixture
async def evicting(redis: Redis) -> AsyncIterator[None]:
    """The session's Valkey under an evicting policy, for one test."""
    await redis.config_set("maxmemory-policy", "volatile-lru")
    try:
        yield
    finally:
        await redis.config_set("maxmemory-policy", "noeviction")


@pytest.mark.parametrize("role", ["worker", "replicator"])
async def test_a_worker_or_replicator_is_healthy_with_redis(settings: Settings, role: str) -> None:
    assert await problems(settings, role) == []


async def test_the_api_is_healthy_when_it_answers(settings: Settings, api_url: str) -> None:
    assert await problems(settings, "api") == []


async def test_the_api_is_unhealthy_when_it_does_not(settings: Settings) -> None:
    found = await problems(settings.model_copy(update={"port": free_port()}), "api")
    assert len(found) == 1 and "/healthz" in found[0]


async def test_unreachable_redis_is_unhealthy(settings: Settings) -> None:
    gone = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    found = await problems(gone, "worker")
    assert len(found) == 1 and found[0].startswith("redis:")


async def test_an_evicting_redis_is_unhealthy(settings: Settings, evicting: None) -> None:
    found = await problems(settings, "replicator")
    assert len(found) == 1 and "noeviction" in found[0]


def test_the_command_exits_0_or_1(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(logs, "setup_logging", lambda *a, **k: None)  # keep pytest's handlers
    for name, value in settings_env(settings).items():  # its secrets too: production rules
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMAGEPIPE_REDIS_URL", str(settings.redis_url))
    assert cli.main(["health", "--role", "worker"]) == 0
    assert "healthy" in capsys.readouterr().out
    monkeypatch.setenv("IMAGEPIPE_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    assert cli.main(["health", "--role", "worker"]) == 1
    assert "unhealthy: redis" in capsys.readouterr().err
