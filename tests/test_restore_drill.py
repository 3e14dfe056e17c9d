"""The restore drill: a backup nobody has restored is not a backup.

Photos go through the real stack (a real uvicorn API, a burst worker, the replicator into a
real S3 server); then primary storage, Valkey and the catalog are all wiped, `imagepipe restore`
runs as an operator runs it, and every kept photo must be served again with byte-identical
sizes, its backup state read true, and every deleted one stay gone.
"""

from __future__ import annotations

import shutil
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.config import Settings
from imagepipe.storage.factory import backup_storage, primary_storage
from tests import images
from tests.owners import bearer
from tests.stack import api_server, replicate_all, run_worker_burst
from tests.test_reindex import drop_and_create, imagepipe, unsigned

pytestmark = pytest.mark.e2e


async def served(url: str, photo_ids: list[str]) -> dict[str, Any]:
    """Each photo's JSON (URLs unsigned) and the bytes of each of its sizes, as served."""
    seen: dict[str, Any] = {}
    async with httpx.AsyncClient(headers=bearer(), base_url=url, timeout=30) as http:
        for photo_id in photo_ids:
            answer = await http.get(f"/photos/{photo_id}")
            if answer.status_code != 200:
                seen[photo_id] = answer.status_code
                continue
            photo = answer.json()
            sizes = {n: (await http.get(s["url"])).content for n, s in photo["sizes"].items()}
            seen[photo_id] = (unsigned(photo), sizes)
    return seen


async def upload_and_back_up(settings: Settings, redis: Redis, url: str, count: int) -> list[Any]:
    """``count`` photos uploaded, processed and copied to backup; their tickets."""
    async with httpx.AsyncClient(headers=bearer(), base_url=url, timeout=30) as http:
        tickets = [
            (
                await http.post(
                    "/photos",
                    content=images.jpeg(400 + 10 * n, 300),
                    headers={"content-type": "image/jpeg"},
                )
            ).json()
            for n in range(count)
        ]
    await run_worker_burst(settings)
    await replicate_all(settings, redis)
    return tickets


async def test_wiping_primary_valkey_and_the_catalog_then_restore_brings_back_every_photo(
    droppable: Settings, redis: Redis
) -> None:
    settings = droppable
    with api_server(settings) as url:
        tickets = await upload_and_back_up(settings, redis, url, 4)
        ids = [t["photo_id"] for t in tickets]
        before = await served(url, ids)
        gone, dying = await delete_two(settings, redis, url, ids[2], ids[3])
    kept = ids[:2]
    assert all(before[i][0]["backup"] == "completed" for i in kept)
    assert len(await held(settings, dying)) > 1  # backup still holds more than its tombstone

    await lose_everything(settings, redis)
    with api_server(settings) as url:  # the loss is real: nothing is served
        assert set((await served(url, ids)).values()) == {404}

    restored = imagepipe(settings, "restore")
    assert restored.returncode == 0, restored.stderr.decode()[-2000:]
    assert "restore: 2 photos" in restored.stdout.decode()
    with api_server(settings) as url:
        after = await served(url, ids)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            polls = [(await http.get(f"/tickets/{t['id']}")).status_code for t in tickets]
    assert {i: after[i] for i in kept} == {i: before[i] for i in kept}  # JSON, bytes, backup
    assert (after[gone], after[dying]) == (404, 404)  # deleted, and deleted they stay
    assert polls == [404] * 4  # Valkey forgot the tickets: said plainly, never a wrong state
    for photo_id in (gone, dying):  # nothing of them on primary but their tombstones
        assert on_primary(settings, photo_id) == {keys.tombstone(photo_id)}

    again = imagepipe(settings, "restore")  # resumable: a second run finds everything there
    assert again.returncode == 0 and "restore: 2 photos" in again.stdout.decode()
    audited = imagepipe(settings, "audit", "--full")  # the deletion reaches backup after all
    assert audited.returncode == 1 and "deletion requeued" in audited.stdout.decode()
    await replicate_all(settings, redis)  # the removals the audit queued
    assert await held(settings, dying) == {keys.tombstone(dying)}


async def delete_two(
    settings: Settings, redis: Redis, url: str, gone: str, dying: str
) -> tuple[str, str]:
    """Delete ``gone`` all the way; delete ``dying`` only as far as its tombstone reaching
    backup (as if the replicator copied it and died before removing anything)."""
    async with httpx.AsyncClient(headers=bearer(), base_url=url, timeout=30) as http:
        assert (await http.delete(f"/photos/{gone}")).status_code == 202
        await replicate_all(settings, redis)
        assert (await http.delete(f"/photos/{dying}")).status_code == 202
    primary, backup = primary_storage(settings), backup_storage(settings)
    tomb = keys.tombstone(dying)
    await backup.put(tomb, primary.open(tomb))
    await primary.close()
    await backup.close()
    return gone, dying


async def held(settings: Settings, photo_id: str) -> set[str]:
    """Every key backup holds of one photo."""
    backup = backup_storage(settings)
    trees = (keys.ORIGINALS, keys.DERIVATIVES, keys.MANIFESTS, keys.TOMBSTONES)
    found = {info.key for tree in trees async for info in backup.list(tree + photo_id)}
    await backup.close()
    return found


def on_primary(settings: Settings, photo_id: str) -> set[str]:
    """Every key primary holds of one photo."""
    root = settings.primary_root
    files = (p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {key for p in files if photo_id in (key := p.relative_to(root).as_posix())}


async def lose_everything(settings: Settings, redis: Redis) -> None:
    """Primary storage, Valkey and the catalog, all gone (an empty catalog left to look at)."""
    shutil.rmtree(settings.primary_root)
    await redis.flushall()
    await drop_and_create(settings)
    assert imagepipe(settings, "migrate").returncode == 0


async def test_a_restore_that_cannot_verify_an_object_exits_non_zero(
    droppable: Settings, redis: Redis
) -> None:
    settings = droppable
    with api_server(settings) as url:
        (ticket,) = await upload_and_back_up(settings, redis, url, 1)
    original = next(settings.primary_root.joinpath("originals").iterdir())
    original.write_bytes(b"not the bytes backup holds")  # primary was not lost, but rotted
    restored = imagepipe(settings, "restore", ticket["photo_id"])
    assert restored.returncode == 1
    assert f"originals/{original.name}" in restored.stderr.decode()
    assert original.read_bytes() == b"not the bytes backup holds"  # never rewritten
