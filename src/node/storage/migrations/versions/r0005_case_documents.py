"""Documents sent with a referral: the home node's offered streams and the receiving node's fetches.

Revision ID: 0005
Revises: 0004
Created: issue 4

Adds ``case_documents``: per case and attachment id, which way it goes, the peer, its state
(``offered``, ``pending``, ``verified``), the fetch attempts and the sealed ``AttachmentRef``
(sealed under the case key: shredding the case erases it). Written by hand to match
``node.storage.schema`` at this revision (a test checks that autogenerate finds no difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the values at this revision.
_DIRECTIONS = "'sent', 'received'"
_STATES = "'offered', 'pending', 'verified'"

_ID = sa.LargeBinary(16)
_NAME = sa.String(64)
_TIME: sa.Double[float] = sa.Double()
_POLL_INDEX = "ix_case_documents_state_next_attempt_at"


def upgrade() -> None:
    """Create ``case_documents``."""
    op.create_table(
        "case_documents",
        sa.Column("case_id", _ID, nullable=False),
        sa.Column("attachment_id", _ID, nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("peer", _NAME, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sealed_ref", sa.LargeBinary(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", _TIME, nullable=False),
        sa.Column("last_error", sa.String(64), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("case_id", "attachment_id", name="pk_case_documents"),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.case_id"], name="fk_case_documents_case_id_cases"
        ),
        sa.UniqueConstraint(
            "peer",
            "direction",
            "attachment_id",
            name="uq_case_documents_peer_direction_attachment_id",
        ),
        sa.CheckConstraint(f"direction IN ({_DIRECTIONS})", name="ck_case_documents_direction"),
        sa.CheckConstraint(f"state IN ({_STATES})", name="ck_case_documents_state"),
    )
    op.create_index(_POLL_INDEX, "case_documents", ["state", "next_attempt_at"])


def downgrade() -> None:
    """Drop ``case_documents`` (the references to the streams on disk are lost)."""
    op.drop_index(_POLL_INDEX, table_name="case_documents")
    op.drop_table("case_documents")
