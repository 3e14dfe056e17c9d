"""Fair use over real HTTP (`api.fairuse`): per-owner upload rates, bytes a day, storage and one
upload's size, refused before the body is read; the limits hold across two API processes on
one Valkey; one owner's flood pushes nobody else into a 429 or 503."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from imagepipe.api.bodies import MULTIPART_SLACK
from imagepipe.catalog.engine import create_engine
from imagepipe.config import Settings
from imagepipe.grants import READ
from imagepipe.stack.processes import RoleProcess, wait_ready
from imagepipe.stack.roles import role_argv, role_env
from tests import images
from tests.conftest import free_port
from tests.owners import OWNER, bearer
from tests.stack import run_worker_burst
from tests.test_e2e import stop_all, wait_terminal

pytestmark = pytest.mark.security
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"
PHOTO = images.jpeg(64, 48)
STORED = text(
    "SELECT coalesce(sum(o.bytes), 0) FROM objects o JOIN photos p ON p.id = o.photo_id "
    "WHERE p.owner = :owner AND o.kind IN ('original', 'derivative')"
)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The test's settings, changed where it asks (indirect param)."""
    return settings.model_copy(update=getattr(request, "param", {}))


def photo_headers(owner: str = OWNER, **claims: Any) -> dict[str, str]:
    return {"content-type": "image/jpeg", **bearer(owner, **claims)}


async def upload(
    http: httpx.AsyncClient, owner: str = OWNER, body: bytes = PHOTO, **claims: Any
) -> httpx.Response:
    return await http.post("/photos", content=body, headers=photo_headers(owner, **claims))


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """A body without a Content-Length (httpx sends it chunked)."""
    for start in range(0, len(data), 4096):
        yield data[start : start + 4096]


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def request_head(length: int, owner: str = OWNER, **claims: Any) -> bytes:
    """The head of an upload declaring ``length`` bytes."""
    auth = bearer(owner, **claims)["Authorization"]
    return (
        f"POST /photos HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n"
        f"Content-Type: image/jpeg\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


async def headers_only(api_url: str, length: int, owner: str = OWNER, **claims: Any) -> Answer:
    """POST /photos declaring ``length`` bytes, and send none of them: a fair-use refusal
    comes back anyway (the server never waits for a body it refuses)."""
    url = urlsplit(api_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(request_head(length, owner, **claims))
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:] if line)
        headers = {name.lower(): value for name, value in fields.items()}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    finally:
        writer.close()
    return Answer(int(lines[0].split(" ")[1]), headers, json.loads(body))


def assert_quota_problem(answer: Answer | httpx.Response, status: int, policy: str) -> None:
    body = answer.body if isinstance(answer, Answer) else answer.json()
    headers = answer.headers
    assert (body["status"], body["type"]) == (status, QUOTA_EXCEEDED), body
    assert body["violated-policies"] == [policy]
    assert headers["content-type"] == "application/problem+json"


async def standing(http: httpx.AsyncClient, owner: str = OWNER, **claims: Any) -> dict[str, Any]:
    answer = await http.get("/limits", headers=bearer(owner, (READ,), **claims))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def test_past_the_upload_rate_a_429_comes_before_the_body(
    http: httpx.AsyncClient, api_url: str
) -> None:
    for left in (1, 0):
        accepted = await upload(http, uploads_per_minute=2)
        assert accepted.status_code == 202
        assert accepted.headers["ratelimit-policy"].startswith('"uploads";q=2;w=60, "bytes";q=')
        assert accepted.headers["ratelimit"].startswith(f'"uploads";r={left};t=')
    refused = await headers_only(api_url, 100_000, uploads_per_minute=2)
    assert refused.status == 429
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 30  # the next of 2 a minute is back within half a minute
    assert refused.headers["ratelimit"].startswith(f'"uploads";r=0;t={retry}, "bytes";r=')
    assert refused.headers["ratelimit-policy"].startswith('"uploads";q=2;w=60')
    assert_quota_problem(refused, 429, "uploads")
    assert (await upload(http, "someone-else", uploads_per_minute=2)).status_code == 202


async def test_limits_tell_the_owner_where_they_stand(http: httpx.AsyncClient) -> None:
    claims = {"uploads_per_minute": 5, "bytes_per_day": 10**6, "storage_bytes": 10**7}
    assert (await upload(http, max_bytes=100_000, **claims)).status_code == 202
    answer = await http.get("/limits", headers=bearer(OWNER, (READ,), max_bytes=100_000, **claims))
    view = answer.json()
    assert answer.status_code == 200, view
    assert view["owner"] == OWNER and view["max_upload_bytes"] == 100_000
    uploads = view["uploads"]
    assert (uploads["quota"], uploads["window_s"], uploads["remaining"]) == (5, 60, 4)
    assert 1 <= uploads["reset_s"] <= 12  # one of 5 a minute comes back in 12 s
    assert 10**6 - len(PHOTO) <= view["bytes"]["remaining"] < 10**6 - len(PHOTO) + 100
    assert view["storage"] == {"quota": 10**7, "used": len(PHOTO), "remaining": 10**7 - len(PHOTO)}
    assert answer.headers["ratelimit-policy"] == (
        '"uploads";q=5;w=60, "bytes";q=1000000;w=86400;qu="content-bytes", '
        '"storage";q=10000000;qu="content-bytes"'
    )
    assert f'"storage";r={10**7 - len(PHOTO)}' in answer.headers["ratelimit"]
    assert (await http.get("/limits", headers={"Authorization": ""})).status_code == 401


