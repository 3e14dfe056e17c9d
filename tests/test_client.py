"""`imagepipe upload` against a real API (uvicorn on a real Valkey) and a burst worker."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe import cli, keys
from imagepipe.client import upload as client
from imagepipe.client.upload import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNFINISHED,
    EXIT_USAGE,
    Options,
    Upload,
)
from imagepipe.client.view import show
from imagepipe.config import Settings
from imagepipe.grants import READ
from tests import images
from tests.conftest import free_port
from tests.owners import grant
from tests.stack import run_worker_burst


def options(server: str, **changes: Any) -> Options:
    """Quiet options for tests: no progress bars, short retries."""
    return Options(server=server, **{"progress": False, "retries": 2, "token": grant(), **changes})


def album(folder: Path) -> Path:
    """Three photos (one in a subfolder, one misnamed) and a text file."""
    (folder / "trip").mkdir(parents=True)
    (folder / "beach.jpg").write_bytes(images.jpeg(640, 480))
    (folder / "trip" / "dunes.png").write_bytes(images.png(300, 200))
    (folder / "trip" / "wave.dat").write_bytes(images.gif(120, 80))  # an image, oddly named
    (folder / "README.txt").write_text("holiday photos\n")
    return folder


async def with_worker(settings: Settings, redis: Redis, uploads: int, run: Awaitable[Any]) -> Any:
    """Run the client while a burst worker processes the uploads once they are queued."""

    async def worker() -> None:
        while await redis.zcard(keys.UPLOADS_QUEUE) < uploads:  # noqa: ASYNC110 (polls Redis)
            await asyncio.sleep(0.05)
        await run_worker_burst(settings)

    result, _ = await asyncio.gather(run, worker())
    return result


class LoseFirstResponse(httpx.AsyncBaseTransport):
    """Delivers the first upload to the server, then drops its answer (a cut connection)."""

    def __init__(self, fail_with_503: bool = False) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.fail_with_503 = fail_with_503
        self.keys: list[str] = []
        self.lost: dict[str, Any] | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/photos":
            return await self.inner.handle_async_request(request)
        self.keys.append(request.headers["idempotency-key"])
        if len(self.keys) > 1:
            return await self.inner.handle_async_request(request)
        if self.fail_with_503:  # an overloaded proxy: never reaches the API
            await request.aread()
            return httpx.Response(503, headers={"Retry-After": "0"})
        response = await self.inner.handle_async_request(request)
        self.lost = json.loads(await response.aread())
        raise httpx.ReadError("connection reset before the response", request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


class Recording(httpx.AsyncBaseTransport):
    """Passes requests on and notes them; event streams can be made to fail like a proxy's."""

    def __init__(self, streams: str = "work") -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.streams = streams  # "work", "404" or "cut"
        self.sent: list[str] = []
        self.streaming = asyncio.Event()  # a ticket's event stream was asked for

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/events"):
            self.streaming.set()
            if self.streams == "404":
                return httpx.Response(404, json={"title": "Not Found"})
            if self.streams == "cut":
                raise httpx.RemoteProtocolError("a proxy ended the stream", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_images_are_found_by_their_bytes_not_their_names(tmp_path: Path) -> None:
    album(tmp_path)
    (tmp_path / "fake.jpg").write_text("not a picture")
    found, skipped = client.find_images([tmp_path, tmp_path / "beach.jpg"])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "beach.jpg",
        "trip/dunes.png",
        "trip/wave.dat",
    ]
    assert sorted(p.name for p in skipped) == ["README.txt", "fake.jpg"]


async def test_a_missing_path_or_no_images_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no pictures here")
    nothing = options("http://127.0.0.1:9")
    assert (await client.upload([tmp_path / "nope"], nothing))[0] == EXIT_USAGE
    code, document = await client.upload([tmp_path], nothing)
    assert code == EXIT_USAGE and document["skipped"] == [str(tmp_path / "notes.txt")]


