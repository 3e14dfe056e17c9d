"""The worker process: an arq Worker on one lane, restarted whenever Redis comes back.

Jobs are registered by the names in `imagepipe.queue`; what each does is in
`worker.processing` (process_photo) and `worker.notify` (send_callback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading

from arq.constants import in_progress_key_prefix
from arq.worker import Worker, func
from redis.exceptions import RedisError

from imagepipe import keys, queue
from imagepipe.config import Settings
from imagepipe.connections import redis_client
from imagepipe.worker.deps import concurrency, shutdown, startup
from imagepipe.worker.notify import send_callback
from imagepipe.worker.processing import outcomes_line, process_photo

log = logging.getLogger(__name__)
STOP_RECHECK_S = 0.1  # after SIGTERM, how often to make sure the worker is stopping
RECONNECT_S = 1.0


def build_worker(
    settings: Settings,
    queue_name: str = keys.UPLOADS_QUEUE,
    burst: bool = False,
    stop: threading.Event | None = None,
) -> Worker:
    """An arq Worker for one lane; tests run it with burst=True. A stop signal sets ``stop``."""
    slots = concurrency(settings)
    worker = Worker(
        functions=[
            func(
                process_photo,
                name=queue.PROCESS_PHOTO,
                timeout=settings.job_timeout_s,
                max_tries=settings.job_max_tries + 1,
            ),
            func(
                send_callback,
                name=queue.SEND_CALLBACK,
                timeout=settings.callback_timeout_ms / 1000 + 5,
                max_tries=settings.callback_max_tries + 1,
            ),
        ],
        redis_pool=redis_client(settings),  # ours: arq's own pool has no read timeout
        job_serializer=queue.encode_job,  # JSON: a job from Redis must not be able to run code
        job_deserializer=queue.decode_job,
        queue_name=queue_name,
        ctx={"settings": settings},
        on_startup=startup,
        on_shutdown=shutdown,
        max_jobs=slots + 4,  # callbacks are light; resizes queue for a sandbox slot
        poll_delay=0.01,  # a new upload starts within ~10 ms (100 cheap ZRANGEBYSCOREs/s idle)
        burst=burst,
        handle_signals=not burst,
        keep_result=min(3600, settings.ticket_retention_s),  # never beyond the ticket
    )
    worker.on_stop = lambda _signal: stopped(worker, stop)
    return worker


def stopped(worker: Worker, stop: threading.Event | None) -> None:
    """SIGTERM/SIGINT: stop the jobs under way, and (``stop``) the reconnecting too."""
    if stop is not None:
        stop.set()
    cancel_until_stopped(worker)


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
    worker.loop.run_until_complete(release_unstarted(worker))
    worker.loop.run_until_complete(shutdown(worker.ctx))


async def release_unstarted(worker: Worker) -> list[str]:
    """Jobs this worker claimed whose task the stop cancelled before arq's run_job reached its
    own handling (a task cancelled before it began, or while it read its job): arq never put
    them back, so their in-progress key would hold them for the whole lease (job timeout +
    10 s). The job is still queued: without the key, any worker runs it again at once."""
    unstarted = [job_id for job_id, task in worker.tasks.items() if task.cancelled()]
    if unstarted:
        with contextlib.suppress(RedisError):
            await worker.pool.delete(*(in_progress_key_prefix + job_id for job_id in unstarted))
            log.info("released %d jobs cancelled before they began", len(unstarted))
    return unstarted


def run_worker(
    settings: Settings, queue_name: str = keys.UPLOADS_QUEUE, burst: bool = False
) -> None:
    """Run the worker role until interrupted (or until the queue is empty, with burst).

    Its last line counts the photos: arq's shutdown line counts jobs, all of them "complete"
    when they reported a failed photo.
    """
    try:
        _run_until_stopped(settings, queue_name, burst)
    finally:
        log.info("worker stopped; %s", outcomes_line())


def _run_until_stopped(settings: Settings, queue_name: str, burst: bool) -> None:
    """Run arq workers on the lane until one stops for good.

    arq's worker exits when Redis goes away; a worker process must outlive a Redis restart,
    so it starts a fresh arq worker once Redis answers again (jobs it held are re-run by arq).
    """
    stop = threading.Event()  # SIGTERM/SIGINT while Redis is away: no arq job to cancel
    while not stop.is_set():
        worker = build_worker(settings, queue_name, burst, stop)
        try:
            worker.run()
            return
        except asyncio.CancelledError:
            finish_cancelled_jobs(worker)
            return
        except (RedisError, OSError) as exc:
            log.warning("lost Redis (%s); reconnecting in %.0f s", exc, RECONNECT_S)
            worker.loop.run_until_complete(shutdown(worker.ctx))  # arq skipped it
            _wait_unless_stopped(stop, RECONNECT_S)
    log.info("stopped while Redis was unreachable")


def _wait_unless_stopped(stop: threading.Event, seconds: float) -> None:
    """Sleep between reconnects, ending at once (and for good) on SIGTERM or SIGINT."""
    stops = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in stops}
    try:
        stop.wait(seconds)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
