"""`imagepipe upload` through tus against a real API (uvicorn on a real Valkey): a client
SIGKILLed mid-upload resumes from the server's offset when run again on the same file, a
link cut mid-chunk resumes within the run, and refusals say why and forget the upload."""

from __future__ import annotations

import asyncio
import base64
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
from imagepipe.client.upload import EXIT_FAILED, EXIT_OK, EXIT_UNFINISHED
from imagepipe.config import Settings
from imagepipe.grants import READ
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


def a_photo(folder: Path, name: str, size: int) -> tuple[Path, bytes]:
    """A noise PNG of about ``size`` bytes written to ``folder / name``: its path and bytes."""
    data = noise_png(size)
    (folder / name).write_bytes(data)
    return folder / name, data


def resumably(server: str, state: Path | None = None, **changes: Any) -> client.Options:
    """Test options that send anything over 1 MiB through tus, 1 MiB a PATCH."""
    tus = {"wait": False, "resumable_above": MIB, "chunk_bytes": MIB, "state_file": state}
    return options(server, **{**tus, **changes})


class Valve(CuttingProxy):
    """A proxy that counts the bytes clients send (as `CuttingProxy`), and holds the link
    still once ``stall_at`` of them have passed; released, it drops that connection."""

    def __init__(self, upstream: str, stall_at: int) -> None:
        super().__init__([int(upstream.rsplit(":", 1)[1])], [])
        self.stall_at: int | None = stall_at
        self.stalled, self.released = asyncio.Event(), asyncio.Event()

    async def stop(self) -> None:
        self.released.set()
        await super().stop()

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


@contextlib.asynccontextmanager
async def proxied(proxy: CuttingProxy) -> Any:
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
    (photo, data), state = a_photo(tmp_path, "train.png", 6 * MIB), tmp_path / "state" / "u.json"
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
    photo, data = a_photo(tmp_path, "ferry.png", 8 * MIB)
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
    (photo, data), state = a_photo(tmp_path, "pier.png", 2 * MIB), tmp_path / "uploads.json"
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


@pytest.mark.parametrize(
    ("token", "says"),
    [("not-a-grant", "401 "), (grant(scopes=(READ,)), "403 ")],
    ids=["401-forged", "403-no-write-scope"],
)
async def test_a_refused_grant_stops_a_resumable_upload(
    api_url: str, tmp_path: Path, token: str, says: str
) -> None:
    for name in ("big.png", "bigger.png"):
        (tmp_path / name).write_bytes(noise_png(2 * MIB))
    code, document = await client.upload([tmp_path], resumably(api_url, token=token, concurrency=1))
    assert code == EXIT_FAILED
    first, second = document["files"]
    assert first["error"].startswith(says) and first["upload_url"] is None
    assert second["error"] == "not sent: the server refused the grant"
    assert "grant" in document["error"]


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


class Meddling(httpx.AsyncBaseTransport):
    """Passes requests on, spoiling the second PATCH: its checksum, or its offset."""

    def __init__(self, spoil: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.spoil, self.patches = spoil, 0
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            self.patches += 1
            if self.patches == 2 and self.spoil == "checksum":
                other = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
                request.headers["Upload-Checksum"] = f"sha256 {other}"
            elif self.patches == 2:
                request.headers["Upload-Offset"] = "0"
        response = await self.inner.handle_async_request(request)
        self.statuses.append(response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("spoil", ["checksum", "offset"])
async def test_a_damaged_chunk_or_a_wrong_offset_is_sent_again_from_head(
    api_url: str, settings: Settings, tmp_path: Path, spoil: str
) -> None:
    photo, data = a_photo(tmp_path, "quay.png", 3 * MIB)
    meddling = Meddling(spoil)
    code, document = await client.upload([photo], resumably(api_url), meddling)
    assert code == EXIT_OK, document
    assert document["files"][0]["tries"] == 2  # one failure, then on from HEAD's offset
    if spoil == "checksum":
        assert 460 in meddling.statuses  # the server refused the chunk; it went again
    assert sha256(the_original(settings)) == sha256(data)


async def test_a_chunk_that_keeps_arriving_damaged_gives_up_saying_so(
    api_url: str, tmp_path: Path
) -> None:
    photo, _ = a_photo(tmp_path, "quay.png", 3 * MIB)
    code, document = await client.upload(
        [photo], resumably(api_url, retries=0), Meddling("checksum")
    )
    assert code == EXIT_UNFINISHED
    error = document["files"][0]["error"]
    assert error == (
        "gave up after 1 failure in a row: HTTP 460 the chunk arrived damaged (checksum mismatch)"
    )
