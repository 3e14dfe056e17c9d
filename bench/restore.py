"""Row 18: `imagepipe restore` after primary is lost, against single-stream S3 GETs.

Photos go through the whole stack until backup holds every object; then primary is wiped
and the operator's command restores those photos (named: backup also holds earlier rows'
photos), as a user runs it: a fresh process that copies and verifies every object, then
migrates and reindexes the catalog. The anchor GETs the same objects one after another from
the same S3 server with plain boto3 and reads their bodies. The copy phase alone (in this
process, no start-up or reindex) is shown beside it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

from bench.inputs import Photo
from bench.model import Row, table
from bench.stack import BUCKET, Stack, upload, wait_tickets
from imagepipe.replication.commands import restore
from imagepipe.stack.roles import role_argv

GOAL = 0.7


async def _backed_up(stack: Stack, photo: Photo, count: int) -> list[str]:
    """``count`` photos uploaded, processed and copied to backup; their photo ids."""
    for role in ("api", "worker", "replicator"):
        stack.start(role)
    async with stack.client(60) as client:
        await stack.wait_ready()
        ids = [await upload(client, photo.data) for _ in range(count)]
        found = await wait_tickets(client, ids, backup=True, timeout_s=600)
    stack.stop("replicator", "worker", "api")
    return [t["photo_id"] for t in found.values()]


def _objects(primary: Path, photo_ids: list[str]) -> dict[str, int]:
    """Every object of these photos on primary: key -> size."""
    found: dict[str, int] = {}
    for photo_id in photo_ids:
        paths = [
            *primary.glob(f"originals/{photo_id}.*"),
            *primary.glob(f"derivatives/{photo_id}/*"),
            primary / f"manifests/{photo_id}.json",
        ]
        found |= {p.relative_to(primary).as_posix(): p.stat().st_size for p in paths}
    return found


def get_seconds(stack: Stack, object_keys: list[str]) -> float:
    """Seconds to GET (and read) these objects one after another (plain boto3)."""
    client = stack.backup_client()
    client.get_object(Bucket=BUCKET, Key=object_keys[0])["Body"].read()  # warm the connection
    started = time.perf_counter()
    for key in object_keys:
        client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return time.perf_counter() - started


def command_seconds(stack: Stack, photo_ids: list[str]) -> float:
    """Seconds `imagepipe restore IDS…` takes, start-up and reindex included."""
    started = time.perf_counter()
    done = subprocess.run(
        role_argv("restore", *photo_ids), env=stack.env(), capture_output=True, check=False
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"restore failed: {done.stderr.decode()[-500:]}")
    return elapsed


def copy_seconds(stack: Stack, photo_ids: list[str]) -> float:
    """Seconds the copy phase alone takes (in this process)."""
    started = time.perf_counter()
    report = asyncio.run(restore(stack.settings, photo_ids))
    if not report.ok or report.photos != len(photo_ids):
        raise RuntimeError(f"restore incomplete: {report}")
    return time.perf_counter() - started


def row(stack: Stack, photo: Photo, count: int) -> Row:
    """Row 18."""
    photo_ids = asyncio.run(_backed_up(stack, photo, count))
    primary = stack.root / "primary"
    objects = _objects(primary, photo_ids)
    total = sum(objects.values())
    anchor = get_seconds(stack, sorted(objects))
    shutil.rmtree(primary)
    command = command_seconds(stack, photo_ids)
    restored = _objects(primary, photo_ids)
    if restored != objects:
        raise RuntimeError(f"restored {len(restored)} of {len(objects)} objects")
    shutil.rmtree(primary)
    copying = copy_seconds(stack, photo_ids)
    mb = total / 2**20
    share = anchor / command
    details = table(
        ["what", "value"],
        [
            ["restored", f"{len(photo_ids)} photos, {len(objects)} objects, {mb:.1f} MiB"],
            [
                "`imagepipe restore` (start, copy + verify, reindex)",
                f"{command:.2f} s = {mb / command:.1f} MiB/s",
            ],
            [
                "… the copy phase alone",
                f"{copying:.2f} s = {mb / copying:.1f} MiB/s ({anchor / copying:.2f} of GET)",
            ],
            [
                "anchor: single-stream GET, same objects",
                f"{anchor:.2f} s = {mb / anchor:.1f} MiB/s",
            ],
        ],
    )
    return Row(
        18,
        "restore: primary rebuilt from backup",
        "single-stream S3 GET of the same objects",
        f"≥ {GOAL} of the GET rate",
        share,
        f"{share:.2f} of GET rate ({mb / command:.1f} vs {mb / anchor:.1f} MiB/s)",
        share >= GOAL,
        reading=f"copy phase alone {anchor / copying:.2f} of GET; the rest is start-up and reindex",
        details=details,
        data={
            "photos": len(photo_ids),
            "objects": len(objects),
            "bytes": total,
            "command_s": command,
            "copy_s": copying,
            "get_s": anchor,
        },
    )
