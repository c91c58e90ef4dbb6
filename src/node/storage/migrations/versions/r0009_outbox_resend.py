"""The outbox may hold a message id again: a resend after a peer's restore (``node.resend``).

Revision ID: 0009
Revises: 0008
Created: the resend of a restored peer's lost messages

Replaces ``uq_outbox_message_id`` (a message id once in the outbox, ever) by two indexes:
``ix_outbox_message_id`` (the look-ups by message id: a case's delivery states, a message's
delivery record) and ``uq_outbox_message_id_in_flight``, unique among the envelopes still
``queued`` or ``sent``: a message is re-sealed and queued again under its id only once its earlier
envelopes are no longer in flight, so one message id never has two envelopes on their way, and the
receipted, failed or expired rows stay as evidence beside the new one. Written by hand to match
``node.storage.schema`` at this revision (a test checks that autogenerate finds no difference).

On SQLite the table is copied and swapped (batch mode), keeping ``AUTOINCREMENT``: the outbox
order stays a total order. Downgrading fails while a message id has several rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_IN_FLIGHT = sa.text("state IN ('queued', 'sent')")


def upgrade() -> None:
    """Drop the unique constraint; index message ids, unique among undelivered envelopes."""
    with op.batch_alter_table("outbox", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_constraint("uq_outbox_message_id", type_="unique")
    op.create_index("ix_outbox_message_id", "outbox", ["message_id"])
    op.create_index(
        "uq_outbox_message_id_in_flight",
        "outbox",
        ["message_id"],
        unique=True,
        sqlite_where=_IN_FLIGHT,
        postgresql_where=_IN_FLIGHT,
    )


def downgrade() -> None:
    """Make message ids unique again (fails while a resent message has several rows)."""
    op.drop_index("uq_outbox_message_id_in_flight", table_name="outbox")
    op.drop_index("ix_outbox_message_id", table_name="outbox")
    with op.batch_alter_table("outbox", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.create_unique_constraint("uq_outbox_message_id", ["message_id"])
