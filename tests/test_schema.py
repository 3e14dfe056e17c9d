"""Schemathesis over the app's own OpenAPI schema: no operation ever answers 5xx.

Every operation gets a bounded number of generated requests, valid and invalid ones, sent over
real HTTP to a real uvicorn server. Callback events that Schemathesis generates as valid are
also signed with the real secret and aimed at a real ticket, so fuzzing reaches past the
signature check into indexing and the ticket's state machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core import NOT_SET

from imagepipe import webhooks
from imagepipe.api.app import create_app
from imagepipe.config import Settings
from tests import images
from tests.conftest import SECRETS
from tests.owners import bearer

CALLBACK = ("POST", "/internal/callbacks")


@pytest.fixture
def real_ticket(api_url: str) -> dict[str, Any]:
    """One uploaded photo's ticket, for signed events to land on."""
    files = {"file": ("a.jpg", images.jpeg(64, 48), "image/jpeg")}
    response = httpx.post(f"{api_url}/photos", files=files, headers=bearer(), timeout=10)
    assert response.status_code == 202
    return response.json()  # type: ignore[no-any-return]


def signed_callback(
    case: Case, api_url: str, settings: Settings, ticket: dict[str, Any]
) -> httpx.Response:
    """POST a generated event about the real ticket, signed as the worker would sign it."""
    event = case.body if isinstance(case.body, dict) else {}
    event = {**event, "ticket_id": ticket["id"], "photo_id": ticket["photo_id"]}
    body = json.dumps(event).encode()
    secret = settings.callback_secret.get_secret_value()
    webhook_id = "fuzz-" + hashlib.sha256(body).hexdigest()[:16]  # a replay when bodies repeat
    headers = webhooks.sign(secret, webhook_id, body)
    headers["content-type"] = "application/json"
    return httpx.post(f"{api_url}/internal/callbacks", content=body, headers=headers, timeout=10)


def send(case: Case, api_url: str, settings: Settings, ticket: dict[str, Any]) -> Any:
    positive = case.meta is not None and case.meta.generation.mode is GenerationMode.POSITIVE
    if (case.method.upper(), case.path) == CALLBACK and positive and case.body is not NOT_SET:
        return signed_callback(case, api_url, settings, ticket)
    # with a grant: the fuzz reaches past the 401 into each route (test_security covers 401s)
    return case.call(base_url=api_url, timeout=10, headers=bearer())


def operations() -> list[tuple[str, str]]:
    """Every (method, path) the app publishes; the live server's schema is what gets fuzzed."""
    paths = create_app(Settings(redis_url=None, **SECRETS)).openapi()["paths"]
    return [(method.upper(), path) for path, ops in paths.items() for method in ops]


def generated(operation: APIOperation) -> st.SearchStrategy[Case]:
    """Valid and invalid requests for one operation (some have nothing to make invalid)."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(strategies)


OPERATIONS = operations()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_operation_answers_a_server_error(
    method: str, path: str, api_url: str, settings: Settings, real_ticket: dict[str, Any]
) -> None:
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    operation = schema.find_operation_by_path(method, path)
    assert operation is not None

    @given(case=generated(operation))
    @examples(
        max_examples=25,
        deadline=None,
        database=None,  # nothing written into the work tree; each run starts afresh
        suppress_health_check=list(HealthCheck),
    )
    def no_server_error(case: Case) -> None:
        response = send(case, api_url, settings, real_ticket)
        case.validate_response(response, checks=[not_a_server_error])

    no_server_error()


# -- what the generator cannot reach: found by hand, each once a 5xx -------------------


@pytest.mark.parametrize("before", ["nan", "inf", "-inf"])
async def test_non_finite_numbers_are_400(http: httpx.AsyncClient, before: str) -> None:
    # JSON has no NaN, so no generated request carries one: NaN used to reach Redis (503)
    response = await http.get("/photos", params={"before": before})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "last_event_id", [b"\xb2", b"9" * 5000], ids=["superscript-2", "5000-digits"]
)
async def test_a_last_event_id_that_is_no_number_restarts_the_stream(
    http: httpx.AsyncClient, real_ticket: dict[str, Any], last_event_id: bytes
) -> None:
    # str.isdigit() says yes to both, int() says no: it was a 500 (a generated id never exists)
    url = f"/tickets/{real_ticket['id']}/events"
    async with http.stream("GET", url, headers={"last-event-id": last_event_id}) as response:
        assert response.status_code == 200


async def test_a_multipart_boundary_longer_than_the_parser_takes_is_400(
    http: httpx.AsyncClient,
) -> None:
    headers = {"content-type": "multipart/form-data; boundary=" + "b" * 5000}
    response = await http.post("/photos", content=images.jpeg(40, 30), headers=headers)
    assert response.status_code == 400
