"""The ticket poll's fast path (`api.polls`): the route's own answer, from one Valkey read.

Each check polls once with the ticket's view in Valkey (the fast path answers) and once
with it removed (the `GET /tickets/{id}` route answers), and compares the two.
"""

from __future__ import annotations

import json

import httpx
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.api.polls import _READ, render_view
from imagepipe.config import Settings
from imagepipe.ids import new_ticket_id
from imagepipe.models import BackupState
from imagepipe.tickets import TicketStore
from tests import images
from tests.stack import replicate_all, run_worker_burst
from tests.test_tickets import event, make_ticket

Answer = tuple[int, dict[str, str], bytes]
COMPARED = ("etag", "retry-after", "content-type", "content-length", "cache-control")


async def _poll(http: httpx.AsyncClient, ticket_id: str, method: str = "GET", **h: str) -> Answer:
    response = await http.request(method, f"/tickets/{ticket_id}", headers=h)
    headers = {name: response.headers[name] for name in COMPARED if name in response.headers}
    return response.status_code, headers, response.content


async def _fast_and_slow(
    http: httpx.AsyncClient, redis: Redis, ticket_id: str, method: str = "GET", **h: str
) -> tuple[Answer, Answer]:
    view = keys.ticket_view(ticket_id)
    assert await redis.exists(view), "no view: the fast path would not answer"
    fast = await _poll(http, ticket_id, method, **h)
    saved = await redis.dump(view)
    await redis.delete(view)
    slow = await _poll(http, ticket_id, method, **h)
    await redis.restore(view, 60_000, saved)
    return fast, slow


async def _upload(http: httpx.AsyncClient) -> str:
    sent = images.jpeg(640, 480)
    accepted = await http.post("/photos", content=sent, headers={"content-type": "image/jpeg"})
    assert accepted.status_code == 202
    return str(accepted.json()["id"])


async def test_every_stage_of_a_ticket_polls_the_same_fast_or_slow(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket_id = await _upload(http)
    fast, slow = await _fast_and_slow(http, redis, ticket_id)
    assert fast == slow and fast[0] == 200 and "retry-after" in fast[1]  # queued
    await run_worker_burst(settings)
    fast, slow = await _fast_and_slow(http, redis, ticket_id)
    assert fast == slow and b'"completed"' in fast[2] and b'"backup":"pending"' in fast[2]
    await replicate_all(settings, redis)
    fast, slow = await _fast_and_slow(http, redis, ticket_id)
    assert fast == slow and b'"backup":"completed"' in fast[2] and "retry-after" not in fast[1]
    etag = fast[1]["etag"]
    assert (
        await _fast_and_slow(http, redis, ticket_id, **{"if-none-match": etag})
        == ((304, {"etag": etag, "cache-control": "no-cache"}, b""),) * 2
    )
    head_fast, head_slow = await _fast_and_slow(http, redis, ticket_id, "HEAD")
    assert head_fast == head_slow and head_fast[2] == b"" and head_fast[1]["content-length"]


async def test_a_failed_copy_shows_in_a_fast_poll(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket_id = await _upload(http)
    await run_worker_burst(settings)
    body = (await http.get(f"/tickets/{ticket_id}")).json()
    original = next(k for k in (await redis.hkeys(keys.photo_backup(body["photo_id"]))))
    await redis.hset(keys.photo_backup(body["photo_id"]), original, BackupState.FAILED.value)
    fast, slow = await _fast_and_slow(http, redis, ticket_id)
    assert fast == slow and b'"backup":"failed"' in fast[2]
    assert fast[1]["etag"].endswith('-failed"')


async def test_a_view_never_answers_for_a_ticket_that_is_gone(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    ticket_id = await _upload(http)
    assert (await http.get(f"/tickets/{ticket_id}")).status_code == 200
    await redis.delete(keys.ticket(ticket_id))  # expired (or lost) while its view stayed
    assert (await http.get(f"/tickets/{ticket_id}")).status_code == 404


async def test_the_view_is_written_with_the_ticket_and_expires_with_it(redis: Redis) -> None:
    store, ticket = TicketStore(redis, retention_s=60, render=render_view), make_ticket()
    async with redis.pipeline(transaction=True) as pipe:
        store.create(pipe, ticket)
        await pipe.execute()
    assert await redis.get(keys.ticket_view(ticket.id)) == render_view(ticket)
    await redis.pexpire(keys.ticket(ticket.id), 20_000)  # retention partly spent
    updated = await store.apply(event(ticket, "processing.started"))
    assert updated is not None
    assert await redis.get(keys.ticket_view(ticket.id)) == render_view(updated)
    assert 19_000 < await redis.pttl(keys.ticket_view(ticket.id)) <= 20_000


async def test_a_store_that_cannot_render_leaves_no_stale_view(redis: Redis) -> None:
    ticket = make_ticket()
    rendering = TicketStore(redis, retention_s=60, render=render_view)
    async with redis.pipeline(transaction=True) as pipe:
        rendering.create(pipe, ticket)
        await pipe.execute()
    await TicketStore(redis, retention_s=60).restore(ticket, 30)  # the audit's store
    assert not await redis.exists(keys.ticket_view(ticket.id))


async def _poll_many(http: httpx.AsyncClient, ids: list[str]) -> Answer:
    response = await http.get("/tickets", params={"ids": ",".join(ids)})
    headers = {name: response.headers[name] for name in COMPARED if name in response.headers}
    return response.status_code, headers, response.content


async def test_many_tickets_poll_as_each_does_alone_fast_or_slow(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    done = await _upload(http)
    await run_worker_burst(settings)
    await replicate_all(settings, redis)
    queued = await _upload(http)
    unknown = new_ticket_id()
    ids = [done, queued, unknown, "not a ticket id!", done]  # a repeat is answered once
    evaluated = await _evalsha_calls(redis)
    fast = await _poll_many(http, ids)
    assert await _evalsha_calls(redis) == evaluated + 3  # one read per distinct valid id
    alone = {t: (await http.get(f"/tickets/{t}")).json() for t in (done, queued)}
    assert json.loads(fast[2]) == {
        "tickets": {done: alone[done], queued: alone[queued], unknown: None, ids[3]: None}
    }
    assert alone[done]["backup"] == "completed" and alone[queued]["status"] == "queued"
    assert "retry-after" in fast[1]  # one is still queued (and one unknown)
    for ticket_id in (done, queued):
        await redis.delete(keys.ticket_view(ticket_id))
    assert await _poll_many(http, ids) == fast  # the slow path's bytes and ETag, exactly
    finished = await _poll_many(http, [done])
    assert finished[0] == 200 and "retry-after" not in finished[1]
    again = await http.get(
        "/tickets", params={"ids": done}, headers={"if-none-match": finished[1]["etag"]}
    )
    assert again.status_code == 304


async def test_many_tickets_poll_through_a_valkey_that_lost_its_scripts(
    http: httpx.AsyncClient, redis: Redis
) -> None:
    ticket_id = await _upload(http)
    before = await _poll_many(http, [ticket_id])
    await redis.script_flush()  # as after a restart: the pipeline's EVALSHA finds no script
    assert await _poll_many(http, [ticket_id]) == before
    assert await redis.script_exists(redis.register_script(_READ).sha) == [True]


async def _evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
