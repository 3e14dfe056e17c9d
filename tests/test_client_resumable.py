"""`imagepipe upload` through tus against a real API (uvicorn on a real Valkey): a client
SIGKILLed mid-upload resumes from the server's offset when run again on the same file, a
link cut mid-chunk resumes within the run, and refusals say why and forget the upload."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sys
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.client import upload as client
from imagepipe.client.resumable import UploadState
from imagepipe.client.upload import EXIT_FAILED, EXIT_OK
from imagepipe.config import Settings
from tests import images
from tests.owners import bearer, grant
from tests.test_client import options
from tests.test_resumable_faults import CuttingProxy

pytestmark = pytest.mark.resumable
MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


def noise_png(size: int) -> bytes:
    """A real image of about ``size`` bytes (noise does not compress)."""
    width = 1000
    height = size // (3 * width) + 1
    im = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = BytesIO()
    im.save(out, "PNG", compress_level=0)
    return out.getvalue()


def resumably(server: str, state: Path | None = None, **changes: Any) -> client.Options:
    """Test options that send anything over 1 MiB through tus, 1 MiB a PATCH."""
    tus = {"wait": False, "resumable_above": MIB, "chunk_bytes": MIB, "state_file": state}
    return options(server, **{**tus, **changes})


class Valve:
    """A TCP proxy that counts the bytes clients send, and can hold the link still once
    ``stall_at`` of them have passed (then, released, it drops that connection)."""

    def __init__(self, upstream: str, stall_at: int | None = None) -> None:
        self.port = int(upstream.rsplit(":", 1)[1])
        self.stall_at = stall_at
        self.sent = 0
        self.stalled, self.released = asyncio.Event(), asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self.released.set()
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers |= {writer, up_writer}
        pipes = [
            asyncio.create_task(self._up(reader, up_writer)),
            asyncio.create_task(_pipe(up_reader, writer)),
        ]
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        writer.transport.abort()
        up_writer.transport.abort()  # the API sees the body end short
        await asyncio.gather(*pipes, return_exceptions=True)
        self.writers -= {writer, up_writer}
        self.tasks.discard(task)

    async def _up(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            if self.stall_at is not None and self.sent + len(data) >= self.stall_at:
                writer.write(data[: self.stall_at - self.sent])
                await writer.drain()
                self.sent, self.stall_at = self.stall_at, None
                self.stalled.set()
                await self.released.wait()
                return  # the held connection is dropped
            self.sent += len(data)
            writer.write(data)
            await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()


@contextlib.asynccontextmanager
async def proxied(proxy: Valve | CuttingProxy) -> Any:
    try:
        yield await proxy.start()
    finally:
        await proxy.stop()


def the_original(settings: Settings) -> bytes:
    """The one original on primary storage."""
    [original] = list((settings.primary_root / keys.ORIGINALS).iterdir())
    return original.read_bytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def server_offset(api_url: str, upload_url: str) -> int:
    path = httpx.URL(upload_url).path
    async with httpx.AsyncClient(base_url=api_url, headers={**bearer(), **TUS}) as http:
        return int((await http.head(path)).headers["upload-offset"])


def kept(state: Path) -> dict[str, Any]:
    """The state file's entries (none where it was never written)."""
    return dict(json.loads(state.read_text())["uploads"]) if state.exists() else {}


def the_upload_url(state: Path) -> str:
    [entry] = kept(state).values()
    return str(entry["url"])


