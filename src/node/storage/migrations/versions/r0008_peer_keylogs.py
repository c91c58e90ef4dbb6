"""Peers' key-history logs: the log fetch that compares checkpoints of different sizes.

Revision ID: 0008
Revises: 0007
Created: issue 5

Adds ``peer_keylogs``: per city, the longest key-history log this node fetched whose size and
head a signed checkpoint of that city vouches for. Checkpoints of different sizes are compared
through it, and a node restored from a backup takes back the entries it lost from it. Public key
material only. Written by hand to match ``node.storage.schema`` at this revision (a test checks
that autogenerate finds no difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table."""
    op.create_table(
        "peer_keylogs",
        sa.Column("city", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("head", sa.LargeBinary(32), nullable=False),
        sa.Column("log", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("fetched_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("city", name="pk_peer_keylogs"),
    )


def downgrade() -> None:
    """Drop the table (the fetched logs are lost; they are fetched again)."""
    op.drop_table("peer_keylogs")
