"""`examples/webtier`: a web tier's grants, minted with plain PyJWT, are what imagepipe takes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest

from examples.webtier.app import GRANT_TTL_S, create_app, mint_grant
from imagepipe.catalog.photos import PhotoCatalog
from imagepipe.grants import READ, WRITE, verify
from tests import images
from tests.conftest import free_port
from tests.owners import GRANT_SECRET
from tests.stack import serving


@pytest.fixture
async def webtier(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The example web tier over real HTTP, in front of a real (production) API."""
    with serving(create_app(api_url, GRANT_SECRET), free_port()) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            yield client


async def test_a_web_tier_s_grant_uploads_as_its_user(api_url: str, catalog: PhotoCatalog) -> None:
    grant = mint_grant(GRANT_SECRET, "alice")
    async with httpx.AsyncClient(base_url=api_url) as http:
        answer = await http.post(
            "/photos",
            content=images.jpeg(120, 90),
            headers={"Authorization": f"Bearer {grant}", "Content-Type": "image/jpeg"},
        )
    assert answer.status_code == 202, answer.text
    found = await catalog.photo(answer.json()["photo_id"])
    assert found is not None and found["owner"] == "alice"


async def test_signing_in_gets_a_short_grant_and_signing_out_gets_none(
    webtier: httpx.AsyncClient, api_url: str
) -> None:
    assert (await webtier.post("/grant")).status_code == 401
    assert "Sign in" in (await webtier.get("/")).text
    wrong = await webtier.post("/login", data={"user": "alice", "password": "guess"})
    assert wrong.status_code == 401 and "session" not in webtier.cookies
    signed_in = await webtier.post("/login", data={"user": "alice", "password": "wonderland"})
    assert signed_in.status_code == 303
    page = (await webtier.get("/")).text
    assert f'src="{api_url}/"' in page  # the upload page, framed from imagepipe's origin
    answer = await webtier.post("/grant")
    assert answer.headers["cache-control"] == "no-store"
    token = answer.json()["grant"]
    assert token not in page  # handed over by postMessage, never in the HTML or a URL
    grant = verify(token, [GRANT_SECRET])
    assert grant.owner == "alice" and grant.scopes == {WRITE, READ}
    assert grant.expires_at <= time.time() + GRANT_TTL_S + 1
