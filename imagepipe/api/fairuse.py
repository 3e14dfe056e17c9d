"""Fair use: each owner's limits, enforced before an upload's body is read.

    uploads   uploads per minute (GCRA in Valkey, `api.ratelimit`)        429 + Retry-After
    bytes     request bytes per rolling day, the same way                 429 + Retry-After
    storage   bytes of originals and derivatives (`catalog.usage`)        413, names the quota
              and of unfinished resumable uploads while they exist
    max_bytes one upload's size: the grant's claim, below the setting     413

Each comes from Settings (``IMAGEPIPE_OWNER_*``; 0 = unlimited), overridden by the grant's
claim of the same name. An upload is admitted on its headers: its size is the declared
Content-Length (multipart framing included); the uploads and bytes policies are charged
together, all or none, before a byte of the body is read. Then the body is metered as it
arrives: a body without a Content-Length reserves its bytes a block at a time, and is cut off
with the same answers once a limit is reached; bytes reserved but never received are given
back at the end. Answers carry the IETF RateLimit-Policy and RateLimit fields
(draft-ietf-httpapi-ratelimit-headers-11) and its quota-exceeded problem type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from imagepipe import keys
from imagepipe.api.bodies import MULTIPART_SLACK
from imagepipe.api.ingest import limit_bytes
from imagepipe.api.ratelimit import Charge, Rate, RateLimiter, Standing
from imagepipe.catalog.usage import OwnerUsage
from imagepipe.config import Settings
from imagepipe.errors import PayloadTooLarge, QuotaExceeded, StorageQuotaFull, TooManyRequests
from imagepipe.grants import Grant

UPLOADS, BYTES, STORAGE = "uploads", "bytes", "storage"
WINDOWS_S = {UPLOADS: 60, BYTES: 24 * 3600}
UNITS = {UPLOADS: "requests", BYTES: "content-bytes", STORAGE: "content-bytes"}
BLOCK = 1 << 20  # what a body without a Content-Length reserves at a time
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"


@dataclass(frozen=True)
class OwnerLimits:
    """One owner's limits, as the settings and their grant set them (0 = unlimited)."""

    owner: str
    quotas: dict[str, int]  # UPLOADS, BYTES, STORAGE -> quota
    max_bytes: int  # the largest upload this grant may send

    @classmethod
    def of(cls, settings: Settings, grant: Grant) -> OwnerLimits:
        """The grant's claims where it has them, else the settings."""
        claims = grant.limits
        quotas = {
            UPLOADS: claims.get("uploads_per_minute", settings.owner_uploads_per_minute),
            BYTES: claims.get("bytes_per_day", settings.owner_bytes_per_day),
            STORAGE: claims.get("storage_bytes", settings.owner_storage_bytes),
        }
        cap = claims.get("max_bytes") or settings.max_upload_bytes
        return cls(grant.owner, quotas, min(cap, settings.max_upload_bytes))

    def rate(self, policy: str) -> Rate | None:
        """A windowed policy's rate, None where it is unlimited."""
        quota = self.quotas[policy]
        return Rate(quota, WINDOWS_S[policy]) if quota else None

    def charges(self, **costs: int) -> list[Charge]:
        """Charges of ``costs`` (policy -> units) against the limited windowed policies."""
        found = [(policy, self.rate(policy), cost) for policy, cost in costs.items()]
        return [Charge(p, keys.owner_limit(p, self.owner), r, c) for p, r, c in found if r]


