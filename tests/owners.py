"""Grants for tests: every test stack runs under production rules, so requests carry one."""

from __future__ import annotations

from typing import Any

from imagepipe.grants import SCOPES, mint

GRANT_SECRET = "test-grant-secret-of-32-characters-at-least"
OWNER = "tester"  # whose photos a test's uploads are, unless it says otherwise


def grant(owner: str = OWNER, scopes: tuple[str, ...] = SCOPES, **claims: Any) -> str:
    """A grant the test API trusts (an hour long)."""
    return mint(GRANT_SECRET, owner, scopes, 3600, **claims)


def bearer(owner: str = OWNER, scopes: tuple[str, ...] = SCOPES, **claims: Any) -> dict[str, str]:
    """The Authorization header of such a grant."""
    return {"Authorization": f"Bearer {grant(owner, scopes, **claims)}"}


def raw_authorization(owner: str = OWNER) -> bytes:
    """The Authorization header line for a request written byte by byte (CRLF included)."""
    return f"Authorization: {bearer(owner)['Authorization']}\r\n".encode()


AUTH = raw_authorization()
