"""The balance between the cities: the newest balance statement of each peer and year.

Revision ID: 0004
Revises: 0003
Created: issue 4

Adds ``balance_statements``: per stating city and year, the totals, the date they were counted,
the exact encoded statement (its per-city counts) and the message id of the envelope that carried
it (the signed evidence stays in ``inbox``). Anonymous counts only. Written by hand to match
``node.storage.schema`` at this revision (a test checks that autogenerate finds no difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.LargeBinary(16)
_NAME = sa.String(64)
_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    """Create ``balance_statements``."""
    op.create_table(
        "balance_statements",
        sa.Column("sender", _NAME, nullable=False),
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sent", sa.Integer(), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("statement", sa.LargeBinary(), nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("sender", "year", name="pk_balance_statements"),
        sa.CheckConstraint("sent >= 0 AND received >= 0", name="ck_balance_statements_counts"),
    )


def downgrade() -> None:
    """Drop ``balance_statements`` (the peers' statements are lost; they state again)."""
    op.drop_table("balance_statements")
