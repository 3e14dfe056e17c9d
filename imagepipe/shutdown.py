"""A role's stop, bounded: told to stop, it has `IMAGEPIPE_STOP_GRACE_S` to finish, then it
leaves anyway.

A stop is graceful first: work in flight is cancelled and connections are closed. But a thread
blocked in a network call (boto3 waiting on a backup S3 that accepted the connection and then
stopped answering: read timeout × attempts, minutes) holds the process at exit, because Python
joins its executor threads then. Everything a role does is safe to cut short (a copy is
acknowledged only once verified, an entry left claimed is reclaimed, a job runs again), so past
the grace period the process says why and exits with the status SIGTERM's default action gives
(143): a process manager sees a stop, not a hang it must SIGKILL without a word.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

log = logging.getLogger(__name__)
EXIT_STATUS = 128 + signal.SIGTERM


def exit_after(grace_s: float, role: str) -> threading.Timer:
    """From now on, the process exits in ``grace_s`` unless it has ended by then."""
    timer = threading.Timer(grace_s, _leave, args=(grace_s, role))
    timer.daemon = True  # never itself what keeps the process alive
    timer.start()
    return timer


def _leave(grace_s: float, role: str) -> None:
    log.warning(
        "%s did not stop within %.0f s (IMAGEPIPE_STOP_GRACE_S): exiting now", role, grace_s
    )
    logging.shutdown()
    os._exit(EXIT_STATUS)