async def test_a_run_killed_mid_upload_resumes_from_the_server_offset_when_run_again(
    api_url: str, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    data = noise_png(6 * MIB)
    photo, state = tmp_path / "train.png", tmp_path / "state" / "uploads.json"
    photo.write_bytes(data)
    valve = Valve(api_url, stall_at=3 * MIB + MIB // 2)  # a half of the fourth chunk gets out
    async with proxied(valve) as via:
        argv = [sys.executable, "-m", "imagepipe", "upload", "--json", "--no-wait", "--quiet"]
        argv += ["--server", via, "--resumable-above", str(MIB), "--chunk-size", str(MIB)]
        argv += ["--state-file", str(state), str(photo)]
        env = {**os.environ, "IMAGEPIPE_TOKEN": grant()}
        with (tmp_path / "first-run.log").open("wb") as log:
            first = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
            try:
                await asyncio.wait_for(valve.stalled.wait(), 60)
            finally:
                first.send_signal(signal.SIGKILL)  # no goodbye: as a dead laptop or Ctrl-\
                await first.wait()
        upload_url = the_upload_url(state)  # kept before the first byte went out
        assert await server_offset(api_url, upload_url) == 3 * MIB  # three chunks acknowledged
        valve.released.set()  # the fourth chunk's connection drops: the API keeps none of it
        code, document = await client.upload([photo], resumably(via, state))
    assert code == EXIT_OK, document
    [row] = document["files"]
    assert row["upload_url"] == upload_url and row["resumed_from"] == 3 * MIB
    assert row["status"] == "queued" and row["ticket_id"]
    assert sha256(the_original(settings)) == sha256(data)
    assert len(await redis.keys(keys.ticket("*"))) == 1  # one photo
    assert valve.sent < 1.5 * len(data), (valve.sent, len(data))  # not sent twice
    assert kept(state) == {}  # done: nothing left to resume


async def test_links_cut_mid_chunk_resume_within_the_run(
    api_url: str, settings: Settings, redis: Redis, tmp_path: Path
) -> None:
    data = noise_png(8 * MIB)
    photo = tmp_path / "ferry.png"
    photo.write_bytes(data)
    port = int(api_url.rsplit(":", 1)[1])
    cuts = [int(len(data) * share) for share in (0.2, 0.45, 0.8)]
    proxy = CuttingProxy([port], cuts)
    async with proxied(proxy) as via:
        code, document = await client.upload([photo], resumably(via, retries=3))
    assert code == EXIT_OK, document
    [row] = document["files"]
    assert proxy.cuts == [] and row["tries"] >= 4  # every cut happened, and was survived
    assert row["resumed_from"] is None  # created by this run: never started over
    assert sha256(the_original(settings)) == sha256(data)
    assert len(await redis.keys(keys.ticket("*"))) == 1
    assert proxy.sent < 1.5 * len(data), (proxy.sent, len(data))  # a lost chunk each, at most


async def test_an_upload_the_server_no_longer_knows_starts_again(
    api_url: str, settings: Settings, tmp_path: Path
) -> None:
    data = noise_png(2 * MIB)
    photo, state = tmp_path / "pier.png", tmp_path / "uploads.json"
    photo.write_bytes(data)
    kept = UploadState(state)
    kept.put(UploadState.key(api_url, photo), f"{api_url}/uploads/{'0' * 32}", 4e9)
    code, document = await client.upload([photo], resumably(api_url, state))
    assert code == EXIT_OK, document
    [row] = document["files"]
    assert row["upload_url"] != f"{api_url}/uploads/{'0' * 32}" and row["resumed_from"] is None
    assert sha256(the_original(settings)) == sha256(data)


@pytest.mark.parametrize(
    ("made", "claims", "says"),
    [
        (lambda: images.tiff(700, 700), {}, "415 "),  # an image, of a format not allowed
        (lambda: noise_png(2 * MIB), {"max_bytes": MIB + 1}, "413 "),  # past the grant's bytes
    ],
    ids=["415-not-allowed", "413-too-large"],
)
async def test_a_refused_resumable_file_says_why_and_is_forgotten(
    api_url: str, redis: Redis, tmp_path: Path, made: Any, claims: dict[str, int], says: str
) -> None:
    photo, state = tmp_path / "scan.img", tmp_path / "uploads.json"
    photo.write_bytes(made())
    assert photo.stat().st_size > MIB
    code, document = await client.upload(
        [photo], resumably(api_url, state, token=grant(**claims), resumable_above=MIB // 2)
    )
    assert code == EXIT_FAILED
    [row] = document["files"]
    assert row["status"] == "refused" and row["error"].startswith(says), row
    assert row["tries"] == 1  # a 4xx is final
    assert kept(state) == {}  # nothing to resume
    assert await redis.keys(keys.ticket("*")) == []


async def test_a_refused_grant_stops_a_resumable_upload(api_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "big.png"
    photo.write_bytes(noise_png(2 * MIB))
    code, document = await client.upload([photo], resumably(api_url, token="not-a-grant"))
    assert code == EXIT_FAILED
    assert document["files"][0]["error"].startswith("401 ")
    assert "IMAGEPIPE_TOKEN" in document["error"]


def test_the_state_file_survives_damage_and_drops_what_expired(tmp_path: Path) -> None:
    state = tmp_path / "deep" / "uploads.json"
    photo = tmp_path / "a.png"
    photo.write_bytes(b"x" * 10)
    kept = UploadState(state)
    kept.put(UploadState.key("http://s", photo), "http://s/uploads/a", 4e9)
    kept.put("gone", "http://s/uploads/b", 1.0)  # expired long ago
    assert state.stat().st_mode & 0o777 == 0o600
    again = UploadState(state)
    assert again.get(UploadState.key("http://s/", photo)) == "http://s/uploads/a"
    assert "gone" not in again.entries
    photo.write_bytes(b"y" * 11)  # changed: another upload
    assert again.get(UploadState.key("http://s", photo)) is None
    state.write_text("{not json")
    assert UploadState(state).entries == {}  # damaged: an empty state, not a crash
