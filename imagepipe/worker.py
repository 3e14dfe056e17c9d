"""The worker role: arq jobs that resize each photo, then report back over a signed callback.

    process_photo(ticket_id)
      original (primary) -> render in the decode sandbox -> derivatives (primary, atomic)
      -> callback event queued (processing.completed | processing.failed)

A permanent fault (an image the decoder refuses, a decode past its deadline) fails the
ticket at once with a reason. A transient one (storage, Redis, a crashed or out-of-memory
child) is retried with backoff, a bounded number of times, then fails the ticket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from typing import Any

import httpx
from arq import Retry
from arq.worker import Worker, func
from redis.exceptions import RedisError

from imagepipe import backoff, imaging, keys, metrics, notify
from imagepipe.config import Settings
from imagepipe.connections import check_redis_policy, redis_client
from imagepipe.errors import NotFound
from imagepipe.models import Derivative, StoredFile, Ticket
from imagepipe.sandbox import DecodeCrashed, DecodeOutOfMemory, DecodePool, DecodeTimeout
from imagepipe.storage import ObjectNotFound, Storage, StorageError
from imagepipe.storage.factory import primary_storage
from imagepipe.tickets import TicketStore

log = logging.getLogger(__name__)
STOP_RECHECK_S = 0.1  # after SIGTERM, how often to make sure the worker is stopping
Upright = tuple[int, int]  # width, height after EXIF orientation
RECONNECT_S = 1.0


class PermanentFailure(Exception):
    """The photo can never be processed; the ticket fails with this reason."""


class TransientFailure(Exception):
    """Worth another try later."""


async def startup(ctx: dict[str, Any]) -> None:
    """Build the clients one worker process uses (arq on_startup)."""
    settings: Settings = ctx["settings"]
    await check_redis_policy(ctx["redis"])
    ctx["primary"] = primary_storage(settings)
    ctx["tickets"] = TicketStore(ctx["redis"], settings.ticket_retention_s)
    ctx["pool"] = DecodePool(
        concurrency(settings), settings.decode_memory_mb, settings.decode_timeout_s
    )
    await ctx["pool"].start()
    metrics.serve(settings.metrics_port)
    timeout_s = settings.callback_timeout_ms / 1000
    connect_s = settings.callback_connect_timeout_ms / 1000
    ctx["http"] = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=connect_s))


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close what startup made (arq on_shutdown); safe to call twice."""
    for name in ("pool", "primary"):
        if name in ctx:
            await ctx.pop(name).close()
    if "http" in ctx:
        await ctx.pop("http").aclose()


def concurrency(settings: Settings) -> int:
    """Decode slots in this worker process: one per core unless configured."""
    return settings.worker_concurrency or os.cpu_count() or 1


async def render(ctx: dict[str, Any], ticket: Ticket) -> tuple[dict[str, Derivative], Upright]:
    """Decode once in the sandbox, write every size atomically; the sizes for the callback."""
    settings: Settings = ctx["settings"]
    primary: Storage = ctx["primary"]
    try:
        data = await primary.read(ticket.original_key)
    except ObjectNotFound:
        raise PermanentFailure("the original is missing from primary storage") from None
    job = functools.partial(
        imaging.render,
        data,
        settings.sizes,
        formats=settings.formats,
        max_pixels=settings.max_pixels,
        qualities=settings.qualities,
    )
    try:
        rendered: imaging.Rendered = await ctx["pool"].run(job)
    except imaging.ImageRejected as exc:
        raise PermanentFailure(exc.reason) from None
    except DecodeTimeout:
        raise PermanentFailure(
            f"decoding took longer than {settings.decode_timeout_s:g} s"
        ) from None
    except (DecodeOutOfMemory, DecodeCrashed) as exc:
        raise TransientFailure(
            f"the decoder died ({exc}); memory cap {settings.decode_memory_mb} MB"
        ) from None
    sizes = await _write_sizes(primary, ticket.photo_id, rendered)
    return sizes, (rendered.width, rendered.height)


async def _write_sizes(
    primary: Storage, photo_id: str, rendered: imaging.Rendered
) -> dict[str, Derivative]:
    async def write(r: imaging.Rendition) -> StoredFile:
        key = keys.derivative(photo_id, r.name, imaging.EXTENSIONS[r.format])
        info = await primary.put_bytes(key, r.data)
        return StoredFile(
            key=key,
            bytes=info.size,
            sha256=info.sha256 or "",
            content_type=imaging.media_type(r.format),
        )

    written = await asyncio.gather(*(write(r) for r in rendered.renditions))
    sizes: dict[str, Derivative] = {}
    for r, file in zip(rendered.renditions, written, strict=True):
        if r.name in sizes:  # a further format of a size already seen
            sizes[r.name].alternates.append(file)
        else:
            sizes[r.name] = Derivative(**file.model_dump(), width=r.width, height=r.height)
    return sizes


async def process_photo(ctx: dict[str, Any], ticket_id: str) -> str:
    """arq job: make every derivative of one photo, then queue the callback."""
    try:
        return await _process_ticket(ctx, ticket_id)
    except RedisError as exc:
        # Redis went away mid-job (reading the ticket, queueing a callback): run it again
        # later rather than let arq mark it failed and leave the ticket stuck
        log.warning("redis error, will retry: %s", exc, extra={"ticket_id": ticket_id})
        raise Retry(defer=backoff.delay(ctx["job_try"])) from exc


