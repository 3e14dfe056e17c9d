"""Callback security beyond the basics in test_callbacks: malformed headers, the window's edges,
replays (also concurrent), secret rotation over HTTP, hostile bodies under a valid signature,
and events that do not belong to their ticket. Every refusal is a 4xx that changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from imagepipe import keys, webhooks
from imagepipe.config import Settings
from tests.test_callbacks import body_for, post, upload

PROBLEM = "application/problem+json"
Headers = dict[str, str]


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The shared settings, with whatever a test asks for (indirect param)."""
    return settings.model_copy(update=getattr(request, "param", {}))


async def snapshot(http: httpx.AsyncClient, ticket: dict[str, Any]) -> tuple[str, int]:
    body = (await http.get(f"/tickets/{ticket['id']}")).json()
    return body["status"], body["version"]


def sign(settings: Settings, body: bytes, webhook_id: str = "msg_sec") -> Headers:
    return webhooks.sign(settings.callback_secret.get_secret_value(), webhook_id, body)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def without(name: str) -> Callable[[Headers], Headers]:
    return lambda h: {k: v for k, v in h.items() if k != name}


def replace(name: str, value: str | Callable[[str], str]) -> Callable[[Headers], Headers]:
    return lambda h: {**h, name: value(h[name]) if callable(value) else value}


MALFORMED: dict[str, Callable[[Headers], Headers]] = {
    "no-id": without("webhook-id"),
    "no-timestamp": without("webhook-timestamp"),
    "no-signature": without("webhook-signature"),
    "empty-id": replace("webhook-id", ""),
    "empty-timestamp": replace("webhook-timestamp", ""),
    "empty-signature": replace("webhook-signature", ""),
    "v1-nothing": replace("webhook-signature", "v1,"),
    "v1-bad-base64": replace("webhook-signature", "v1,@@@@!!"),
    "v1-truncated": replace("webhook-signature", lambda s: s[:12]),
    "no-version": replace("webhook-signature", lambda s: s.removeprefix("v1,")),
    "v2-only": replace("webhook-signature", lambda s: "v2," + s.removeprefix("v1,")),
    "extra-commas": replace("webhook-signature", lambda s: s + ",v1"),
    "2000-wrong-signatures": replace(
        "webhook-signature", " ".join(f"v1,{b64(bytes([i % 256]) * 32)}" for i in range(2000))
    ),
    "huge-signature": replace("webhook-signature", "v1," + "A" * 60_000),
    "huge-id": replace("webhook-id", "i" * 60_000),
    "timestamp-words": replace("webhook-timestamp", "yesterday"),
    "timestamp-nan": replace("webhook-timestamp", "nan"),
    "timestamp-inf": replace("webhook-timestamp", "inf"),
    "timestamp-1e300": replace("webhook-timestamp", "1e300"),
    "timestamp-negative": replace("webhook-timestamp", "-1"),
    "timestamp-40-digits": replace("webhook-timestamp", "9" * 40),
    "timestamp-hex": replace("webhook-timestamp", lambda t: hex(int(t))),
}


