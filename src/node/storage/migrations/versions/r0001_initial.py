"""The initial schema: outbox, inbox, replay guard, cases, peers, agreements, key log.

Revision ID: 0001
Revises: (none)
Created: issue 3

Written by hand to match ``node.storage.schema`` at this revision (a test checks that autogenerate
finds no difference). Later revisions must not edit this one: they add their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the values at this revision: a later change to the enums needs a new revision.
_DELIVERY_STATES = "'queued', 'sent', 'receipted', 'failed', 'expired'"
_CASE_STATES = (
    "'new', 'awaiting_reply', 'info_requested', 'accepted', 'declined', 'referred', "
    "'in_progress', 'closed'"
)
_ROLES = "'home', 'receiving'"

_SEQ: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ID = sa.LargeBinary(16)
_HASH = sa.LargeBinary(32)
_NAME = sa.String(64)
_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    """Create every table of the first schema."""
    op.create_table(
        "outbox",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("peer", _NAME, nullable=False),
        sa.Column("case_id", _ID, nullable=True),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("message_type", sa.String(32), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("last_attempt_at", _TIME, nullable=True),
        sa.Column("receipted_at", _TIME, nullable=True),
        sa.Column("last_error", sa.String(64), nullable=True),
        sa.Column("receipt", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_outbox"),
        sa.UniqueConstraint("message_id", name="uq_outbox_message_id"),
        sa.CheckConstraint(f"state IN ({_DELIVERY_STATES})", name="ck_outbox_state"),
        sa.CheckConstraint("attempts >= 0", name="ck_outbox_attempts"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_outbox_peer_state_seq", "outbox", ["peer", "state", "seq"])
    op.create_index("ix_outbox_case_id", "outbox", ["case_id"])

    op.create_table(
        "inbox",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("sender", _NAME, nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("envelope_hash", _HASH, nullable=False),
        sa.Column("message_type", sa.String(32), nullable=False),
        sa.Column("case_id", _ID, nullable=True),
        sa.Column("header_timestamp", _TIME, nullable=False),
        sa.Column("received_at", _TIME, nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("receipt", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_inbox"),
        sa.UniqueConstraint("sender", "message_id", name="uq_inbox_sender_message_id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_inbox_case_id", "inbox", ["case_id"])

    op.create_table(
        "replay_guard",
        sa.Column("sender", _NAME, nullable=False),
        sa.Column("message_id", _ID, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("sender", "message_id", name="pk_replay_guard"),
    )
    op.create_index("ix_replay_guard_expires_at", "replay_guard", ["expires_at"])

    op.create_table(
        "cases",
        sa.Column("case_id", _ID, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("peer", _NAME, nullable=False),
        sa.Column("unit", _NAME, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.Column("closed_at", _TIME, nullable=True),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        sa.Column("sealed_identity", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("case_id", name="pk_cases"),
        sa.CheckConstraint(f"role IN ({_ROLES})", name="ck_cases_role"),
        sa.CheckConstraint(f"state IN ({_CASE_STATES})", name="ck_cases_state"),
    )

    op.create_table(
        "peers",
        sa.Column("city", _NAME, nullable=False),
        sa.Column("endpoint", sa.String(2048), nullable=False),
        sa.Column("bundle", sa.LargeBinary(), nullable=True),
        sa.Column("bundle_sequence", sa.BigInteger(), nullable=True),
        sa.Column("tls_certificates", sa.LargeBinary(), nullable=True),
        sa.Column("fingerprint_verified_at", _TIME, nullable=True),
        sa.Column("last_seen_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("city", name="pk_peers"),
    )

    op.create_table(
        "agreements",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        sa.Column("adopted_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("version", name="pk_agreements"),
    )

    op.create_table(
        "key_log",
        sa.Column("index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("appended_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("index", name="pk_key_log"),
    )


def downgrade() -> None:
    """Drop every table of the first schema (and with them every stored row)."""
    op.drop_table("key_log")
    op.drop_table("agreements")
    op.drop_table("peers")
    op.drop_table("cases")
    op.drop_index("ix_replay_guard_expires_at", table_name="replay_guard")
    op.drop_table("replay_guard")
    op.drop_index("ix_inbox_case_id", table_name="inbox")
    op.drop_table("inbox")
    op.drop_index("ix_outbox_case_id", table_name="outbox")
    op.drop_index("ix_outbox_peer_state_seq", table_name="outbox")
    op.drop_table("outbox")
