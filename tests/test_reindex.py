"""Storage is the source of truth: a catalog dropped whole comes back with `imagepipe reindex`,
and a finished photo keeps nothing in Valkey beyond its ticket's retention."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy import text

from imagepipe import keys
from imagepipe.catalog.engine import create_engine
from imagepipe.config import Settings
from imagepipe.stack.roles import role_argv, role_env
from tests import images
from tests.owners import bearer
from tests.stack import api_server, replicate_all, run_worker_burst


async def drop_and_create(settings: Settings) -> None:
    """DROP DATABASE (forcing its connections closed), then CREATE it empty."""
    assert settings.database_url is not None
    base, _, query = settings.database_url.partition("?")
    name = base.rsplit("/", 1)[1]
    admin = create_engine(
        settings.model_copy(update={"database_url": f"{base.rsplit('/', 1)[0]}/postgres?{query}"})
    )
    async with admin.connect() as db:
        await db.execution_options(isolation_level="AUTOCOMMIT")
        await db.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        await db.execute(text(f"CREATE DATABASE {name}"))
    await admin.dispose()


def imagepipe(settings: Settings, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run an operator's command against these settings."""
    return subprocess.run(
        role_argv(*args), env=role_env(settings), capture_output=True, timeout=120, check=False
    )


def unsigned(photo: dict[str, Any]) -> dict[str, Any]:
    """The photo without its URLs' signatures (their expiry moves on with the clock)."""
    sizes = {n: {**s, "url": s["url"].split("?")[0]} for n, s in photo["sizes"].items()}
    return {**photo, "sizes": sizes}


async def photos_seen(url: str, ids: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each photo's JSON, and the gallery's order."""
    async with httpx.AsyncClient(headers=bearer(), base_url=url, timeout=30) as http:
        found = [unsigned((await http.get(f"/photos/{photo_id}")).json()) for photo_id in ids]
        gallery = (await http.get("/photos", params={"limit": 100})).json()["photos"]
    return found, [p["id"] for p in gallery]


async def test_a_dropped_catalog_comes_back_whole_with_reindex(
    droppable: Settings, redis: Redis
) -> None:
    settings = droppable
    with api_server(settings) as url:
        async with httpx.AsyncClient(headers=bearer(), base_url=url, timeout=30) as http:
            sent = [
                await http.post(
                    "/photos",
                    content=images.jpeg(300 + n, 200),
                    headers={"content-type": "image/jpeg"},
                )
                for n in range(3)
            ]
        await run_worker_burst(settings)
        await replicate_all(settings, redis)
        ids = [s.json()["photo_id"] for s in sent]
        before = await photos_seen(url, ids)
    assert all(p["backup"] == "completed" for p in before[0]) and len(before[1]) == 3

    await drop_and_create(settings)
    assert imagepipe(settings, "migrate").returncode == 0
    reindexed = imagepipe(settings, "reindex")
    assert reindexed.returncode == 0, reindexed.stderr.decode()[-2000:]
    assert "3" in reindexed.stdout.decode()  # the summary counts the photos
    with api_server(settings) as url:
        assert await photos_seen(url, ids) == before  # rows, sizes, backup state, order
    again = imagepipe(settings, "reindex")  # idempotent: the same catalog again
    assert again.returncode == 0
    with api_server(settings) as url:
        assert await photos_seen(url, ids) == before


async def test_a_finished_photo_keeps_nothing_in_valkey_beyond_its_ticket(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    sent = await http.post(
        "/photos", content=images.jpeg(320, 240), headers={"content-type": "image/jpeg"}
    )
    await run_worker_burst(settings)
    await replicate_all(settings, redis)
    ticket = (await http.get(f"/tickets/{sent.json()['id']}")).json()
    assert (ticket["status"], ticket["backup"]) == ("completed", "completed")
    retention = settings.ticket_retention_s
    named = [k async for k in redis.scan_iter(count=1000) if _names(k, ticket)]
    assert named  # the ticket, its link, its backup states...
    for key in named:
        ttl = await redis.ttl(key)
        assert 0 < ttl <= retention, (key, ttl)  # ...each gone once the ticket is
    for structure in (keys.REPLICATION_PENDING, keys.REPLICATION_PENDING_BYTES):
        assert await redis.exists(structure) == 0 or not await _holds(redis, structure, ticket)


def _names(key: bytes, ticket: dict[str, Any]) -> bool:
    text_key = key.decode()
    return ticket["id"] in text_key or ticket["photo_id"] in text_key


async def _holds(redis: Redis, structure: str, ticket: dict[str, Any]) -> bool:
    kind = (await redis.type(structure)).decode()
    members = (
        await redis.zrange(structure, 0, -1) if kind == "zset" else await redis.hkeys(structure)
    )
    return any(ticket["photo_id"] in m.decode() for m in members)
