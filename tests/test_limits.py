"""Per-process bounds on uploads and event streams, over real HTTP: the request past a bound
gets 503 with Retry-After at once, and the slot is free again when a request ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from imagepipe.config import Settings
from tests import images
from tests.owners import AUTH, bearer
from tests.test_badinput import read_status_and_body

BOUND = 2
HELD_UPLOAD = (
    b"POST /photos HTTP/1.1\r\nHost: t\r\n" + AUTH + b"Content-Type: image/jpeg\r\n"
    b"Content-Length: 100000\r\n\r\n\xff\xd8\xff\xe0" + bytes(3000)
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Room for BOUND uploads and BOUND event streams."""
    return settings.model_copy(update={"max_concurrent_uploads": BOUND, "max_event_streams": BOUND})


async def held_upload(api_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An upload stalled mid-body: it holds its slot until the connection closes."""
    url = urlsplit(api_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(HELD_UPLOAD)
    await writer.drain()
    return reader, writer


def assert_busy(status: int, headers: httpx.Headers | dict[str, str], body: bytes) -> None:
    assert status == 503, body
    assert int(headers["retry-after"]) >= 1
    assert headers["content-type"] == "application/problem+json"


async def first_not_busy(call: Callable[[], Awaitable[int]]) -> int:
    """The first status that is not 503: a slot is free once the server has seen a close."""
    for _ in range(50):
        if (status := await call()) != 503:
            return status
        await asyncio.sleep(0.1)
    return 503


async def test_an_upload_past_the_bound_gets_503_with_retry_after(
    api_url: str, http: httpx.AsyncClient
) -> None:
    held = [await held_upload(api_url) for _ in range(BOUND)]
    await asyncio.sleep(0.5)  # both are in their route, reading the body
    photo = {"content": images.jpeg(40, 30), "headers": {"content-type": "image/jpeg"}}
    refused = await http.post("/photos", **photo)
    assert_busy(refused.status_code, refused.headers, refused.content)
    reader, writer = await held_upload(api_url)  # one more, mid-body: answered at once
    status, body = await asyncio.wait_for(read_status_and_body(reader), 5)
    assert status == 503 and b'"status":503' in body
    writer.close()
    held[0][1].close()  # a held upload goes away: its slot is free again
    assert await first_not_busy(lambda: upload_status(http, photo)) == 202
    for _, held_writer in held[1:]:
        held_writer.close()


async def upload_status(http: httpx.AsyncClient, photo: dict[str, Any]) -> int:
    return (await http.post("/photos", **photo)).status_code


async def stream_status(client: httpx.AsyncClient, ticket_id: str) -> int:
    async with client.stream("GET", f"/tickets/{ticket_id}/events") as response:
        return response.status_code


async def open_stream(
    stack: AsyncExitStack, client: httpx.AsyncClient, ticket_id: str
) -> httpx.Response:
    """An event stream that stays open until the stack closes."""
    return await stack.enter_async_context(client.stream("GET", f"/tickets/{ticket_id}/events"))


@pytest.fixture
async def ticket_id(http: httpx.AsyncClient) -> AsyncIterator[str]:
    """A queued ticket (no worker runs, so its stream stays open)."""
    files = {"file": ("a.jpg", images.jpeg(40, 30), "image/jpeg")}
    yield (await http.post("/photos", files=files)).json()["id"]


async def test_an_event_stream_past_the_bound_gets_503_with_retry_after(
    api_url: str, ticket_id: str
) -> None:
    async with httpx.AsyncClient(headers=bearer(), base_url=api_url, timeout=10) as client:
        async with AsyncExitStack() as streams:
            opened = [await open_stream(streams, client, ticket_id) for _ in range(BOUND)]
            assert [s.status_code for s in opened] == [200] * BOUND
            refused = await client.get(f"/tickets/{ticket_id}/events")
            assert_busy(refused.status_code, refused.headers, refused.content)
        # closed streams gave their slots back
        assert await first_not_busy(lambda: stream_status(client, ticket_id)) == 200
