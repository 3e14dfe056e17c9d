"""The ticket poll's fast path: one Valkey round trip, no framework, the same bytes.

A poll is the request browsers send most. The web tier's `TicketStore` keeps, beside each
ticket and in the same transaction, its *view* (`keys.ticket_view`): the JSON body a poll
answers, split around its one part that changes without the ticket changing (the photo's
backup state, which the replicator writes), with what the ETag and that state are made of.
One Lua script reads the view, checks the ticket still exists and computes the backup state
from the photo's backup hash; `TicketPolls`, the outermost middleware, sends the result as
it is, or a 304 when the client's ETag matches. Anything else (no view yet, a malformed or
unknown id, Redis trouble) goes on to the `GET /tickets/{id}` route, which answers the same
bytes and ETag the slow way, or the error.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from imagepipe import keys
from imagepipe.api.edges import with_defaults
from imagepipe.api.views import json_bytes, ticket_view
from imagepipe.ids import is_ticket_id
from imagepipe.models import BackupState, Ticket

if TYPE_CHECKING:
    from imagepipe.api.services import Services

_PLACEHOLDER = "\x00backup\x00"  # JSON-escaped as \u0000, so no ticket can contain it
_PLACEHOLDER_JSON = json.dumps(_PLACEHOLDER).encode()
_PATH = re.compile(r"/tickets/([^/]+)")

# KEYS: the view, the ticket. Returns nil when there is no view (or no ticket any more),
# else {etag, body, terminal}. The backup state is the slow path's (`ticket_backup`).
_READ = """
local view = redis.call('GET', KEYS[1])
if not view or redis.call('EXISTS', KEYS[2]) == 0 then return false end
local ends, at = {}, 0
for i = 1, 5 do at = string.find(view, '\\n', at + 1, true); ends[i] = at end
local prefix = string.sub(view, 1, ends[1] - 1)
local terminal = string.sub(view, ends[1] + 1, ends[2] - 1)
local objects = {}
for key in string.gmatch(string.sub(view, ends[3] + 1, ends[4] - 1), '%S+') do
  objects[#objects + 1] = key
end
local states = redis.call('HMGET', string.sub(view, ends[2] + 1, ends[3] - 1), unpack(objects))
local backup = 'completed'
for _, state in ipairs(states) do
  if state == 'failed' then backup = 'failed' break end
  if state ~= 'completed' then backup = 'pending' end
end
if terminal == '0' and backup == 'completed' then backup = 'pending' end
local body = string.sub(view, ends[4] + 1, ends[5] - 1) .. '"' .. backup .. '"'
return {prefix .. backup .. '"', body .. string.sub(view, ends[5] + 1), terminal}
"""


def render_view(ticket: Ticket) -> bytes:
    """A ticket's view: ETag prefix, terminal flag, backup hash, its objects, and the body
    before and after its backup state; one per line (compact JSON has no newline)."""
    body = ticket_view(ticket, BackupState.PENDING)
    body["backup"] = _PLACEHOLDER
    head, tail = json_bytes(body).split(_PLACEHOLDER_JSON)
    fields = [
        f'"{ticket.id}-{ticket.version}-',  # the route's ETag, less the backup state
        "1" if ticket.status.terminal else "0",
        keys.photo_backup(ticket.photo_id),
        " ".join(ticket.object_keys()),
    ]
    return "\n".join(fields).encode() + b"\n" + head + b"\n" + tail


def matches(if_none_match: bytes, etag: bytes) -> bool:
    """Whether an If-None-Match header names this ETag (or is ``*``)."""
    header = if_none_match.strip()
    return header == b"*" or etag in [tag.strip() for tag in header.split(b",")]


class TicketPolls:
    """Answers `GET`/`HEAD /tickets/{id}` from the ticket's view; the rest passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.scripts: dict[int, AsyncScript] = {}  # per Redis client (one per Services)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if found is None or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        services: Services = scope["app"].state.services
        answer = await self._read(services.redis, found.group(1))
        if answer is None:
            await self.app(scope, receive, send)
            return
        await self._answer(scope, send, services, answer)

    async def _read(self, redis: Redis, ticket_id: str) -> list[bytes] | None:
        if not is_ticket_id(ticket_id):
            return None  # the route says 404
        script = self.scripts.get(id(redis))
        if script is None:
            script = self.scripts[id(redis)] = redis.register_script(_READ)
        try:
            found = await script(keys=[keys.ticket_view(ticket_id), keys.ticket(ticket_id)])
        except RedisError:
            return None  # the route answers, or says what is wrong
        return cast(list[bytes], found) if found else None

    async def _answer(
        self, scope: Scope, send: Send, services: Services, answer: list[bytes]
    ) -> None:
        etag, body, terminal = answer
        headers = [(b"etag", etag), (b"cache-control", b"no-cache")]
        if terminal != b"1":
            headers.append((b"retry-after", str(await services.retry_after()).encode()))
        if _client_has(scope, etag):
            status, body = 304, b""
        else:
            status = 200
            headers += [
                (b"content-length", str(len(body)).encode()),
                (b"content-type", b"application/json"),
            ]
        start: dict[str, Any] = {"type": "http.response.start", "status": status}
        await send({**start, "headers": with_defaults(headers)})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )


def _client_has(scope: Scope, etag: bytes) -> bool:
    for name, value in scope["headers"]:
        if name == b"if-none-match":
            return matches(value, etag)
    return False
