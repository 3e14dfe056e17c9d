"""Who may see a photo, as the catalog says: its owner and visibility, and changes to them.

access(photo_id)                     owner, visibility and state of a photo, or None
change(photo_id, owner, visibility)  the owner's PATCH: None when it is not theirs
manifest_rewritten(photo_id, file)   the manifest's object row after a rewrite: its new
                                     size and sha256, pending backup again
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from imagepipe.catalog.engine import reconnecting, session
from imagepipe.catalog.rows import COMPLETED
from imagepipe.catalog.schema import objects, photos
from imagepipe.models import BackupState, StoredFile, Visibility


@dataclass(frozen=True)
class Access:
    """What deciding who sees a photo needs."""

    photo_id: str
    owner: str
    visibility: Visibility
    state: str
    ticket_id: str
    deleted_at: datetime | None = None

    @property
    def public(self) -> bool:
        """Whether anyone may see it (once it is processed, until it is deleted)."""
        return self.visibility == "public" and self.state == COMPLETED and not self.deleted

    @property
    def deleted(self) -> bool:
        """Whether its owner deleted it: no one sees it any more."""
        return self.deleted_at is not None


COLUMNS = (
    photos.c.id,
    photos.c.owner,
    photos.c.visibility,
    photos.c.state,
    photos.c.ticket_id,
    photos.c.deleted_at,
)


class VisibilityCatalog:
    """Photos' owners and visibility in PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @reconnecting
    async def access(self, photo_id: str) -> Access | None:
        """The photo's owner, visibility and state; None when there is no such photo."""
        async with session(self.engine) as db:
            found = (await db.execute(select(*COLUMNS).where(photos.c.id == photo_id))).first()
        return Access(*found) if found is not None else None

    @reconnecting
    async def change(self, photo_id: str, owner: str, visibility: Visibility) -> Access | None:
        """Set the visibility of ``owner``'s photo; None when it is not theirs (or absent, or
        deleted)."""
        statement = (
            update(photos)
            .where(photos.c.id == photo_id, photos.c.owner == owner, photos.c.deleted_at.is_(None))
            .values(visibility=visibility, updated_at=datetime.now(tz=UTC))
            .returning(*COLUMNS)
        )
        async with session(self.engine) as db:
            found = (await db.execute(statement)).first()
        return Access(*found) if found is not None else None

    @reconnecting
    async def manifest_rewritten(self, file: StoredFile) -> None:
        """The manifest's object row after it was written again: pending backup of the new one."""
        values = {
            "bytes": file.bytes,
            "sha256": file.sha256,
            "backup_state": BackupState.PENDING.value,
            "backup_reason": None,
            "backup_changed_at": datetime.now(tz=UTC),
        }
        async with session(self.engine) as db:
            await db.execute(update(objects).where(objects.c.key == file.key).values(values))
