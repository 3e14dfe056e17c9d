"""A Supervisor keeps named child processes running, restarting the ones that die with a
doubling backoff, and stops them all in order: SIGTERM to each process group, then SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_CAP_S = 30.0
STABLE_AFTER_S = 30.0  # a child that lived this long crashed afresh: back to the short backoff
STOP_TIMEOUT_S = 10.0


@dataclass
class Child:
    """One supervised process and its restart state."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Keeps named child processes running until `stop()`."""

    commands: Mapping[str, Sequence[str]]
    env: Mapping[str, str] | None = None
    backoff_s: float = RESTART_BACKOFF_S
    stop_timeout_s: float = STOP_TIMEOUT_S
    children: dict[str, Child] = field(init=False)
    stopping: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.children = {name: Child(name, list(argv)) for name, argv in self.commands.items()}

    def start(self) -> None:
        """Spawn every child."""
        for child in self.children.values():
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        # own process group: stop() can signal a role together with anything it forked,
        # and a terminal Ctrl-C reaches only us, so we stop the roles in order
        child.process = subprocess.Popen(
            child.argv, env=None if self.env is None else dict(self.env), process_group=0
        )
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def poll(self) -> None:
        """Notice children that exited; restart each once its backoff has passed."""
        now = time.monotonic()
        for child in self.children.values():
            if self.stopping:
                return
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._spawn(child)
            elif child.process is not None and (code := child.process.poll()) is not None:
                self._schedule_restart(child, code, now)

    def _schedule_restart(self, child: Child, code: int, now: float) -> None:
        signal_group(child, signal.SIGKILL)  # leftovers of the dead role must not linger
        lived = now - child.started_at
        child.crashes = 1 if lived >= STABLE_AFTER_S else child.crashes + 1
        # doubling backoff: a role that crashes on start must not spin the CPU
        delay = min(self.backoff_s * 2 ** (child.crashes - 1), RESTART_BACKOFF_CAP_S)
        child.restart_at = now + delay
        log.warning(
            "%s exited with code %s after %.1f s; restarting in %.1f s",
            child.name,
            code,
            lived,
            delay,
        )

    def pids(self) -> dict[str, int]:
        """Process ids of the children now running."""
        return {
            c.name: c.process.pid
            for c in self.children.values()
            if c.process is not None and c.process.poll() is None
        }

    def stop(self) -> None:
        """SIGTERM every child's process group, wait up to `stop_timeout_s`, then SIGKILL."""
        self.stopping = True
        running = [c for c in self.children.values() if c.process is not None]
        for child in running:
            signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            _wait_or_kill(child, deadline)
            child.process = None  # its pid may be reused: never signal it again


def signal_group(child: Child, signum: signal.Signals) -> None:
    """Signal the child's whole process group (it and whatever it forked)."""
    assert child.process is not None
    with suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(child.process.pid, signum)


def _wait_or_kill(child: Child, deadline: float) -> None:
    assert child.process is not None
    try:
        child.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        log.warning("%s ignored SIGTERM; killing it", child.name)
        signal_group(child, signal.SIGKILL)
        child.process.wait()
    # also SIGKILL whatever the child forked and left behind, even after a clean exit
    signal_group(child, signal.SIGKILL)
    log.info("stopped %s (code %s)", child.name, child.process.returncode)
