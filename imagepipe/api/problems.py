"""RFC 9457 problem+json for every error, so no client ever has to parse an HTML 500."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from imagepipe.api.edges import with_defaults
from imagepipe.errors import ImagepipeError

log = logging.getLogger(__name__)
MEDIA_TYPE = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem+json response."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def render(exc: ImagepipeError) -> JSONResponse:
    """The problem for one of our errors (also for middleware, which runs outside the handlers)."""
    return problem(exc.status, exc.title, exc.detail, exc.retry_after, exc.headers, **exc.extra)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ImagepipeError)
    return render(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, title, str(exc.detail))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
    return problem(400, "Malformed request", "the request failed validation", errors=errors)


async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable on %s %s: %s", request.method, request.url.path, exc)
    return problem(503, "Service unavailable", "the queue is unreachable; retry", 5)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    response = problem(500, "Internal error", "an unexpected error happened; it has been logged")
    # sent by Starlette's outermost middleware, past `edges.ResponseDefaults`: added here
    response.raw_headers = with_defaults(response.raw_headers)
    return response


def install(app: FastAPI) -> None:
    """Route every kind of error through problem+json."""
    app.add_exception_handler(ImagepipeError, _domain_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(RedisError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)
