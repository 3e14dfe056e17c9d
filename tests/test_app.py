"""`imagepipe api` with IMAGEPIPE_CALLBACK_PORT: the callback route on its own listener only,
served by the same process over the same Services, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe import webhooks
from imagepipe.config import Settings
from imagepipe.stack.processes import RoleProcess, stop_roles, wait_ready
from imagepipe.stack.roles import role_argv, role_env
from tests.conftest import free_port
from tests.owners import bearer
from tests.stack import run_worker_burst
from tests.test_callbacks import body_for, status_of, upload

CALLBACKS = "/internal/callbacks"


@pytest.fixture
def listener(settings: Settings) -> Settings:
    """The test settings with a callback listener; workers call back there."""
    port = free_port()
    return settings.model_copy(
        update={"callback_port": port, "callback_url": f"http://127.0.0.1:{port}{CALLBACKS}"}
    )


@pytest.fixture
def api(listener: Settings, tmp_path: Path, redis: Redis) -> Iterator[RoleProcess]:
    """`imagepipe api` as a process; it must stop cleanly on SIGTERM, both listeners."""
    argv = role_argv("api", "--host", "127.0.0.1", "--port", str(listener.port))
    process = RoleProcess("api", argv, role_env(listener), tmp_path / "api.log").start()
    try:
        yield process
    finally:
        assert stop_roles([process]) == [], process.log_tail()


async def test_callbacks_are_served_only_on_the_internal_listener(
    listener: Settings, api: RoleProcess
) -> None:
    public = f"http://127.0.0.1:{listener.port}"
    await wait_ready(public, 30, api.check_alive)
    async with httpx.AsyncClient(headers=bearer(), base_url=public, timeout=10) as http:
        ticket = await upload(http)
        body = body_for(ticket, "processing.started")
        headers = webhooks.sign(listener.callback_secret.get_secret_value(), "m1", body)
        assert (await http.post(CALLBACKS, content=body, headers=headers)).status_code == 404
        assert CALLBACKS not in (await http.get("/openapi.json")).json()["paths"]
        assert await status_of(http, ticket) == "queued"
        internal = httpx.AsyncClient(
            headers=bearer(), base_url=listener.callback_url.removesuffix(CALLBACKS)
        )
        async with internal:
            response = await internal.post(CALLBACKS, content=body, headers=headers)
            assert response.status_code == 200 and response.json()["status"] == "applied"
            assert (await internal.post(CALLBACKS, content=body)).status_code == 401
            for path in ("/healthz", "/photos", "/docs", "/openapi.json"):
                assert (await internal.get(path)).status_code == 404, path
        assert await status_of(http, ticket) == "processing"
        await run_worker_burst(listener)  # a worker calls back on the internal port
        assert await status_of(http, ticket) == "completed"
