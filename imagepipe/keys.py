"""Every Redis key, queue and stream name, and every storage key, in one place."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from imagepipe import formats

PREFIX = "imagepipe:"

# -- arq queues (one lane per kind of work, so a backfill never starves new uploads) ----
UPLOADS_QUEUE = PREFIX + "queue:uploads"
BACKFILL_QUEUE = PREFIX + "queue:backfill"

# -- replication log -------------------------------------------------------------------
REPLICATION_STREAM = PREFIX + "replication:log"
REPLICATION_GROUP = "replicators"
REPLICATION_PENDING = PREFIX + "replication:pending"  # zset: storage key -> first enqueued at
REPLICATION_PENDING_BYTES = PREFIX + "replication:pending-bytes"  # hash: storage key -> size

# -- deletion (removals travel on the replication log, op "delete") --------------------------
DELETION_PENDING = PREFIX + "deletion:pending"  # zset: storage key -> deletion started at
DELETION_SWEEP = PREFIX + "deletion:sweep"  # one trash/account sweep at a time

# -- the audit -------------------------------------------------------------------------------
AUDIT_LAST = PREFIX + "audit:last"  # hash: finding kind -> count, finished_at -> timestamp
AUDIT_LOCK = PREFIX + "audit:lock"  # one periodic audit at a time across replicators


def ticket(ticket_id: str) -> str:
    """The ticket record (JSON)."""
    return f"{PREFIX}ticket:{ticket_id}"


def ticket_view(ticket_id: str) -> str:
    """The ticket as polls answer it: the response body around its backup state, with what
    an ETag and that state are made of (written with the ticket, read by `api.polls`)."""
    return f"{PREFIX}ticket-view:{ticket_id}"


def ticket_channel(ticket_id: str) -> str:
    """Pub/sub channel announcing a ticket's changes (for the event stream)."""
    return f"{PREFIX}ticket-events:{ticket_id}"


def photo_ticket(photo_id: str) -> str:
    """Photo id -> ticket id, so a photo found on primary leads back to its ticket."""
    return f"{PREFIX}photo:{photo_id}:ticket"


def photo_backup(photo_id: str) -> str:
    """Hash: each of a photo's objects -> its backup state, while its ticket is kept (polls
    read it; the catalog keeps the durable state)."""
    return f"{PREFIX}photo:{photo_id}:backup"


def photo_lock(photo_id: str) -> str:
    """Held while a photo's manifest is rewritten (a change of visibility)."""
    return f"{PREFIX}photo:{photo_id}:lock"


def idempotency(key_digest: str) -> str:
    """An Idempotency-Key's reservation (by digest: keys are client-chosen text)."""
    return f"{PREFIX}idempotency:{key_digest}"


def owner_limit(policy: str, owner: str) -> str:
    """An owner's state under one fair-use policy (GCRA: when their whole quota is back, in ms),
    expiring then. By digest: owner ids are the web tier's text; the braces keep an owner's
    policies in one Redis Cluster slot, as one script charges them together."""
    digest = hashlib.sha256(owner.encode()).hexdigest()[:32]
    return f"{PREFIX}limit:{{{digest}}}:{policy}"


def resumable(upload_id: str) -> str:
    """Hash: one resumable upload's state (owner, length, offset, metadata, expiry, ticket),
    expiring with the upload (`imagepipe.resumable`)."""
    return f"{PREFIX}resumable:{upload_id}"


def resumable_lock(upload_id: str) -> str:
    """Held by the one request writing a resumable upload (a PATCH, a termination)."""
    return f"{PREFIX}resumable:{upload_id}:lock"


def owner_resumables(owner: str) -> str:
    """Zset: an owner's unfinished resumable uploads -> when each expires (by digest, as
    `owner_limit`); their lengths count against the owner's storage quota."""
    digest = hashlib.sha256(owner.encode()).hexdigest()[:32]
    return f"{PREFIX}resumables:{{{digest}}}"


def resumable_idempotency(upload_id: str) -> str:
    """The Idempotency-Key a resumable upload's last byte is accepted under: a retried or
    concurrent completion converges on one photo and one ticket."""
    return f"resumable:{upload_id}"


def webhook_seen(webhook_id: str) -> str:
    """Marks a callback's webhook-id as applied, so a replay is acknowledged, not reapplied."""
    return f"{PREFIX}webhook-seen:{webhook_id}"


def process_job_id(ticket_id: str, attempt: int = 0) -> str:
    """Deterministic arq job id: the queue cannot hold one ticket's processing twice."""
    return f"process:{ticket_id}" if attempt == 0 else f"process:{ticket_id}:{attempt}"


def callback_job_id(webhook_id: str) -> str:
    """Deterministic arq job id for one callback delivery."""
    return f"callback:{webhook_id}"


# -- storage keys (always made by the server, never from a client's file name) ------------
ORIGINALS = "originals/"
DERIVATIVES = "derivatives/"
MANIFESTS = "manifests/"
TOMBSTONES = "tombstones/"
PARTIAL_UPLOADS = "uploads/"  # resumable uploads' bytes until their last one arrives


def original(photo_id: str, ext: str) -> str:
    """Where an upload's original lives, as uploaded."""
    return f"{ORIGINALS}{photo_id}.{ext}"


def derivative(photo_id: str, size: str, ext: str) -> str:
    """One resized copy of a photo, in the format its extension names."""
    return f"{DERIVATIVES}{photo_id}/{size}.{ext}"


def every_derivative(photo_id: str, ladder: Iterable[tuple[str, Iterable[str]]]) -> set[str]:
    """Every derivative a ladder of (size name, its formats) makes of a photo."""
    return {
        derivative(photo_id, name, formats.extension(fmt)) for name, fmts in ladder for fmt in fmts
    }


def manifest(photo_id: str) -> str:
    """The photo's record, written by the web tier when the photo is indexed."""
    return f"{MANIFESTS}{photo_id}.json"


def tombstone(photo_id: str) -> str:
    """A deleted photo's tombstone: written first, replicated, never removed.

    Its presence on primary or backup means the photo is deleted: a restore never brings
    back a photo whose tombstone it finds, even when the catalog is lost too.
    """
    return f"{TOMBSTONES}{photo_id}.json"


def partial_upload(upload_id: str) -> str:
    """Where a resumable upload's bytes gather (a file, or an S3 multipart upload's parts)."""
    return f"{PARTIAL_UPLOADS}{upload_id}"


OBJECT_KINDS = {
    ORIGINALS: "original",
    DERIVATIVES: "derivative",
    MANIFESTS: "manifest",
    TOMBSTONES: "tombstone",
}


def kind_of(key: str) -> str | None:
    """``original``, ``derivative``, ``manifest`` or ``tombstone``; None for a key imagepipe
    never makes."""
    return next((kind for prefix, kind in OBJECT_KINDS.items() if key.startswith(prefix)), None)


def photo_of(key: str) -> str:
    """The photo id in an original's, derivative's, manifest's or tombstone's key."""
    return key.split("/", 2)[1].split(".", 1)[0]


def derivative_name(key: str) -> str:
    """``{photo_id}-{size}.{ext}`` for a derivative's key: unique, and safe in a header."""
    return key.removeprefix(DERIVATIVES).replace("/", "-")
