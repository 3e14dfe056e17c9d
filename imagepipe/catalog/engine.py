"""The catalog's connection pool: one bounded async engine per process, built from Settings.

Any PostgreSQL URL works (``postgresql://user:pass@host/db``, or a Unix socket as
``postgresql://user@/db?host=/run/postgresql``); the driver is asyncpg. Every connection has
a connect timeout and a statement timeout, like every other outbound call.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from imagepipe.config import Settings
from imagepipe.errors import CatalogUnavailable

# what a down, restarting or overloaded PostgreSQL raises: transient, a 503 to clients
UNREACHABLE = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, OSError)
# SQLSTATE classes of the same: connection exceptions, and a server shutting down or still
# recovering ("the database system is starting up"), which the driver may raise as a bare
# DBAPIError
UNREACHABLE_STATES = ("08", "57P")
P = ParamSpec("P")
T = TypeVar("T")
POOL_OVERFLOW = 0  # the pool size is a bound, not a hint
POOL_RECYCLE_S = 30 * 60
# No pre-ping: it would double the round trips of every query. A connection that died with
# its server fails one query; the pool then drops every connection it had, and `reconnecting`
# runs the query once more on a fresh one.


def driver_url(url: str) -> str:
    """The URL with SQLAlchemy's asyncpg driver named (``postgresql+asyncpg://``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ValueError(f"IMAGEPIPE_DATABASE_URL must be a postgresql:// URL, not {scheme!r}")
    return f"postgresql+asyncpg://{rest}"


def create_engine(settings: Settings) -> AsyncEngine:
    """A lazily connecting engine: at most ``database_pool_size`` connections, ms timeouts."""
    if not settings.database_url:
        raise ValueError("IMAGEPIPE_DATABASE_URL is not set (only `imagepipe dev` starts one)")
    statement_ms = settings.database_statement_timeout_ms
    return create_async_engine(
        driver_url(settings.database_url),
        pool_size=settings.database_pool_size,
        max_overflow=POOL_OVERFLOW,
        pool_timeout=settings.database_connect_timeout_ms / 1000,
        pool_recycle=POOL_RECYCLE_S,
        connect_args={
            "timeout": settings.database_connect_timeout_ms / 1000,
            "command_timeout": statement_ms / 1000,
            "server_settings": {"statement_timeout": str(statement_ms)},
        },
    )


@asynccontextmanager
async def session(engine: AsyncEngine, atomic: bool = False) -> AsyncIterator[AsyncConnection]:
    """A connection; an unreachable catalog becomes CatalogUnavailable here, at the boundary,
    and only here.

    Each statement commits on its own (one round trip: no BEGIN, no COMMIT) unless ``atomic``
    asks for one transaction around them all. Every write imagepipe makes is one statement.
    """
    try:
        async with engine.begin() if atomic else _autocommit(engine) as db:
            yield db
    except exc.DBAPIError as error:
        if not unreachable(error):
            raise
        raise CatalogUnavailable(f"the catalog is unreachable ({type(error).__name__})") from error
    except UNREACHABLE as error:
        raise CatalogUnavailable(f"the catalog is unreachable ({type(error).__name__})") from error


def unreachable(error: exc.DBAPIError) -> bool:
    """Whether a driver error means the server is out of reach (not a query's own fault)."""
    if isinstance(error, UNREACHABLE) or error.connection_invalidated:
        return True
    return _sqlstate(error).startswith(UNREACHABLE_STATES)


def _sqlstate(error: exc.DBAPIError) -> str:
    """The SQLSTATE behind SQLAlchemy's wrapper and asyncpg's adapter, or ""."""
    found: BaseException | None = error.orig
    while found is not None:
        state = getattr(found, "sqlstate", None) or getattr(found, "pgcode", None)
        if isinstance(state, str):
            return state
        found = found.__cause__
    return ""


def reconnecting(query: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Run a catalog query again, once, when it failed on a connection its server dropped
    (PostgreSQL restarted since the pool made it). Every catalog query is safe to repeat."""

    @functools.wraps(query)
    async def once_more(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await query(*args, **kwargs)
        except CatalogUnavailable as error:
            cause = error.__cause__
            if not (isinstance(cause, exc.DBAPIError) and cause.connection_invalidated):
                raise
        return await query(*args, **kwargs)

    return once_more


@asynccontextmanager
async def _autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as db:
        yield await db.execution_options(isolation_level="AUTOCOMMIT")
