"""Resumable uploads' state in Valkey: whose each is, how long, how far, until when.

The bytes live on primary storage (`storage.partial`); this is everything else, one hash per
upload (`keys.resumable`) that expires with the upload, and a zset per owner
(`keys.owner_resumables`) of their unfinished uploads, ``{id}:{length}`` scored by expiry:
the lengths count against the owner's storage quota while the uploads exist.

    offset   acknowledged bytes: moved only by the lock's holder (a Lua compare-and-set on
             the lock's token and the old offset), after the bytes were made durable
    lock     one writer at a time (`keys.resumable_lock`), a lease its holder renews
    ticket   set once the last byte was accepted; the upload then no longer counts as
             unfinished, and HEAD answers with the ticket until the state expires

Scripts are fixed text: clients reach them only as key names and numbers.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any, cast

from redis.asyncio import Redis

from imagepipe import keys
from imagepipe.models import Visibility

UPLOAD_ID = re.compile(r"[0-9a-f]{32}")  # what `new_upload_id` makes
SETTLE_POLL_S = 0.02

# KEYS: state, lock. ARGV: token, old offset, new offset. 1 if moved, 0 if not the holder or
# the offset moved meanwhile.
ADVANCE = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'offset') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'offset', ARGV[3])
return 1
"""
# KEYS: lock. ARGV: token, lease ms (0: release).
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then return redis.call('DEL', KEYS[1]) end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""


def new_upload_id() -> str:
    """A random upload id (128 bits, hex): the upload's URL is its only name."""
    return secrets.token_hex(16)


@dataclass
class ResumableUpload:
    """One resumable upload, as its hash holds it."""

    id: str
    owner: str
    length: int
    expires_at: float
    visibility: Visibility = "private"
    offset: int = 0
    metadata: str = ""  # the Upload-Metadata header as the client sent it (tus)
    handle: str = ""  # the partial store's (an S3 multipart upload id)
    format: str = ""  # the sniffed format, once the header passed its checks
    ticket_id: str = ""  # once the last byte was accepted

    @property
    def complete(self) -> bool:
        """Every byte arrived."""
        return self.offset == self.length

    def expired(self, now: float | None = None) -> bool:
        """Past its expiry (Valkey drops the hash then too)."""
        return (now or time.time()) >= self.expires_at

    @classmethod
    def parse(cls, fields: dict[bytes, bytes]) -> ResumableUpload:
        """From the hash."""
        found = {k.decode(): v.decode() for k, v in fields.items()}
        ints = {name: int(found.pop(name)) for name in ("length", "offset")}
        expires_at = float(found.pop("expires_at"))
        return cls(**found, **ints, expires_at=expires_at)  # type: ignore[arg-type]


class ResumableStore:
    """Resumable uploads' state, shared by every API process (and the audit)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._advance = redis.register_script(ADVANCE)
        self._renew = redis.register_script(RENEW)

    async def create(self, upload: ResumableUpload) -> None:
        """Record a new upload, expiring at its expiry, among its owner's unfinished ones."""
        key, mine = keys.resumable(upload.id), keys.owner_resumables(upload.owner)
        fields = {k: str(v) for k, v in asdict(upload).items()}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields)
            pipe.expireat(key, int(upload.expires_at) + 1)
            pipe.zadd(mine, {f"{upload.id}:{upload.length}": upload.expires_at})
            pipe.expireat(mine, int(upload.expires_at) + 1, gt=True)
            pipe.expireat(mine, int(upload.expires_at) + 1, nx=True)
            await pipe.execute()

    async def get(self, upload_id: str) -> ResumableUpload | None:
        """The upload, or None if unknown or expired."""
        fields = await cast(Awaitable[Any], self.redis.hgetall(keys.resumable(upload_id)))
        if not fields:
            return None
        upload = ResumableUpload.parse(fields)
        return None if upload.expired() else upload

    async def unfinished(self, owner: str) -> tuple[int, int]:
        """How many uploads the owner has unfinished, and their lengths together."""
        mine = keys.owner_resumables(owner)
        now = time.time()
        await self.redis.zremrangebyscore(mine, "-inf", now)
        members = await self.redis.zrangebyscore(mine, now, "+inf")
        return len(members), sum(int(m.rsplit(b":", 1)[1]) for m in members)

    async def unfinished_bytes(self, owner: str) -> int:
        """The lengths of the owner's unfinished uploads (for the storage quota)."""
        return (await self.unfinished(owner))[1]

    async def lock(self, upload_id: str, lease_ms: int) -> str | None:
        """Take the upload's lock; its token, or None while another request holds it."""
        token = secrets.token_hex(16)
        taken = await self.redis.set(keys.resumable_lock(upload_id), token, nx=True, px=lease_ms)
        return token if taken else None

    async def locked(self, upload_id: str) -> bool:
        """Whether a request holds the upload's lock now."""
        return bool(await self.redis.exists(keys.resumable_lock(upload_id)))

    async def settled(self, upload_id: str, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until no request holds the upload's lock; whether
        none does."""
        deadline = time.monotonic() + timeout_s
        while await self.locked(upload_id):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(SETTLE_POLL_S)
        return True

    async def renew(self, upload_id: str, token: str, lease_ms: int) -> bool:
        """Extend the lease (0: release it); False if the lock is no longer this token's."""
        return bool(
            await self._renew(keys=[keys.resumable_lock(upload_id)], args=[token, lease_ms])
        )

    async def advance(self, upload_id: str, token: str, old: int, new: int) -> bool:
        """Move the acknowledged offset, if this token holds the lock and nobody moved it."""
        lock = keys.resumable_lock(upload_id)
        args: list[str | int] = [token, old, new]
        return bool(await self._advance(keys=[keys.resumable(upload_id), lock], args=args))

    async def handle(self, upload_id: str, handle: str) -> None:
        """The partial store's handle of the upload's bytes."""
        await cast(Awaitable[int], self.redis.hset(keys.resumable(upload_id), "handle", handle))

    async def vetted(self, upload_id: str, image_format: str) -> None:
        """The header passed the checks (type, pixels): no need to look again."""
        await cast(
            Awaitable[int], self.redis.hset(keys.resumable(upload_id), "format", image_format)
        )

    async def finished(self, upload: ResumableUpload, ticket_id: str) -> None:
        """The last byte was accepted as this ticket; no longer unfinished."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(keys.resumable(upload.id), "ticket_id", ticket_id)
            pipe.zrem(keys.owner_resumables(upload.owner), f"{upload.id}:{upload.length}")
            await pipe.execute()

    async def remove(self, upload: ResumableUpload) -> None:
        """Forget the upload (terminated, refused, or expired)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.resumable(upload.id))
            pipe.zrem(keys.owner_resumables(upload.owner), f"{upload.id}:{upload.length}")
            await pipe.execute()
