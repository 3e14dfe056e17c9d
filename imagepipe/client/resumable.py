"""Resumable uploads (tus 1.0) for `imagepipe upload`: a file above the threshold goes to
/uploads/ a chunk at a time, and a run cut short (a dropped link, Ctrl-C, a dead laptop)
goes on from where the server stands when it is run again on the same files.

    state    upload URLs by file (the server, the file's absolute path, size and mtime) in a
             small JSON file (`UploadState`; ``IMAGEPIPE_UPLOAD_STATE``, ``--state-file``)
    create   POST /uploads/ (Upload-Length; Upload-Metadata filename, filetype) -> Location,
             kept in the state file before the first byte is sent
    resume   HEAD -> Upload-Offset; a finished upload's ``Link`` names its ticket (for a run
             that lost the answer to its last PATCH)
    append   PATCH a chunk (``--chunk-size``) with Upload-Checksum sha256 -> 204 and the new
             offset; the last one answers ``Link: </tickets/{id}>; rel="ticket"``

A failure (the network, 408, 409 offset mismatch, 423 locked, 429, 460 checksum mismatch,
5xx) waits (Retry-After, else backoff), asks HEAD where the upload stands and goes on from
there. The retries count failures in a row: one that moved the offset starts the count again,
so a link that drops ten times in a large file still ends. 404/410 (expired, or not this
grant's) forgets the URL and starts the file again; 401/403 is the grant's, as for POST; any
other 4xx (400, 413 too large, 415 not an image) refuses the file.

Why not tuspy: it is synchronous (requests) and has retries, progress and headers of its own;
this client is asynchronous httpx throughout, and tus's client side is the three steps above.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from imagepipe import backoff, formats
from imagepipe.client.answers import problem, retry_after

if TYPE_CHECKING:
    from imagepipe.client.upload import Options, Upload
    from imagepipe.client.view import Bars

TUS = {"Tus-Resumable": "1.0.0"}
PATCH_TYPE = "application/offset+octet-stream"
PIECE = 256 * 1024  # progress is counted a piece at a time
GONE = {404, 410}
DENIED = {401, 403}
AGAIN = {408, 409, 423, 425, 429, 460, 500, 502, 503, 504}
WHY = {
    409: "the server is at another offset",
    423: "another request is still writing this upload",
    460: "the chunk arrived damaged (checksum mismatch)",
}
MAX_ENTRIES = 1000  # the state file stays small: the oldest entries go first
DEFAULT_TTL_S = 24 * 3600  # when a server sends no Upload-Expires
TICKET_LINK = re.compile(r'<[^>]*/tickets/([^/>]+)>\s*;\s*rel="?ticket"?')


class UploadState:
    """Upload URLs by file, kept in a JSON file between runs (replaced whole, mode 0600).

    A missing or unreadable file is an empty state, and a state that cannot be written only
    costs the next run its head start: neither stops an upload. Without a path (None) the
    URLs are kept for this run only."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = self._load() if path else {}

    @staticmethod
    def key(server: str, path: Path) -> str:
        """The file as it is now: a changed file (size, mtime) is a new upload."""
        stat = path.stat()
        return f"{server.rstrip('/')} {path.resolve()} {stat.st_size} {stat.st_mtime_ns}"

    def get(self, key: str) -> str | None:
        """The upload URL kept for the file, unless it has expired."""
        entry = self.entries.get(key)
        return str(entry["url"]) if entry and entry["expires"] > time.time() else None

    def put(self, key: str, url: str, expires: float) -> None:
        self.entries[key] = {"url": url, "expires": expires}
        self._save()

    def forget(self, key: str) -> None:
        if self.entries.pop(key, None) is not None:
            self._save()

    def _load(self) -> dict[str, dict[str, Any]]:
        assert self.path is not None
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            entries = dict(document["uploads"])
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        now = time.time()
        return {
            key: entry
            for key, entry in entries.items()
            if isinstance(entry, dict) and _number(entry.get("expires")) > now and "url" in entry
        }

    def _save(self) -> None:
        if self.path is None:
            return
        newest = sorted(self.entries.items(), key=lambda item: item[1]["expires"])[-MAX_ENTRIES:]
        text = json.dumps({"version": 1, "uploads": dict(newest)}, indent=1)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(text)
            os.replace(temp, self.path)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class _Again(Exception):
    """This try failed for now: wait, then ask the server where the upload stands."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class _Done(Exception):
    """The file's outcome is decided (refused, denied): no further try."""


@dataclass
class _Transfer:
    """One file on its way: where its upload lives and how far the server has it."""

    item: Upload
    key: str
    url: str | None
    offset: int = 0


