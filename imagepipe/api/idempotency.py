"""Idempotency keys: the same key again returns the same ticket and starts no new work.

    reserve  one Lua script -> fresh (go ahead, new random ids) | in flight (409)
                             | lease expired (go ahead, the SAME ids) | done (compare)
    commit   inside the ticket's own transaction: key -> ticket id + sha256, kept 24 h
    release  after a refused upload: the lease ends, the ids stay for the client's retry

The record lives for the key's retention: ``{state, token, lease_until, photo_id,
ticket_id}`` while in flight, ``{state: done, photo_id, ticket_id, sha256}`` once accepted.
Its ids are random, made at the first reservation, so a retry after the API died between
fsync and response names the same photo and ticket (and converges on the original already
written), while the same key used after its record expired gets new ids: never those of an
older photo. A reservation is a lease, not a lock held forever: if the API dies mid-upload
the next request with the key takes over once the lease runs out (server time, in Lua).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from imagepipe import keys
from imagepipe.errors import BadRequest, Conflict
from imagepipe.ids import new_photo_id, new_ticket_id

MAX_KEY_LENGTH = 255
# KEYS[1] the record; ARGV token, lease ms, retention s, fresh photo id, fresh ticket id
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local raw = redis.call('GET', KEYS[1])
local record, outcome = nil, 'fresh'
if raw then
  -- records written before this format: a bare lease token (busy), or a result (done)
  if string.sub(raw, 1, 1) ~= '{' then return {'busy', '{}'} end
  record = cjson.decode(raw)
  if record.state == 'done' or not record.lease_until then return {'done', raw} end
  if tonumber(record.lease_until) > now then return {'busy', raw} end
  outcome = 'retry'
else
  record = {photo_id = ARGV[4], ticket_id = ARGV[5]}
end
record.state, record.token = 'inflight', ARGV[1]
record.lease_until = now + tonumber(ARGV[2])
raw = cjson.encode(record)
redis.call('SET', KEYS[1], raw, 'EX', ARGV[3])
return {outcome, raw}
"""
# end the lease (only if it is still ours), keeping the ids
RELEASE = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local record = cjson.decode(raw)
if record.state ~= 'inflight' or record.token ~= ARGV[1] then return 0 end
record.lease_until = 0
redis.call('SET', KEYS[1], cjson.encode(record), 'KEEPTTL')
return 1
"""


@dataclass(frozen=True)
class Reservation:
    """The outcome of reserving a key: ours to use, or an earlier upload's result."""

    redis_key: str
    token: str
    retention_s: int
    photo_id: str  # the ids this key's upload gets, on any retry while the key is kept
    ticket_id: str
    outcome: str  # fresh | retry (an earlier attempt's lease ended) | done
    sha256: str | None = None  # done: the accepted upload's

    @property
    def done(self) -> bool:
        """An earlier request with this key was accepted: replay its ticket."""
        return self.outcome == "done"

    @property
    def retry(self) -> bool:
        """The ids were an earlier attempt's, which may have written the original already."""
        return self.outcome == "retry"

    def commit(self, pipe: Pipeline, ticket_id: str, sha256: str) -> None:
        """Record the result inside the caller's transaction (with the ticket it names)."""
        record = {"state": "done", "photo_id": self.photo_id, "ticket_id": ticket_id}
        pipe.set(self.redis_key, json.dumps({**record, "sha256": sha256}), ex=self.retention_s)


class IdempotencyKeys:
    """Reservations and results of Idempotency-Key headers."""

    def __init__(self, redis: Redis, retention_s: int, lease_s: int) -> None:
        self.redis, self.retention_s, self.lease_s = redis, retention_s, lease_s

    async def reserve(self, header: str, owner: str = "") -> Reservation:
        """Claim the owner's key for this request, or report what an earlier request of the
        same owner made of it (keys are per owner: one owner's key never names another's)."""
        if not 0 < len(header) <= MAX_KEY_LENGTH:
            raise BadRequest(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters")
        scoped = f"{len(owner)}:{owner}:{header}"  # length-prefixed: no two pairs collide
        redis_key = keys.idempotency(hashlib.sha256(scoped.encode()).hexdigest()[:40])
        token = secrets.token_hex(8)
        lease_ms, retention = str(self.lease_s * 1000), str(self.retention_s)
        args = (token, lease_ms, retention, new_photo_id(), new_ticket_id())
        reserved = self.redis.eval(RESERVE, 1, redis_key, *args)
        outcome, raw = cast(list[Any], await cast(Awaitable[Any], reserved))
        outcome = _text(outcome)
        if outcome == "busy":
            raise Conflict("a request with this Idempotency-Key is still in flight", retry_after=1)
        record = json.loads(raw)
        ids = (record.get("photo_id", ""), record["ticket_id"])
        return Reservation(redis_key, token, self.retention_s, *ids, outcome, record.get("sha256"))

    async def release(self, reservation: Reservation) -> None:
        """End the lease of a refused request (if still ours); the ids stay for its retry."""
        release = self.redis.eval(RELEASE, 1, reservation.redis_key, reservation.token)
        await cast(Awaitable[int], release)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
