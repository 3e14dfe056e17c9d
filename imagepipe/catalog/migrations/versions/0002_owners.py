"""Owners and visibility: every photo belongs to the grant that uploaded it.

Photos accepted before owners existed get the owner "" (nobody's: only an admin reaches
them) and stay public, as every photo was then; new rows always name both.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COMPLETED = sa.text("state = 'completed'")
PUBLIC = sa.text("state = 'completed' AND visibility = 'public'")
NEWEST = [sa.text("completed_at DESC"), sa.text("id DESC")]


def upgrade() -> None:
    """Add the columns; an owner's photos and the public stream each get their index."""
    op.add_column("photos", sa.Column("owner", sa.Text, nullable=False, server_default=""))
    op.add_column(
        "photos", sa.Column("visibility", sa.Text, nullable=False, server_default="public")
    )
    op.alter_column("photos", "visibility", server_default="private")
    op.create_index("photos_owner", "photos", ["owner", *NEWEST], postgresql_where=COMPLETED)
    op.create_index("photos_public", "photos", NEWEST, postgresql_where=PUBLIC)
    op.drop_index("photos_gallery", "photos")  # everyone's photos are no longer one list


def downgrade() -> None:
    """Back to one gallery of every photo."""
    op.create_index("photos_gallery", "photos", NEWEST, postgresql_where=COMPLETED)
    op.drop_index("photos_public", "photos")
    op.drop_index("photos_owner", "photos")
    op.drop_column("photos", "visibility")
    op.drop_column("photos", "owner")
