"""Grants: the web tier's signed word on who a caller is and what they may do.

The web tier owns users; imagepipe keeps no user database and trusts what the web tier
signs. A grant is a JWT (HS256) signed with ``IMAGEPIPE_GRANT_SECRET``, the HMAC key
exactly as given (its UTF-8 bytes), so any JWT library in any language can mint one:

    sub         the owner id (any string the web tier uses, at most 128 characters)
    exp         required; more than 24 h ahead is refused
    scope       space-separated: photos:write photos:read photos:delete, and photos:admin
                (an operator's: account-wide deletion); unknown ones ignored
    max_bytes   optional: the largest upload this owner may send
    visibility  optional: what an upload is when it names none (private or public)
    uploads_per_minute, bytes_per_day, storage_bytes   optional: this owner's fair-use limits

``mint`` makes one (`imagepipe token`); ``verify`` checks one against the current secret and,
during a rotation, the previous one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from imagepipe.models import VISIBILITIES, Visibility

ALGORITHM = "HS256"
MAX_TTL_S = 24 * 3600
MAX_OWNER_CHARS = 128
LEEWAY_S = 30  # clocks of the web tier and this host may disagree a little
WRITE, READ, DELETE = "photos:write", "photos:read", "photos:delete"
ADMIN = "photos:admin"  # never minted by default: an operator's scope, not an owner's
SCOPES = (WRITE, READ, DELETE)  # an owner's
KNOWN_SCOPES = (*SCOPES, ADMIN)
LIMIT_CLAIMS = ("max_bytes", "uploads_per_minute", "bytes_per_day", "storage_bytes")


class GrantRefused(ValueError):
    """The grant cannot be trusted; ``str()`` says why, for the 401 problem."""


@dataclass(frozen=True)
class Grant:
    """A verified grant: who the caller is, and what they may do."""

    owner: str
    scopes: frozenset[str] = frozenset()
    expires_at: float = 0.0
    visibility: Visibility = "private"
    limits: dict[str, int] = field(default_factory=dict)  # LIMIT_CLAIMS the grant set

    def allows(self, scope: str) -> bool:
        """Whether this grant carries ``scope``."""
        return scope in self.scopes


def mint(
    secret: str,
    owner: str,
    scopes: tuple[str, ...] | list[str] = SCOPES,
    ttl_s: float = 3600,
    **claims: Any,
) -> str:
    """A grant for ``owner`` valid ``ttl_s`` seconds (at most 24 h), signed with ``secret``."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"a grant lives between 1 s and {MAX_TTL_S} s, not {ttl_s}")
    _check_owner(owner)
    now = int(time.time())
    payload = {"sub": owner, "iat": now, "exp": now + int(ttl_s), "scope": " ".join(scopes)}
    return jwt.encode({**payload, **claims}, secret.encode(), algorithm=ALGORITHM)


def verify(token: str, secrets: list[str]) -> Grant:
    """The grant ``token`` carries, or GrantRefused saying why it is not trusted."""
    _check_header(token)
    claims = _claims_by_any(token, secrets)
    if claims["exp"] > time.time() + MAX_TTL_S + LEEWAY_S:
        raise GrantRefused("the grant expires more than 24 h ahead; mint shorter ones")
    return _grant(claims)


def _check_header(token: str) -> None:
    try:
        algorithm = jwt.get_unverified_header(token).get("alg")
    except jwt.DecodeError:
        raise GrantRefused("the grant is not a JWT") from None
    if algorithm != ALGORITHM:
        raise GrantRefused(f"the grant's algorithm is {algorithm!r}; only {ALGORITHM} is taken")


def _claims_by_any(token: str, secrets: list[str]) -> dict[str, Any]:
    """The claims, signed by one of ``secrets`` (current first) and within their times."""
    for secret in secrets:
        try:
            return _claims(token, secret)
        except jwt.InvalidSignatureError:
            continue
    raise GrantRefused("the grant's signature is wrong")


def _claims(token: str, secret: str) -> dict[str, Any]:
    options: Any = {"require": ["exp", "sub"]}
    try:
        return dict(
            jwt.decode(token, secret.encode(), [ALGORITHM], options=options, leeway=LEEWAY_S)
        )
    except jwt.InvalidSignatureError:
        raise
    except jwt.ExpiredSignatureError:
        raise GrantRefused("the grant has expired") from None
    except jwt.ImmatureSignatureError:
        raise GrantRefused("the grant is not valid yet") from None
    except jwt.MissingRequiredClaimError as exc:
        raise GrantRefused(f"the grant has no {exc.claim!r} claim") from None
    except jwt.InvalidTokenError as exc:
        raise GrantRefused(f"the grant is malformed ({exc})") from None


def _grant(claims: dict[str, Any]) -> Grant:
    owner = claims["sub"]
    _check_owner(owner)
    scope = claims.get("scope", "")
    if not isinstance(scope, str):
        raise GrantRefused("the grant's scope is not a space-separated string")
    visibility = claims.get("visibility", "private")
    if visibility not in VISIBILITIES:
        raise GrantRefused(f"the grant's visibility is {visibility!r}, not private or public")
    return Grant(
        owner=owner,
        scopes=frozenset(scope.split()) & frozenset(KNOWN_SCOPES),
        expires_at=float(claims["exp"]),
        visibility=visibility,
        limits=_limits(claims),
    )


def _limits(claims: dict[str, Any]) -> dict[str, int]:
    limits = {name: claims[name] for name in LIMIT_CLAIMS if name in claims}
    for name, value in limits.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise GrantRefused(f"the grant's {name} is not a whole number of at least 0")
    return limits


def _check_owner(owner: object) -> None:
    if not isinstance(owner, str) or not 0 < len(owner) <= MAX_OWNER_CHARS:
        raise GrantRefused(f"the grant's sub must be 1 to {MAX_OWNER_CHARS} characters")