async def test_zero_means_unlimited(http: httpx.AsyncClient) -> None:
    free = {"uploads_per_minute": 0, "bytes_per_day": 0}
    assert all([(await upload(http, "free", **free)).status_code == 202 for _ in range(3)])
    view = await standing(http, "free", **free)
    assert view["uploads"]["quota"] is None and view["bytes"]["remaining"] is None
    assert view["storage"]["quota"] is None  # the default: no storage quota


async def test_bytes_per_day_refuse_a_declared_length_before_the_body(
    http: httpx.AsyncClient, api_url: str
) -> None:
    daily = {"bytes_per_day": len(PHOTO) * 3 // 2}
    assert (await upload(http, **daily)).status_code == 202
    refused = await headers_only(api_url, len(PHOTO), **daily)  # half a photo's bytes are left
    assert refused.status == 429
    assert int(refused.headers["retry-after"]) > 3600  # a third of a day's quota comes back
    assert '"bytes";r=0;t=' in refused.headers["ratelimit"]
    assert_quota_problem(refused, 429, "bytes")
    never = await headers_only(api_url, len(PHOTO) * 2, **daily)  # more than a whole day
    assert never.status == 413 and "bytes quota" in never.body["detail"]
    assert_quota_problem(never, 413, "bytes")


async def test_a_body_without_a_length_is_charged_as_it_arrives(http: httpx.AsyncClient) -> None:
    big = images.jpeg(800, 600)
    daily = {"bytes_per_day": len(big) // 2}
    refused = await http.post("/photos", content=chunked(big), headers=photo_headers(**daily))
    assert refused.status_code == 429  # cut off mid-body: no length to refuse up front
    assert refused.json()["violated-policies"] == ["bytes"]
    assert (await standing(http, **daily))["bytes"]["remaining"] < 100  # all of it was spent


async def test_bytes_declared_but_never_sent_are_given_back(
    http: httpx.AsyncClient, api_url: str
) -> None:
    daily = {"bytes_per_day": 10**6}
    url = urlsplit(api_url)
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(request_head(500_000, **daily) + PHOTO[:10])
    await writer.drain()
    writer.close()  # gone after 10 of the 500000 bytes it declared
    for _ in range(100):  # the server notices the close, then settles
        if (await standing(http, **daily))["bytes"]["remaining"] >= 10**6 - 10:
            break
        await asyncio.sleep(0.05)
    assert (await standing(http, **daily))["bytes"]["remaining"] >= 10**6 - 10


async def test_the_storage_quota_counts_derivatives_and_names_itself(
    http: httpx.AsyncClient, api_url: str, settings: Settings
) -> None:
    roomy, photo = {"storage_bytes": 10**7}, images.jpeg(400, 300)
    accepted = await upload(http, body=photo, **roomy)
    assert accepted.status_code == 202
    await run_worker_burst(settings)
    tickets = await wait_terminal(http, [accepted.json()["id"]])
    assert [t["status"] for t in tickets.values()] == ["completed"]
    used = (await standing(http, **roomy))["storage"]["used"]
    engine = create_engine(settings)
    async with engine.connect() as db:
        assert used == await db.scalar(STORED, {"owner": OWNER})  # the counter is the SUM
    await engine.dispose()
    assert used > len(photo)  # the derivatives count too

    tight = {"storage_bytes": used + 100}
    refused = await headers_only(api_url, 5000, **tight)
    assert refused.status == 413 and refused.body["quota"] == used + 100
    assert refused.body["used"] == used and "storage quota" in refused.body["detail"]
    assert_quota_problem(refused, 413, "storage")
    cut = await http.post("/photos", content=chunked(PHOTO), headers=photo_headers(**tight))
    assert cut.status_code == 413 and cut.json()["violated-policies"] == ["storage"]


async def test_a_grants_max_bytes_caps_one_upload(http: httpx.AsyncClient, api_url: str) -> None:
    photo = images.jpeg(400, 300)
    cap = {"max_bytes": len(photo) // 2}
    declared = await headers_only(api_url, len(photo) // 2 + MULTIPART_SLACK + 1, **cap)
    assert declared.status == 413 and "larger than" in declared.body["detail"]
    for body in (photo, chunked(photo)):  # declared within the multipart allowance, or not at all
        cut = await http.post("/photos", content=body, headers=photo_headers(**cap))
        assert cut.status_code == 413, cut.text
    assert (await upload(http, body=PHOTO, **cap)).status_code == 202


@pytest.mark.parametrize("settings", [{"owner_uploads_per_minute": 1}], indirect=True)
async def test_a_grant_overrides_the_settings(http: httpx.AsyncClient) -> None:
    assert [(await upload(http)).status_code for _ in range(2)] == [202, 429]
    generous = [(await upload(http, "big", uploads_per_minute=3)).status_code for _ in range(4)]
    assert generous == [202, 202, 202, 429]


@pytest.fixture
def two_apis(settings: Settings, tmp_path: Path, redis: Redis) -> Iterator[list[str]]:
    """Two `imagepipe api` processes on the test's Valkey and catalog."""
    ports = [free_port(), free_port()]
    procs = {
        f"api-{n}": RoleProcess(
            f"api-{n}",
            role_argv("api", "--host", "127.0.0.1", "--port", str(port)),
            role_env(settings),
            tmp_path / f"api-{n}.log",
        ).start()
        for n, port in enumerate(ports)
    }
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        stop_all(procs)


async def test_the_upload_rate_holds_across_two_api_processes(two_apis: list[str]) -> None:
    await asyncio.gather(*(wait_ready(url, 30) for url in two_apis))
    rate = {"uploads_per_minute": 4}
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(n: int) -> int:
            url = f"{two_apis[n % 2]}/photos"
            sent = await client.post(url, content=PHOTO, headers=photo_headers(**rate))
            return sent.status_code

        statuses = await asyncio.gather(*(one(n) for n in range(10)))  # at once, to both
        assert sorted(statuses) == [202] * 4 + [429] * 6
        for url in two_apis:
            view = (await client.get(f"{url}/limits", headers=bearer(**rate))).json()
            assert view["uploads"]["remaining"] == 0


FLOOD_RATE = 8  # uploads a minute, the settings' (the flooding owner's)
CALM = 6  # the calm owner's uploads before the flood, and as many during it


@pytest.mark.parametrize(
    "settings",
    [{"owner_uploads_per_minute": FLOOD_RATE, "max_queue_depth": 3 * FLOOD_RATE}],
    indirect=True,
)
async def test_one_owners_flood_pushes_no_one_else_out(api_url: str, settings: Settings) -> None:
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        baseline = [await timed_upload(http, "calm") for _ in range(CALM)]
        calm_done, started = asyncio.Event(), time.monotonic()
        flood = asyncio.create_task(flood_until(http, "flood", calm_done))
        during = [await timed_upload(http, "calm") for _ in range(CALM)]
        calm_done.set()
        statuses = await flood
        flooded_s = time.monotonic() - started
    calm = baseline + during
    assert {status for status, _, _ in calm} == {202}  # no 429, no 503 for the calm owner
    # the flood's backlog is bounded by its rate (a burst of 8, then 8 a minute), not its will:
    # unbounded, its uploads would fill the queue past IMAGEPIPE_MAX_QUEUE_DEPTH (503s for all)
    assert len(statuses) > 3 * FLOOD_RATE and set(statuses) == {202, 429}
    assert statuses.count(202) <= FLOOD_RATE + 1 + flooded_s * FLOOD_RATE / 60
    ratio = median_s(during) / median_s(baseline)
    assert ratio < 10, f"the calm owner's accepts slowed {ratio:.1f}x under the flood"
    await run_worker_burst(settings)
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        tickets = await wait_terminal(http, [ticket for _, _, ticket in calm])
    assert {t["status"] for t in tickets.values()} == {"completed"}


def median_s(timed: list[tuple[int, float, str]]) -> float:
    return statistics.median(took for _, took, _ in timed)


async def timed_upload(http: httpx.AsyncClient, owner: str) -> tuple[int, float, str]:
    """One upload at a calm pace: its status, how long its accept took, its ticket id."""
    await asyncio.sleep(0.05)
    started = time.monotonic()
    answer = await upload(http, owner, images.jpeg(120, 90), uploads_per_minute=60)
    took = time.monotonic() - started
    return answer.status_code, took, answer.json().get("id", "")


async def flood_until(http: httpx.AsyncClient, owner: str, done: asyncio.Event) -> list[int]:
    """Uploads, eight at a time, as fast as they are answered, until ``done``."""

    async def one() -> list[int]:
        statuses = []
        while not done.is_set():
            statuses.append((await upload(http, owner, images.jpeg(120, 90))).status_code)
        return statuses

    return [status for flow in await asyncio.gather(*(one() for _ in range(8))) for status in flow]