@dataclass
class Standings:
    """Where an owner stands: each windowed policy, and stored bytes."""

    limits: OwnerLimits
    windowed: dict[str, Standing]
    stored: int | None = None  # read where a storage quota applies (always for /limits)

    def headers(self) -> dict[str, str]:
        """RateLimit-Policy and RateLimit (nothing where no limit applies)."""
        policies, limits = [], []
        for policy, standing in self.windowed.items():
            quota, window = self.limits.quotas[policy], WINDOWS_S[policy]
            policies.append(f'"{policy}";q={quota};w={window}{_unit(policy)}')
            limits.append(f'"{policy}";r={standing.remaining};t={standing.reset_s}')
        quota = self.limits.quotas[STORAGE]
        if quota and self.stored is not None:
            policies.append(f'"{STORAGE}";q={quota}{_unit(STORAGE)}')
            limits.append(f'"{STORAGE}";r={max(0, quota - self.stored)}')
        return (
            {"RateLimit-Policy": ", ".join(policies), "RateLimit": ", ".join(limits)}
            if policies
            else {}
        )

    def view(self) -> dict[str, Any]:
        """`GET /limits`: every limit, what is left and when it is back; None = unlimited."""
        view: dict[str, Any] = {
            "owner": self.limits.owner,
            "max_upload_bytes": self.limits.max_bytes,
        }
        for policy in (UPLOADS, BYTES):
            standing = self.windowed.get(policy)
            view[policy] = {
                "quota": self.limits.quotas[policy] or None,
                "window_s": WINDOWS_S[policy],
                "remaining": standing.remaining if standing else None,
                "reset_s": standing.reset_s if standing else 0,
            }
        quota = self.limits.quotas[STORAGE]
        left = max(0, quota - (self.stored or 0)) if quota else None
        view[STORAGE] = {"quota": quota or None, "used": self.stored, "remaining": left}
        return view


def _unit(policy: str) -> str:
    unit = UNITS[policy]
    return "" if unit == "requests" else f';qu="{unit}"'  # requests: the default unit


def _refused(standings: Standings, charged: list[str]) -> TooManyRequests:
    """429 naming the policies the charge did not fit; Retry-After: when it would."""
    violated = [p for p in charged if standings.windowed[p].retry_s > 0]
    retry = max(standings.windowed[p].retry_s for p in violated)
    for policy in violated:  # r=0 for t seconds: no earlier than Retry-After (draft section 6)
        standings.windowed[policy] = Standing(0, retry, retry)
    names = " and ".join(
        f"{p} ({standings.limits.quotas[p]} per {WINDOWS_S[p]} s)" for p in violated
    )
    return TooManyRequests(
        f"the owner's {names} quota is used up; retry in {retry} s",
        retry_after=retry,
        headers=standings.headers(),
        extra={"type": QUOTA_EXCEEDED, "violated-policies": violated},
    )


def storage_full(limits: OwnerLimits, stored: int, adding: int) -> StorageQuotaFull:
    """413 naming the storage quota."""
    quota = limits.quotas[STORAGE]
    return StorageQuotaFull(
        f"the owner's storage quota is {quota} bytes; {stored} are used and this upload "
        f"brings {adding} more",
        extra={
            "type": QUOTA_EXCEEDED,
            "violated-policies": [STORAGE],
            "quota": quota,
            "used": stored,
        },
    )


