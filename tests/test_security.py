"""The security suite, read side (`-m security`): every refused grant, and every way to reach
another owner's private photo, over real HTTP against a real uvicorn.

Fair use (rate limits, quotas) has its own module with the same marker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest

from imagepipe.api.signing import UrlSigner
from imagepipe.config import Settings
from tests.owners import GRANT_SECRET, OWNER, bearer
from tests.viewers import MALLORY, PROBLEM, processed, signature, signed_sizes, unsigned, upload

pytestmark = pytest.mark.security

OTHER_SECRET = "not-the-api-s-grant-secret-of-32-characters"
DIGESTS = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def token(alg: str = "HS256", secret: str = GRANT_SECRET, **changes: Any) -> str:
    """A JWT written by hand (no library refuses to make a bad one): ``changes`` to the claims
    of a good photos:read grant, None removing one."""
    now = int(time.time())
    claims = {"sub": OWNER, "iat": now, "exp": now + 600, "scope": "photos:read photos:write"}
    claims = {k: v for k, v in {**claims, **changes}.items() if v is not None}
    head = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    if alg not in DIGESTS:
        return f"{head}.{body}."
    mac = hmac.new(secret.encode(), signing_input, DIGESTS[alg]).digest()
    return f"{head}.{body}.{b64(mac)}"


REFUSED = [
    ({"Authorization": f"Bearer {token(secret=OTHER_SECRET)}"}, "signature is wrong"),
    ({"Authorization": f"Bearer {token(exp=int(time.time()) - 3600)}"}, "expired"),
    ({"Authorization": f"Bearer {token(nbf=int(time.time()) + 3600)}"}, "not valid yet"),
    ({"Authorization": f"Bearer {token('none')}"}, "algorithm is 'none'"),
    ({"Authorization": f"Bearer {token('HS512')}"}, "algorithm is 'HS512'"),
    ({"Authorization": f"Bearer {token(exp=int(time.time()) + 25 * 3600)}"}, "more than 24 h"),
    ({"Authorization": f"Bearer {token(exp=None)}"}, "no 'exp' claim"),
    ({"Authorization": f"Bearer {token(sub=None)}"}, "no 'sub' claim"),
    ({"Authorization": "Bearer not-a-jwt"}, "not a JWT"),
    ({"Authorization": "Basic dGVzdGVyOnB3"}, "Bearer <grant>"),
    ({"Authorization": "Bearer"}, "Bearer <grant>"),
]
IDS = ["forged", "expired", "not-yet-valid", "alg-none", "hs512", "over-24h", "no-exp", "no-sub"]
IDS += ["not-a-jwt", "basic", "empty-bearer"]


@pytest.mark.parametrize(("headers", "reason"), REFUSED, ids=IDS)
async def test_an_untrusted_grant_is_401_saying_why(
    api_url: str, headers: dict[str, str], reason: str
) -> None:
    async with httpx.AsyncClient(base_url=api_url, headers=headers) as client:
        answers = [
            await client.get("/photos"),
            await client.get("/photos", params={"visibility": "public"}),  # no grant needed, but
            await client.post(
                "/photos", content=b"\xff\xd8\xff", headers={"content-type": "image/jpeg"}
            ),
            await client.patch("/photos/0123456789abcdef0123", json={"visibility": "public"}),
        ]
    for answer in answers:  # a bad grant is never taken for no grant
        where = f"{answer.request.method} {answer.request.url}"
        assert answer.status_code == 401, where
        assert answer.headers["content-type"] == PROBLEM, where
        assert reason in answer.json()["detail"], (where, answer.json())
        assert answer.headers["www-authenticate"].startswith("Bearer "), where


@pytest.mark.parametrize(
    ("scopes", "method", "path"),
    [
        (("photos:write",), "GET", "/photos"),
        (("photos:read",), "POST", "/photos"),
        (("photos:read",), "PATCH", "/photos/0123456789abcdef0123"),
        ((), "GET", "/photos"),
    ],
)
async def test_a_grant_without_the_scope_is_403_naming_it(
    api_url: str, scopes: tuple[str, ...], method: str, path: str
) -> None:
    async with httpx.AsyncClient(base_url=api_url, headers=bearer(scopes=scopes)) as client:
        answer = await client.request(method, path, json={"visibility": "public"})
    assert answer.status_code == 403 and answer.headers["content-type"] == PROBLEM
    needed = {"GET": "photos:read", "POST": "photos:write", "PATCH": "photos:write"}[method]
    assert needed in answer.json()["detail"]


@pytest.fixture
async def scene(http: httpx.AsyncClient, settings: Settings) -> dict[str, Any]:
    """The owner `tester` has a private and a public photo; `mallory` has one of her own."""
    private, public = await processed(http, settings, None, "public")
    ticket = (await http.get(f"/photos/{public}")).json()["ticket_id"]
    async with httpx.AsyncClient(base_url=str(http.base_url), headers=MALLORY) as mallory:
        await upload(mallory)
    return {"private": private, "public": public, "public_ticket": ticket}


async def test_another_owner_s_private_photo_is_nowhere_to_be_found(
    api_url: str, scene: dict[str, Any]
) -> None:
    private = scene["private"]
    for headers in (MALLORY, {}):
        async with httpx.AsyncClient(base_url=api_url, headers=headers) as other:
            unknown = (await other.get("/photos/0123456789abcdef0123")).json()
            assert (await other.get(f"/photos/{private}")).json() == unknown  # 404, the same words
            for path in (f"/photos/{private}/t", f"/photos/{private}/xl"):
                for method in ("GET", "HEAD"):
                    assert (await other.request(method, path)).status_code == 404, (method, path)
            stream = (await other.get("/photos", params={"visibility": "public"})).text
            assert private not in stream
            patched = await other.patch(f"/photos/{private}", json={"visibility": "public"})
            assert patched.status_code == (404 if headers else 401)
    async with httpx.AsyncClient(base_url=api_url, headers=MALLORY) as mallory:
        assert private not in (await mallory.get("/photos")).text


async def test_anonymous_callers_see_public_photos_only_and_never_a_ticket_id(
    api_url: str, scene: dict[str, Any]
) -> None:
    async with httpx.AsyncClient(base_url=api_url) as anonymous:
        stream = await anonymous.get("/photos", params={"visibility": "public"})
        photo = await anonymous.get(f"/photos/{scene['public']}")
        assert (await anonymous.get("/photos")).status_code == 401  # nobody's own listing
    assert [p["id"] for p in stream.json()["photos"]] == [scene["public"]]
    assert photo.status_code == 200
    for text in (stream.text, photo.text):  # the ticket is a capability: never handed out
        assert scene["public_ticket"] not in text and "sha256" not in text and "backup" not in text


async def test_a_signed_url_opens_exactly_its_own_size_until_it_expires(
    http: httpx.AsyncClient, api_url: str, scene: dict[str, Any]
) -> None:
    private, public = scene["private"], scene["public"]
    urls = await signed_sizes(http, private)
    t = signature(urls["t"])
    one_changed = t["sig"][:-1] + ("A" if t["sig"][-1] != "A" else "B")
    elsewhere = [
        f"/photos/{private}/m?exp={t['exp']}&sig={t['sig']}",  # another size
        f"/photos/{public}/t?exp={t['exp']}&sig={t['sig']}",  # another photo
        f"/photos/{private}/t?exp={int(t['exp']) + 300}&sig={t['sig']}",  # a later exp
        f"/photos/{private}/t?exp={t['exp']}&sig={one_changed}",
        f"/photos/{private}/t?exp={t['exp']}",  # the signature left out
        f"/photos/{private}/t?sig={t['sig']}",
    ]
    expired = UrlSigner([GRANT_SECRET], 60).sign(unsigned(urls["t"]), time.time() - 3600)
    async with httpx.AsyncClient(base_url=api_url, headers=MALLORY) as other:
        assert (await other.get(urls["t"])).status_code == 200  # a bearer URL: whoever holds it
        for url in elsewhere:
            refused = await other.get(url)
            assert refused.status_code == 403, url
            assert refused.headers["content-type"] == PROBLEM, url
        late = await other.get(expired.url)
        assert late.status_code == 403 and "expired" in late.json()["detail"]
        forged = UrlSigner([OTHER_SECRET], 3600).sign(unsigned(urls["t"]))
        assert (await other.get(forged.url)).status_code == 403
