"""Deletion over real HTTP, a real replicator, PostgreSQL, Valkey and S3: gone for every reader
at once, a tombstone first, every copy removed, the receipt; the trash and its undo; late
callbacks and in-flight copies; the audit's proof; an account's deletion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from imagepipe import keys, webhooks
from imagepipe.catalog.closures import next_photos_query
from imagepipe.catalog.engine import create_engine
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.catalog.usage import OwnerUsage
from imagepipe.config import Settings
from imagepipe.replication.audit import Auditor
from imagepipe.replication.log import deletion_backlog
from imagepipe.replication.replicator import Replicator, sweeper_for
from imagepipe.storage import Storage
from imagepipe.storage.factory import backup_storage, primary_storage
from tests.cluster import until
from tests.owners import OWNER, bearer
from tests.stack import api_server, replicate_all, run_worker_burst
from tests.viewers import MALLORY, PROBLEM, processed, signed_sizes, upload

ADMIN = bearer("operator", ("photos:admin",))


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[tuple[Storage, Storage]]:
    """Primary and backup, as the roles see them."""
    primary, backup = primary_storage(settings), backup_storage(settings)
    yield primary, backup
    await primary.close()
    await backup.close()


async def keys_of(store: Storage, photo_id: str) -> set[str]:
    """Every key a store holds of one photo (its tombstone included)."""
    found = set()
    for tree in (keys.ORIGINALS, keys.DERIVATIVES, keys.MANIFESTS, keys.TOMBSTONES):
        found |= {info.key async for info in store.list(tree + photo_id)}
    return found


async def delete(http: httpx.AsyncClient, photo_id: str) -> dict[str, Any]:
    answer = await http.delete(f"/photos/{photo_id}")
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/deletions/{answer.json()['id']}"
    return answer.json()  # type: ignore[no-any-return]


async def stored_bytes(settings: Settings, owner: str = OWNER) -> int:
    engine = create_engine(settings)
    try:
        return await OwnerUsage(engine).stored_bytes(owner)
    finally:
        await engine.dispose()


async def test_a_deleted_photo_is_gone_for_every_reader_at_once_then_from_every_copy(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, stores: tuple[Storage, Storage]
) -> None:
    primary, backup = stores
    kept, photo_id = await processed(http, settings, None, "public")
    await replicate_all(settings, redis)
    before = await keys_of(backup, photo_id)
    assert len(before) == 2 + len(settings.sizes) and await stored_bytes(settings) > 0
    kept_bytes = await stored_bytes(settings)
    signed = await signed_sizes(http, photo_id)
    photo = (await http.get(f"/photos/{photo_id}")).json()
    ticket_url = f"/tickets/{photo['ticket_id']}"
    assert (await http.get(ticket_url)).status_code == 200

    ticket = await delete(http, photo_id)
    assert ticket["status"] == "deleting" and ticket["photo_id"] == photo_id
    assert (await delete(http, photo_id))["id"] == ticket["id"]  # idempotent: the same ticket
    async with httpx.AsyncClient(base_url=str(http.base_url)) as anonymous:
        for url in (f"/photos/{photo_id}", f"/photos/{photo_id}/t", *signed.values()):
            for client in (http, anonymous):
                gone = await client.get(url)
                assert gone.status_code == 404 and gone.headers["content-type"] == PROBLEM, url
        stream = (await anonymous.get("/photos", params={"visibility": "public"})).json()
    assert stream["photos"] == []
    assert [p["id"] for p in (await http.get("/photos")).json()["photos"]] == [kept]
    assert (await http.get(ticket_url)).status_code == 404
    tomb = json.loads(await primary.read(keys.tombstone(photo_id)))
    assert tomb["photo_id"] == photo_id and tomb["owner"] == OWNER
    assert tomb["deleted_at"].endswith("Z") and set(before) - {keys.tombstone(photo_id)} <= set(
        tomb["objects"]
    )

    await replicate_all(settings, redis)
    assert await keys_of(primary, photo_id) == {keys.tombstone(photo_id)}
    assert await keys_of(backup, photo_id) == {keys.tombstone(photo_id)}
    assert await backup.read(keys.tombstone(photo_id)) == await primary.read(
        keys.tombstone(photo_id)
    )
    done = (await http.get(f"/deletions/{ticket['id']}")).json()
    assert done["status"] == "deleted" and done["copies"] == {
        "primary": "completed",
        "backup": "completed",
    }
    receipt = done["receipt"]
    assert receipt["objects_removed"] == len(tomb["objects"]) and receipt["completed_at"]
    assert sorted(receipt["objects"]) == tomb["objects"]
    assert len(await keys_of(backup, kept)) == len(before)  # the other photo is kept
    assert 0 < await stored_bytes(settings) < kept_bytes  # the owner's usage went down


async def test_only_the_owner_deletes_and_reads_the_ticket(
    http: httpx.AsyncClient, settings: Settings, api_url: str
) -> None:
    (photo_id,) = await processed(http, settings, "public")
    nothing = (await http.delete("/photos/0123456789abcdef0123")).json()
    async with httpx.AsyncClient(base_url=api_url) as others:
        refused = await others.delete(f"/photos/{photo_id}", headers=MALLORY)
        assert refused.status_code == 404 and refused.json() == nothing
        readonly = bearer(OWNER, ("photos:read",))
        assert (await others.delete(f"/photos/{photo_id}", headers=readonly)).status_code == 403
        assert (await others.delete(f"/photos/{photo_id}")).status_code == 401
        assert (await others.get(f"/photos/{photo_id}")).status_code == 200  # still there
        ticket = await delete(http, photo_id)
        hidden = await others.get(f"/deletions/{ticket['id']}", headers=MALLORY)
        assert hidden.status_code == 404
        admin = await others.get(f"/deletions/{ticket['id']}", headers=ADMIN)
        assert admin.status_code == 200 and admin.json()["photo_id"] == photo_id
    assert (await http.get("/deletions/not-a-ticket")).status_code == 404


@pytest.fixture
def trash_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"trash_s": 3600})


@pytest.fixture
async def trash_http(trash_settings: Settings, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    with api_server(trash_settings) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30, headers=bearer()) as client:
            yield client


async def test_the_trash_hides_a_photo_until_its_owner_undoes_the_delete(
    trash_http: httpx.AsyncClient,
    trash_settings: Settings,
    redis: Redis,
    stores: tuple[Storage, Storage],
    catalog: PhotoCatalog,
) -> None:
    primary, _ = stores
    (photo_id,) = await processed(trash_http, trash_settings, None)
    ticket = await delete(trash_http, photo_id)
    assert ticket["status"] == "trashed" and ticket["links"]["restore"].endswith("/restore")
    assert ticket["copies"] == {"primary": "pending", "backup": "pending"}
    assert (await trash_http.get(f"/photos/{photo_id}")).status_code == 404
    assert not await primary.exists(keys.tombstone(photo_id))  # nothing removed in the trash
    assert await sweeper_for(trash_settings, redis, primary, catalog).sweep() == 0
    assert len(await keys_of(primary, photo_id)) == 2 + len(trash_settings.sizes)

    undone = await trash_http.post(f"/photos/{photo_id}/restore", headers=MALLORY)
    assert undone.status_code == 404  # not theirs
    undone = await trash_http.post(f"/photos/{photo_id}/restore")
    assert undone.status_code == 200 and undone.json()["status"] == "restored"
    assert (await trash_http.get(f"/photos/{photo_id}")).status_code == 200
    assert (await trash_http.post(f"/photos/{photo_id}/restore")).status_code == 404
    again = await delete(trash_http, photo_id)
    assert again["id"] != ticket["id"] and again["status"] == "trashed"


async def test_the_trash_empties_itself_when_due_and_undo_is_then_refused(
    http: httpx.AsyncClient,
    settings: Settings,
    redis: Redis,
    stores: tuple[Storage, Storage],
    catalog: PhotoCatalog,
) -> None:
    primary, backup = stores
    (photo_id,) = await processed(http, settings, None)
    await replicate_all(settings, redis)
    short = settings.model_copy(update={"trash_s": 1})
    with api_server(short.model_copy(update={"port": _port()})) as url:
        async with httpx.AsyncClient(base_url=url, headers=bearer()) as client:
            ticket = await delete(client, photo_id)
    assert ticket["status"] == "trashed"
    sweeper = sweeper_for(short, redis, primary, catalog)
    await until(sweeper.sweep, "the trash emptied", timeout_s=10)  # due one second later
    assert await primary.exists(keys.tombstone(photo_id))
    refused = await http.post(f"/photos/{photo_id}/restore")
    assert refused.status_code == 409 and refused.headers["content-type"] == PROBLEM
    await replicate_all(settings, redis)
    assert await keys_of(backup, photo_id) == {keys.tombstone(photo_id)}
    assert (await http.get(f"/deletions/{ticket['id']}")).json()["status"] == "deleted"


async def test_a_photo_deleted_before_it_is_processed_is_never_processed(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, stores: tuple[Storage, Storage]
) -> None:
    primary, backup = stores
    photo_id = (await upload(http))["photo_id"]
    ticket = await delete(http, photo_id)
    await run_worker_burst(settings)  # its job finds no ticket: nothing written
    await replicate_all(settings, redis)
    assert await keys_of(primary, photo_id) == {keys.tombstone(photo_id)}
    assert await keys_of(backup, photo_id) == {keys.tombstone(photo_id)}
    assert (await http.get(f"/deletions/{ticket['id']}")).json()["status"] == "deleted"
    assert await stored_bytes(settings) == 0


async def test_an_event_stream_of_a_deleted_photo_s_ticket_ends(
    http: httpx.AsyncClient,
) -> None:
    accepted = await upload(http)
    async with http.stream("GET", f"/tickets/{accepted['id']}/events") as stream:
        lines = stream.aiter_lines()
        while not (await anext(lines)).startswith("data:"):  # the ticket as it is now
            pass
        await delete(http, accepted["photo_id"])
        rest = await asyncio.wait_for(_drain(lines), 20)  # the stream ends: no hang
    assert not [line for line in rest if line.startswith("data:")]


async def _drain(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


async def test_a_callback_that_read_its_ticket_before_the_delete_indexes_nothing(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, stores: tuple[Storage, Storage]
) -> None:
    primary, _ = stores
    accepted = await upload(http)
    photo_id = accepted["photo_id"]
    ticket = await redis.get(keys.ticket(accepted["id"]))
    await delete(http, photo_id)
    # as if the callback had read the ticket just before the DELETE forgot it
    await redis.set(keys.ticket(accepted["id"]), ticket)
    size = {"key": keys.derivative(photo_id, "t", "jpg"), "width": 8, "height": 6}
    body = json.dumps(
        {
            "type": "processing.completed",
            "ticket_id": accepted["id"],
            "photo_id": photo_id,
            "sizes": {"t": {**size, "bytes": 10, "sha256": "a" * 64}},
        }
    ).encode()
    headers = webhooks.sign(settings.callback_secret.get_secret_value(), "late-1", body)
    answer = await http.post("/internal/callbacks", content=body, headers=headers)
    assert answer.status_code == 404  # its worker gives up: nothing to index
    assert not await primary.exists(keys.manifest(photo_id))
    assert (await http.get(f"/photos/{photo_id}")).status_code == 404


async def test_a_copy_in_flight_when_the_delete_arrives_does_not_resurrect_the_object(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, stores: tuple[Storage, Storage]
) -> None:
    primary, backup = stores
    (photo_id,) = await processed(http, settings, None)
    gate, reached = asyncio.Event(), asyncio.Event()
    held = _Gated(backup, keys.manifest(photo_id), reached, gate)
    engine = create_engine(settings)
    replicator = Replicator(settings, redis, primary, held, PhotoCatalog(engine), consumer="slow")
    runner = asyncio.create_task(replicator.run())
    try:
        await asyncio.wait_for(reached.wait(), 20)  # the manifest read, its PUT held
        await delete(http, photo_id)
        # the same replicator removes everything (and copies the tombstone) meanwhile
        await until(lambda: _only_tombstone(backup, photo_id), "every copy removed", 20)
        assert not await primary.exists(keys.manifest(photo_id))
        gate.set()  # now the held copy lands in backup, after its removal
        await until(lambda: _taken_back(held, photo_id), "the late copy taken back", 20)
        await until(lambda: _log_empty(redis), "the log drained", 20)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await replicator.drain()
        await engine.dispose()
    assert await keys_of(backup, photo_id) == {keys.tombstone(photo_id)}


async def test_the_audit_removes_what_reappeared_and_what_a_lost_log_forgot(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, stores: tuple[Storage, Storage]
) -> None:
    primary, backup = stores
    gone, lost = await processed(http, settings, None, None)
    await replicate_all(settings, redis)
    first = await delete(http, gone)
    await replicate_all(settings, redis)
    thumb = keys.derivative(gone, "t", "jpg")
    await backup.put_bytes(thumb, b"a copy that came back")  # e.g. a backup restored
    await primary.put_bytes(keys.manifest(gone), b"{}")
    await primary.delete(keys.tombstone(gone))  # e.g. primary restored from an older copy
    second = await delete(http, lost)
    lost_log = (keys.REPLICATION_STREAM, keys.DELETION_PENDING, keys.REPLICATION_PENDING)
    await redis.delete(*lost_log)  # Redis lost the log
    await _replication_group(redis)

    report = await _audit(settings, redis, primary, backup)
    assert set(report.findings["deleted_objects_reappeared"]) == {thumb, keys.manifest(gone)}
    assert {thumb, keys.manifest(gone)} < set(report.findings["deletion_requeued"])
    assert keys.original(lost, "jpg") in report.findings["deletion_requeued"]
    assert report.findings["tombstones_rewritten"] == [keys.tombstone(gone)]
    same = await primary.read(keys.tombstone(gone)) == await backup.read(keys.tombstone(gone))
    assert same  # written again word for word
    assert not report.findings.get("orphan_objects") and not report.findings.get(
        "orphans_in_backup"
    )
    assert (await deletion_backlog(redis)).pending > 0  # counted while they are pending
    assert (await http.get(f"/deletions/{first['id']}")).json()["status"] == "deleting"
    await replicate_all(settings, redis)
    for photo_id, ticket in ((gone, first), (lost, second)):
        assert await keys_of(primary, photo_id) == {keys.tombstone(photo_id)}
        assert await keys_of(backup, photo_id) == {keys.tombstone(photo_id)}
        assert (await http.get(f"/deletions/{ticket['id']}")).json()["status"] == "deleted"
    report = await _audit(settings, redis, primary, backup)
    assert not report.findings.get("deletion_requeued")


async def test_an_account_is_deleted_at_a_bounded_rate_with_progress(
    http: httpx.AsyncClient,
    settings: Settings,
    redis: Redis,
    stores: tuple[Storage, Storage],
    catalog: PhotoCatalog,
) -> None:
    primary, backup = stores
    photos = await processed(http, settings, None, "public", None)
    assert (await http.delete(f"/owners/{OWNER}/photos")).status_code == 403  # owners can't
    answer = await http.delete(f"/owners/{OWNER}/photos", headers=ADMIN)
    assert answer.status_code == 202
    assert answer.headers["location"] == f"/owners/{OWNER}/photos/deletion"
    assert answer.json()["photos"]["left"] == 3 and answer.json()["status"] == "running"
    again = await http.delete(f"/owners/{OWNER}/photos", headers=ADMIN)
    assert again.json()["id"] == answer.json()["id"]
    slow = settings.model_copy(update={"owner_deletion_rate": 1.0, "deletion_sweep_s": 1.0})
    sweeper = sweeper_for(slow, redis, primary, catalog)
    assert await sweeper.sweep() == 1  # one photo per second of sweeps: the rate
    progress = (await http.get(f"/owners/{OWNER}/photos/deletion", headers=ADMIN)).json()
    assert progress["photos"]["left"] == 2 and progress["status"] == "running"
    assert await sweeper.sweep() == 1 and await sweeper.sweep() == 1
    await replicate_all(settings, redis)
    assert await sweeper.sweep() == 0  # nothing left: the closure completes
    done = (await http.get(f"/owners/{OWNER}/photos/deletion", headers=ADMIN)).json()
    assert done["status"] == "completed" and done["photos"]["deleted"] == 3
    for photo_id in photos:
        assert await keys_of(backup, photo_id) == {keys.tombstone(photo_id)}
    assert (await http.get("/photos")).json()["photos"] == []


async def test_an_account_closure_reads_its_index(catalog: PhotoCatalog) -> None:
    statement = next_photos_query(OWNER, 20).compile(
        dialect=catalog.engine.dialect, compile_kwargs={"literal_binds": True}
    )
    async with catalog.engine.connect() as db:
        for plan_kind in ("seqscan", "bitmapscan", "sort"):  # a scan would show as disabled
            await db.execute(text(f"SET enable_{plan_kind} = off"))
        plan = "\n".join(row[0] for row in await db.execute(text(f"EXPLAIN {statement}")))
    assert "Scan using photos_live_owner" in plan and "Sort" not in plan, plan  # (index only)


# -- helpers ---------------------------------------------------------------------------------


def _port() -> int:
    from tests.conftest import free_port

    return free_port()


async def _only_tombstone(backup: Storage, photo_id: str) -> bool:
    return await keys_of(backup, photo_id) == {keys.tombstone(photo_id)}


async def _taken_back(held: _Gated, photo_id: str) -> bool:
    """The held copy landed in backup, and was taken back."""
    return held.landed.is_set() and not await held.exists(keys.manifest(photo_id))


async def _log_empty(redis: Redis) -> bool:
    pending = await redis.zcard(keys.REPLICATION_PENDING) + await redis.zcard(keys.DELETION_PENDING)
    return pending == 0


async def _replication_group(redis: Redis) -> None:
    await redis.xgroup_create(
        keys.REPLICATION_STREAM, keys.REPLICATION_GROUP, id="0", mkstream=True
    )


async def _audit(settings: Settings, redis: Redis, primary: Storage, backup: Storage) -> Any:
    engine = create_engine(settings)
    try:
        auditor = Auditor(settings, redis, PhotoCatalog(engine), primary, backup)  # type: ignore[arg-type]
        return await auditor.run(full=True)
    finally:
        await engine.dispose()


class _Gated(Storage):
    """Backup, with the PUT of one key held until a gate opens (a copy in flight)."""

    def __init__(self, inner: Storage, key: str, reached: asyncio.Event, gate: asyncio.Event):
        self.inner, self.key, self.reached, self.gate = inner, key, reached, gate
        self.landed = asyncio.Event()

    async def put(self, key: str, chunks: Any, *, create_only: bool = False) -> Any:
        await self._hold(key)
        written = await self.inner.put(key, chunks, create_only=create_only)
        self.landed.set() if key == self.key else None
        return written

    async def put_bytes(self, key: str, data: bytes, *, create_only: bool = False) -> Any:
        await self._hold(key)
        written = await self.inner.put_bytes(key, data, create_only=create_only)
        self.landed.set() if key == self.key else None
        return written

    async def _hold(self, key: str) -> None:
        if key == self.key:
            self.reached.set()
            await self.gate.wait()

    def open(self, key: str) -> Any:
        return self.inner.open(key)

    async def head(self, key: str) -> Any:
        return await self.inner.head(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    def list(self, prefix: str = "") -> Any:
        return self.inner.list(prefix)
