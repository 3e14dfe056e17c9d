"""`/readyz` over real HTTP: a failed check says why in a word; the details go to the log."""

from __future__ import annotations

import asyncio
import shutil

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe.config import Settings

PAUSE_MS = 2500


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A Redis read timeout shorter than the pause below."""
    return settings.model_copy(update={"redis_timeout_ms": 1500})


async def test_a_failed_check_gives_a_reason_not_the_exception(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    assert (await http.get("/readyz")).json()["primary"] == "ok"
    root = settings.primary_root
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("a file where the primary folder was")
    await redis.client_pause(PAUSE_MS)
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unready",
        "redis": "timed out",
        "catalog": "ok",
        "primary": "unreachable",
    }
    assert "redis failed" in caplog.text and str(root) in caplog.text  # the details: logged
    await asyncio.sleep(PAUSE_MS / 1000)  # the pause ends before the next test flushes
