"""POST /internal/callbacks over real HTTP: signatures, replays, forward-only, indexing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis

from imagepipe import keys, webhooks
from imagepipe.config import Settings
from imagepipe.tickets import TicketStore
from tests import images


async def upload(http: httpx.AsyncClient) -> dict:  # type: ignore[type-arg]
    response = await http.post(
        "/photos", files={"file": ("a.jpg", images.jpeg(80, 60), "image/jpeg")}
    )
    assert response.status_code == 202
    return response.json()  # type: ignore[no-any-return]


def body_for(ticket: dict, kind: str, **extra: object) -> bytes:  # type: ignore[type-arg]
    event = {"type": kind, "ticket_id": ticket["id"], "photo_id": ticket["photo_id"], **extra}
    return json.dumps(event).encode()


async def post(
    http: httpx.AsyncClient,
    settings: Settings,
    body: bytes,
    webhook_id: str = "msg_1",
    secret: str | None = None,
    at: datetime | None = None,
) -> httpx.Response:
    secret = secret or settings.callback_secret.get_secret_value()
    headers = webhooks.sign(secret, webhook_id, body, at=at)
    return await http.post("/internal/callbacks", content=body, headers=headers)


async def status_of(http: httpx.AsyncClient, ticket: dict) -> str:  # type: ignore[type-arg]
    return (await http.get(f"/tickets/{ticket['id']}")).json()["status"]  # type: ignore[no-any-return]


async def test_signed_event_moves_the_ticket(http: httpx.AsyncClient, settings: Settings) -> None:
    ticket = await upload(http)
    response = await post(http, settings, body_for(ticket, "processing.started"))
    assert response.status_code == 200 and response.json()["status"] == "applied"
    assert await status_of(http, ticket) == "processing"


@pytest.mark.parametrize(
    "case", ["unsigned", "wrong-secret", "stale", "future", "altered", "reserialised"]
)
async def test_bad_signatures_are_401_and_change_nothing(
    http: httpx.AsyncClient, settings: Settings, case: str
) -> None:
    ticket = await upload(http)
    body = body_for(ticket, "processing.failed", error="x")
    if case == "unsigned":
        response = await http.post("/internal/callbacks", content=body)
    elif case == "wrong-secret":
        response = await post(http, settings, body, secret="not-the-secret")
    elif case in ("stale", "future"):
        skew = timedelta(seconds=301 if case == "future" else -301)
        response = await post(http, settings, body, at=datetime.now(tz=UTC) + skew)
    else:
        headers = webhooks.sign(settings.callback_secret.get_secret_value(), "m", body)
        sent = body + b" " if case == "altered" else json.dumps(json.loads(body), indent=2).encode()
        response = await http.post("/internal/callbacks", content=sent, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert await status_of(http, ticket) == "queued"


async def test_replayed_webhook_id_is_acknowledged_not_reapplied(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await upload(http)
    body = body_for(ticket, "processing.started", attempt=1)
    first = await post(http, settings, body, webhook_id="same")
    replay = await post(http, settings, body, webhook_id="same")
    assert first.json()["status"] == "applied" and replay.json()["status"] == "duplicate"
    stored = await TicketStore(redis, 60).get(ticket["id"])
    assert stored.version == 2  # one change, not two


async def test_backward_move_and_unknown_ticket_are_refused(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    ticket = await upload(http)
    assert (
        await post(http, settings, body_for(ticket, "processing.failed", error="bad"), "a")
    ).status_code == 200
    backwards = await post(http, settings, body_for(ticket, "processing.started"), "b")
    assert backwards.status_code == 409
    assert await status_of(http, ticket) == "failed"
    ghost = {"id": "A" * 24, "photo_id": ticket["photo_id"]}
    assert (
        await post(http, settings, body_for(ghost, "processing.started"), "c")
    ).status_code == 404


async def test_malformed_event_is_400(http: httpx.AsyncClient, settings: Settings) -> None:
    response = await post(http, settings, b'{"type": "nonsense"}')
    assert response.status_code == 400


async def test_completion_indexes_and_logs_derivatives_once(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await upload(http)
    size = {
        "key": keys.derivative(ticket["photo_id"], "t", "jpg"),
        "width": 80,
        "height": 60,
        "bytes": 10,
        "sha256": "a" * 64,
    }
    body = body_for(ticket, "processing.completed", sizes={"t": size})
    assert (await post(http, settings, body, "done-1")).json()["status"] == "applied"
    assert (await post(http, settings, body, "done-2")).json()["status"] == "unchanged"
    manifest = settings.primary_root / "manifests" / f"{ticket['photo_id']}.json"
    assert json.loads(manifest.read_text())["sizes"]["t"]["width"] == 80
    logged = [fields[b"key"].decode() for _, fields in await redis.xrange(keys.REPLICATION_STREAM)]
    assert sorted(logged) == sorted(
        [f"originals/{ticket['photo_id']}.jpg", size["key"], f"manifests/{ticket['photo_id']}.json"]
    )
