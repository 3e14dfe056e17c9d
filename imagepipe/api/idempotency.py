"""Idempotency keys: the same key again returns the same ticket and starts no new work.

    reserve  SET NX with a lease  -> fresh (go ahead) | in flight (409) | done (compare)
    commit   inside the ticket's own transaction: key -> ticket id + sha256, kept 24 h
    release  after a refused upload, so the client may try again

A reservation is a lease, not a lock held forever: if the API dies mid-upload the key frees
itself when the lease runs out. The photo and ticket ids of a keyed upload are derived from
the key (HMAC with a server secret: unguessable, yet the same on every retry), so a retry
after the API died between fsync and response rewrites the same original and makes the same
ticket: it converges on one photo instead of making a second.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from imagepipe import keys
from imagepipe.errors import BadRequest, Conflict
from imagepipe.ids import derived_ids

MAX_KEY_LENGTH = 255
RELEASE_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class Reservation:
    """The outcome of reserving a key: ours to use, or an earlier upload's result."""

    redis_key: str
    token: str
    retention_s: int
    photo_id: str  # the ids this key's upload gets, on any retry
    new_ticket_id: str
    ticket_id: str | None = None  # set when an earlier request with this key completed
    sha256: str | None = None

    def commit(self, pipe: Pipeline, ticket_id: str, sha256: str) -> None:
        """Record the result inside the caller's transaction (with the ticket it names)."""
        record = json.dumps({"ticket_id": ticket_id, "sha256": sha256})
        pipe.set(self.redis_key, record, ex=self.retention_s)


class IdempotencyKeys:
    """Reservations and results of Idempotency-Key headers."""

    def __init__(self, redis: Redis, retention_s: int, lease_s: int, secret: str) -> None:
        self.redis, self.retention_s, self.lease_s = redis, retention_s, lease_s
        self.secret = secret

    async def reserve(self, header: str) -> Reservation:
        """Claim the key for this request, or report what an earlier request made of it."""
        if not 0 < len(header) <= MAX_KEY_LENGTH:
            raise BadRequest(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters")
        redis_key = keys.idempotency(hashlib.sha256(header.encode()).hexdigest()[:40])
        token = "inflight:" + secrets.token_hex(8)
        ids = derived_ids(self.secret, header)
        if await self.redis.set(redis_key, token, nx=True, ex=self.lease_s):
            return Reservation(redis_key, token, self.retention_s, *ids)
        raw = await self.redis.get(redis_key)
        text = raw.decode() if isinstance(raw, bytes) else raw
        if text is None:
            return await self.reserve(header)  # the other lease ended just now
        if text.startswith("inflight:"):
            raise Conflict("a request with this Idempotency-Key is still in flight", retry_after=1)
        done = json.loads(text)
        return Reservation(
            redis_key,
            token,
            self.retention_s,
            *ids,
            ticket_id=done["ticket_id"],
            sha256=done["sha256"],
        )

    async def release(self, reservation: Reservation) -> None:
        """Free a key whose request was refused (only if the lease is still ours)."""
        release = self.redis.eval(RELEASE_IF_OURS, 1, reservation.redis_key, reservation.token)
        await cast(Awaitable[int], release)
