"""End to end over real processes: `imagepipe api`, `worker` and `replicator` as a user runs
them, real Valkey, moto's S3 server, real HTTP. Follows each upload to its backup copy."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from imagepipe.config import Settings
from imagepipe.stack.processes import RoleProcess, stop_roles, wait_ready
from imagepipe.stack.roles import role_argv, role_env
from tests import images
from tests.owners import bearer
from tests.test_flow import assert_backup_matches_primary, primary_objects, s3_client

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["filesystem", "s3"])
def settings(request: pytest.FixtureRequest, settings: Settings, s3_endpoint: str) -> Settings:
    """conftest's settings, with primary on the local filesystem or in a bucket of its own."""
    if request.param == "filesystem":
        return settings
    bucket = f"primary-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    return settings.model_copy(
        update={"primary_s3_endpoint": s3_endpoint, "primary_s3_bucket": bucket}
    )


@pytest.fixture
def roles(settings: Settings, tmp_path: Path, redis: object) -> Iterator[dict[str, RoleProcess]]:
    """api + worker + replicator as separate processes, stopped (and checked alive) after."""
    env = role_env(settings, IMAGEPIPE_WORKER_CONCURRENCY="2")
    commands = {
        "api": role_argv("api", "--host", "127.0.0.1", "--port", str(settings.port)),
        "worker": role_argv("worker"),
        "replicator": role_argv("replicator"),
    }
    procs = {
        name: RoleProcess(name, argv, env, tmp_path / f"{name}.log").start()
        for name, argv in commands.items()
    }
    try:
        yield procs
    finally:
        stop_all(procs)


def stop_all(procs: dict[str, RoleProcess]) -> None:
    """SIGTERM every role; each must exit cleanly (its log is shown if it does not)."""
    for name in stop_roles(procs.values(), timeout_s=15):
        pytest.fail(f"{name} did not stop on SIGTERM:\n{procs[name].log_text()}")


async def wait_terminal(client: httpx.AsyncClient, ids: list[str]) -> dict[str, dict]:  # type: ignore[type-arg]
    for _ in range(600):
        tickets = (await client.get("/tickets", params={"ids": ",".join(ids)})).json()["tickets"]
        if all(t["status"] in ("completed", "failed") for t in tickets.values()):
            return tickets  # type: ignore[no-any-return]
        await asyncio.sleep(0.1)
    raise AssertionError(f"tickets never finished: {tickets}")


async def wait_backed_up(client: httpx.AsyncClient, ids: list[str]) -> None:
    for _ in range(600):
        tickets = (await client.get("/tickets", params={"ids": ",".join(ids)})).json()["tickets"]
        if all(t["backup"] == "completed" for t in tickets.values()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"backup never completed: {tickets}")


UPLOADS = {
    "rotated.jpg": (images.jpeg(800, 600, orientation=6), (600, 800)),
    "alpha.png": (images.png_alpha(640, 480), (640, 480)),
    "cmyk.jpg": (images.cmyk_jpeg(1200, 900), (1200, 900)),
    "anim.gif": (images.gif(300, 200, frames=3), (300, 200)),
}


async def test_photos_flow_from_upload_to_backup(
    settings: Settings, roles: dict[str, RoleProcess]
) -> None:
    url = f"http://127.0.0.1:{settings.port}"
    await wait_ready(url, 20, roles["api"].check_alive)
    async with httpx.AsyncClient(headers=bearer(), base_url=url, timeout=30) as client:
        sent = {}
        for name, (data, _) in UPLOADS.items():
            response = await client.post("/photos", files={"file": (name, data, "image/*")})
            assert response.status_code == 202, response.text
            sent[name] = response.json()["id"]
        tickets = await wait_terminal(client, list(sent.values()))
        for name, ticket_id in sent.items():
            await check_derivatives(client, tickets[ticket_id], UPLOADS[name][1], settings)
        await check_orientation(client, tickets[sent["rotated.jpg"]])
        photo = (await client.get(f"/photos/{tickets[sent['rotated.jpg']]['photo_id']}")).json()
        assert (photo["width"], photo["height"]) == (600, 800)  # upright, not as stored
        await wait_backed_up(client, list(sent.values()))
    assert_backup_matches_primary(settings)
    stored = primary_objects(settings)
    assert len([k for k in stored if k.startswith("originals/")]) == len(UPLOADS)
    if settings.primary_is_s3:  # nothing went to the local disk instead
        assert not settings.primary_root.exists() or not any(settings.primary_root.iterdir())
    assert all(proc.alive for proc in roles.values()), "a role died"


async def check_derivatives(
    client: httpx.AsyncClient,
    ticket: dict,
    upright: tuple[int, int],
    settings: Settings,  # type: ignore[type-arg]
) -> None:
    assert ticket["status"] == "completed", ticket
    sizes = (await client.get(f"/photos/{ticket['photo_id']}")).json()["sizes"]  # signed URLs
    for spec in settings.sizes:
        response = await client.get(sizes[spec.name]["url"])
        assert response.status_code == 200
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "JPEG" and image.mode in ("RGB", "L")
        assert image.size == (sizes[spec.name]["width"], sizes[spec.name]["height"])
        if spec.crop:
            assert image.size == (spec.edge, spec.edge)
        else:
            assert max(image.size) == min(spec.edge, max(upright))
            assert (image.width >= image.height) == (upright[0] >= upright[1])
        assert not image.getexif() and "icc_profile" not in image.info


async def check_orientation(client: httpx.AsyncClient, ticket: dict) -> None:  # type: ignore[type-arg]
    """EXIF orientation 6 means 'rotate 90° clockwise to display': the marker ends top-right."""
    photo = (await client.get(f"/photos/{ticket['photo_id']}")).json()
    response = await client.get(photo["sizes"]["m"]["url"])
    assert images.red_corner(Image.open(io.BytesIO(response.content))) == "top-right"
