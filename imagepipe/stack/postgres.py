"""The embedded PostgreSQL of a local stack: the `pgserver` package's PostgreSQL 16 binaries,
its data under `<data dir>/postgres/`, reached over a Unix socket in that folder.

pgserver makes the cluster (initdb) and starts the server (as a user of its own when we run
as root: PostgreSQL refuses root). Stopping is ours: a fast shutdown (SIGINT) when the stack
stops, never by pgserver's own exit hooks, so the tests can kill and restart it at will.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

from imagepipe.stack.servers import Server

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 15.0


def _server_class() -> Any:
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import PostgresServer
    return PostgresServer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie of ours counts as gone
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class EmbeddedPostgres(Server):
    """PostgreSQL under `<data_dir>/postgres/`, kept across restarts of the stack."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve() / "postgres"
        self.url = ""
        self.pid: int | None = None

    def start(self) -> str:
        """Make the cluster if there is none, start the server, return its URL."""
        if self.pid is not None and _alive(self.pid):
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._clear_stale_lock()
        # a terminal's Ctrl-C must reach the roles first, not the database they use
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server = _server_class()(self.data_dir, cleanup_mode=None)
        except Exception as exc:  # pgserver raises CalledProcessError, AssertionError, ...
            raise RuntimeError(f"postgresql did not start: {exc}") from exc
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.pid = server.get_pid()
        self.url = server.get_uri()
        log.info("embedded postgresql at %s (pid %s)", self.data_dir, self.pid)
        return self.url

    def _clear_stale_lock(self) -> None:
        """Remove the lock files of a server that died (killed, or a power cut).

        Both pgserver and PostgreSQL take a lock naming a zombie (a killed server nobody has
        reaped yet) for a live server, and would not start another.
        """
        for lock in (self.data_dir / "postmaster.pid", *self.data_dir.glob(".s.PGSQL.*.lock")):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(lock.read_text().split()[0])
                if not _alive(pid):
                    lock.unlink()
                    log.info("removed %s of a postgresql that died (pid %d)", lock.name, pid)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: active connections end, data is safe); safe to call twice."""
        pid, self.pid = self.pid, None
        if pid is None or not _alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            log.warning("postgresql ignored a fast shutdown; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
