"""Users, their API tokens, and the hash-chained audit trail.

Revision ID: 0002
Revises: 0001
Created: issue 4

Adds ``users`` (account name, role, a case worker's unit), ``tokens`` (only the SHA-256 of each
bearer token, with its expiry) and ``audit_log`` (who did what, when, to which case, why, and
how it ended, each entry chained to the one before by its hash; see ``node.audit``). Written by
hand to match ``node.storage.schema`` at this revision (a test checks that autogenerate finds no
difference). Later revisions must not edit this one: they add their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the values at this revision: a later change to the roles needs a new revision.
_USER_ROLES = "'caseworker', 'coordinator', 'operator', 'auditor'"

_SEQ: sa.types.TypeEngine[int] = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_ID = sa.LargeBinary(16)
_HASH = sa.LargeBinary(32)
_NAME = sa.String(64)
_CODE = sa.String(64)
_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    """Create ``users``, ``tokens`` and ``audit_log``."""
    op.create_table(
        "users",
        sa.Column("name", _NAME, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("unit", _NAME, nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_users"),
        sa.CheckConstraint(f"role IN ({_USER_ROLES})", name="ck_users_role"),
        sa.CheckConstraint(
            "(role = 'caseworker' AND unit IS NOT NULL) OR (role <> 'caseworker' AND unit IS NULL)",
            name="ck_users_unit",
        ),
    )

    op.create_table(
        "tokens",
        sa.Column("id", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("user_name", _NAME, nullable=False),
        sa.Column("token_hash", _HASH, nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("revoked_at", _TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.ForeignKeyConstraint(["user_name"], ["users.name"], name="fk_tokens_user_name_users"),
        sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
        sa.CheckConstraint("expires_at > created_at", name="ck_tokens_expiry"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_tokens_user_name", "tokens", ["user_name"])

    op.create_table(
        "audit_log",
        sa.Column("seq", _SEQ, autoincrement=False, nullable=False),
        sa.Column("at", _TIME, nullable=False),
        sa.Column("user_name", _NAME, nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("action", _CODE, nullable=False),
        sa.Column("subject", _NAME, nullable=True),
        sa.Column("case_id", _ID, nullable=True),
        sa.Column("purpose", sa.String(120), nullable=True),
        sa.Column("outcome", _CODE, nullable=False),
        sa.Column("previous_hash", _HASH, nullable=False),
        sa.Column("entry_hash", _HASH, nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_log"),
        sa.CheckConstraint("seq >= 1", name="ck_audit_log_seq"),
    )
    op.create_index("ix_audit_log_case_id", "audit_log", ["case_id"])


def downgrade() -> None:
    """Drop the three tables (and with them every user, token and audit entry)."""
    op.drop_index("ix_audit_log_case_id", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_index("ix_tokens_user_name", table_name="tokens")
    op.drop_table("tokens")
    op.drop_table("users")
