"""Grants: what `imagepipe.grants.verify` trusts, and the reason it gives when it does not."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from imagepipe.grants import MAX_TTL_S, SCOPES, GrantRefused, mint, verify
from tests.owners import GRANT_SECRET

OTHER_SECRET = "another-grant-secret-of-32-characters-at-least"


def signed(claims: dict[str, object], secret: str = GRANT_SECRET, **header: str) -> str:
    return jwt.encode(claims, secret.encode(), algorithm="HS256", headers=header or None)


def refusal(token: str, secrets: list[str] | None = None) -> str:
    with pytest.raises(GrantRefused) as refused:
        verify(token, secrets or [GRANT_SECRET])
    return str(refused.value)


def test_a_minted_grant_verifies_with_its_owner_scopes_and_limits() -> None:
    token = mint(GRANT_SECRET, "alice", ("photos:read",), 600, max_bytes=1000, visibility="public")
    grant = verify(token, [GRANT_SECRET])
    assert (grant.owner, grant.scopes, grant.visibility) == ("alice", {"photos:read"}, "public")
    assert grant.limits == {"max_bytes": 1000}
    assert grant.allows("photos:read") and not grant.allows("photos:write")
    assert time.time() + 590 < grant.expires_at <= time.time() + 600


def test_any_jwt_library_can_mint_one_with_the_secret_as_given() -> None:
    # the HMAC key is the secret's UTF-8 bytes: PyJWT given the str must agree
    token = jwt.encode(
        {"sub": "bob", "exp": int(time.time()) + 60, "scope": " ".join(SCOPES)},
        GRANT_SECRET,
        algorithm="HS256",
    )
    assert verify(token, [GRANT_SECRET]).scopes == set(SCOPES)


def test_unknown_scopes_are_dropped() -> None:
    token = signed({"sub": "a", "exp": int(time.time()) + 60, "scope": "photos:read admin:all"})
    assert verify(token, [GRANT_SECRET]).scopes == {"photos:read"}


def test_the_admin_scope_is_known_but_never_minted_by_default() -> None:
    token = signed({"sub": "ops", "exp": int(time.time()) + 60, "scope": "photos:admin"})
    assert verify(token, [GRANT_SECRET]).allows("photos:admin")
    assert "photos:admin" not in verify(mint(GRANT_SECRET, "a"), [GRANT_SECRET]).scopes


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"sub": "a", "exp": "AGO"}, "expired"),
        (
            {"sub": "a", "exp": "SOON", "nbf": "LATER"},
            "not valid yet",
        ),
        ({"sub": "a"}, "'exp'"),
        ({"exp": "SOON"}, "'sub'"),
        ({"sub": "a", "exp": "FAR"}, "more than 24 h"),
        ({"sub": "a" * 129, "exp": "SOON"}, "1 to 128"),
        ({"sub": "a", "exp": "SOON", "scope": ["photos:read"]}, "space-separated"),
        ({"sub": "a", "exp": "SOON", "visibility": "friends"}, "visibility"),
        ({"sub": "a", "exp": "SOON", "max_bytes": -1}, "max_bytes"),
    ],
)
def test_a_grant_out_of_its_rules_is_refused_saying_why(
    claims: dict[str, object], reason: str
) -> None:
    # times are offsets from now, taken when the test runs (not when it was collected)
    now = int(time.time())
    offsets = {"AGO": -3600, "SOON": 60, "LATER": 3600, "FAR": MAX_TTL_S + 3600}
    timed = {
        k: now + offsets[v] if isinstance(v, str) and v in offsets else v for k, v in claims.items()
    }
    assert reason in refusal(signed(timed))


def test_a_forged_signature_is_refused() -> None:
    claims = {"sub": "a", "exp": int(time.time()) + 60}
    assert "signature" in refusal(signed(claims, OTHER_SECRET))
    header, payload, signature = signed(claims).split(".")
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=="))
    tampered["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(tampered).encode()).rstrip(b"=").decode()
    assert "signature" in refusal(f"{header}.{forged}.{signature}")


def test_alg_none_and_other_algorithms_are_refused() -> None:
    claims = {"sub": "a", "exp": int(time.time()) + 60}
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert "'none'" in refusal(unsigned)
    assert "'HS512'" in refusal(jwt.encode(claims, GRANT_SECRET * 2, algorithm="HS512"))
    assert "not a JWT" in refusal("not-a-token")


def test_during_a_rotation_the_previous_secret_is_still_taken() -> None:
    old = mint(OTHER_SECRET, "a", SCOPES, 60)
    assert verify(old, [GRANT_SECRET, OTHER_SECRET]).owner == "a"
    assert "signature" in refusal(old, [GRANT_SECRET])


def test_mint_refuses_a_grant_longer_than_a_day() -> None:
    with pytest.raises(ValueError, match="between"):
        mint(GRANT_SECRET, "a", SCOPES, MAX_TTL_S + 1)
