"""Defaults that follow the machine, and the event-loop stall log."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from imagepipe import loopwatch
from imagepipe.config import Settings
from imagepipe.worker import deps


def test_decode_slots_follow_the_cores_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    monkeypatch.setattr(deps.os, "sched_getaffinity", lambda pid: {3})  # a 1-CPU cpuset
    monkeypatch.setattr(deps.os, "cpu_count", lambda: 64)  # on a big host
    assert deps.concurrency(settings.model_copy(update={"worker_concurrency": 0})) == 1
    assert deps.concurrency(settings.model_copy(update={"worker_concurrency": 3})) == 3


async def test_a_blocked_event_loop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="imagepipe.loopwatch")
    async with loopwatch.watching(10, "test"):
        await asyncio.sleep(0.03)
        time.sleep(0.08)  # noqa: ASYNC251 - the point: a synchronous call holding the loop
        await asyncio.sleep(0.03)
    # a busy machine may add short stalls of its own; the long one is there, as long as it was
    stalls = [int(r.getMessage().split()[4]) for r in caplog.records]
    assert stalls and max(stalls) >= 60, stalls
