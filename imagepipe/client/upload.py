"""`imagepipe upload PATHS…`: send photos, N at a time, then wait for every ticket.

    find images (by their magic bytes, never the file name) -> POST /photos, streamed, with
    a progress bar each -> GET /tickets?ids=… once, then each unfinished ticket's event
    stream (GET /tickets/{id}/events, --concurrency at a time) until it is terminal; a
    ticket whose stream breaks is polled as often as Retry-After says -> a table, or one
    JSON document (--json)

A network error, 408, 409, 429 or 5xx retries the file with the same Idempotency-Key: when
only the response was lost, the retry gets the ticket the first try made, not a second photo.
A file larger than ``--resumable-above`` goes through tus instead (`client.resumable`): a
chunk at a time, resumed from the server's offset after a failure, and after an interrupted
run when it is run again (its upload URL is kept in the state file).
A 401 or 403 is about the grant (``IMAGEPIPE_TOKEN``), not the file: no further file is sent,
and the run ends saying why (the problem's detail) and what to do.

Exit codes (the worst one wins): 0 every photo completed (or was accepted, with --no-wait);
1 a photo was refused (4xx) or its ticket failed; 2 nothing to upload (bad paths, no images);
3 the server could not be reached after the retries, or a ticket was unfinished at --timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from httpx_sse import SSEError, aconnect_sse

from imagepipe import backoff, formats
from imagepipe.client.answers import problem, retry_after
from imagepipe.client.resumable import Resumable, UploadState
from imagepipe.client.view import Bars, Waiting, report, show

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNFINISHED = 0, 1, 2, 3
CHUNK_SIZE = 256 * 1024
MAX_BATCH = 100  # ids per GET /tickets (the server's limit)
RETRYABLE = {408, 409, 425, 429, 500, 502, 503, 504}
DENIED = {401, 403}  # the grant, not the file: every other file would be refused alike
# connect fast, but give a slow server time to take a large body
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
TERMINAL = {"completed", "failed", "refused", "error"}
# a stream that breaks (or a server without them) leaves its ticket to polling
STREAM_ERRORS = (httpx.TransportError, SSEError, ValueError, KeyError)


@dataclass(frozen=True)
class Options:
    """How `imagepipe upload` runs (its command-line flags)."""

    server: str
    concurrency: int = 4
    wait: bool = True
    as_json: bool = False
    timeout_s: float = 600.0  # how long to wait for tickets
    retries: int = 5
    progress: bool = True
    token: str | None = field(default=None, repr=False)  # the grant, sent as a Bearer
    resumable_above: int = 8 * 1024 * 1024  # larger files go through tus (/uploads/)
    chunk_bytes: int = 8 * 1024 * 1024  # a PATCH's bytes
    state_file: Path | None = None  # resumable uploads' URLs between runs (None: none kept)

    def headers(self) -> dict[str, str]:
        """What every request carries: the grant, when there is one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@dataclass
class Upload:
    """One file's journey: sent, accepted, then completed or failed."""

    path: Path
    size: int
    key: str = field(default_factory=lambda: uuid.uuid4().hex)  # one per file, kept on retry
    status: str = "pending"  # completed failed refused error queued processing
    ticket_id: str | None = None
    photo_id: str | None = None
    error: str | None = None
    sizes: dict[str, Any] = field(default_factory=dict)
    tries: int = 0
    denied: bool = False  # refused for the grant (401/403), not for its bytes
    upload_url: str | None = None  # a resumable upload's (tus) URL
    resumed_from: int | None = None  # where this run found the server's offset (resumed)
    started: float = 0.0
    finished: float = 0.0

    def apply(self, ticket: dict[str, Any]) -> None:
        """Take the server's view of the ticket."""
        self.ticket_id, self.photo_id = ticket["id"], ticket["photo_id"]
        self.status, self.error = ticket["status"], ticket.get("error")
        self.sizes = (ticket.get("photo") or {}).get("sizes") or {}  # largest first
        self.finished = time.monotonic()

    def end(self, status: str, error: str) -> None:
        """Finish without a (further) answer from the server."""
        self.status, self.error, self.finished = status, error, time.monotonic()

    @property
    def seconds(self) -> float:
        """From the first byte sent to the last known state."""
        return max(0.0, self.finished - self.started) if self.started else 0.0


