"""The catalog: photos, objects with their backup state, and the audit's marks.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tables and their indexes."""
    op.create_table(
        "photos",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("ticket_id", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("original_key", sa.Text, nullable=False),
        sa.Column("format", sa.Text, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("sizes", JSONB, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("updated_at", WHEN, nullable=False),
        sa.Column("completed_at", WHEN, nullable=True),
        sa.Column("verified_at", WHEN, nullable=True),
    )
    op.create_index(
        "photos_gallery",
        "photos",
        [sa.text("completed_at DESC"), sa.text("id DESC")],
        postgresql_where=sa.text("state = 'completed'"),
    )
    op.create_index("photos_changed", "photos", ["updated_at"])
    op.create_index("photos_verified", "photos", [sa.text("verified_at ASC NULLS FIRST"), "id"])
    op.create_table(
        "objects",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("photo_id", sa.Text, sa.ForeignKey("photos.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("backup_state", sa.Text, nullable=False),
        sa.Column("backup_reason", sa.Text, nullable=True),
        sa.Column("backup_attempts", sa.Integer, nullable=False),
        sa.Column("backup_changed_at", WHEN, nullable=False),
        sa.Column("created_at", WHEN, nullable=False),
    )
    op.create_index("objects_photo", "objects", ["photo_id"])
    op.create_index(
        "objects_unconfirmed",
        "objects",
        ["backup_changed_at"],
        postgresql_where=sa.text("backup_state <> 'completed'"),
    )
    op.create_table(
        "marks",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("at", WHEN, nullable=False),
    )


def downgrade() -> None:
    """Drop everything this revision made."""
    op.drop_table("marks")
    op.drop_table("objects")
    op.drop_table("photos")
