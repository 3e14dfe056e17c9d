"""The error tree. Each error knows its HTTP status and public title.

    ImagepipeError                      500  (never raised bare)
    ├── BadRequest                      400  malformed request
    │   └── MissingFile                 400  multipart body without a `file` field
    ├── Unauthorized                    401  callback signature missing, forged or stale
    │   └── InvalidGrant                401  no grant, or one not to be trusted (says why)
    ├── Forbidden                       403  a grant without the scope; a signed URL tampered
    ├── NotFound                        404  unknown/expired/malformed ticket or photo
    ├── NotAcceptable                   406  no format of a size that the Accept header takes
    ├── RequestTimeout                  408  body arrived too slowly
    ├── Conflict                        409  idempotency key in flight / backwards transition
    │   ├── PhotoIdTaken                409  an original already holds this id (never rewritten)
    │   └── OffsetMismatch              409  a resumable PATCH not at the upload's offset
    ├── PreconditionFailed              412  a tus version this server does not speak
    ├── PayloadTooLarge                 413  too many bytes
    │   ├── TooManyPixels               413  width × height × frames over the limit
    │   └── QuotaExceeded               413  more than an owner's quota could ever take
    │       └── StorageQuotaFull        413  the owner's stored bytes would pass their quota
    ├── UnsupportedMediaType            415  not an image of an allowed format
    │   └── UnsupportedContentType      415  a body (a PATCH) that is not JSON
    ├── IdempotencyMismatch             422  same key, different content
    ├── Locked                          423  another request is writing this resumable upload
    ├── TooManyRequests                 429  an owner's upload rate or daily bytes (Retry-After)
    ├── ChecksumMismatch                460  a resumable PATCH's bytes differ from its checksum
    ├── ServiceOverloaded               503  queue too deep: shed load (with Retry-After)
    │   └── ServiceUnavailable          503  Redis, the catalog or primary storage unreachable
    │       └── CatalogUnavailable      503  PostgreSQL unreachable or too slow
    └── InsufficientStorage             507  primary store full

Routes raise these; `api.problems` renders them as RFC 9457 problem+json (with any ``extra``
members, e.g. the fair-use answers' ``violated-policies``). Storage errors
(`storage.base.StorageError`) are translated at the boundary.
"""

from __future__ import annotations

from typing import Any


class ImagepipeError(Exception):
    """Base of every error imagepipe raises on purpose."""

    status: int = 500
    title: str = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        retry_after: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.retry_after = retry_after
        self.headers = headers or {}
        self.extra = extra or {}  # more members of the problem (RFC 9457 extensions)


class BadRequest(ImagepipeError):
    status, title = 400, "Malformed request"


class MissingFile(BadRequest):
    title = "No file in the upload"


class Unauthorized(ImagepipeError):
    status, title = 401, "Invalid signature"


class InvalidGrant(Unauthorized):
    title = "Invalid grant"

    def __init__(self, detail: str | None = None) -> None:
        # RFC 6750: a Bearer challenge, with why this grant is refused
        challenge = 'Bearer realm="imagepipe", error="invalid_token"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(ImagepipeError):
    status, title = 403, "Forbidden"


class NotFound(ImagepipeError):
    status, title = 404, "Not found"


class NotAcceptable(ImagepipeError):
    status, title = 406, "No acceptable format"


class RequestTimeout(ImagepipeError):
    status, title = 408, "Upload too slow"


class Conflict(ImagepipeError):
    status, title = 409, "Conflict"


class PhotoIdTaken(Conflict):
    title = "Photo id already taken"


class OffsetMismatch(Conflict):
    title = "Upload-Offset mismatch"


class PreconditionFailed(ImagepipeError):
    status, title = 412, "Precondition failed"


class PayloadTooLarge(ImagepipeError):
    status, title = 413, "Upload too large"


class TooManyPixels(PayloadTooLarge):
    title = "Image has too many pixels"


class QuotaExceeded(PayloadTooLarge):
    title = "Quota exceeded"


class StorageQuotaFull(QuotaExceeded):
    title = "Storage quota exceeded"


class UnsupportedMediaType(ImagepipeError):
    status, title = 415, "Not a supported image"


class UnsupportedContentType(UnsupportedMediaType):
    title = "Unsupported content type"


class IdempotencyMismatch(ImagepipeError):
    status, title = 422, "Idempotency key reused with different content"


class Locked(ImagepipeError):
    status, title = 423, "Upload locked"


class ChecksumMismatch(ImagepipeError):
    status, title = 460, "Checksum mismatch"  # tus 1.0's checksum extension


class TooManyRequests(ImagepipeError):
    status, title = 429, "Quota exceeded"


class ServiceOverloaded(ImagepipeError):
    status, title = 503, "Service overloaded"


class ServiceUnavailable(ServiceOverloaded):
    title = "Service unavailable"


class InsufficientStorage(ImagepipeError):
    status, title = 507, "Insufficient storage"


class CatalogUnavailable(ServiceUnavailable):
    """The catalog (PostgreSQL) did not answer; transient: retry later."""

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or "the catalog is unreachable; retry", retry_after=5)