async def _process_ticket(ctx: dict[str, Any], ticket_id: str) -> str:
    try:
        ticket = await ctx["tickets"].get(ticket_id)
    except NotFound:
        log.warning("ticket vanished before processing", extra={"ticket_id": ticket_id})
        return "no ticket"
    if ticket.status.terminal:
        return f"already {ticket.status.value}"
    started = time.perf_counter()
    outcome = "retry"
    try:
        outcome = await _process(ctx, ticket)
        return outcome
    finally:
        size = metrics.size_class(ticket.width * ticket.height)
        metrics.JOB_SECONDS.labels(size, outcome).observe(time.perf_counter() - started)


async def _process(ctx: dict[str, Any], ticket: Ticket) -> str:
    attempt: int = ctx["job_try"]
    # told while the render runs, and before its outcome is (the web tier applies in order)
    started = asyncio.ensure_future(notify.report(ctx, ticket, "processing.started", attempt))
    try:
        sizes, upright = await render(ctx, ticket)
    except (PermanentFailure, TransientFailure, StorageError, RedisError) as exc:
        await started
        return await _failed(ctx, ticket, exc)
    except BaseException:
        started.cancel()  # cancelled or crashed: the job runs again and reports again
        raise
    await started
    await notify.report(ctx, ticket, "processing.completed", attempt, sizes=sizes, upright=upright)
    log.info("photo processed", extra=_ids(ctx, ticket))
    return "completed"


def _ids(ctx: dict[str, Any], ticket: Ticket) -> dict[str, Any]:
    return {"ticket_id": ticket.id, "photo_id": ticket.photo_id, "attempt": ctx["job_try"]}


async def _failed(ctx: dict[str, Any], ticket: Ticket, exc: Exception) -> str:
    """A permanent failure fails the ticket; a transient one is retried, up to a limit."""
    if not isinstance(exc, PermanentFailure):
        return await _retry_or_fail(ctx, ticket, f"{exc}")
    log.warning("photo failed: %s", exc, extra=_ids(ctx, ticket))
    await notify.report(ctx, ticket, "processing.failed", ctx["job_try"], error=str(exc))
    return "failed"


async def _retry_or_fail(ctx: dict[str, Any], ticket: Ticket, reason: str) -> str:
    settings: Settings = ctx["settings"]
    attempt: int = ctx["job_try"]
    ids = _ids(ctx, ticket)
    if attempt >= settings.job_max_tries:
        log.error("photo failed after %d tries: %s", attempt, reason, extra=ids)
        error = f"gave up after {attempt} tries: {reason}"
        await notify.report(ctx, ticket, "processing.failed", attempt, error=error)
        return "failed"
    log.warning("transient failure, will retry: %s", reason, extra=ids)
    raise Retry(defer=backoff.delay(attempt))


def build_worker(
    settings: Settings, queue_name: str = keys.UPLOADS_QUEUE, burst: bool = False
) -> Worker:
    """An arq Worker for one lane; tests run it with burst=True."""
    slots = concurrency(settings)
    worker = Worker(
        functions=[
            func(
                process_photo,
                name="process_photo",
                timeout=settings.job_timeout_s,
                max_tries=settings.job_max_tries + 1,
            ),
            func(
                notify.send_callback,
                name="send_callback",
                timeout=settings.callback_timeout_ms / 1000 + 5,
                max_tries=settings.callback_max_tries + 1,
            ),
        ],
        redis_pool=redis_client(settings),  # ours: arq's own pool has no read timeout
        queue_name=queue_name,
        ctx={"settings": settings},
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=slots + 4,  # callbacks are light; resizes queue for a sandbox slot
        poll_delay=0.01,  # a new upload starts within ~10 ms (100 cheap ZRANGEBYSCOREs/s idle)
        burst=burst,
        handle_signals=not burst,
        keep_result=3600,
    )
    worker.on_stop = lambda _signal: cancel_until_stopped(worker)
    return worker


def cancel_until_stopped(worker: Worker) -> None:
    """Cancel arq's main task again until it ends (arq's handle_sig cancels it only once).

    A cancel that lands while arq's start_jobs runs its WATCH/EXEC transaction can be lost:
    the task ends that step in a WatchError, which arq catches, and the worker ran on after
    SIGTERM (seen in tests/test_faults.py under load).
    """
    task = worker.main_task
    if task is not None and not task.done():
        task.cancel()
        worker.loop.call_later(STOP_RECHECK_S, cancel_until_stopped, worker)


def finish_cancelled_jobs(worker: Worker) -> None:
    """Let the bookkeeping of jobs cancelled at shutdown land before the process exits.

    arq's close() can stop waiting while its shielded "run this job again" writes are still
    in flight; without them those jobs would wait out their whole lease before re-running.
    """
    pending = [
        task
        for task in asyncio.all_tasks(worker.loop)
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "Worker.finish_job"
    ]
    if pending:
        worker.loop.run_until_complete(asyncio.wait(pending, timeout=10))
    worker.loop.run_until_complete(shutdown(worker.ctx))


def run_worker(
    settings: Settings, queue_name: str = keys.UPLOADS_QUEUE, burst: bool = False
) -> None:
    """Run the worker role until interrupted (or until the queue is empty, with burst).

    arq's worker exits when Redis goes away; a worker process must outlive a Redis restart,
    so it starts a fresh arq worker once Redis answers again (jobs it held are re-run by arq).
    """
    while True:
        worker = build_worker(settings, queue_name, burst)
        try:
            worker.run()
            return
        except asyncio.CancelledError:
            finish_cancelled_jobs(worker)
            return
        except (RedisError, OSError) as exc:
            log.warning("lost Redis (%s); reconnecting in %.0f s", exc, RECONNECT_S)
            worker.loop.run_until_complete(shutdown(worker.ctx))  # arq skipped it
            time.sleep(RECONNECT_S)
