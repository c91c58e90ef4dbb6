"""The case workflow: each case's own message record, and what a case needs to know of itself.

Revision ID: 0003
Revises: 0002
Created: issue 4

Adds the ``case_messages`` table (every case message this node sent or received, its body sealed
under the case key) and, on ``cases``, the two cities, the other side's unit, the protected-identity
flag, the quota slot a referral used and the warning shown on the case. Written by hand to match
``node.storage.schema`` at this revision (a test checks that autogenerate finds no difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the values at this revision.
_DIRECTIONS = "'sent', 'received'"

_SEQ: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ID = sa.LargeBinary(16)
_NAME = sa.String(64)
_TIME: sa.Double[float] = sa.Double()
_QUOTA_INDEX = "ix_cases_home_city_quota_year_quota_index"


def upgrade() -> None:
    """Add the case columns and the ``case_messages`` table."""
    op.add_column("cases", sa.Column("home_city", _NAME, nullable=True))
    op.add_column("cases", sa.Column("receiving_city", _NAME, nullable=True))
    op.add_column("cases", sa.Column("peer_unit", _NAME, nullable=True))
    op.add_column(
        "cases",
        sa.Column("protected_identity", sa.Boolean(), server_default=sa.false(), nullable=False),
    )
    op.add_column("cases", sa.Column("quota_year", sa.Integer(), nullable=True))
    op.add_column("cases", sa.Column("quota_index", sa.Integer(), nullable=True))
    op.add_column("cases", sa.Column("warning", sa.String(64), nullable=True))
    op.create_index(_QUOTA_INDEX, "cases", ["home_city", "quota_year", "quota_index"], unique=True)

    op.create_table(
        "case_messages",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("case_id", _ID, nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("message_type", sa.String(32), nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_case_messages"),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.case_id"], name="fk_case_messages_case_id_cases"
        ),
        sa.UniqueConstraint(
            "direction", "message_id", name="uq_case_messages_direction_message_id"
        ),
        sa.CheckConstraint(f"direction IN ({_DIRECTIONS})", name="ck_case_messages_direction"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_case_messages_case_id", "case_messages", ["case_id"])


def downgrade() -> None:
    """Drop ``case_messages`` and the case columns (their values are lost)."""
    op.drop_index("ix_case_messages_case_id", table_name="case_messages")
    op.drop_table("case_messages")
    op.drop_index(_QUOTA_INDEX, table_name="cases")
    with op.batch_alter_table("cases") as batch:
        for column in (
            "warning",
            "quota_index",
            "quota_year",
            "protected_identity",
            "peer_unit",
            "receiving_city",
            "home_city",
        ):
            batch.drop_column(column)
