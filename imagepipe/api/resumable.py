"""Resumable uploads: created, appended to a PATCH at a time, accepted at their last byte.

The rules of `POST /photos` hold from the first bytes:

    create    the grant's max_bytes (413), the owner's unfinished uploads
              (IMAGEPIPE_RESUMABLE_MAX_PER_OWNER, 429), and fair use charged in full on the
              declared length, as a POST is on its Content-Length: one upload, its bytes,
              and the storage quota, which unfinished uploads count against while they exist
    PATCH     the first bytes are sniffed and the header probed for its pixels as soon as
              it has arrived (`api.ingest`'s checks): a non-image or a pixel bomb is refused
              (and its upload terminated) on the first PATCH, not after 40 MB. The bytes are
              made durable (`storage.partial`) before the offset moves: every
              IMAGEPIPE_RESUMABLE_CHECKPOINT_BYTES, and with what arrived when the client
              goes away mid-PATCH (unless the PATCH carries a checksum: then all or nothing)
    last byte the whole upload goes through `api.accept.accept_upload` in that request, under
              the Idempotency-Key `keys.resumable_idempotency(id)`: a retried, concurrent or
              crashed completion converges on one photo and one ticket

One request writes an upload at a time (`resumable.ResumableStore.lock`, 423 otherwise).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from imagepipe import formats, keys
from imagepipe.api.accept import Upload, accept_upload
from imagepipe.api.fairuse import OwnerLimits
from imagepipe.api.ingest import PROBE_STEPS, HeaderProbe, sniffed
from imagepipe.api.services import Services
from imagepipe.api.tus import Checksum
from imagepipe.config import Settings
from imagepipe.errors import (
    BadRequest,
    ChecksumMismatch,
    Conflict,
    ImagepipeError,
    InsufficientStorage,
    Locked,
    NotFound,
    OffsetMismatch,
    PayloadTooLarge,
    ServiceOverloaded,
    ServiceUnavailable,
    TooManyRequests,
)
from imagepipe.grants import Grant
from imagepipe.models import Visibility
from imagepipe.resumable import UPLOAD_ID, ResumableUpload, new_upload_id
from imagepipe.storage import StorageError, StorageFull
from imagepipe.storage.partial import PartialWriter

HEAD_WAIT_S = 2.0  # how long HEAD waits for a PATCH in progress to settle
PREFIX_BYTES = PROBE_STEPS[-1]  # the header probe's last try; past it the final check decides
T = TypeVar("T")
Body = Callable[[int], AsyncIterator[bytes]]
Step = Callable[[ResumableUpload, str], Awaitable[ResumableUpload]]


class HeaderCheck:
    """The upload's first bytes, across PATCHes: sniffed, then probed until the header parses."""

    def __init__(self, settings: Settings, prefix: bytes = b"") -> None:
        self.settings = settings
        self.first = bytearray()
        self.probe: HeaderProbe | None = None
        self.format = ""
        self.done = False  # parsed, or past PREFIX_BYTES: the final check decides
        if prefix:
            self.feed(prefix)

    def feed(self, chunk: bytes) -> None:
        """Add bytes; 415 (not an allowed image) or 413 (too many pixels) as soon as known."""
        if self.done:
            return
        if self.probe is None:
            self.first += chunk
            if len(self.first) < formats.SNIFF_BYTES:
                return
            self.format = sniffed(bytes(self.first), self.settings)
            self.probe = HeaderProbe([self.format], self.settings.max_pixels)
            chunk, self.first = bytes(self.first), bytearray()
        self.probe.feed(chunk)
        self.done = self.probe.result is not None or len(self.probe.buffer) > PREFIX_BYTES

    @property
    def passed(self) -> bool:
        """The header parsed within its limits."""
        return self.probe is not None and self.probe.result is not None


@dataclass
class Appending:
    """One PATCH being written: its writer, lock and checks."""

    upload: ResumableUpload
    token: str
    writer: PartialWriter
    check: HeaderCheck | None
    checksum: Checksum | None
    renewed_at: float = 0.0
    digest: bytes = b""  # of this PATCH's bytes, where it carries a checksum


