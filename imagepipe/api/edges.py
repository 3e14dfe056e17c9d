"""Pure-ASGI middleware at the web tier's edge, for every route at once.

    ResponseDefaults  nosniff, a Referrer-Policy, a Content-Security-Policy and an explicit
                      Cache-Control on every response that does not set its own
    HeadAsGet         HEAD runs the GET route: its status and headers, no body

Order, outermost first: ResponseDefaults -> HeadAsGet -> `api.limits` -> the routes.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A JSON body or an image is never a document: no scripts, no framing (an SVG opened alone).
OTHER_POLICY = b"default-src 'none'; frame-ancestors 'none'"
# HTML that brings no policy of its own (the page and the docs set theirs): same-origin only.
HTML_POLICY = (
    b"default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    b"frame-ancestors 'none'"
)
DEFAULTS = {
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    # a response that says nothing may be kept by shared caches for a heuristic lifetime
    b"cache-control": b"no-store",
}


def with_defaults(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` plus every default header they do not set themselves."""
    present = {name.lower(): value for name, value in headers}
    html = present.get(b"content-type", b"").startswith(b"text/html")
    policy = {b"content-security-policy": HTML_POLICY if html else OTHER_POLICY}
    added = [(k, v) for k, v in (DEFAULTS | policy).items() if k not in present]
    return [*headers, *added]


class ResponseDefaults:
    """Security headers and a caching policy on every response that sets none of its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_defaults(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_defaults(list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_with_defaults)


class HeadAsGet:
    """HEAD answered by the GET route: the same status and headers, no body (RFC 9110 9.3.2).

    Once the head is out, the route reads a disconnect and its body is dropped, so an
    event stream ends at once instead of streaming into nothing.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = False

        async def send_head(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start" and not answered:
                await send(message)
                await send({"type": "http.response.body", "body": b""})
                answered = True

        async def receive_until_answered() -> Message:
            return {"type": "http.disconnect"} if answered else await receive()

        await self.app({**scope, "method": "GET"}, receive_until_answered, send_head)
