"""Deletion: a photo's catalog tombstone, each of its objects' removal from every copy, and
account-wide deletions.

    photos.deleted_at   set when its owner deletes it: from then on no reader sees it
    deletions           one row per deleted photo (trashed -> deleting -> deleted): its
                        deletion ticket, what was removed, the receipt; never dropped
    removals            one row per object being removed: its state on primary and backup
    owner_deletions     one row per account closure (`DELETE /owners/{sub}/photos`)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OPEN = sa.text("state <> 'deleted'")
LIVE = sa.text("deleted_at IS NULL")
STAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """The column and the three tables."""
    op.add_column("photos", sa.Column("deleted_at", STAMP, nullable=True))
    # an account closure's next photos, and how many are left
    op.create_index("photos_live_owner", "photos", ["owner", "id"], postgresql_where=LIVE)
    op.create_table(
        "deletions",
        sa.Column("photo_id", sa.Text, primary_key=True),
        sa.Column("ticket_id", sa.Text, nullable=False, unique=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("requested_at", STAMP, nullable=False),
        sa.Column("purge_after", STAMP, nullable=False),
        sa.Column("started_at", STAMP, nullable=True),
        sa.Column("completed_at", STAMP, nullable=True),
        sa.Column("objects", JSONB, nullable=True),
        sa.Column("receipt", JSONB, nullable=True),
    )
    op.create_index("deletions_open", "deletions", ["purge_after"], postgresql_where=OPEN)
    op.create_index("deletions_owner", "deletions", ["owner", "state"])
    op.create_table(
        "removals",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("photo_id", sa.Text, nullable=False),
        sa.Column("primary_state", sa.Text, nullable=False),
        sa.Column("backup_state", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("changed_at", STAMP, nullable=False),
    )
    op.create_index("removals_photo", "removals", ["photo_id"])
    op.create_table(
        "owner_deletions",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("ticket_id", sa.Text, nullable=False, unique=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("requested_at", STAMP, nullable=False),
        sa.Column("completed_at", STAMP, nullable=True),
    )


def downgrade() -> None:
    """Photos can no longer be deleted."""
    op.drop_table("owner_deletions")
    op.drop_table("removals")
    op.drop_table("deletions")
    op.drop_index("photos_live_owner", "photos")
    op.drop_column("photos", "deleted_at")
