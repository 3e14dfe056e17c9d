"""Two APIs, two workers and two replicators on one Valkey, primary and backup in S3 (moto):
the shape of a multi-machine deployment. Every process has a data dir of its own, so nothing
can pass between them through a local disk; each worker calls back a different API."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.config import Settings
from imagepipe.stack.processes import RoleProcess, wait_ready
from imagepipe.stack.roles import role_argv, role_env
from tests import images
from tests.conftest import free_port
from tests.owners import bearer
from tests.test_e2e import stop_all, wait_backed_up, wait_terminal
from tests.test_flow import assert_backup_matches_primary, primary_objects, s3_client

pytestmark = pytest.mark.e2e
PHOTOS = 20
PAIR = (0, 1)


@dataclass
class Fleet:
    """The running processes and where to reach the APIs."""

    settings: Settings
    urls: list[str]
    procs: dict[str, RoleProcess]

    def events(self, name: str) -> list[dict[str, Any]]:
        """One process's log, one JSON object a line."""
        lines = self.procs[name].log_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_logged(self, name: str, text: str, timeout_s: float = 20) -> None:
        """Until the process has logged a line containing text."""
        deadline = time.monotonic() + timeout_s
        while text not in self.procs[name].log_text():
            assert time.monotonic() < deadline, f"{name} never logged {text!r}"
            time.sleep(0.05)


def commands(settings: Settings, ports: list[int]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each process: its command line and what differs in its environment."""
    found: dict[str, tuple[list[str], dict[str, str]]] = {}
    for n in PAIR:
        callback = f"http://127.0.0.1:{ports[n]}/internal/callbacks"
        found[f"api-{n}"] = (role_argv("api", "--host", "127.0.0.1", "--port", str(ports[n])), {})
        found[f"worker-{n}"] = (role_argv("worker"), {"IMAGEPIPE_CALLBACK_URL": callback})
        found[f"replicator-{n}"] = (role_argv("replicator"), {})
    return found


@pytest.fixture
def fleet(settings: Settings, s3_endpoint: str, tmp_path: Path, redis: Redis) -> Iterator[Fleet]:
    """Two of each role, started together; SIGTERMed (and checked to stop) after the test."""
    bucket = f"primary-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    shared = settings.model_copy(
        update={"primary_s3_endpoint": s3_endpoint, "primary_s3_bucket": bucket}
    )
    ports = [free_port(), free_port()]
    procs: dict[str, RoleProcess] = {}
    try:
        for name, (argv, extra) in commands(shared, ports).items():
            # a data dir of its own: no disk shared between roles
            own = shared.model_copy(update={"data_dir": tmp_path / name, "worker_concurrency": 1})
            env = role_env(own, IMAGEPIPE_LOG_FORMAT="json", **extra)
            procs[name] = RoleProcess(name, argv, env, tmp_path / f"{name}.log").start()
        yield Fleet(shared, [f"http://127.0.0.1:{p}" for p in ports], procs)
    finally:
        stop_all(procs)


async def upload_spread(fleet: Fleet) -> list[str]:
    """PHOTOS different photos, alternately to each API, all at once; their ticket ids."""
    async with httpx.AsyncClient(headers=bearer(), timeout=30) as http:

        async def one(n: int) -> str:
            data = images.jpeg(400 + 8 * n, 300)
            url = f"{fleet.urls[n % 2]}/photos?visibility=public"  # sizes by their plain URLs
            response = await http.post(url, content=data, headers={"content-type": "image/jpeg"})
            assert response.status_code == 202, response.text
            return str(response.json()["id"])

        return list(await asyncio.gather(*(one(n) for n in range(PHOTOS))))


async def test_two_of_each_role_lose_nothing_and_do_nothing_twice(
    fleet: Fleet, redis: Redis
) -> None:
    await asyncio.gather(
        *(wait_ready(fleet.urls[n], 20, fleet.procs[f"api-{n}"].check_alive) for n in PAIR)
    )
    for n in PAIR:  # both consuming before the uploads, so both get a share of them
        fleet.wait_logged(f"worker-{n}", "Starting worker")
    ids = await upload_spread(fleet)
    apis = [httpx.AsyncClient(headers=bearer(), base_url=url, timeout=30) for url in fleet.urls]
    try:
        tickets = await wait_terminal(apis[0], ids)
        assert {t["status"] for t in tickets.values()} == {"completed"}
        assert {t["attempts"] for t in tickets.values()} == {1}
        await wait_backed_up(apis[1], ids)
        await check_same_answers(apis, ids, tickets)
    finally:
        for api in apis:
            await api.aclose()
    check_processed_once(fleet, ids)
    check_nothing_lost(fleet.settings)
    await check_both_replicators_joined(redis)
    assert [n for n, p in fleet.procs.items() if not p.alive] == [], "a role died"


async def check_same_answers(
    apis: list[httpx.AsyncClient], ids: list[str], tickets: dict[str, Any]
) -> None:
    """Either API tells the same story, and serves every photo (primary is shared)."""
    answers = [await api.get("/tickets", params={"ids": ",".join(ids)}) for api in apis]
    assert answers[0].json() == answers[1].json()
    assert answers[0].headers["etag"] == answers[1].headers["etag"]
    for n, ticket in enumerate(tickets.values()):
        served = await apis[n % 2].get(ticket["photo"]["sizes"]["t"]["url"])
        assert served.status_code == 200 and served.headers["content-type"] == "image/jpeg"


def check_processed_once(fleet: Fleet, ids: list[str]) -> None:
    """Each photo resized by exactly one worker, once, and completed once by either API."""
    done = {n: processed(fleet, f"worker-{n}") for n in PAIR}
    assert Counter(done[0] + done[1]) == Counter(ids)
    assert done[0] and done[1], f"one worker did everything: {done}"
    # a callback is a job of its own: whichever worker sends it, to the API it was told
    completed = {n: applied(fleet, f"api-{n}", "processing.completed") for n in PAIR}
    assert Counter(completed[0] + completed[1]) == Counter(ids)
    assert completed[0] and completed[1], f"one API took every callback: {completed}"


def processed(fleet: Fleet, worker: str) -> list[str]:
    """Tickets whose photo this worker resized."""
    return [e["ticket_id"] for e in fleet.events(worker) if e["msg"] == "photo processed"]


def applied(fleet: Fleet, api: str, kind: str) -> list[str]:
    """Tickets this API applied a callback of this kind to."""
    return [e["ticket_id"] for e in fleet.events(api) if e["msg"] == f"callback {kind} applied"]


def check_nothing_lost(settings: Settings) -> None:
    """Every original, derivative and manifest on primary, and copied intact to backup."""
    stored = Counter(key.split("/")[0] for key in primary_objects(settings))
    per_photo = len(settings.sizes)
    assert stored == {"originals": PHOTOS, "derivatives": PHOTOS * per_photo, "manifests": PHOTOS}
    assert_backup_matches_primary(settings)


async def check_both_replicators_joined(redis: Redis) -> None:
    """Two consumers in the replication group, and nothing left pending."""
    consumers = await redis.xinfo_consumers(keys.REPLICATION_STREAM, keys.REPLICATION_GROUP)
    assert len(consumers) == 2
    assert sum(c["pending"] for c in consumers) == 0
