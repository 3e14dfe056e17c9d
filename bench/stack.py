"""The local stack for the benchmarks: embedded Valkey and S3, and the roles as processes.

Everything lives in a temporary data dir and listens on loopback only. Each role runs as
``python -m imagepipe ROLE`` in a process group of its own (`imagepipe.stack.processes`), so a
benchmark can pause a worker together with its decode children (SIGSTOP / SIGCONT) or stop it
cleanly (SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import boto3
import httpx
import redis
from botocore.config import Config
from sqlalchemy import text

from imagepipe.catalog.engine import create_engine
from imagepipe.config import Settings
from imagepipe.grants import SCOPES, mint
from imagepipe.stack.local import LocalServers
from imagepipe.stack.net import free_port
from imagepipe.stack.processes import RoleProcess, wait_ready
from imagepipe.stack.roles import migrate_catalog, role_argv, role_env
from imagepipe.stack.servers import EmbeddedS3, EmbeddedValkey

ACCESS_KEY, SECRET_KEY = "bench", "bench-secret"
GRANT_SECRET = "bench-grant-secret-of-32-characters-at-least"  # noqa: S105 (a bench stack)
BUCKET = "imagepipe-bench"
STOP_TIMEOUT_S = 15.0
TERMINAL = ("completed", "failed")


@dataclass
class Stack:
    """Valkey + S3 for the whole benchmark run; roles started and stopped per benchmark."""

    root: Path
    workers: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    roles: dict[str, RoleProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.servers = LocalServers(
            Settings.model_validate(
                {
                    "data_dir": self.root,
                    # the embedded Valkey, PostgreSQL and S3, whatever the environment says
                    "redis_url": None,
                    "database_url": None,
                    "backup_s3_endpoint": None,
                    "backup_s3_bucket": BUCKET,
                    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                    "callback_secret": "bench-callback-secret-of-32-characters-at-least",
                    "grant_secret": GRANT_SECRET,
                    "worker_concurrency": self.workers,
                }
            )
        )

    @property
    def authorization(self) -> str:
        """The header a client sends: a grant, as a web tier would mint it. A load generator,
        not a user: its grant lifts fair use's rate and daily bytes (0 = unlimited)."""
        unlimited = {"uploads_per_minute": 0, "bytes_per_day": 0}
        return f"Bearer {mint(GRANT_SECRET, 'bench', SCOPES, 3600, **unlimited)}"

    def backup_client(self) -> Any:
        """Plain boto3 on the backup S3 server: what the anchors measure against."""
        assert self.s3 is not None
        return boto3.client(
            "s3",
            endpoint_url=self.s3.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def client(self, timeout: float, **options: Any) -> httpx.AsyncClient:
        """A client of this stack's API, sending a grant."""
        headers = {"Authorization": self.authorization}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, **options)

    @classmethod
    @contextlib.contextmanager
    def running(cls, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[Stack]:
        """A stack in a fresh temp dir, torn down (roles, then servers) on exit."""
        keep = os.environ.get("IMAGEPIPE_BENCH_KEEP")  # debugging: keep the stack's files
        with (
            contextlib.nullcontext(tempfile.mkdtemp(prefix="imagepipe-bench-"))
            if keep
            else tempfile.TemporaryDirectory(prefix="imagepipe-bench-") as tmp
        ):
            stack = cls(Path(tmp), workers, dict(env or {}))
            try:
                stack.start_servers()
                yield stack
            finally:
                stack.close()

    def start_servers(self) -> None:
        """Start Valkey, PostgreSQL and rclone's S3 (their data under ``root``); migrate."""
        migrate_catalog(self.servers.start())
        self.port = free_port()

    @property
    def valkey(self) -> EmbeddedValkey | None:
        """The embedded Valkey."""
        return self.servers.valkey

    @property
    def s3(self) -> EmbeddedS3 | None:
        """The embedded backup S3."""
        return self.servers.s3

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        """Where every role points: the servers, this run's data dir, the API's callbacks."""
        callback_url = f"{self.url}/internal/callbacks"
        return self.servers.settings.model_copy(update={"callback_url": callback_url})

    def env(self, **overrides: str) -> dict[str, str]:
        """What every role reads: where the servers are, this run's data dir and secrets."""
        quiet = {"IMAGEPIPE_LOG_LEVEL": "WARNING"}  # a log line per request would be measured too
        return role_env(self.settings) | quiet | self.extra_env | overrides

    # -- roles --

    def start(self, role: str, *args: str, **env: str) -> RoleProcess:
        """Start one role (``api``, ``worker``, ``replicator``) unless it runs already."""
        if role in self.roles and self.roles[role].alive:
            return self.roles[role]
        if role == "api":
            args = (*args, "--host", "127.0.0.1", "--port", str(self.port))
        log = self.root / f"{role}.log"
        self.roles[role] = RoleProcess(role, role_argv(role, *args), self.env(**env), log)
        return self.roles[role].start()

    def stop(self, *roles: str) -> None:
        """SIGTERM the roles (and their children), SIGKILL whatever outlives the timeout."""
        for role in roles or list(self.roles):
            process = self.roles.pop(role, None)
            if process is not None:
                process.stop(STOP_TIMEOUT_S)

    def pause(self, role: str) -> None:
        """Freeze a role and its children (SIGSTOP): work queues up meanwhile."""
        self.roles[role].pause()

    def resume(self, role: str) -> None:
        """Let a paused role run again."""
        self.roles[role].resume()

    def pid(self, role: str) -> int:
        """The process id of a running role."""
        return self.roles[role].pid

    def check_alive(self) -> None:
        """Raise if a role died, with the tail of its log."""
        for process in self.roles.values():
            process.check_alive()

    async def wait_ready(self, timeout_s: float = 60) -> None:
        """Until /readyz answers 200 (the API is up and reaches Valkey and primary)."""
        await wait_ready(self.url, timeout_s, self.check_alive)

    def reset(self) -> None:
        """Between benchmarks: no roles, an empty Valkey, catalog and primary store.

        Without it a benchmark inherits the queue and the replication backlog of the one
        before (row 5 leaves hundreds of unprocessed uploads behind).
        """
        assert self.valkey is not None
        self.stop()
        client = redis.Redis.from_url(self.valkey.url)
        try:
            client.flushall()
        finally:
            client.close()
        asyncio.run(_empty_catalog(self.settings))
        shutil.rmtree(self.root / "primary", ignore_errors=True)

    def close(self) -> None:
        """Stop every role, then the servers."""
        self.stop()
        self.servers.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, CPU clock ticks used), for every process now alive."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # the fields after the command name (which may hold spaces): state ppid ...
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return table


