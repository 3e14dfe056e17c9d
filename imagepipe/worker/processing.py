"""process_photo: resize one photo, then report the outcome over a signed callback.

    ticket -> original (primary) -> render in the decode sandbox -> derivatives (primary,
    atomic, write-once) -> callback event (processing.completed | processing.failed)

A derivative is never rewritten: a re-run of a job (a worker killed mid-job; arq runs a job
at least once) keeps the sizes already written and reports those files, not its own bytes.

A photo deleted while it renders: once the sizes are written the worker looks for its
tombstone and, if the deletion began meanwhile, takes them back (its removal may have passed
them already); the audit removes anything a crash leaves.

A permanent fault (an image the decoder refuses, a decode past its deadline) fails the
ticket at once with a reason. A transient one (storage, Redis, a crashed or out-of-memory
child) is retried with backoff, a bounded number of times, then fails the ticket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from arq import Retry
from redis.exceptions import RedisError

from imagepipe import backoff, formats, keys, metrics
from imagepipe.errors import NotFound
from imagepipe.imaging.decoding import ImageRejected
from imagepipe.imaging.render import Rendered, Rendition, render
from imagepipe.models import Derivative, StoredFile, Ticket, sizes_keys
from imagepipe.storage import ObjectExists, ObjectInfo, ObjectNotFound, Storage, StorageError
from imagepipe.worker import notify
from imagepipe.worker.deps import WorkerDeps, deps
from imagepipe.worker.sandbox import DecodeCrashed, DecodeOutOfMemory, DecodeTimeout

log = logging.getLogger(__name__)
Upright = tuple[int, int]  # width, height after EXIF orientation
# Photos this process took to an outcome: completed, failed, retry. arq counts jobs, and a
# job that reports a failed photo succeeded as a job, so its "0 failed" says nothing of them.
OUTCOMES: Counter[str] = Counter()


class PermanentFailure(Exception):
    """The photo can never be processed; the ticket fails with this reason."""


class TransientFailure(Exception):
    """Worth another try later."""


async def process_photo(ctx: dict[str, Any], ticket_id: str) -> str:
    """arq job: make every derivative of one photo, then report it."""
    attempt: int = ctx["job_try"]
    try:
        return await _process_ticket(deps(ctx), ticket_id, attempt)
    except RedisError as exc:
        # Redis went away mid-job (reading the ticket, queueing a callback): run it again
        # later rather than let arq mark it failed and leave the ticket stuck
        log.warning("redis error, will retry: %s", exc, extra={"ticket_id": ticket_id})
        raise Retry(defer=backoff.delay(attempt)) from exc


async def _process_ticket(d: WorkerDeps, ticket_id: str, attempt: int) -> str:
    try:
        ticket = await d.tickets.get(ticket_id)
    except NotFound:
        log.warning("ticket vanished before processing", extra={"ticket_id": ticket_id})
        return "no ticket"
    if ticket.status.terminal:
        return f"already {ticket.status.value}"
    started = time.perf_counter()
    outcome = "retry"
    try:
        outcome = await _process(d, ticket, attempt)
        return outcome
    finally:
        size = metrics.size_class(ticket.width * ticket.height)
        metrics.JOB_SECONDS.labels(size, outcome).observe(time.perf_counter() - started)
        OUTCOMES[outcome] += 1


def outcomes_line() -> str:
    """The photos this process completed and failed, for the worker's last log line."""
    done, failed, retried = OUTCOMES["completed"], OUTCOMES["failed"], OUTCOMES["retry"]
    return f"photos in this process: {done} completed, {failed} failed ({retried} tries retried)"


async def _process(d: WorkerDeps, ticket: Ticket, attempt: int) -> str:
    # told while the render runs, and before its outcome is (the web tier applies in order)
    started = asyncio.ensure_future(notify.report(d, ticket, "processing.started", attempt))
    try:
        sizes, upright = await render_photo(d, ticket)
    except (PermanentFailure, TransientFailure, StorageError, RedisError) as exc:
        await started
        return await _failed(d, ticket, attempt, exc)
    except BaseException:
        started.cancel()  # cancelled or crashed: the job runs again and reports again
        raise
    await started
    await notify.report(d, ticket, "processing.completed", attempt, sizes=sizes, upright=upright)
    log.info("photo processed", extra=_ids(ticket, attempt))
    return "completed"


