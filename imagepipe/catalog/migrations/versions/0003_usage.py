"""Each owner's stored bytes, kept as a counter so a storage quota reads one row.

The counter starts from what the catalog holds: the bytes of every original and derivative,
per owner of their photo.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BACKFILL = """
INSERT INTO owners (owner, stored_bytes)
SELECT p.owner, sum(o.bytes) FROM objects o JOIN photos p ON p.id = o.photo_id
WHERE o.kind IN ('original', 'derivative') GROUP BY p.owner
"""


def upgrade() -> None:
    """The table, filled from the objects recorded so far."""
    op.create_table(
        "owners",
        sa.Column("owner", sa.Text, primary_key=True),
        sa.Column("stored_bytes", sa.BigInteger, nullable=False),
    )
    op.execute(BACKFILL)


def downgrade() -> None:
    """Usage is a SUM again."""
    op.drop_table("owners")
