"""The catalog's tables (SQLAlchemy Core). Migrations create them; queries are built on them.

photos    one row per accepted upload: accepted -> completed | failed; its owner, visibility
objects   one row per object on primary: its size, sha256 and backup state
marks     named timestamps (the audit's watermark)
owners    each owner's stored bytes (originals and derivatives), kept by the statements that
          record objects (`catalog.usage`): a storage quota reads one row, never a SUM
deletions one row per deleted photo: trashed -> deleting -> deleted, its ticket and receipt
removals  one row per object being removed: its state on primary and on backup
owner_deletions  one row per account-wide deletion
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

photos = Table(
    "photos",
    metadata,
    Column("id", Text, primary_key=True),
    Column("ticket_id", Text, nullable=False),
    Column("state", Text, nullable=False),  # accepted | completed | failed
    Column("original_key", Text, nullable=False),
    Column("format", Text, nullable=False),
    Column("width", Integer, nullable=False),  # upright once completed
    Column("height", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("sizes", JSONB, nullable=True),  # size name -> Derivative, once completed
    Column("error", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("verified_at", DateTime(timezone=True), nullable=True),  # the audit's last deep look
    Column("owner", Text, nullable=False, server_default=""),  # the uploading grant's sub
    Column("visibility", Text, nullable=False, server_default="private"),  # private | public
    Column("deleted_at", DateTime(timezone=True), nullable=True),  # hidden from every reader
)
# an owner's photos and the public stream, newest first, a page at a time (keyset)
Index(
    "photos_owner",
    photos.c.owner,
    photos.c.completed_at.desc(),
    photos.c.id.desc(),
    postgresql_where=photos.c.state == "completed",
)
Index(
    "photos_public",
    photos.c.completed_at.desc(),
    photos.c.id.desc(),
    postgresql_where=(photos.c.state == "completed") & (photos.c.visibility == "public"),
)
# an account closure's next photos, and how many are left (`catalog.closures`)
Index(
    "photos_live_owner",
    photos.c.owner,
    photos.c.id,
    postgresql_where=photos.c.deleted_at.is_(None),
)
Index("photos_changed", photos.c.updated_at)  # what changed since the audit's watermark
Index("photos_verified", photos.c.verified_at.asc().nulls_first(), photos.c.id)

objects = Table(
    "objects",
    metadata,
    Column("key", Text, primary_key=True),
    Column("photo_id", Text, ForeignKey("photos.id"), nullable=False),
    Column("kind", Text, nullable=False),  # original | derivative | manifest | tombstone
    Column("bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("backup_state", Text, nullable=False),  # pending | completed | failed
    Column("backup_reason", Text, nullable=True),
    Column("backup_attempts", Integer, nullable=False),
    Column("backup_changed_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("objects_photo", objects.c.photo_id)
Index(
    "objects_unconfirmed",
    objects.c.backup_changed_at,
    postgresql_where=objects.c.backup_state != "completed",
)

marks = Table(
    "marks",
    metadata,
    Column("name", Text, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
)

owners = Table(
    "owners",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("stored_bytes", BigInteger, nullable=False),  # originals and derivatives
)

deletions = Table(
    "deletions",
    metadata,
    Column("photo_id", Text, primary_key=True),
    Column("ticket_id", Text, nullable=False, unique=True),
    Column("owner", Text, nullable=False),
    Column("state", Text, nullable=False),  # trashed | deleting | deleted
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("purge_after", DateTime(timezone=True), nullable=False),  # the trash's end
    Column("started_at", DateTime(timezone=True), nullable=True),  # the tombstone written
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("objects", JSONB, nullable=True),  # every key removed, once started
    Column("receipt", JSONB, nullable=True),
)
Index("deletions_open", deletions.c.purge_after, postgresql_where=deletions.c.state != "deleted")
Index("deletions_owner", deletions.c.owner, deletions.c.state)

removals = Table(
    "removals",
    metadata,
    Column("key", Text, primary_key=True),
    Column("photo_id", Text, nullable=False),
    Column("primary_state", Text, nullable=False),  # pending | completed | failed
    Column("backup_state", Text, nullable=False),
    Column("reason", Text, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)
Index("removals_photo", removals.c.photo_id)

owner_deletions = Table(
    "owner_deletions",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("ticket_id", Text, nullable=False, unique=True),
    Column("state", Text, nullable=False),  # running | completed
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
)