class FairUse:
    """Admits uploads within their owner's limits and tells owners where they stand."""

    def __init__(
        self,
        limiter: RateLimiter,
        usage: OwnerUsage,
        settings: Settings,
        unfinished: Callable[[str], Awaitable[int]] | None = None,
    ) -> None:
        self.limiter, self.usage, self.settings = limiter, usage, settings
        self.unfinished = unfinished  # an owner's unfinished resumable uploads' bytes

    async def standing(self, grant: Grant) -> Standings:
        """Where the grant's owner stands now (charges nothing)."""
        limits = OwnerLimits.of(self.settings, grant)
        _, windowed = await self.limiter.charge(limits.charges(**{UPLOADS: 0, BYTES: 0}))
        return Standings(limits, windowed, await self.usage.stored_bytes(limits.owner))

    @asynccontextmanager
    async def upload(self, grant: Grant, declared: int | None) -> AsyncIterator[Allowance]:
        """Admit one upload on its headers (413/429 if it cannot be), then meter its body;
        bytes reserved and never received are given back at the end, however it ends."""
        allowance = await self._admit(OwnerLimits.of(self.settings, grant), declared)
        try:
            yield allowance
        finally:
            await allowance.settle()

    async def admit(self, grant: Grant, declared: int) -> Standings:
        """Admit an upload whose bytes come later (a resumable one), charged in full now."""
        return (await self._admit(OwnerLimits.of(self.settings, grant), declared)).standings

    async def _admit(self, limits: OwnerLimits, declared: int | None) -> Allowance:
        _check_size(limits, declared)
        stored = await self._stored(limits, declared or 0)
        reserve = declared if declared is not None else min(BLOCK, limits.quotas[BYTES] or BLOCK)
        allowed, windowed = await self.limiter.charge(
            limits.charges(**{UPLOADS: 1, BYTES: reserve})
        )
        standings = Standings(limits, windowed, stored)
        if not allowed:
            raise _refused(standings, list(standings.windowed))
        return Allowance(self, standings, reserved=reserve if limits.rate(BYTES) else 0)

    async def _stored(self, limits: OwnerLimits, adding: int) -> int | None:
        """The owner's stored bytes where a storage quota applies; 413 if ``adding`` passes it."""
        quota = limits.quotas[STORAGE]
        if not quota:
            return None  # no read at all: the default costs an upload nothing
        stored = await self.usage.stored_bytes(limits.owner)
        if self.unfinished is not None:  # they count while they exist
            stored += await self.unfinished(limits.owner)
        if stored + adding > quota or stored >= quota:
            raise storage_full(limits, stored, adding)
        return stored


def _check_size(limits: OwnerLimits, declared: int | None) -> None:
    """413 for a declared length no quota could ever take: the grant's cap, or a whole day's."""
    if declared is None:
        return
    if declared > limits.max_bytes + MULTIPART_SLACK:
        raise PayloadTooLarge(f"the upload is larger than {limits.max_bytes} bytes")
    daily = limits.quotas[BYTES]
    if daily and declared > daily:
        raise QuotaExceeded(
            f"the upload ({declared} bytes) is larger than the owner's bytes quota of {daily} "
            "a day",
            extra={"type": QUOTA_EXCEEDED, "violated-policies": [BYTES]},
        )


@dataclass
class Allowance:
    """One admitted upload: its body metered against what is left, its standing for headers."""

    fair_use: FairUse
    standings: Standings
    reserved: int = 0  # bytes charged to the bytes policy so far
    received: int = 0
    _ended: bool = field(default=False, repr=False)

    @property
    def max_bytes(self) -> int:
        """The largest file this upload may carry."""
        return self.standings.limits.max_bytes

    def headers(self) -> dict[str, str]:
        """The RateLimit fields as the upload was admitted."""
        return self.standings.headers()

    async def metered(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The raw body, cut off (429 or 413) where it passes the bytes or storage quota."""
        async for chunk in chunks:
            self.received += len(chunk)
            await self._within_quotas()
            yield chunk

    def capped(self, file: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The file's bytes, cut off (413) past the grant's max_bytes."""
        return limit_bytes(file, self.max_bytes)

    async def _within_quotas(self) -> None:
        limits, stored = self.standings.limits, self.standings.stored
        if stored is not None and stored + self.received > limits.quotas[STORAGE]:
            raise storage_full(limits, stored, self.received)
        while limits.rate(BYTES) and self.received > self.reserved:
            block = min(BLOCK, limits.quotas[BYTES])
            allowed, found = await self.fair_use.limiter.charge(limits.charges(**{BYTES: block}))
            if not allowed:
                self.standings.windowed.update(found)
                raise _refused(self.standings, [BYTES])
            self.reserved += block

    async def settle(self) -> None:
        """Give back the bytes reserved and never received (a body cut short, or refused)."""
        unused = self.reserved - self.received
        if unused > 0 and not self._ended:
            self._ended = True
            charges = self.standings.limits.charges(**{BYTES: -unused})
            await self.fair_use.limiter.charge(charges, strict=False)
