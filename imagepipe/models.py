"""The records that travel between roles: tickets, manifests, callback events, replicas."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

Visibility = Literal["private", "public"]  # who may see a photo: its owner, or everyone
VISIBILITIES: tuple[Visibility, ...] = ("private", "public")


def now() -> float:
    """Wall-clock seconds; one place so every record agrees on the unit."""
    return time.time()


class TicketStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def rank(self) -> int:
        """Order of the forward-only state machine; terminal states share the top rank."""
        return {"queued": 0, "processing": 1, "completed": 2, "failed": 2}[self.value]

    @property
    def terminal(self) -> bool:
        return self.rank == 2


class BackupState(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


class StoredFile(BaseModel):
    """One object on primary storage, as its writer saw it."""

    key: str
    bytes: int
    sha256: str
    content_type: str = "image/jpeg"


class Derivative(StoredFile):
    """One size of a photo: the file in its first format, plus any other formats of it."""

    width: int
    height: int
    alternates: list[StoredFile] = Field(default_factory=list)  # the same pixels, re-encoded

    @property
    def files(self) -> list[StoredFile]:
        """Every encoding of this size, the first (default) one first."""
        # read on every ticket poll: the fields are validated already, so no dump and re-check
        first = StoredFile.model_construct(**{f: getattr(self, f) for f in StoredFile.model_fields})
        return [first, *self.alternates]


def sizes_keys(sizes: dict[str, Derivative]) -> list[str]:
    """The storage key of every file of every size."""
    return [f.key for d in sizes.values() for f in d.files]


class Original(BaseModel):
    """What the upload path learned about a photo's original."""

    photo_id: str
    original_key: str
    sha256: str
    format: str
    width: int
    height: int
    bytes: int
    owner: str = ""  # the grant's subject ("" for photos accepted before owners existed)
    visibility: Visibility = "private"

    def original_facts(self) -> dict[str, Any]:
        """Just these fields, to build another record about the same original."""
        return self.model_dump(include=set(Original.model_fields))


class PhotoManifest(Original):
    """The photo's record on primary storage (``manifests/{photo_id}.json``)."""

    ticket_id: str
    created_at: float
    completed_at: float = 0.0  # when it was indexed (0: by a version that did not say)
    sizes: dict[str, Derivative]

    def object_keys(self) -> list[str]:
        """Every storage object this photo owns, its manifest aside."""
        return [self.original_key, *sizes_keys(self.sizes)]


class Ticket(Original):
    """The server's record of one upload's progress (kept in Redis for the retention period)."""

    id: str
    status: TicketStatus = TicketStatus.QUEUED
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    attempts: int = 0
    error: str | None = None
    version: int = 1  # bumped on every change: the SSE event id and part of the ETag
    sizes: dict[str, Derivative] = Field(default_factory=dict)

    def object_keys(self) -> list[str]:
        """Every storage object this photo owns (the ones backup must hold)."""
        return [self.original_key, *sizes_keys(self.sizes)]


EventType = Literal["processing.started", "processing.completed", "processing.failed"]


class CallbackEvent(BaseModel):
    """What a worker tells the web tier (the body of a signed callback)."""

    type: EventType
    ticket_id: str
    photo_id: str
    attempt: int = 1
    sizes: dict[str, Derivative] = Field(default_factory=dict)
    width: int | None = None  # the photo upright (EXIF orientation applied), on completion
    height: int | None = None
    error: str | None = None
    timestamp: float = Field(default_factory=now)


class ReplicaState(BaseModel):
    """Per-object replication state: ``pending -> completed | failed(reason)``."""

    state: BackupState = BackupState.PENDING
    reason: str | None = None
    attempts: int = 0
    enqueued_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
