"""Who is calling: the grant a request carries, and the scope each route asks of it.

    Caller    the grant, or None (public reads: a public photo, the public stream)
    Writer    a grant with photos:write, else 401 (none, or untrusted) / 403 (no scope)
    Reader    a grant with photos:read
    Deleter   a grant with photos:delete
    Admin     a grant with photos:admin (an operator's: account-wide deletion)
    Granted   a grant with any of them

`imagepipe dev` (development only) treats a request without credentials as the owner
``local`` with every scope, so the page and curl work out of the box. Production never
does: without a grant a request is anonymous, and anonymous callers read public photos only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from imagepipe.api.deps import ServicesDep
from imagepipe.config import Settings
from imagepipe.errors import Forbidden, InvalidGrant
from imagepipe.grants import (
    ADMIN,
    DELETE,
    KNOWN_SCOPES,
    READ,
    SCOPES,
    WRITE,
    Grant,
    GrantRefused,
    verify,
)

DEV_OWNER = "local"
DEV_GRANT = Grant(owner=DEV_OWNER, scopes=frozenset(SCOPES))


def grant_of(request: Request, settings: Settings) -> Grant | None:
    """The request's verified grant; None when it carries none (outside development)."""
    header = request.headers.get("authorization")
    if header is None:
        return DEV_GRANT if settings.environment == "development" else None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidGrant("send the grant as `Authorization: Bearer <grant>`")
    try:
        return verify(token.strip(), settings.grant_secrets)
    except GrantRefused as refused:
        raise InvalidGrant(str(refused)) from None


async def optional_grant(request: Request, services: ServicesDep) -> Grant | None:
    """The grant, if any (``async``: no thread hop for a dependency that awaits nothing)."""
    return grant_of(request, services.settings)


def needs(*scopes: str) -> Callable[[Request, ServicesDep], Awaitable[Grant]]:
    """A dependency: the caller's grant, which must carry one of ``scopes``."""

    async def scoped(request: Request, services: ServicesDep) -> Grant:
        return require(grant_of(request, services.settings), *scopes)

    return scoped


def require(grant: Grant | None, *scopes: str) -> Grant:
    """``grant``, which must exist (401) and carry one of ``scopes`` (403)."""
    if grant is None:
        raise InvalidGrant("this request needs a grant: `Authorization: Bearer <grant>`")
    if not any(grant.allows(scope) for scope in scopes):
        raise Forbidden(f"the grant does not carry the {' or '.join(scopes)} scope")
    return grant


Caller = Annotated[Grant | None, Depends(optional_grant)]
Writer = Annotated[Grant, Depends(needs(WRITE))]
Reader = Annotated[Grant, Depends(needs(READ))]
Deleter = Annotated[Grant, Depends(needs(DELETE))]
Admin = Annotated[Grant, Depends(needs(ADMIN))]
Granted = Annotated[Grant, Depends(needs(*KNOWN_SCOPES))]  # any scope: e.g. to ask its limits
