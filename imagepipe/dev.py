"""`imagepipe dev`: Valkey, backup S3, api, worker and replicator on one machine.

The servers are the embedded ones unless `IMAGEPIPE_REDIS_URL` / `IMAGEPIPE_BACKUP_S3_ENDPOINT`
point elsewhere. The three roles run as child processes that a `Supervisor` restarts when
they die; SIGINT/SIGTERM stop everything, roles first, then the servers they use.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from types import FrameType

from imagepipe.config import Settings
from imagepipe.embedded import EmbeddedS3, EmbeddedValkey, port_answers

logger = logging.getLogger(__name__)

RESTART_BACKOFF_S = 1.0
RESTART_BACKOFF_CAP_S = 30.0
STABLE_AFTER_S = 30.0  # a child that lived this long crashed afresh: back to the short backoff
STOP_TIMEOUT_S = 10.0
TICK_S = 0.2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
        logger.info("started %s (pid %d)", child.name, child.process.pid)

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
        _signal_group(child, signal.SIGKILL)  # leftovers of the dead role must not linger
        lived = now - child.started_at
        child.crashes = 1 if lived >= STABLE_AFTER_S else child.crashes + 1
        # doubling backoff: a role that crashes on start must not spin the CPU
        delay = min(self.backoff_s * 2 ** (child.crashes - 1), RESTART_BACKOFF_CAP_S)
        child.restart_at = now + delay
        logger.warning(
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
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for child in running:
            _wait_or_kill(child, deadline)
            child.process = None  # its pid may be reused: never signal it again


def _signal_group(child: Child, signum: signal.Signals) -> None:
    assert child.process is not None
    with suppress(ProcessLookupError):  # the whole group is gone already
        os.killpg(child.process.pid, signum)


def _wait_or_kill(child: Child, deadline: float) -> None:
    assert child.process is not None
    try:
        child.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        logger.warning("%s ignored SIGTERM; killing it", child.name)
        _signal_group(child, signal.SIGKILL)
        child.process.wait()
    # also SIGKILL whatever the child forked and left behind, even after a clean exit
    _signal_group(child, signal.SIGKILL)
    logger.info("stopped %s (code %s)", child.name, child.process.returncode)


def role_commands(host: str, port: int) -> dict[str, list[str]]:
    """The api, worker and replicator command lines, run by this same Python."""
    imagepipe = [sys.executable, "-m", "imagepipe"]
    return {
        "api": [*imagepipe, "api", "--host", host, "--port", str(port)],
        "worker": [*imagepipe, "worker"],
        # repairs from the audit run in their own lane, so they never starve new uploads
        "backfill": [*imagepipe, "worker", "--lane", "backfill", "--concurrency", "1"],
        "replicator": [*imagepipe, "replicator"],
    }


def local_host(host: str) -> str:
    """The address a local client uses to reach a server bound to `host`."""
    if host in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def child_env(
    settings: Settings,
    *,
    redis_url: str,
    backup_endpoint: str,
    port: int,
    host: str,
    base: Mapping[str, str] = os.environ,
) -> dict[str, str]:
    """The environment of every role: the caller's, plus where the stack's servers are."""
    env = dict(base)
    env.update(
        IMAGEPIPE_REDIS_URL=redis_url,
        IMAGEPIPE_BACKUP_S3_ENDPOINT=backup_endpoint,
        IMAGEPIPE_DATA_DIR=str(settings.data_dir.resolve()),
        AWS_ACCESS_KEY_ID=settings.s3_access_key_id,
        AWS_SECRET_ACCESS_KEY=settings.s3_secret_access_key.get_secret_value(),
    )
    env.setdefault("IMAGEPIPE_CALLBACK_URL", f"http://{local_host(host)}:{port}/internal/callbacks")
    return env


def _start_servers(settings: Settings, stack: ExitStack) -> tuple[str, str]:
    """Start the embedded Valkey and S3 where no external ones are configured.

    Raises RuntimeError (or OSError) when one of them cannot start.
    """
    data_dir = settings.data_dir.resolve()
    redis_url = settings.redis_url
    if not redis_url:
        redis_url = stack.enter_context(EmbeddedValkey(data_dir)).url
    endpoint = settings.backup_s3_endpoint
    if not endpoint:
        s3 = EmbeddedS3(
            data_dir,
            settings.backup_s3_bucket,
            settings.s3_access_key_id,
            settings.s3_secret_access_key.get_secret_value(),
        )
        endpoint = stack.enter_context(s3).url
    return redis_url, endpoint


@dataclass
class _StopRequest:
    """Set from a signal handler; a plain flag, since handlers must not take locks."""

    signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            logger.info("%s: stopping the stack", signal.Signals(signum).name)
        self.signum = signum


def _trap_stop_signals(stack: ExitStack) -> _StopRequest:
    request = _StopRequest()
    for signum in STOP_SIGNALS:
        previous = signal.signal(signum, request)
        stack.callback(signal.signal, signum, previous)
    return request


def _supervise(supervisor: Supervisor, request: _StopRequest, api: str, banner: str) -> None:
    """Restart dead children until a stop signal; print the banner once the api answers."""
    host, port = api.rsplit(":", 1)
    announced = False
    while request.signum is None:
        supervisor.poll()
        if not announced and port_answers(host.strip("[]"), int(port)):
            print(banner, flush=True)
            announced = True
        time.sleep(TICK_S)


def run_dev(settings: Settings, host: str, port: int) -> int:
    """Run the whole local stack until SIGINT/SIGTERM; 0 after a clean stop."""
    api = f"{local_host(host)}:{port}"
    if port_answers(local_host(host).strip("[]"), port):
        logger.error("port %d is already in use: is another imagepipe running?", port)
        return 1
    data_dir = settings.data_dir.resolve()
    settings.primary_root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        request = _trap_stop_signals(stack)
        try:
            redis_url, endpoint = _start_servers(settings, stack)
        except (RuntimeError, OSError) as exc:
            logger.error("cannot start the local stack: %s", exc)
            return 1
        env = child_env(
            settings, redis_url=redis_url, backup_endpoint=endpoint, port=port, host=host
        )
        supervisor = Supervisor(role_commands(host, port), env)
        # registered after the servers: the roles stop first, while Valkey and S3 still answer
        stack.callback(supervisor.stop)
        supervisor.start()
        banner = f"imagepipe is up: http://{api}/  (data: {data_dir})"
        _supervise(supervisor, request, api, banner)
    logger.info("imagepipe dev stopped")
    return 0
