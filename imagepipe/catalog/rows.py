"""Rows of the catalog as the roles read them: a photo, an object, and the photo states."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imagepipe.models import BackupState, Derivative, PhotoManifest

ACCEPTED, COMPLETED, FAILED = "accepted", "completed", "failed"


@dataclass(frozen=True)
class PhotoRow:
    """One photo as the catalog has it."""

    id: str
    ticket_id: str
    state: str
    original_key: str
    format: str
    width: int
    height: int
    bytes: int
    sha256: str
    sizes: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    owner: str = ""
    visibility: str = "private"
    deleted_at: datetime | None = None  # its owner deleted it: `catalog.deletions`

    @classmethod
    def of(cls, row: Any) -> PhotoRow:
        """From a result row of `photos`."""
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def manifest(self) -> PhotoManifest:
        """The photo's record, as its manifest on primary holds it (completed photos)."""
        return PhotoManifest(
            photo_id=self.id,
            original_key=self.original_key,
            sha256=self.sha256,
            format=self.format,
            width=self.width,
            height=self.height,
            bytes=self.bytes,
            owner=self.owner,
            visibility="public" if self.visibility == "public" else "private",
            ticket_id=self.ticket_id,
            created_at=self.created_at.timestamp(),
            completed_at=self.completed_at.timestamp() if self.completed_at else 0.0,
            sizes={n: Derivative.model_validate(d) for n, d in (self.sizes or {}).items()},
        )


@dataclass(frozen=True)
class ObjectRow:
    """One stored object as the catalog has it."""

    key: str
    photo_id: str
    kind: str
    bytes: int
    backup_state: BackupState


def object_row(row: Any) -> ObjectRow:
    """From a result row of `objects`."""
    return ObjectRow(
        row["key"], row["photo_id"], row["kind"], row["bytes"], BackupState(row["backup_state"])
    )
