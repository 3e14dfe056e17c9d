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
from redis.exceptions import NoScriptError, RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from imagepipe import keys
from imagepipe.api.edges import with_defaults
from imagepipe.api.views import json_bytes, ticket_json, ticket_view
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


_SCRIPTS: dict[int, AsyncScript] = {}  # the read script, per Redis client (one per Services)


def _script(redis: Redis) -> AsyncScript:
    script = _SCRIPTS.get(id(redis))
    if script is None:
        script = _SCRIPTS[id(redis)] = redis.register_script(_READ)
    return script


async def read_views(redis: Redis, ticket_ids: list[str]) -> list[list[bytes] | None]:
    """Many tickets' views in one round trip (a pipeline of the read script): each is
    ``[etag, body, terminal]``, or None where the slow path must answer (no view, a malformed
    id, Redis trouble)."""
    valid = [t for t in ticket_ids if is_ticket_id(t)]
    found = dict(zip(valid, await _evaluate_all(redis, valid), strict=True)) if valid else {}
    return [found.get(t) for t in ticket_ids]


async def _evaluate_all(redis: Redis, ticket_ids: list[str]) -> list[list[bytes] | None]:
    script = _script(redis)
    try:
        for _ in range(2):  # a Valkey that lost its scripts (restarted) gets the script again
            async with redis.pipeline(transaction=False) as pipe:
                for t in ticket_ids:
                    pipe.evalsha(script.sha, 2, keys.ticket_view(t), keys.ticket(t))
                found = await pipe.execute(raise_on_error=False)
            if not any(isinstance(f, NoScriptError) for f in found):
                break
            await redis.script_load(_READ)
    except RedisError:
        return [None] * len(ticket_ids)
    return [None if not f or isinstance(f, Exception) else cast(list[bytes], f) for f in found]


async def poll_many(services: Services, ticket_ids: list[str]) -> tuple[bytes, bool]:
    """`GET /tickets?ids=`: the body (each ticket as its own poll's JSON, null if unknown)
    and whether any is still waiting. Views are read in one round trip; only tickets
    without one take the slow path."""
    views = await read_views(services.redis, ticket_ids)
    bodies = {t: v[1] for t, v in zip(ticket_ids, views, strict=True) if v is not None}
    waiting = any(v is not None and v[2] != b"1" for v in views)
    slow = [t for t in ticket_ids if t not in bodies]
    for ticket_id, ticket in zip(slow, await services.tickets.get_many(slow), strict=True):
        waiting = waiting or ticket is None or not ticket.status.terminal
        found = await ticket_json(services.replication, ticket) if ticket else None
        bodies[ticket_id] = json_bytes(found)
    pairs = [json_bytes(t) + b":" + bodies[t] for t in ticket_ids]
    return b'{"tickets":{' + b",".join(pairs) + b"}}", waiting


class TicketPolls:
    """Answers `GET`/`HEAD /tickets/{id}` from the ticket's view; the rest passes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
        try:
            found = await _script(redis)(keys=[keys.ticket_view(ticket_id), keys.ticket(ticket_id)])
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
