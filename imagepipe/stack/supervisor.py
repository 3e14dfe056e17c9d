"""A Supervisor keeps named roles running, restarting the ones that die with a doubling
backoff, and stops them all together: SIGTERM to each process group, then SIGKILL.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from imagepipe.stack.processes import RoleProcess, exit_reason, stop_roles

log = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_CAP_S = 30.0
STABLE_AFTER_S = 30.0  # a child that lived this long crashed afresh: back to the short backoff
STOP_TIMEOUT_S = 10.0


@dataclass
class Child:
    """One supervised role and its restart state."""

    process: RoleProcess
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None

    @property
    def name(self) -> str:
        """The role's name."""
        return self.process.name


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
        self.children = {
            name: Child(RoleProcess(name, argv, self.env)) for name, argv in self.commands.items()
        }

    def start(self) -> None:
        """Spawn every child."""
        for child in self.children.values():
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        child.process.start()
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
            elif (code := child.process.poll()) is not None:
                self._schedule_restart(child, code, now)

    def _schedule_restart(self, child: Child, code: int, now: float) -> None:
        child.process.signal(signal.SIGKILL)  # leftovers of the dead role must not linger
        lived = now - child.started_at
        child.crashes = 1 if lived >= STABLE_AFTER_S else child.crashes + 1
        # doubling backoff: a role that crashes on start must not spin the CPU
        delay = min(self.backoff_s * 2 ** (child.crashes - 1), RESTART_BACKOFF_CAP_S)
        child.restart_at = now + delay
        log.warning(
            "%s failed (%s) after %.1f s; restarting in %.1f s",
            child.name,
            exit_reason(code),
            lived,
            delay,
        )

    def pids(self) -> dict[str, int]:
        """Process ids of the children now running."""
        return {c.name: c.process.pid for c in self.children.values() if c.process.alive}

    def stop(self) -> None:
        """SIGTERM every child's process group, wait up to `stop_timeout_s`, then SIGKILL."""
        self.stopping = True
        stop_roles((c.process for c in self.children.values()), self.stop_timeout_s)
