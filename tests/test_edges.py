"""What every response carries, over real HTTP: security headers, an explicit caching policy
that httplint (REDbot's checks) finds nothing wrong with, HEAD wherever GET is, and the
interactive docs only in development."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from httplint import HttpResponseLinter
from httplint.note import Note, levels

from imagepipe.api.app import create_app
from imagepipe.api.edges import HTML_POLICY, with_defaults
from imagepipe.config import Settings
from tests import images
from tests.stack import api_server, run_worker_burst

POLICY_OF_NONE = "default-src 'none'; frame-ancestors 'none'"
UNKNOWN = "/photos/0123456789abcdef0123"
# RFC 9110 gives Location no meaning on a 202; the design's contract (README "API") is that
# it names the ticket to poll, as the body's `links.self` does. Kept on purpose.
ALLOWED = {(202, "LOCATION_UNDEFINED")}


async def upload(http: httpx.AsyncClient) -> httpx.Response:
    photo = {"file": ("a.jpg", images.jpeg(64, 48), "image/jpeg")}
    # public: its sizes answer without a signature (test_visibility covers private ones)
    return await http.post("/photos", params={"visibility": "public"}, files=photo)


@pytest.fixture
async def ticket(http: httpx.AsyncClient, settings: Settings) -> dict[str, Any]:
    """The ticket of a photo that has been processed."""
    accepted = (await upload(http)).json()
    await run_worker_burst(settings)
    return (await http.get(f"/tickets/{accepted['id']}")).json()  # type: ignore[no-any-return]


def photo_paths(ticket: dict[str, Any]) -> list[str]:
    """GET routes that answer something real for this ticket."""
    photo = f"/photos/{ticket['photo_id']}"
    return [photo, f"{photo}/t", f"/tickets/{ticket['id']}", f"/tickets?ids={ticket['id']}"]


STATIC_PATHS = ["/healthz", "/photos?limit=5", "/ui/config", "/openapi.json", UNKNOWN]


async def test_every_response_carries_the_security_headers(
    http: httpx.AsyncClient, ticket: dict[str, Any]
) -> None:
    answers = [await http.get(p) for p in [*photo_paths(ticket), *STATIC_PATHS, "/readyz"]]
    answers += [await upload(http), await http.post("/photos", content=b"?")]  # 202, 415
    answers += [await http.get("/internal/callbacks")]  # 405
    answers += [await http.get("/static/app.js")]  # an asset: nosniff, and a policy of none
    for answer in answers:
        where = (answer.request.method, answer.request.url.path, answer.status_code)
        assert answer.headers["x-content-type-options"] == "nosniff", where
        assert answer.headers["referrer-policy"] == "no-referrer", where
        assert answer.headers["content-security-policy"] == POLICY_OF_NONE, where
        assert "cache-control" in answer.headers, where
    page = await http.get("/")
    assert page.headers["referrer-policy"] == "same-origin"  # the page keeps its own
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_html_without_a_policy_of_its_own_gets_the_strict_one() -> None:
    headers = with_defaults([(b"content-type", b"text/html; charset=utf-8")])
    assert (b"content-security-policy", HTML_POLICY) in headers


async def test_an_unexpected_error_carries_them_too(settings: Settings) -> None:
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/boom", boom)  # answered by Starlette's outermost middleware
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        answer = await client.get("/boom")
    assert answer.status_code == 500
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["cache-control"] == "no-store"


def without(headers: httpx.Headers, *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in ("date", *names)}


async def test_every_get_route_answers_head_with_the_get_status_and_headers(
    http: httpx.AsyncClient, ticket: dict[str, Any]
) -> None:
    for path in [*photo_paths(ticket), *STATIC_PATHS, "/", "/static/app.css"]:
        get, head = await http.get(path), await http.head(path)
        assert (head.status_code, head.content) == (get.status_code, b""), path
        assert without(head.headers) == without(get.headers), path
    for path in ["/readyz", "/metrics"]:  # bodies that change from one request to the next
        get, head = await http.get(path), await http.head(path)
        assert (head.status_code, head.content) == (get.status_code, b""), path
        assert without(head.headers, "content-length") == without(get.headers, "content-length")


async def test_head_on_an_event_stream_answers_at_once(http: httpx.AsyncClient) -> None:
    queued = (await upload(http)).json()  # no worker: a GET would stream on
    head = await http.head(f"/tickets/{queued['id']}/events", timeout=5)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/event-stream")


def lint(answer: httpx.Response) -> list[str]:
    """httplint's warnings and errors about one response, as REDbot would show them."""
    linter = HttpResponseLinter()
    version, phrase = answer.http_version.encode(), answer.reason_phrase.encode()
    linter.process_response_topline(version, str(answer.status_code).encode(), phrase)
    linter.process_headers(list(answer.headers.raw))
    linter.feed_content(answer.content)
    linter.finish_content(True)
    return [
        f"{answer.request.url.path} {answer.status_code}: {type(note).__name__}: {note.summary}"
        for note in flatten(linter.notes)
        if note.level in (levels.WARN, levels.BAD)
        and (answer.status_code, type(note).__name__) not in ALLOWED
    ]


def flatten(notes: Any) -> list[Note]:
    return [n for note in notes for n in [note, *flatten(note.subnotes)]]


async def test_httplint_finds_nothing_wrong_with_the_main_routes(
    http: httpx.AsyncClient, ticket: dict[str, Any]
) -> None:
    accepted = await upload(http)
    polled = await http.get(f"/tickets/{ticket['id']}")
    etag = {"if-none-match": polled.headers["etag"]}
    answers = [accepted, polled, await http.get(f"/tickets/{ticket['id']}", headers=etag)]
    answers += [await http.get(p) for p in [*photo_paths(ticket)[:2], "/healthz", "/readyz"]]
    answers.append(await http.get(UNKNOWN))
    assert [a.status_code for a in answers] == [202, 200, 304, 200, 200, 200, 200, 404]
    assert [problem for answer in answers for problem in lint(answer)] == []
    derivative = answers[4].headers["cache-control"]
    # `public` is implied (no Authorization); an hour, so a deleted photo leaves shared caches
    assert derivative == "max-age=3600"


@pytest.mark.parametrize(("environment", "docs"), [("production", 404), ("development", 200)])
def test_the_interactive_docs_are_served_in_development_only(
    settings: Settings, environment: str, docs: int
) -> None:
    with api_server(settings.model_copy(update={"environment": environment})) as url:
        assert httpx.get(f"{url}/openapi.json").status_code == 200
        pages = [httpx.get(f"{url}{path}") for path in ("/docs", "/redoc")]
    assert [p.status_code for p in pages] == [docs, docs]
    if docs == 200:  # they load their code from a CDN: a policy that names it
        assert all(
            "https://cdn.jsdelivr.net" in p.headers["content-security-policy"] for p in pages
        )