def find_images(paths: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """Image files among paths (folders recursively, in order), and the files skipped."""
    images: list[Path] = []
    skipped: list[Path] = []
    for path in dict.fromkeys(_files(paths)):
        (images if _is_image(path) else skipped).append(path)
    return images, skipped


def _files(paths: Sequence[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def _is_image(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            prefix = file.read(formats.SNIFF_BYTES)
    except OSError:
        return False
    # any format the registry knows: the server, not the client, decides which it accepts
    return formats.sniff(prefix) is not None


async def upload(
    paths: Sequence[Path], options: Options, transport: httpx.AsyncBaseTransport | None = None
) -> tuple[int, dict[str, Any]]:
    """Upload, wait and report; the exit code and the JSON document."""
    try:
        images, skipped = find_images(paths)
    except FileNotFoundError as exc:
        return EXIT_USAGE, report([], [], options, EXIT_USAGE, error=str(exc))
    if not images:
        return EXIT_USAGE, report([], skipped, options, EXIT_USAGE, error="no image files found")
    items = [Upload(path, path.stat().st_size) for path in images]
    limits = httpx.Limits(max_connections=options.concurrency + 1)
    async with httpx.AsyncClient(
        base_url=options.server,
        timeout=HTTP_TIMEOUT,
        limits=limits,
        transport=transport,
        headers=options.headers(),
    ) as http:
        with Bars(items, options.progress) as bars:
            await _upload_all(http, items, bars, options, UploadState(options.state_file))
        if options.wait:
            await wait_for_tickets(http, items, options)
    code = exit_code(items, options.wait)
    return code, report(items, skipped, options, code, error=grant_problem(items, options))


def grant_problem(items: Sequence[Upload], options: Options) -> str | None:
    """What to tell a person whose grant the server refused (None when it did not)."""
    denied = next((item for item in items if item.denied), None)
    if denied is None:
        return None
    if denied.error and denied.error.startswith("403"):
        return f"the server forbids this grant's uploads ({denied.error})"
    if not options.token:
        return (
            f"this server needs a grant ({denied.error}): set IMAGEPIPE_TOKEN to one "
            "from your web tier or from `imagepipe token`"
        )
    return (
        f"the server refused the grant ({denied.error}): set IMAGEPIPE_TOKEN to a fresh "
        "one from your web tier or from `imagepipe token`"
    )


def exit_code(items: Sequence[Upload], waited: bool) -> int:
    """The process's exit status for these outcomes (see the module docstring)."""
    statuses = {item.status for item in items}
    unfinished = {"error", "pending"} | ({"queued", "processing"} if waited else set())
    if statuses & unfinished:
        return EXIT_UNFINISHED
    return EXIT_FAILED if statuses & {"refused", "failed"} else EXIT_OK


async def _upload_all(
    http: httpx.AsyncClient,
    items: Sequence[Upload],
    bars: Bars,
    options: Options,
    state: UploadState,
) -> None:
    gate = asyncio.Semaphore(options.concurrency)
    resumable = Resumable(http, bars, options, state)

    async def one(item: Upload) -> None:
        async with gate:
            if any(other.denied for other in items):
                item.end("refused", "not sent: the server refused the grant")
                return
            with bars.file(item):
                if item.size > options.resumable_above:
                    await resumable.send(item)
                else:
                    await send(http, item, bars, options.retries)

    async with asyncio.TaskGroup() as group:
        for item in items:
            group.create_task(one(item))


async def send(http: httpx.AsyncClient, item: Upload, bars: Bars, retries: int) -> None:
    """POST one file until it is accepted, refused, or the retries are spent."""
    item.started = time.monotonic()
    for attempt in range(1, retries + 2):
        item.tries = attempt
        bars.restart(item)
        try:
            response = await _post(http, item, bars)
        except httpx.TransportError as exc:
            reason, wait = f"{type(exc).__name__}: {exc}", None
        except OSError as exc:  # our own disk: retrying will not help
            item.end("failed", f"cannot read the file: {exc}")
            return
        else:
            if response.status_code not in RETRYABLE:
                _answered(item, response)
                return
            reason, wait = f"HTTP {response.status_code}", retry_after(response)
        if attempt > retries:
            item.end("error", f"gave up after {attempt} tries: {reason}")
            return
        await asyncio.sleep(wait if wait is not None else backoff.delay(attempt, cap_s=10))


async def _post(http: httpx.AsyncClient, item: Upload, bars: Bars) -> httpx.Response:
    headers = {
        "Idempotency-Key": item.key,
        "Content-Type": "application/octet-stream",  # the server sniffs the bytes anyway
        "Content-Length": str(item.size),  # lets the server refuse an oversized file at once
    }
    body = _read(item.path, lambda n: bars.sent(item, n))
    return await http.post("/photos", content=body, headers=headers)


async def _read(path: Path, sent: Callable[[int], None]) -> AsyncIterator[bytes]:
    """The file in chunks, counted as the HTTP client takes them (real progress)."""
    async with await anyio.open_file(path, "rb") as file:
        while chunk := await file.read(CHUNK_SIZE):
            yield chunk
            sent(len(chunk))


def _answered(item: Upload, response: httpx.Response) -> None:
    if response.is_success:  # 202, the ticket (a replayed key answers the same)
        item.apply(response.json())
        return
    item.end("refused", f"{response.status_code} {problem(response)}")
    item.denied = response.status_code in DENIED


async def wait_for_tickets(
    http: httpx.AsyncClient, items: Sequence[Upload], options: Options
) -> None:
    """Follow every accepted ticket until it is terminal, or until the timeout."""
    waiting = {i.ticket_id: i for i in items if i.ticket_id and i.status not in TERMINAL}
    with Waiting(len(waiting), options.progress) as bar, suppress(TimeoutError):
        async with asyncio.timeout(options.timeout_s):
            await poll(http, waiting)  # one batch round: tickets already done drop out at once
            bar.update(len(waiting))
            await follow_all(http, waiting, options.concurrency, bar)
            await poll_until_done(http, waiting, bar)  # tickets whose stream broke


async def follow_all(
    http: httpx.AsyncClient, waiting: dict[str, Upload], streams: int, bar: Waiting
) -> None:
    """Follow each ticket's event stream, ``streams`` at a time; the terminal ones drop out.

    A state is seen the moment the server has it, not a Retry-After later: a small photo's
    ticket completes in a fraction of the second a poll would wait.
    """
    gate = asyncio.Semaphore(streams)  # one connection is left over for polls

    async def one(ticket_id: str) -> None:
        async with gate:
            await follow(http, waiting[ticket_id])
        if waiting[ticket_id].status in TERMINAL:
            del waiting[ticket_id]
            bar.update(len(waiting))

    async with asyncio.TaskGroup() as group:
        for ticket_id in list(waiting):
            group.create_task(one(ticket_id))


async def follow(http: httpx.AsyncClient, item: Upload) -> None:
    """Take each state the ticket's event stream sends, until a terminal one or a break."""
    url = f"/tickets/{item.ticket_id}/events"
    with suppress(*STREAM_ERRORS):
        async with aconnect_sse(http, "GET", url) as source:
            if source.response.status_code != 200:
                return
            async for event in source.aiter_sse():
                item.apply(json.loads(event.data))
                if item.status in TERMINAL:
                    return


async def poll_until_done(
    http: httpx.AsyncClient, waiting: dict[str, Upload], bar: Waiting
) -> None:
    """Poll the batch endpoint, as often as Retry-After says, until no ticket is waiting."""
    while waiting:
        delay = await poll(http, waiting)
        bar.update(len(waiting))
        if waiting:
            await asyncio.sleep(delay)


async def poll(http: httpx.AsyncClient, waiting: dict[str, Upload]) -> float:
    """One round over every waiting ticket; drops the terminal ones; the delay to the next."""
    ids = list(waiting)
    batches = [ids[n : n + MAX_BATCH] for n in range(0, len(ids), MAX_BATCH)]
    return max([await _poll_batch(http, batch, waiting) for batch in batches], default=1.0)


async def _poll_batch(http: httpx.AsyncClient, ids: list[str], waiting: dict[str, Upload]) -> float:
    try:
        response = await http.get("/tickets", params={"ids": ",".join(ids)})
    except httpx.TransportError:
        return backoff.delay(2, cap_s=5)  # the server is back soon, or the timeout ends it
    if response.status_code != 200:
        return retry_after(response) or backoff.delay(2, cap_s=5)
    for ticket_id, ticket in response.json()["tickets"].items():
        item = waiting[ticket_id]
        if ticket is None:
            item.end("error", "the server no longer knows this ticket")
        else:
            item.apply(ticket)
        if item.status in TERMINAL:
            del waiting[ticket_id]
    return retry_after(response) or 1.0


def run_upload(paths: Sequence[Path], options: Options) -> int:
    """`imagepipe upload`: run it, print the outcome, return the exit code."""
    code, document = asyncio.run(upload(paths, options))
    show(document, options.as_json)
    return code
