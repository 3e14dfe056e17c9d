"""Resumable uploads under faults, over real `imagepipe api` processes: a link that drops ten
times in a 40 MB upload, two API processes taking turns, an API SIGKILLed right after its
204 and in the middle of a PATCH. The upload always completes as one photo with the right
bytes, and the bytes sent stay under 1.2x the file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import text

from bench.resumable import noise_png
from imagepipe import keys
from imagepipe.catalog.engine import create_engine
from imagepipe.config import Settings
from imagepipe.stack.processes import RoleProcess, wait_ready
from imagepipe.stack.roles import role_argv, role_env
from tests.conftest import free_port
from tests.owners import OWNER, bearer
from tests.proxies import Proxy
from tests.test_e2e import stop_all

pytestmark = [pytest.mark.resumable, pytest.mark.faults]  # real processes: not in test-fast
TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}
SIZE = 40_000_000
# a dead API's lock on an upload lapses after twice this
FAST = {"IMAGEPIPE_UPLOAD_IDLE_TIMEOUT_S": "2"}


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """A real 40 MB image (noise does not compress), within the pixel limit."""
    data = noise_png(SIZE // 1_000_000 + 1)
    assert len(data) >= SIZE
    return data


@pytest.fixture
def apis(settings: Settings, tmp_path: Path, redis: Redis) -> Iterator[list[RoleProcess]]:
    """Two `imagepipe api` processes on the test's Valkey, catalog and primary folder."""
    procs = [
        RoleProcess(
            f"api-{n}",
            role_argv("api", "--host", "127.0.0.1", "--port", str(free_port())),
            role_env(settings) | FAST,
            tmp_path / f"api-{n}.log",
        ).start()
        for n in range(2)
    ]
    try:
        yield procs
    finally:
        stop_all({proc.name: proc for proc in procs})


def url_of(proc: RoleProcess) -> str:
    return f"http://127.0.0.1:{proc.argv[proc.argv.index('--port') + 1]}"


def port_of(proc: RoleProcess) -> int:
    return int(proc.argv[proc.argv.index("--port") + 1])


class CuttingProxy(Proxy):
    """A TCP proxy that hands each new connection to the next API in turn, and cuts the
    connection it is on when the bytes clients sent pass each of ``cuts``."""

    def __init__(self, upstreams: list[int], cuts: list[int]) -> None:
        super().__init__()
        self.upstreams, self.cuts = upstreams, sorted(cuts)
        self.sent = 0  # every byte clients sent, those the cuts lost included
        self.connections = [0] * len(upstreams)

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        turn = sum(self.connections) % len(self.upstreams)
        self.connections[turn] += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstreams[turn])
        self.writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._up(reader, up_writer)),
            asyncio.create_task(_down(up_reader, writer)),
        ]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        writer.transport.abort()  # the client sees the link die
        up_writer.close()  # the API gets what was forwarded, then the end
        await asyncio.gather(*pipes, return_exceptions=True)
        with contextlib.suppress(OSError):
            await up_writer.wait_closed()
        self.writers -= {writer, up_writer}

    async def _up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            before, self.sent = self.sent, self.sent + len(data)
            if self.cuts and self.sent >= self.cuts[0]:
                writer.write(data[: self.cuts.pop(0) - before])
                await writer.drain()
                return  # cut here
            writer.write(data)
            await writer.drain()


async def _down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()


async def upload_resuming(client: httpx.AsyncClient, base: str, data: bytes) -> tuple[str, int]:
    """A tus client that resumes after every failure: the upload's ticket id, and how many
    times it resumed."""
    create = {**TUS, "Upload-Length": str(len(data))}
    url = (await client.post(f"{base}/uploads/", headers=create)).headers["location"]
    for resumed in range(100):
        try:
            head = await client.head(f"{base}{url}", headers=TUS)
            offset = int(head.headers["upload-offset"])
            if offset == len(data) and "link" in head.headers:
                return ticket_of(head), resumed
            sent = await client.patch(
                f"{base}{url}",
                content=data[offset:],
                headers={**PATCH, "Upload-Offset": str(offset)},
            )
            if sent.status_code == 204 and "link" in sent.headers:
                return ticket_of(sent), resumed
        except httpx.TransportError:
            pass  # the link dropped: ask where the upload stands, and go on from there
        if resumed % 10 == 9:
            await asyncio.sleep(0.2)  # e.g. a dead API's lock, still running out
    raise AssertionError("the upload never completed")


def ticket_of(response: httpx.Response) -> str:
    link = response.headers["link"]
    assert link.endswith('>; rel="ticket"'), link
    return link[len("</tickets/") : link.index(">")]


async def photos_of(settings: Settings, owner: str = OWNER) -> int:
    engine = create_engine(settings)
    try:
        async with engine.connect() as conn:
            query = text("SELECT count(*) FROM photos WHERE owner = :owner")
            return int((await conn.execute(query, {"owner": owner})).scalar_one())
    finally:
        await engine.dispose()