def cpu_s(pid: int, descendants: bool = True) -> float:
    """CPU seconds (user + system) used so far by a process (and its live descendants)."""
    table, total, todo = _proc_table(), 0, [pid]
    while todo:
        current = todo.pop()
        total += table.get(current, (0, 0))[1]
        if descendants:
            todo += [child for child, (parent, _) in table.items() if parent == current]
    return total / os.sysconf("SC_CLK_TCK")


# -- talking to the API ------------------------------------------------------------------


async def upload(client: httpx.AsyncClient, data: bytes) -> str:
    """POST one photo as a raw image body; its ticket id."""
    response = await client.post("/photos", content=data, headers={"Content-Type": "image/jpeg"})
    if response.status_code != 202:
        raise RuntimeError(f"upload refused: {response.status_code} {response.text[:300]}")
    return str(response.json()["id"])


async def tickets(client: httpx.AsyncClient, ids: Sequence[str]) -> dict[str, Any]:
    """Many tickets at once, in batches the API accepts."""
    found: dict[str, Any] = {}
    for start in range(0, len(ids), 100):
        batch = ",".join(ids[start : start + 100])
        found |= (await client.get("/tickets", params={"ids": batch})).json()["tickets"]
    return found


async def wait_for(
    client: httpx.AsyncClient,
    ids: Sequence[str],
    *,
    backup: bool = False,
    timeout_s: float = 300,
    poll_s: float = 0.05,
) -> float:
    """Poll until every ticket is terminal (and backed up); the monotonic time it was seen."""
    await wait_tickets(client, ids, backup=backup, timeout_s=timeout_s, poll_s=poll_s)
    return time.monotonic()


async def wait_tickets(
    client: httpx.AsyncClient,
    ids: Sequence[str],
    *,
    backup: bool = False,
    timeout_s: float = 300,
    poll_s: float = 0.05,
) -> dict[str, Any]:
    """Poll until every ticket is terminal (and backed up); the tickets as last seen."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await tickets(client, ids)
        done = all(t and t["status"] in TERMINAL for t in found.values())
        if done and backup:
            done = all(t["backup"] == "completed" for t in found.values())
        if done:
            failed = [t["error"] for t in found.values() if t["status"] == "failed"]
            if failed:
                raise RuntimeError(f"{len(failed)} tickets failed, e.g. {failed[0]}")
            return found
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"{len(ids)} tickets not done within {timeout_s:.0f} s")


def last_update(found: dict[str, Any]) -> float:
    """The latest ``updated_at`` of these tickets, as a Unix time."""
    return max(datetime.fromisoformat(t["updated_at"]).timestamp() for t in found.values())


async def _empty_catalog(settings: Settings) -> None:
    engine = create_engine(settings)
    try:
        async with engine.begin() as db:
            await db.execute(text("TRUNCATE objects, photos, marks, deletions, removals"))
    finally:
        await engine.dispose()
