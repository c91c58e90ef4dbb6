"""Key transparency: peers' key-log checkpoints, countersignatures and equivocation proofs.

Revision ID: 0007
Revises: 0006
Created: issue 5

Adds ``keylog_checkpoints`` (each distinct signed checkpoint of a peer's key-history log this
node verified, and who showed it), ``keylog_countersignatures`` (countersignatures of
checkpoints: the peers' of ours, ours of theirs, and those relayed to us) and
``keylog_equivocations`` (the proof, both signed checkpoints, that a city showed two different
logs: the alarm). Public key material only. Written by hand to match ``node.storage.schema`` at
this revision (a test checks that autogenerate finds no difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = sa.String(64)
_HASH = sa.LargeBinary(32)
_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    """Create the three tables."""
    op.create_table(
        "keylog_checkpoints",
        sa.Column("city", _NAME, nullable=False),
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("head", _HASH, nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("source", _NAME, nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("city", "size", "head", name="pk_keylog_checkpoints"),
    )
    op.create_table(
        "keylog_countersignatures",
        sa.Column("city", _NAME, nullable=False),
        sa.Column("witness", _NAME, nullable=False),
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("head", _HASH, nullable=False),
        sa.Column("countersignature", sa.LargeBinary(), nullable=False),
        sa.Column("seen_at", _TIME, nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint(
            "city", "witness", "size", "head", name="pk_keylog_countersignatures"
        ),
    )
    op.create_table(
        "keylog_equivocations",
        sa.Column("city", _NAME, nullable=False),
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("proof", sa.LargeBinary(), nullable=False),
        sa.Column("reported_by", _NAME, nullable=False),
        sa.Column("detected_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("city", "size", name="pk_keylog_equivocations"),
    )


def downgrade() -> None:
    """Drop the three tables (the peers' checkpoints and any proof kept are lost)."""
    op.drop_table("keylog_equivocations")
    op.drop_table("keylog_countersignatures")
    op.drop_table("keylog_checkpoints")