def one_original(settings: Settings, data: bytes) -> str:
    """The one original on primary, holding exactly ``data``: its photo id."""
    [original] = list((settings.primary_root / keys.ORIGINALS).iterdir())
    assert hashlib.sha256(original.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    return original.name.split(".", 1)[0]


def no_parts(settings: Settings) -> bool:
    folder = settings.primary_root / keys.PARTIAL_UPLOADS
    return not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("api_count", [1, 2], ids=["one-api", "two-apis-alternately"])
async def test_ten_dropped_links_in_40_mb_cost_under_a_fifth_more(
    apis: list[RoleProcess], settings: Settings, big_png: bytes, api_count: int
) -> None:
    await asyncio.gather(*(wait_ready(url_of(proc), 30) for proc in apis))
    rng = random.Random(api_count)
    cuts = [rng.randrange(1_000_000, len(big_png)) for _ in range(10)]
    proxy = CuttingProxy([port_of(proc) for proc in apis[:api_count]], cuts)
    base = await proxy.start()
    try:
        async with httpx.AsyncClient(timeout=60, headers=bearer()) as client:
            ticket_id, resumed = await upload_resuming(client, base, big_png)
            ticket = (await client.get(f"{url_of(apis[0])}/tickets/{ticket_id}")).json()
    finally:
        await proxy.stop()
    assert proxy.cuts == [] and resumed >= 10  # every cut happened, and was survived
    assert proxy.sent < 1.2 * len(big_png), (proxy.sent, len(big_png))
    assert one_original(settings, big_png) == ticket["photo_id"]
    assert await photos_of(settings) == 1
    assert no_parts(settings)
    if api_count == 2:
        assert min(proxy.connections) >= 5  # both APIs took turns


async def test_an_offset_acknowledged_survives_sigkill_of_the_api(
    apis: list[RoleProcess], settings: Settings, big_png: bytes
) -> None:
    await asyncio.gather(*(wait_ready(url_of(proc), 30) for proc in apis))
    first, second = url_of(apis[0]), url_of(apis[1])
    async with httpx.AsyncClient(timeout=60, headers=bearer()) as client:
        create = {**TUS, "Upload-Length": str(len(big_png))}
        url = (await client.post(f"{first}/uploads/", headers=create)).headers["location"]
        cut = 12_345_678
        sent = await client.patch(
            f"{first}{url}", content=big_png[:cut], headers={**PATCH, "Upload-Offset": "0"}
        )
        assert sent.status_code == 204 and sent.headers["upload-offset"] == str(cut)
        apis[0].kill(signal.SIGKILL)  # right after the 204
        head = await client.head(f"{second}{url}", headers=TUS)
        assert int(head.headers["upload-offset"]) >= cut
        apis[0].start()
        await wait_ready(first, 30)
        # now a SIGKILL in the middle of a PATCH: what was acknowledged stays
        gate = asyncio.Event()
        patching = asyncio.create_task(
            client.patch(
                f"{first}{url}",
                content=_held(big_png[cut:], 20_000_000, gate),
                headers={**PATCH, "Upload-Offset": str(cut)},
            )
        )
        acknowledged = await _offset_passes(client, f"{second}{url}", cut + 8_000_000)
        apis[0].kill(signal.SIGKILL)
        gate.set()
        with pytest.raises(httpx.TransportError):
            await patching
        ticket_id, _ = await upload_resuming_at(client, second, url, big_png, acknowledged)
    one_original(settings, big_png)
    assert await photos_of(settings) == 1
    assert ticket_id


async def _held(data: bytes, hold_at: int, gate: asyncio.Event) -> AsyncIterator[bytes]:
    """``data`` a MB at a time, holding at ``hold_at`` until ``gate`` opens."""
    for start in range(0, len(data), 1 << 20):
        if start >= hold_at:
            await gate.wait()
        yield data[start : start + (1 << 20)]


async def _offset_passes(client: httpx.AsyncClient, url: str, least: int) -> int:
    """Until HEAD reports at least ``least`` bytes acknowledged: the offset it reported."""
    for _ in range(600):
        offset = int((await client.head(url, headers=TUS)).headers["upload-offset"])
        if offset >= least:
            return offset
        await asyncio.sleep(0.05)
    raise AssertionError(f"the offset never passed {least}")


async def upload_resuming_at(
    client: httpx.AsyncClient, base: str, url: str, data: bytes, least: int
) -> tuple[str, int]:
    """Resume an existing upload on ``base`` (whose offset is at least ``least``)."""
    head = await client.head(f"{base}{url}", headers=TUS)
    assert int(head.headers["upload-offset"]) >= least
    for attempt in range(200):
        offset = int((await client.head(f"{base}{url}", headers=TUS)).headers["upload-offset"])
        headers = {**PATCH, "Upload-Offset": str(offset)}
        try:
            sent = await client.patch(f"{base}{url}", content=data[offset:], headers=headers)
        except httpx.TransportError:
            sent = None  # refused (423) and closed while the body was still going out
        if sent is not None and sent.status_code == 204:
            return ticket_of(sent), attempt
        assert sent is None or sent.status_code == 423, sent.text  # until the lease ends
        await asyncio.sleep(0.1)
    raise AssertionError("the upload never completed")
