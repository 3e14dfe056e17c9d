"""Roles as child processes: started in a process group of their own with a log file,
signalled, paused, stopped in order, and waited for until their api answers /readyz.

`imagepipe dev` (through the `Supervisor`), the tests and the benchmarks all start roles
with `RoleProcess`, stop them with `stop_roles` and wait for them with `wait_ready`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from signal import SIGCONT, SIGINT, SIGKILL, SIGSTOP, SIGTERM, Signals
from typing import IO, Self

import httpx

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 15.0
KILL_WAIT_S = 45.0  # generous: a loaded machine is slow to stop a worker gracefully
READY_POLL_S = 0.1
LOG_TAIL_CHARS = 3000
# How a role ends when it is told to stop: its own clean exit, our SIGTERM's default action,
# or a terminal's Ctrl-C (which reaches the whole foreground group: `imagepipe dev`'s roles too)
STOPPED_CODES = frozenset({0, -SIGTERM, -SIGINT, 128 + SIGINT, 128 + SIGTERM})


def exit_reason(code: int) -> str:
    """An exit status in words: "exit code 1", or "killed by SIGSEGV" for a signal."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def signal_group(pid: int, signum: int) -> None:
    """Signal a whole process group (a role and whatever it forked); gone already is fine."""
    # PermissionError: some kernels answer EPERM for a group left with only zombies
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


class RoleProcess:
    """One role as a child process: its own process group, its output in its log file.

    Without a log file the role writes to the parent's stdout and stderr (`imagepipe dev`).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = None if env is None else dict(env)
        self.log_path = log_path
        self.returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Spawn the role (again, once it has exited)."""
        with self._output() as output:
            # own process group: a stop reaches the role with whatever it forked, and a
            # terminal's Ctrl-C reaches only the parent, which stops the roles in order
            self._process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=output,
                stderr=None if output is None else subprocess.STDOUT,
                process_group=0,
            )
        self.returncode = None
        return self

    @contextmanager
    def _output(self) -> Iterator[IO[bytes] | None]:
        if self.log_path is None:
            yield None
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as output:
            yield output  # the child holds its own descriptor once spawned

    @property
    def pid(self) -> int:
        """The role's process id (also its process group's)."""
        assert self._process is not None, f"{self.name} is not running"
        return self._process.pid

    def poll(self) -> int | None:
        """The role's exit code once it has exited; None while it runs or before it starts."""
        if self._process is not None:
            self.returncode = self._process.poll()
        return self.returncode

    @property
    def started(self) -> bool:
        """Whether the role was started and `stop` has not finished with it yet."""
        return self._process is not None

    @property
    def alive(self) -> bool:
        """Whether the role has started and not exited."""
        return self._process is not None and self.poll() is None

    def signal(self, signum: int) -> None:
        """Signal the role's process group; nothing once `stop` has finished with it."""
        if self._process is not None:
            signal_group(self._process.pid, signum)

    def kill(self, signum: int = SIGKILL, timeout_s: float = KILL_WAIT_S) -> int:
        """Signal the role's own process (not what it forked) and wait for it to exit."""
        assert self._process is not None, f"{self.name} is not running"
        self._process.send_signal(signum)
        self.returncode = self._process.wait(timeout_s)
        return self.returncode

    def pause(self) -> None:
        """Freeze the role and its children (SIGSTOP)."""
        self.signal(SIGSTOP)

    def resume(self) -> None:
        """Let a paused role run again (SIGCONT)."""
        self.signal(SIGCONT)

    def terminate(self) -> None:
        """SIGTERM the role's group (after a SIGCONT: a paused role cannot handle SIGTERM)."""
        self.signal(SIGCONT)
        self.signal(SIGTERM)

    def finish(self, deadline: float) -> bool:
        """Wait (until the monotonic `deadline`) for a terminated role, then SIGKILL its group.

        True when it exited on its own, False when it had to be killed.
        """
        assert self._process is not None
        process, self._process = self._process, None  # its pid may be reused: never signal it
        clean = True
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            log.warning("%s ignored SIGTERM; killing it", self.name)
            clean = False
            signal_group(process.pid, SIGKILL)
            process.wait()
        # also SIGKILL whatever the role forked and left behind, even after a clean exit
        signal_group(process.pid, SIGKILL)
        self.returncode = process.returncode
        self._log_stop(clean)
        return clean

    def _log_stop(self, clean: bool) -> None:
        """Log a role that ended as told as stopped, and one that failed instead as failed."""
        code = self.returncode
        if clean and code in STOPPED_CODES:
            log.info("stopped %s", self.name)
        elif clean and code is not None:
            log.warning(
                "%s ended in a failure, not a clean stop (%s)", self.name, exit_reason(code)
            )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """SIGTERM the role's group, SIGKILL it after `timeout_s`; True if it exited on its own."""
        return not stop_roles([self], timeout_s)

    def log_text(self) -> str:
        """Everything the role has logged (the whole file, across restarts)."""
        if self.log_path is None:
            return "(no log file)"
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the role's log."""
        return self.log_text()[-chars:]

    def check_alive(self) -> None:
        """Raise RuntimeError, with the end of its log, when the role has exited."""
        code = self.poll()
        if code is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")


def stop_roles(roles: Iterable[RoleProcess], timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop roles together: SIGTERM every group, wait up to `timeout_s`, SIGKILL the rest.

    Returns the names of the roles that had to be killed.
    """
    running = [role for role in roles if role.started]
    for role in running:
        role.terminate()
    deadline = time.monotonic() + timeout_s
    killed = []
    for role in running:
        if not role.finish(deadline):
            killed.append(role.name)
    return killed


async def wait_ready(
    url: str, timeout_s: float, check_alive: Callable[[], None] | None = None
) -> None:
    """Poll `url`/readyz until it answers 200; TimeoutError when `timeout_s` runs out first.

    `check_alive` runs before every try and raises when a role the wait depends on died.
    """
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(base_url=url) as client:
        while time.monotonic() < deadline:
            if check_alive is not None:
                check_alive()
            if await _answers_ready(client):
                return
            await asyncio.sleep(READY_POLL_S)
    raise TimeoutError(f"{url}/readyz did not answer 200 within {timeout_s:.0f} s")


async def _answers_ready(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False