async def test_a_folder_is_uploaded_processed_and_tabled(
    api_url: str,
    settings: Settings,
    redis: Redis,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = client.upload([album(tmp_path)], options(api_url, concurrency=2))
    code, document = await with_worker(settings, redis, 3, run)
    assert code == EXIT_OK, document
    assert document["counts"] == {"completed": 3}
    assert document["skipped"] == [str(tmp_path / "README.txt")]
    names = {s.name for s in settings.sizes}
    ladder = [s.name for s in settings.sizes]  # largest first
    for row in document["files"]:
        assert set(row["sizes"]) == names and row["ticket_id"] and row["tries"] == 1
        assert list(row["sizes"]) == ladder, "in ladder order, not by name"
    table = io.StringIO()
    show(document, as_json=False, out=table)
    assert "dunes.png" in table.getvalue() and "completed" in table.getvalue()
    assert " ".join(ladder) in table.getvalue()
    notes = capsys.readouterr().err
    assert "skipped 1 file(s) that are not images" in notes
    assert str(tmp_path / "README.txt") in notes  # named, not only counted


async def test_json_from_the_command_line_parses(
    api_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("IMAGEPIPE_SERVER", api_url)
    monkeypatch.setenv("IMAGEPIPE_TOKEN", grant())  # the environment: no grant in `ps`
    photo = tmp_path / "one.jpg"
    photo.write_bytes(images.jpeg(200, 150))
    code = await asyncio.to_thread(cli.main, ["upload", "--json", "--no-wait", str(photo)])
    document = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK == document["exit_code"]
    assert document["server"] == api_url
    assert document["files"][0]["status"] == "queued" and document["files"][0]["ticket_id"]


async def test_a_refused_file_makes_the_exit_code_non_zero(
    api_url: str, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    (tmp_path / "good.jpg").write_bytes(images.jpeg(320, 240))
    (tmp_path / "scan.tif").write_bytes(images.tiff(64, 64))  # an image, but not allowed
    code, document = await with_worker(
        settings, redis, 1, client.upload([tmp_path], options(api_url))
    )
    assert code == EXIT_FAILED
    rows = {Path(row["path"]).name: row for row in document["files"]}
    assert rows["good.jpg"]["status"] == "completed"
    assert rows["scan.tif"]["status"] == "refused" and "415" in rows["scan.tif"]["error"]
    assert rows["scan.tif"]["tries"] == 1  # a 4xx is final: no retry


async def test_a_lost_response_is_retried_with_the_same_key(
    api_url: str, redis: Redis, tmp_path: Path
) -> None:
    (tmp_path / "a.jpg").write_bytes(images.jpeg(200, 150))
    flaky = LoseFirstResponse()
    code, document = await client.upload([tmp_path], options(api_url, wait=False), flaky)
    assert code == EXIT_OK
    assert len(flaky.keys) == 2 and flaky.keys[0] == flaky.keys[1]
    row = document["files"][0]
    assert flaky.lost is not None and row["ticket_id"] == flaky.lost["id"]  # the same ticket
    assert row["tries"] == 2 and row["idempotency_key"] == flaky.keys[0]
    assert len(await redis.keys(keys.ticket("*"))) == 1  # one photo, not two


async def test_a_503_is_retried_after_its_retry_after(api_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(images.jpeg(200, 150))
    flaky = LoseFirstResponse(fail_with_503=True)
    code, document = await client.upload([tmp_path], options(api_url, wait=False), flaky)
    assert code == EXIT_OK and document["files"][0]["tries"] == 2
    assert flaky.keys[0] == flaky.keys[1]


async def test_an_unreachable_server_gives_up_with_exit_3(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(images.jpeg(50, 40))
    gone = options(f"http://127.0.0.1:{free_port()}", retries=1)
    code, document = await client.upload([tmp_path], gone)
    assert code == EXIT_UNFINISHED
    assert document["files"][0]["status"] == "error"
    assert "gave up after 2 tries" in document["files"][0]["error"]


async def test_tickets_unfinished_at_the_timeout_exit_3(api_url: str, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(images.jpeg(50, 40))
    code, document = await client.upload([tmp_path], options(api_url, timeout_s=0.3))
    assert code == EXIT_UNFINISHED and document["files"][0]["status"] == "queued"


async def upload_one_worked_once_streaming(
    api_url: str, settings: Settings, folder: Path, seen: Recording
) -> dict[str, Any]:
    """Upload one photo; the worker runs only once the client asked for its event stream."""
    (folder / "a.jpg").write_bytes(images.jpeg(320, 240))

    async def work_once_streaming() -> None:
        await seen.streaming.wait()
        await run_worker_burst(settings)

    run = client.upload([folder], options(api_url), seen)
    (code, document), _ = await asyncio.gather(run, work_once_streaming())
    assert code == EXIT_OK and document["files"][0]["status"] == "completed", document
    row: dict[str, Any] = document["files"][0]
    return row


async def test_the_client_hears_completion_on_the_ticket_s_event_stream(
    api_url: str, settings: Settings, tmp_path: Path
) -> None:
    seen = Recording()
    row = await upload_one_worked_once_streaming(api_url, settings, tmp_path, seen)
    assert f"GET /tickets/{row['ticket_id']}/events" in seen.sent
    assert seen.sent.count("GET /tickets") == 1, "one batch round first, then the stream"


@pytest.mark.parametrize("streams", ["404", "cut"])
async def test_without_event_streams_the_client_polls(
    api_url: str, settings: Settings, tmp_path: Path, streams: str
) -> None:
    seen = Recording(streams)
    await upload_one_worked_once_streaming(api_url, settings, tmp_path, seen)
    assert seen.sent.count("GET /tickets") >= 2, "polled after the stream failed"


@pytest.mark.parametrize(
    ("statuses", "waited", "code"),
    [
        (["completed", "completed"], True, EXIT_OK),
        (["queued"], False, EXIT_OK),
        (["completed", "failed"], True, EXIT_FAILED),
        (["refused"], False, EXIT_FAILED),
        (["queued"], True, EXIT_UNFINISHED),
        (["refused", "error"], True, EXIT_UNFINISHED),
    ],
)
def test_exit_codes(statuses: list[str], waited: bool, code: int) -> None:
    items = [Upload(Path(f"{n}.jpg"), 1, status=s) for n, s in enumerate(statuses)]
    assert client.exit_code(items, waited) == code


SERVER_ONLY = (
    "PIL",
    "pillow_heif",
    "arq",
    "boto3",
    "fastapi",
    "starlette",
    "sse_starlette",  # the server's SSE; the client reads streams with httpx_sse
    "redis",
    "imagepipe.config",
)


def test_the_client_loads_no_server_library_and_ignores_server_settings(tmp_path: Path) -> None:
    """`imagepipe upload` on a laptop: no Pillow, arq, boto3 or FastAPI loaded, and a server
    setting that would not validate (here a broken size ladder) does not stop it."""
    (tmp_path / "a.jpg").write_bytes(images.jpeg(50, 40))
    probe = (
        "import json, sys\n"
        "from imagepipe import cli\n"
        "code = cli.main(['upload', '--json', '--no-wait', '--retries', '0', sys.argv[1]])\n"
        f"print(json.dumps({{'code': code, 'loaded': [m for m in {SERVER_ONLY!r} "
        "if m in sys.modules]}))\n"
    )
    env = {
        **os.environ,
        "IMAGEPIPE_SIZES": "not a ladder",
        "IMAGEPIPE_SERVER": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)], env=env, capture_output=True, timeout=60
    )
    outcome = json.loads(done.stdout.decode().splitlines()[-1])
    assert outcome == {"code": EXIT_UNFINISHED, "loaded": []}, done.stderr.decode()[-2000:]


def expired_grant() -> str:
    """A grant signed with the right secret whose time is up (past the API's leeway)."""
    return grant(exp=int(time.time()) - 120)


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (None, ["this server needs a grant (401 this request needs a grant", "IMAGEPIPE_TOKEN"]),
        (expired_grant(), ["refused the grant (401 the grant has expired)", "a fresh one"]),
        (grant(scopes=(READ,)), ["forbids this grant's uploads (403 the grant does not carry"]),
    ],
    ids=["missing", "expired", "no-write-scope"],
)
async def test_a_refused_grant_stops_the_run_and_says_why(
    api_url: str,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str | None,
    says: list[str],
) -> None:
    monkeypatch.setenv("IMAGEPIPE_SERVER", api_url)
    monkeypatch.delenv("IMAGEPIPE_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("IMAGEPIPE_TOKEN", token)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(images.jpeg(80, 60))
    argv = ["upload", "--no-wait", "-c", "1", str(tmp_path)]
    code = await asyncio.to_thread(cli.main, argv)
    out, err = capsys.readouterr()
    assert code == EXIT_FAILED
    for words in says:  # the problem's own detail, and what to do
        assert words in " ".join(err.split())
    assert out.count("not sent: the server refused the grant") == 2  # one refusal was enough
    assert await redis.keys(keys.ticket("*")) == []
