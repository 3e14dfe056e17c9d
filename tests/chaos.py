"""`make chaos`: uploads and deletes while roles are killed and restarted at random and
backup flaps.

    python -m tests.chaos --uploads 200 --deletes 0.2 --seed 7

A share of the accepted photos is deleted as the load runs (some still processing, some
with their copies in flight). Both invariants are checked at the end: every kept photo is
whole on primary and in backup; of every deleted one nothing is left but its tombstone.
Prints the invariant table and exits non-zero on any violation. Every loop is bounded in
count and time, and all traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from imagepipe.stack.servers import EmbeddedS3
from tests import images
from tests.cluster import ACCESS, BUCKET, SECRET, Cluster
from tests.owners import bearer

KILLABLE = ("api", "worker", "replicator")
# the audits below requeue a ticket idle this long whose job the kills lost (as the
# replicators' periodic audit does in production, after 10 minutes)
AUDIT_STUCK_AFTER_S = 15
CHAOS_ENV = {
    "IMAGEPIPE_IDEMPOTENCY_LEASE_S": "5",
    "IMAGEPIPE_AUDIT_STUCK_AFTER_S": str(AUDIT_STUCK_AFTER_S),
}


async def upload_with_retries(
    cluster: Cluster, client: httpx.AsyncClient, data: bytes, key: str, deadline: float
) -> bool:
    """Upload until accepted, retrying with the same Idempotency-Key (as a careful client does)."""
    while time.monotonic() < deadline:
        try:
            if await cluster.upload(client, data, key) is not None:
                return True
        except httpx.TransportError:
            pass  # the API is down right now
        await asyncio.sleep(0.3)
    return False


async def upload_all(
    cluster: Cluster, client: httpx.AsyncClient, n: int, seconds: float, rng: random.Random
) -> int:
    """n uploads spread evenly over `seconds`, so the kills land among them."""
    photos = [images.jpeg(rng.randint(300, 1600), rng.randint(300, 1200)) for _ in range(8)]
    deadline = time.monotonic() + seconds + 120

    async def one(i: int) -> bool:
        await asyncio.sleep(i * seconds / n)
        return await upload_with_retries(cluster, client, photos[i % 8], f"chaos-{i}", deadline)

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


async def delete_with_retries(
    cluster: Cluster, client: httpx.AsyncClient, photo_id: str, deadline: float
) -> bool:
    """DELETE until answered 202 (a second DELETE gets the same ticket: safe to repeat)."""
    while time.monotonic() < deadline:
        try:
            response = await client.delete(f"{cluster.url}/photos/{photo_id}")
        except httpx.TransportError:
            response = None  # the API is down right now
        if response is not None and response.status_code == 202:
            cluster.deleted[photo_id] = response.json()["id"]
            return True
        await asyncio.sleep(0.3)
    return False


async def delete_some(
    cluster: Cluster,
    client: httpx.AsyncClient,
    share: float,
    stop: asyncio.Event,
    rng: random.Random,
) -> int:
    """Delete a random ``share`` of the photos accepted so far, as the uploads go on."""
    asked, seen = 0, 0
    while not stop.is_set() or seen < len(cluster.uploads):
        await asyncio.sleep(0.2)
        fresh, seen = cluster.uploads[seen:], len(cluster.uploads)
        for upload in fresh:
            if rng.random() < share:
                deadline = time.monotonic() + 120
                asked += await delete_with_retries(cluster, client, upload.photo_id, deadline)
    return asked


async def monkey(
    cluster: Cluster, rng: random.Random, stop: asyncio.Event, tally: Counter[str]
) -> None:
    """Kill a role or take backup away, every second or two, until told to stop."""
    while not stop.is_set():
        await asyncio.sleep(rng.uniform(0.5, 2.0))
        if rng.random() < 0.25:
            cluster.s3.stop()
            tally["backup outage"] += 1
            await asyncio.sleep(rng.uniform(1, 3))
            restart_backup(cluster)
            continue
        role = rng.choice(KILLABLE)
        cluster.kill(role, rng.choice((signal.SIGKILL, signal.SIGTERM)))
        tally[f"{role} killed"] += 1
        await asyncio.sleep(rng.uniform(0.2, 1.5))
        cluster.start_role(role)


def restart_backup(cluster: Cluster) -> None:
    cluster.servers.s3 = EmbeddedS3(cluster.root, BUCKET, ACCESS, SECRET, port=cluster.s3.port)
    cluster.s3.start()


async def run(uploads: int, seconds: float, seed: int, root: Path, deletes: float = 0.2) -> int:
    rng, tally = random.Random(seed), Counter[str]()
    cluster = Cluster(root, env_overrides=CHAOS_ENV)
    cluster.start()
    try:
        await cluster.wait_ready()
        async with httpx.AsyncClient(headers=bearer(), timeout=30) as client:
            stop = asyncio.Event()
            chaos = asyncio.create_task(monkey(cluster, rng, stop, tally))
            done = asyncio.Event()
            deleter = asyncio.create_task(delete_some(cluster, client, deletes, done, rng))
            accepted = await upload_all(cluster, client, uploads, seconds, rng)
            done.set()
            tally["deletes asked"] = await deleter
            stop.set()
            await chaos
            await cluster.wait_ready()
            await settle(cluster, client)
            await cluster.audit()  # settled: sweeps the temp files killed writers left
            violations = await cluster.violations(client)
            tickets = await cluster.tickets(client)
    finally:
        cluster.stop()
    report(uploads, accepted, tickets, tally, violations, cluster.deleted)
    return 1 if violations or accepted < uploads else 0


async def settle(cluster: Cluster, client: httpx.AsyncClient, timeout_s: float = 180) -> None:
    """Audit now and then until every ticket is backed up and every deletion done: repairs
    what the kills left."""
    deadline = time.monotonic() + timeout_s
    while True:
        await cluster.audit()
        try:
            await cluster.wait_for(client, "backup", timeout_s=AUDIT_STUCK_AFTER_S)
            await cluster.wait_deleted(client, timeout_s=AUDIT_STUCK_AFTER_S)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def report(
    uploads: int,
    accepted: int,
    tickets: dict,  # type: ignore[type-arg]
    tally: Counter[str],
    violations: list[str],
    deleted: dict[str, str],
) -> None:
    statuses = Counter(t["status"] for t in tickets.values())
    backups = Counter(t["backup"] for t in tickets.values())
    rows = [
        ("uploads attempted", uploads),
        ("uploads accepted (2xx)", accepted),
        ("tickets completed", statuses["completed"]),
        ("tickets failed", statuses["failed"]),
        ("backed up", backups["completed"]),
        ("photos deleted", len(deleted)),
        *sorted(tally.items()),
        ("invariant violations", len(violations)),
    ]
    width = max(len(name) for name, _ in rows)
    print("\nchaos run")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    for violation in violations:
        print(f"  VIOLATION: {violation}")
    print("  all invariants hold" if not violations else "  INVARIANTS VIOLATED")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60, help="spread uploads over this")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--deletes", type=float, default=0.2, help="share of photos deleted")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagepipe-chaos-") as root:
        return asyncio.run(run(args.uploads, args.seconds, args.seed, Path(root), args.deletes))


if __name__ == "__main__":
    sys.exit(main())