async def test_malformed_signature_headers_are_refused_and_change_nothing(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    ticket = await upload(http)
    body = body_for(ticket, "processing.failed", error="forged")
    before = await snapshot(http, ticket)
    wrong = {}
    for name, mutate in MALFORMED.items():
        response = await http.post(
            "/internal/callbacks", content=body, headers=mutate(sign(settings, body))
        )
        problem = response.headers.get("content-type") == PROBLEM
        if response.status_code not in (400, 401) or not problem:
            wrong[name] = f"{response.status_code}: {response.text[:120]}"
    assert wrong == {}
    assert await snapshot(http, ticket) == before


@pytest.mark.parametrize("skew_s", [-290, 290])
async def test_timestamps_just_inside_the_window_are_accepted(
    http: httpx.AsyncClient, settings: Settings, skew_s: int
) -> None:
    ticket = await upload(http)
    at = datetime.now(tz=UTC) + timedelta(seconds=skew_s)
    response = await post(http, settings, body_for(ticket, "processing.started"), at=at)
    assert response.status_code == 200 and response.json()["status"] == "applied"


async def test_one_good_signature_among_several_is_enough(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    # what a sender signing with two secrets mid-rotation sends: "v1,<old> v1,<new>"
    ticket = await upload(http)
    body = body_for(ticket, "processing.started")
    headers = sign(settings, body)
    other = webhooks.sign("someone-else", "msg_sec", body)["webhook-signature"]
    headers["webhook-signature"] = f"{other} {headers['webhook-signature']}"
    response = await http.post("/internal/callbacks", content=body, headers=headers)
    assert response.status_code == 200 and response.json()["status"] == "applied"


# -- replays --------------------------------------------------------------------------


def completion(ticket: dict[str, Any]) -> bytes:
    size = {
        "key": keys.derivative(ticket["photo_id"], "t", "jpg"),
        "width": 80,
        "height": 60,
        "bytes": 10,
        "sha256": "b" * 64,
    }
    return body_for(ticket, "processing.completed", sizes={"t": size}, width=80, height=60)


async def test_a_replayed_completion_is_acknowledged_and_applied_once(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await upload(http)
    body = completion(ticket)
    first = await post(http, settings, body, webhook_id="done")
    # the worker's retry re-signs with a fresh timestamp; an attacker replays the bytes as sent
    replays = [await post(http, settings, body, webhook_id="done") for _ in range(3)]
    assert first.json()["status"] == "applied"
    assert {r.status_code for r in replays} == {200}
    assert {r.json()["status"] for r in replays} == {"duplicate"}
    assert await snapshot(http, ticket) == ("completed", 2)
    assert await redis.xlen(keys.REPLICATION_STREAM) == 3  # original, derivative, manifest
    assert len((await http.get("/photos")).json()["photos"]) == 1  # indexed once


async def test_concurrent_deliveries_of_one_event_apply_it_once(
    http: httpx.AsyncClient, settings: Settings, redis: Redis
) -> None:
    ticket = await upload(http)
    body = completion(ticket)
    responses = await asyncio.gather(
        *(post(http, settings, body, webhook_id="race") for _ in range(8))
    )
    outcomes = sorted(r.json()["status"] for r in responses)
    assert outcomes.count("applied") == 1, outcomes
    assert set(outcomes) <= {"applied", "duplicate", "unchanged"}
    assert await snapshot(http, ticket) == ("completed", 2)
    assert await redis.xlen(keys.REPLICATION_STREAM) == 3


# -- rotation -------------------------------------------------------------------------

ROTATING = {
    "callback_secret": SecretStr("new-secret"),
    "callback_previous_secret": SecretStr("old-secret"),
}


@pytest.mark.parametrize("settings", [ROTATING], indirect=True)
async def test_both_secrets_are_accepted_during_a_rotation(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    ticket = await upload(http)
    started = body_for(ticket, "processing.started")
    old = await post(http, settings, started, webhook_id="a", secret="old-secret")
    failed = body_for(ticket, "processing.failed", error="x")
    stranger = await post(http, settings, failed, webhook_id="b", secret="third-secret")
    new = await post(http, settings, failed, webhook_id="c", secret="new-secret")
    assert old.json()["status"] == "applied" and new.json()["status"] == "applied"
    assert stranger.status_code == 401


async def test_a_retired_secret_is_refused_once_the_rotation_ends(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    ticket = await upload(http)
    body = body_for(ticket, "processing.started")
    response = await post(http, settings, body, secret="old-secret")
    assert response.status_code == 401
    assert await snapshot(http, ticket) == ("queued", 1)


# -- bodies that verify but do not belong ---------------------------------------------


@pytest.mark.parametrize(
    ("ticket_id", "status"),
    [("A" * 24, 404), ("../../etc/passwd", 404), ("A" * 5000, 404), ("", 404)],
    ids=["unknown", "path", "long", "empty"],
)
async def test_an_event_for_no_such_ticket_is_404(
    http: httpx.AsyncClient, settings: Settings, ticket_id: str, status: int
) -> None:
    body = body_for({"id": ticket_id, "photo_id": "0" * 20}, "processing.started")
    response = await post(http, settings, body)
    assert response.status_code == status and response.headers["content-type"] == PROBLEM


async def test_an_event_about_another_photo_is_refused(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    ours, theirs = await upload(http), await upload(http)
    body = completion({"id": ours["id"], "photo_id": theirs["photo_id"]})
    response = await post(http, settings, body)
    assert response.status_code == 409
    assert await snapshot(http, ours) == ("queued", 1)
    assert (settings.primary_root / keys.manifest(theirs["photo_id"])).exists() is False
    assert (settings.primary_root / keys.manifest(ours["photo_id"])).exists() is False


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ("processing.completed", "processing.started"),
        ("processing.completed", "processing.failed"),
        ("processing.failed", "processing.completed"),
        ("processing.failed", "processing.started"),
    ],
)
async def test_terminal_tickets_never_move(
    http: httpx.AsyncClient, settings: Settings, first: str, then: str
) -> None:
    ticket = await upload(http)
    events = {
        "processing.started": body_for(ticket, "processing.started", attempt=2),
        "processing.completed": completion(ticket),
        "processing.failed": body_for(ticket, "processing.failed", error="bad"),
    }
    assert (await post(http, settings, events[first], webhook_id="1")).status_code == 200
    terminal = await snapshot(http, ticket)
    response = await post(http, settings, events[then], webhook_id="2")
    assert response.status_code == 409 and response.headers["content-type"] == PROBLEM
    assert await snapshot(http, ticket) == terminal
    manifest = settings.primary_root / keys.manifest(ticket["photo_id"])
    assert manifest.exists() is (first == "processing.completed")


HOSTILE_BODIES = {
    "array": b"[]",
    "null": b"null",
    "string": b'"processing.completed"',
    "not-json": b"{type: processing.started",
    "nested-10000-deep": b"[" * 10_000 + b"]" * 10_000,
    "wrong-types": json.dumps({"type": "processing.started", "ticket_id": 1, "photo_id": []}),
    "unknown-type": json.dumps({"type": "processing.deleted", "ticket_id": "A", "photo_id": "b"}),
    "sizes-not-a-map": json.dumps(
        {"type": "processing.completed", "ticket_id": "A" * 24, "photo_id": "0", "sizes": [1]}
    ),
}


async def test_signed_bodies_that_are_not_events_are_400(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    wrong = {}
    for name, raw in HOSTILE_BODIES.items():
        body = raw if isinstance(raw, bytes) else raw.encode()
        response = await post(http, settings, body, webhook_id=f"body-{name}")
        if response.status_code != 400 or response.headers["content-type"] != PROBLEM:
            wrong[name] = f"{response.status_code}: {response.text[:120]}"
    assert wrong == {}


async def test_an_oversized_signed_body_is_413(http: httpx.AsyncClient, settings: Settings) -> None:
    ticket = await upload(http)
    body = body_for(ticket, "processing.failed", error="x" * 300_000)
    response = await post(http, settings, body)
    assert response.status_code == 413
    assert await snapshot(http, ticket) == ("queued", 1)