@dataclass
class Resumable:
    """Sends files through tus, with the HTTP client, bars and options of the run."""

    http: httpx.AsyncClient
    bars: Bars
    options: Options
    state: UploadState

    async def send(self, item: Upload) -> None:
        """Upload one file until it has a ticket, is refused, or the retries are spent."""
        item.started = time.monotonic()
        try:
            key = self.state.key(self.options.server, item.path)
            transfer = _Transfer(item, key, self.state.get(key))
            await self._run(transfer)
        except OSError as exc:  # our own disk: retrying will not help
            item.end("failed", f"cannot read the file: {exc}")

    async def _run(self, transfer: _Transfer) -> None:
        item, failures = transfer.item, 0
        while item.status == "pending":
            item.tries += 1
            before = transfer.offset
            try:
                await self._attempt(transfer)
            except _Done:
                return
            except _Again as again:
                failures = 1 if transfer.offset > before else failures + 1
                if failures > self.options.retries:
                    times = "1 failure" if failures == 1 else f"{failures} failures"
                    item.end("error", f"gave up after {times} in a row: {again}")
                    return
                wait = again.wait if again.wait is not None else backoff.delay(failures, cap_s=10)
                await asyncio.sleep(wait)

    async def _attempt(self, transfer: _Transfer) -> None:
        """Find the upload (or create it), then send chunks until the last byte."""
        if transfer.url is None:
            await self._create(transfer)
        else:
            await self._head(transfer)
        self.bars.restart(transfer.item, transfer.offset)
        while transfer.item.status == "pending":
            await self._patch(transfer)

    async def _create(self, transfer: _Transfer) -> None:
        item = transfer.item
        headers = {**TUS, "Upload-Length": str(item.size), "Upload-Metadata": _metadata(item)}
        response = await self._request("POST", "/uploads/", headers=headers)
        self._check(transfer, response)
        location = response.headers.get("location")
        if location is None:
            raise _Again(f"HTTP {response.status_code} without a Location: no upload made")
        transfer.url = str(response.url.join(location))
        transfer.offset = _offset(response)
        item.upload_url = transfer.url
        self.state.put(transfer.key, transfer.url, _expires(response))

    async def _head(self, transfer: _Transfer) -> None:
        assert transfer.url is not None
        response = await self._request("HEAD", transfer.url, headers=TUS)
        if response.status_code in GONE:  # expired, or another grant's: start again
            self._forget(transfer)
            await self._create(transfer)
            return
        self._check(transfer, response)
        transfer.offset = _offset(response)
        if transfer.item.upload_url is None:  # kept by an earlier run: resumed
            transfer.item.upload_url, transfer.item.resumed_from = transfer.url, transfer.offset
        await self._maybe_finished(transfer, response)

    async def _patch(self, transfer: _Transfer) -> None:
        assert transfer.url is not None
        item, start = transfer.item, transfer.offset
        chunk = await _read(item.path, start, min(self.options.chunk_bytes, item.size - start))
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        headers = {
            **TUS,
            "Content-Type": PATCH_TYPE,
            "Content-Length": str(len(chunk)),
            "Upload-Offset": str(start),
            "Upload-Checksum": f"sha256 {digest}",
        }
        body = _pieces(chunk, lambda n: self.bars.sent(item, n))
        response = await self._request("PATCH", transfer.url, headers=headers, content=body)
        if response.status_code in GONE:
            self._forget(transfer)
            raise _Again(f"HTTP {response.status_code}: the upload expired; starting it again")
        self._check(transfer, response)
        transfer.offset = _offset(response)
        if not await self._maybe_finished(transfer, response) and transfer.offset >= item.size:
            raise _Again("the last byte's answer named no ticket")  # HEAD asks again

    async def _maybe_finished(self, transfer: _Transfer, response: httpx.Response) -> bool:
        """Take the ticket the answer links to, if it links to one."""
        found = TICKET_LINK.search(response.headers.get("link", ""))
        if found is None:
            return False
        self._forget(transfer)
        item, ticket_id = transfer.item, found.group(1)
        with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
            answer = await self.http.get(f"/tickets/{ticket_id}")
            if answer.status_code == 200:
                item.apply(answer.json())
                return True
        item.ticket_id, item.status, item.finished = ticket_id, "queued", time.monotonic()
        return True  # accepted: the wait for tickets polls it

    def _check(self, transfer: _Transfer, response: httpx.Response) -> None:
        """Go on (2xx), try again (`_Again`), or end the file (`_Done`)."""
        status = response.status_code
        if status < 300:
            return
        detail = WHY.get(status) or problem(response)
        if status in AGAIN:
            raise _Again(f"HTTP {status} {detail}", retry_after(response))
        if status not in DENIED:
            self._forget(transfer)  # the file itself is refused: nothing to resume
        transfer.item.end("refused", f"{status} {detail}")
        transfer.item.denied = status in DENIED
        raise _Done

    def _forget(self, transfer: _Transfer) -> None:
        self.state.forget(transfer.key)
        transfer.url, transfer.offset = None, 0

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise _Again(f"{type(exc).__name__}: {exc}") from None


def _metadata(item: Upload) -> str:
    """Upload-Metadata: the file's name and, when its bytes say, its media type."""
    pairs = {"filename": item.path.name}
    with item.path.open("rb") as file:
        found = formats.sniff(file.read(formats.SNIFF_BYTES))
    if found is not None:
        pairs["filetype"] = formats.media_type(found)
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def _offset(response: httpx.Response) -> int:
    value = response.headers.get("upload-offset", "0")
    if not (value.isascii() and value.isdigit()):
        raise _Again(f"HTTP {response.status_code} with a bad Upload-Offset {value[:40]!r}")
    return int(value)


def _expires(response: httpx.Response) -> float:
    """Upload-Expires as a Unix time (a day from now when the server sends none)."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return parsedate_to_datetime(response.headers["upload-expires"]).timestamp()
    return time.time() + DEFAULT_TTL_S


async def _read(path: Path, start: int, count: int) -> bytes:
    async with await anyio.open_file(path, "rb") as file:
        await file.seek(start)
        chunk = await file.read(count)
    if len(chunk) != count:
        raise OSError(f"the file changed while it was being sent (it ends before {start + count})")
    return chunk


async def _pieces(chunk: bytes, sent: Callable[[int], None]) -> AsyncIterator[bytes]:
    """A chunk a piece at a time, counted as the HTTP client takes them (real progress)."""
    view = memoryview(chunk)
    for start in range(0, len(chunk), PIECE):
        piece = view[start : start + PIECE]
        yield bytes(piece)
        sent(len(piece))
