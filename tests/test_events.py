"""SSE: many streams on one API process share one Redis subscription (no pool starvation)."""

from __future__ import annotations

import asyncio
import json

import httpx
from redis.asyncio import Redis

from imagepipe import webhooks
from imagepipe.config import Settings
from tests import images
from tests.owners import bearer

STREAMS = 200


async def first_terminal_event(
    client: httpx.AsyncClient, ticket_id: str, opened: asyncio.Event, counter: list[int]
) -> dict:  # type: ignore[type-arg]
    async with client.stream("GET", f"/tickets/{ticket_id}/events") as response:
        counter[0] += 1
        if counter[0] == STREAMS:
            opened.set()
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                body = json.loads(line.removeprefix("data:"))
                if body["status"] in ("completed", "failed"):
                    return body  # type: ignore[no-any-return]
    raise AssertionError("the stream ended before a terminal state")


async def test_many_streams_one_subscription(
    http: httpx.AsyncClient, settings: Settings, redis: Redis, api_url: str
) -> None:
    ticket = (
        await http.post(
            "/photos", content=images.jpeg(80, 60), headers={"content-type": "image/jpeg"}
        )
    ).json()
    limits = httpx.Limits(max_connections=STREAMS + 10)
    async with httpx.AsyncClient(
        headers=bearer(), base_url=api_url, timeout=30, limits=limits
    ) as client:
        opened, counter = asyncio.Event(), [0]
        streams = [
            asyncio.create_task(first_terminal_event(client, ticket["id"], opened, counter))
            for _ in range(STREAMS)
        ]
        await asyncio.wait_for(opened.wait(), 30)
        clients = len(await redis.client_list())
        # bounded by the pool, not by the streams: one subscription serves them all
        bound = settings.redis_max_connections + 3  # + the subscription and the test's client
        assert clients <= bound, f"{clients} Redis connections for {STREAMS} streams"
        body = json.dumps(
            {
                "type": "processing.failed",
                "ticket_id": ticket["id"],
                "photo_id": ticket["photo_id"],
                "error": "test",
            }
        ).encode()
        headers = webhooks.sign(settings.callback_secret.get_secret_value(), "m1", body)
        assert (await http.post("/internal/callbacks", content=body, headers=headers)).is_success
        results = await asyncio.wait_for(asyncio.gather(*streams), 30)
    assert all(r["status"] == "failed" for r in results)