class ResumableUploads:
    """The resumable uploads of every owner, over the services of one API process."""

    def __init__(self, services: Services) -> None:
        self.services, self.settings = services, services.settings
        self.store, self.partials = services.resumables, services.partials
        self.lease_ms = int(2 * self.settings.upload_idle_timeout_s * 1000)

    async def create(
        self, grant: Grant, length: int, metadata: str, visibility: Visibility
    ) -> tuple[ResumableUpload, dict[str, str]]:
        """A new upload of ``length`` bytes, admitted under the owner's limits; its RateLimit
        headers."""
        limits = OwnerLimits.of(self.settings, grant)
        if length > limits.max_bytes:
            raise PayloadTooLarge(f"the upload is larger than {limits.max_bytes} bytes")
        if length == 0:
            raise BadRequest("the upload is empty")
        count, _ = await self.store.unfinished(grant.owner)
        if count >= self.settings.resumable_max_per_owner:
            raise TooManyRequests(
                f"the owner has {count} unfinished resumable uploads; finish or terminate one",
                retry_after=60,
            )
        standings = await self.services.fair_use.admit(grant, length)
        expires_at = time.time() + self.settings.resumable_ttl_s
        upload = ResumableUpload(
            new_upload_id(), grant.owner, length, expires_at, visibility, metadata=metadata
        )
        await self.store.create(upload)  # first: the audit removes bytes with no upload
        try:
            upload.handle = await self._storage(self.partials.create(upload.id))
        except BaseException:
            await self.store.remove(upload)
            raise
        if upload.handle:
            await self.store.handle(upload.id, upload.handle)
        return upload, standings.headers()

    async def find(self, grant: Grant, upload_id: str) -> ResumableUpload:
        """The caller's upload; 404 for an unknown, expired or someone else's one."""
        upload = await self.store.get(upload_id) if UPLOAD_ID.fullmatch(upload_id) else None
        if upload is None or upload.owner != grant.owner:
            raise NotFound("no such upload (or it expired)")
        return upload

    async def status(self, grant: Grant, upload_id: str) -> ResumableUpload:
        """HEAD: the upload as it stands; a complete one whose acceptance was lost (the API
        died after the last byte) is accepted now, if no request is writing it.

        A PATCH in progress is given HEAD_WAIT_S to settle first: a client asks HEAD when its
        last request failed, and that request, its client gone, may still be making the
        bytes it received durable; the offset it is about to acknowledge is the one to tell."""
        upload = await self.find(grant, upload_id)
        if await self.store.locked(upload.id):
            await self.store.settled(upload.id, HEAD_WAIT_S)
            upload = await self.find(grant, upload_id)
        if upload.complete and not upload.ticket_id:
            token = await self.store.lock(upload.id, self.lease_ms)
            # not now (in flight elsewhere, overloaded, full): HEAD still says where it stands
            with contextlib.suppress(Locked, ServiceOverloaded, InsufficientStorage):
                if token is not None:
                    upload = await self._locked(upload.id, token, self._finish)
        return upload

    async def patch(
        self,
        grant: Grant,
        upload_id: str,
        offset: int,
        body: Body,
        checksum: Checksum | None,
    ) -> ResumableUpload:
        """Append a PATCH's body at ``offset``; at the last byte the photo is accepted.

        ``body`` gives the request's body, cut off (413) past the room the upload has left."""
        upload = await self.find(grant, upload_id)
        _at(upload, offset)
        token = await self.store.lock(upload.id, self.lease_ms)
        if token is None:
            raise Locked("another request is writing this upload; retry", retry_after=1)

        async def append(upload: ResumableUpload, token: str) -> ResumableUpload:
            _at(upload, offset)  # again, under the lock
            if not upload.complete:
                upload = await self._append(upload, token, body, checksum)
            return await self._finish(upload, token) if upload.complete else upload

        return await self._locked(upload.id, token, append)

    async def terminate(self, grant: Grant, upload_id: str) -> None:
        """DELETE: the upload and its bytes are gone (a photo it made stays)."""
        upload = await self.find(grant, upload_id)
        token = await self.store.lock(upload.id, self.lease_ms)
        if token is None:
            raise Locked("another request is writing this upload; retry", retry_after=1)
        try:
            await self._drop(upload)
        finally:
            await self.store.renew(upload.id, token, 0)

    async def _locked(self, upload_id: str, token: str, step: Step) -> ResumableUpload:
        try:
            upload = await self.store.get(upload_id)
            if upload is None:
                raise NotFound("no such upload (or it expired)")
            return await step(upload, token)
        finally:
            await self.store.renew(upload_id, token, 0)

    async def _append(
        self,
        upload: ResumableUpload,
        token: str,
        body: Body,
        checksum: Checksum | None,
    ) -> ResumableUpload:
        check = await self._check(upload)
        writer = await self._storage(self.partials.writer(upload.id, upload.handle, upload.offset))
        appending = Appending(upload, token, writer, check, checksum, time.monotonic())
        try:
            await self._write(appending, body(upload.length - upload.offset))
            if checksum is not None and appending.digest != checksum.digest:
                raise ChecksumMismatch(f"the bytes' {checksum.algorithm} is not Upload-Checksum's")
            await self._checkpoint(appending)
        finally:
            await writer.close()
        return upload

    async def _check(self, upload: ResumableUpload) -> HeaderCheck | None:
        """The header check, unless an earlier PATCH passed it (or left it to the end)."""
        if upload.format:
            return None
        prefix = b""
        if upload.offset:
            reading = self.partials.head(upload.id, upload.handle, upload.offset, PREFIX_BYTES)
            found = await self._storage(reading)
            if found is None:
                return None  # not readable before assembly: the final check decides
            prefix = found
        check = HeaderCheck(self.settings, prefix)
        return None if check.done else check

    async def _write(self, appending: Appending, body: AsyncIterator[bytes]) -> None:
        """Every chunk checked, hashed and written; checkpoints as they fill; on a body cut
        short (the client went away, a timeout), what arrived is kept."""
        hasher = appending.checksum.hasher() if appending.checksum else None
        try:
            async for chunk in body:
                await self._vet(appending, chunk)
                if hasher is not None:
                    hasher.update(chunk)
                await self._storage(appending.writer.write(chunk))
                await self._maybe_checkpoint(appending, hasher is None)
        except _Refused as refused:
            raise refused.error from None
        except ImagepipeError:
            if hasher is None:  # with a checksum a PATCH is all or nothing
                await self._checkpoint(appending)
            raise
        appending.digest = hasher.digest() if hasher is not None else b""

    async def _vet(self, appending: Appending, chunk: bytes) -> None:
        check = appending.check
        if check is None:
            return
        try:
            check.feed(chunk)
        except ImagepipeError as error:
            await self._drop(appending.upload)  # a non-image or a bomb: nothing is kept
            raise _Refused(error) from None
        if check.done:
            appending.check = None
            if check.passed:
                await self.store.vetted(appending.upload.id, check.format)

    async def _maybe_checkpoint(self, appending: Appending, allowed: bool) -> None:
        writer, now = appending.writer, time.monotonic()
        if allowed and writer.written - writer.end >= self.settings.resumable_checkpoint_bytes:
            await self._checkpoint(appending)
        elif now - appending.renewed_at > self.lease_ms / 3000:
            await self._renew(appending)

    async def _checkpoint(self, appending: Appending) -> None:
        """The bytes written made durable, then the offset moved to their end."""
        upload = appending.upload
        end = await self._storage(appending.writer.sync())
        if end != upload.offset:
            if not await self.store.advance(upload.id, appending.token, upload.offset, end):
                raise Locked("the upload's lock was lost mid-PATCH; retry", retry_after=1)
            upload.offset = end
        appending.renewed_at = time.monotonic()

    async def _renew(self, appending: Appending) -> None:
        if not await self.store.renew(appending.upload.id, appending.token, self.lease_ms):
            raise Locked("the upload's lock was lost mid-PATCH; retry", retry_after=1)
        appending.renewed_at = time.monotonic()

    async def _finish(self, upload: ResumableUpload, token: str = "") -> ResumableUpload:
        """Every byte is here: the photo accepted (once, whoever asks again), bytes dropped."""
        if upload.ticket_id or not upload.complete:
            return upload
        await self._storage(self.partials.assemble(upload.id, upload.handle, upload.length))
        body = self.partials.read(upload.id, upload.handle, upload.length)
        key = keys.resumable_idempotency(upload.id)
        source = self.partials.local_file(upload.id)  # linked, not copied, where it can be
        try:
            ticket, _ = await accept_upload(
                self.services, body, Upload(upload.owner, upload.visibility, key, source)
            )
        except ImagepipeError as refused:
            if refused.status in (413, 415):  # the final checks: nothing to resume
                await self._drop(upload)
            if type(refused) is Conflict:  # an API that died accepting it held the key
                raise Locked("the upload is being accepted; retry", retry_after=1) from None
            raise
        await self.store.finished(upload, ticket.id)
        upload.ticket_id = ticket.id
        await self._storage(self.partials.discard(upload.id, upload.handle))
        return upload

    async def _drop(self, upload: ResumableUpload) -> None:
        await self._storage(self.partials.discard(upload.id, upload.handle))
        await self.store.remove(upload)

    @staticmethod
    async def _storage(step: Awaitable[T]) -> T:
        """A partial store step; its failures become 503 (or 507 when full)."""
        try:
            return await step
        except StorageFull:
            raise InsufficientStorage("primary storage is full", retry_after=60) from None
        except StorageError as exc:
            raise ServiceUnavailable(f"primary storage unavailable: {exc}", retry_after=5) from None


class _Refused(Exception):
    """The header check refused the upload (already dropped): not a body cut short."""

    def __init__(self, error: ImagepipeError) -> None:
        super().__init__(error.detail)
        self.error = error


def _at(upload: ResumableUpload, offset: int) -> None:
    if offset != upload.offset:
        raise OffsetMismatch(
            f"the upload is at offset {upload.offset}, not {offset}",
            headers={"Upload-Offset": str(upload.offset)},
        )
