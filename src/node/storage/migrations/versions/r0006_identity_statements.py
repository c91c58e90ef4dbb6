"""Peers' identity statements: the successions and revocations of each peer's identity keys.

Revision ID: 0006
Revises: 0005
Created: issue 5

Adds ``peers.identity_statements`` (nullable): MessagePack ``[[succession: bin, ...],
[revocation: bin, ...]]``, the peer's signed statements as received — kept so that after a
restart the node still follows a peer whose identity key was rotated or revoked, and still
verifies what its old keys signed. Written by
hand to match ``node.storage.schema`` at this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the column."""
    op.add_column("peers", sa.Column("identity_statements", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("peers") as batch:
        batch.drop_column("identity_statements")
