"""A role as a process: its own group, its log, paused and resumed, stopped, waited for."""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path

import pytest

from imagepipe.stack.net import free_port
from imagepipe.stack.processes import RoleProcess, stop_roles, wait_ready
from tests.test_dev import alive, wait_for

TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.02)\n"


def python(name: str, code: str, log: Path) -> RoleProcess:
    """A role running `code` in this Python, logging to `log`."""
    return RoleProcess(name, [sys.executable, "-c", code], log_path=log)


def test_a_role_logs_to_its_file_and_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    role = python("ticker", TICKER, tmp_path / "ticker.log").start()
    wait_for(lambda: "tick" in role.log_text(), timeout=10)
    pid = role.pid
    with caplog.at_level(logging.INFO, "imagepipe.stack.processes"):
        assert role.alive and role.stop(timeout_s=5)
    assert not role.alive and not alive(pid)
    assert role.log_tail(5) == "tick\n"
    assert role.returncode == -signal.SIGTERM  # our SIGTERM's default action ended it...
    assert caplog.messages == ["stopped ticker"]  # ...which is a clean stop, not a failure


def test_a_role_that_fails_as_it_stops_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    failing = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    role = python("flaky", failing, tmp_path / "flaky.log").start()
    wait_for(lambda: "ready" in role.log_text(), timeout=10)
    with caplog.at_level(logging.INFO, "imagepipe.stack.processes"):
        assert role.stop(timeout_s=5)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "flaky ended in a failure, not a clean stop (exit code 3)")
    ]


def test_pause_freezes_the_role_and_stop_still_ends_it(tmp_path: Path) -> None:
    role = python("ticker", TICKER, tmp_path / "ticker.log").start()
    wait_for(lambda: "tick" in role.log_text(), timeout=10)
    role.pause()
    time.sleep(0.1)  # a print in flight lands
    frozen = role.log_text()
    time.sleep(0.3)
    assert role.log_text() == frozen
    role.resume()
    wait_for(lambda: role.log_text() != frozen, timeout=5)
    role.pause()
    assert role.stop(timeout_s=5)  # SIGCONT first: a paused role still handles SIGTERM


def test_stop_roles_names_those_that_ignored_sigterm(tmp_path: Path) -> None:
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    roles = [
        python("stubborn", stubborn, tmp_path / "stubborn.log").start(),
        python("ticker", TICKER, tmp_path / "ticker.log").start(),
    ]
    wait_for(lambda: "ready" in roles[0].log_text(), timeout=10)
    assert stop_roles(roles, timeout_s=0.5) == ["stubborn"]
    assert not any(role.alive for role in roles)


def test_kill_signals_the_role_and_waits_for_it(tmp_path: Path) -> None:
    role = python("ticker", TICKER, tmp_path / "ticker.log").start()
    assert role.kill(signal.SIGTERM) == -signal.SIGTERM
    assert not role.alive
    with pytest.raises(RuntimeError, match="ticker exited with -15"):
        role.check_alive()


async def test_wait_ready_raises_when_the_role_dies(tmp_path: Path) -> None:
    role = python("quitter", "print('cannot start')", tmp_path / "quitter.log").start()
    with pytest.raises(RuntimeError, match="quitter exited with 0:\ncannot start"):
        await wait_ready(f"http://127.0.0.1:{free_port()}", 10, role.check_alive)


async def test_wait_ready_times_out_on_a_silent_port() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer 200 within"):
        await wait_ready(f"http://127.0.0.1:{free_port()}", 0.5)
    assert time.monotonic() - started < 5