async def render_photo(d: WorkerDeps, ticket: Ticket) -> tuple[dict[str, Derivative], Upright]:
    """Decode once in the sandbox, write every size atomically; the sizes for the callback."""
    try:
        data = await d.primary.read(ticket.original_key)
    except ObjectNotFound:
        raise PermanentFailure("the original is missing from primary storage") from None
    job = functools.partial(
        render,
        data,
        d.settings.sizes,
        formats=d.settings.formats,
        max_pixels=d.settings.max_pixels,
        qualities=d.settings.qualities,
    )
    rendered = await _in_sandbox(d, job)
    sizes = await write_sizes(d.primary, ticket.photo_id, rendered)
    if await d.primary.exists(keys.tombstone(ticket.photo_id)):
        for key in sizes_keys(sizes):
            await d.primary.delete(key)
        raise PermanentFailure("the photo was deleted while it was processed")
    return sizes, (rendered.width, rendered.height)


async def _in_sandbox(d: WorkerDeps, job: functools.partial[Rendered]) -> Rendered:
    """Run the render in a decode child, its failures sorted into permanent and transient."""
    try:
        return await d.pool.run(job)
    except ImageRejected as exc:
        raise PermanentFailure(exc.reason) from None
    except DecodeTimeout:
        limit = d.settings.decode_timeout_s
        raise PermanentFailure(f"decoding took longer than {limit:g} s") from None
    except (DecodeOutOfMemory, DecodeCrashed) as exc:
        cap = d.settings.decode_memory_mb
        raise TransientFailure(f"the decoder died ({exc}); memory cap {cap} MB") from None


async def write_sizes(primary: Storage, photo_id: str, rendered: Rendered) -> dict[str, Derivative]:
    """Write every rendition to primary; one Derivative per size, its other formats alternates."""

    async def write(r: Rendition) -> StoredFile:
        key = keys.derivative(photo_id, r.name, formats.extension(r.format))
        info = await _write_once(primary, key, r.data)
        return StoredFile(
            key=key,
            bytes=info.size,
            sha256=info.sha256 or "",
            content_type=formats.media_type(r.format),
        )

    written = await asyncio.gather(*(write(r) for r in rendered.renditions))
    sizes: dict[str, Derivative] = {}
    for r, file in zip(rendered.renditions, written, strict=True):
        if r.name in sizes:  # a further format of a size already seen
            sizes[r.name].alternates.append(file)
        else:
            sizes[r.name] = Derivative(**file.model_dump(), width=r.width, height=r.height)
    return sizes


async def _write_once(primary: Storage, key: str, data: bytes) -> ObjectInfo:
    """Create the derivative; one an earlier run of the job wrote is kept as it is."""
    try:
        return await primary.put_bytes(key, data, create_only=True)
    except ObjectExists:
        existing = await primary.head(key)
        if existing.sha256 is not None:
            return existing
        return replace(existing, sha256=await primary.sha256(key))  # head had no sha256


def _ids(ticket: Ticket, attempt: int) -> dict[str, Any]:
    return {"ticket_id": ticket.id, "photo_id": ticket.photo_id, "attempt": attempt}


async def _failed(d: WorkerDeps, ticket: Ticket, attempt: int, exc: Exception) -> str:
    """A permanent failure fails the ticket; a transient one is retried, up to a limit."""
    if not isinstance(exc, PermanentFailure):
        return await _retry_or_fail(d, ticket, attempt, f"{exc}")
    log.warning("photo failed: %s", exc, extra=_ids(ticket, attempt))
    await notify.report(d, ticket, "processing.failed", attempt, error=str(exc))
    return "failed"


async def _retry_or_fail(d: WorkerDeps, ticket: Ticket, attempt: int, reason: str) -> str:
    ids = _ids(ticket, attempt)
    if attempt >= d.settings.job_max_tries:
        log.error("photo failed after %d tries: %s", attempt, reason, extra=ids)
        error = f"gave up after {attempt} tries: {reason}"
        await notify.report(d, ticket, "processing.failed", attempt, error=error)
        return "failed"
    log.warning("transient failure, will retry: %s", reason, extra=ids)
    raise Retry(defer=backoff.delay(attempt))
