"""Per-process bounds on requests that hold the process for long: uploads and event streams.

Past a bound the request is answered at once with 503 and Retry-After (pure ASGI, before any
route runs), rather than queueing behind the others until memory or file descriptors run
out. A load balancer then sends the retry to a process with room.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from imagepipe.api.bodies import Received, refusal
from imagepipe.config import Settings
from imagepipe.errors import ServiceOverloaded

RETRY_AFTER_S = 2


@dataclass
class Bound:
    """At most ``limit`` requests matching ``method`` and ``path`` at once."""

    what: str
    method: str
    path: re.Pattern[str]
    limit: int
    active: int = 0

    def matches(self, scope: Scope) -> bool:
        """Whether the request is one of those this bound counts."""
        return scope["method"] == self.method and self.path.fullmatch(scope["path"]) is not None


def bounds(settings: Settings) -> list[Bound]:
    """The bounds the settings ask for."""
    uploads = re.compile(r"/photos/?")
    streams = re.compile(r"/tickets/[^/]+/events")
    # tus under /uploads/, the IETF draft under /resumable/
    creations = re.compile(r"/(uploads|resumable)/?")
    resumable = re.compile(r"/(uploads|resumable)/[^/]+")
    return [
        Bound("uploads", "POST", uploads, settings.max_concurrent_uploads),
        Bound("resumable uploads", "PATCH", resumable, settings.max_concurrent_uploads),
        # a creation may carry an upload's first bytes too
        Bound("resumable creations", "POST", creations, settings.max_concurrent_uploads),
        Bound("event streams", "GET", streams, settings.max_event_streams),
    ]


class ConcurrencyLimit:
    """503 + Retry-After for a request past its bound; the others pass untouched."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.bounds = bounds(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        http = scope["type"] == "http"
        bound = next((b for b in self.bounds if b.matches(scope)), None) if http else None
        if bound is None:
            await self.app(scope, receive, send)
        elif bound.active >= bound.limit:
            await self._refuse(bound, scope, receive, send)
        else:
            bound.active += 1  # one event loop: no await between the test and this
            try:
                await self.app(scope, receive, send)
            finally:
                bound.active -= 1

    async def _refuse(self, bound: Bound, scope: Scope, receive: Receive, send: Send) -> None:
        busy = ServiceOverloaded(
            f"{bound.limit} {bound.what} are in progress on this server; retry",
            retry_after=RETRY_AFTER_S,
        )
        response = refusal(Request(scope, receive), busy, Received(), self.settings)
        await response(scope, receive, send)
