"""`imagepipe dev`: Valkey, backup S3, api, worker and replicator on one machine.

The servers are the embedded ones unless `IMAGEPIPE_REDIS_URL` / `IMAGEPIPE_BACKUP_S3_ENDPOINT`
point elsewhere, and the secrets are the data dir's own (`stack.credentials`). The roles run
as child processes that a `Supervisor` restarts when they die; SIGINT/SIGTERM stop
everything, roles first, then the servers they use.
"""

from __future__ import annotations

import logging
import signal
import time
from contextlib import ExitStack
from dataclasses import dataclass
from types import FrameType

from imagepipe.config import Settings
from imagepipe.stack.credentials import with_dev_secrets
from imagepipe.stack.local import LocalServers
from imagepipe.stack.net import local_host, port_answers
from imagepipe.stack.roles import migrate_catalog, role_commands, role_env
from imagepipe.stack.supervisor import Supervisor

log = logging.getLogger(__name__)

TICK_S = 0.2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def role_settings(settings: Settings, host: str, port: int) -> Settings:
    """The settings every role of the stack runs with: callbacks go to this api by default
    (to its callback listener, where IMAGEPIPE_CALLBACK_PORT gives it one)."""
    if "callback_url" in settings.model_fields_set:
        return settings  # the user named a callback URL: keep it
    if settings.callback_port:
        host, port = settings.callback_host, settings.callback_port
    callback_url = f"http://{local_host(host)}:{port}/internal/callbacks"
    return settings.model_copy(update={"callback_url": callback_url})


@dataclass
class _StopRequest:
    """Set from a signal handler; a plain flag, since handlers must not take locks."""

    signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            log.info("%s: stopping the stack", signal.Signals(signum).name)
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
        log.error("port %d is already in use: is another imagepipe running?", port)
        return 1
    data_dir = settings.data_dir.resolve()
    settings.primary_root.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        request = _trap_stop_signals(stack)
        servers = LocalServers(with_dev_secrets(settings))
        stack.callback(servers.stop)
        try:
            settings = servers.start()
            migrate_catalog(settings)  # the dev stack keeps its catalog current
        except (RuntimeError, OSError) as exc:
            log.error("cannot start the local stack: %s", exc)
            return 1
        supervisor = Supervisor(
            role_commands(host, port), role_env(role_settings(settings, host, port))
        )
        # registered after the servers: the roles stop first, while Valkey and S3 still answer
        stack.callback(supervisor.stop)
        supervisor.start()
        banner = f"imagepipe is up: http://{api}/  (data: {data_dir})"
        _supervise(supervisor, request, api, banner)
    log.info("imagepipe dev stopped")
    return 0
