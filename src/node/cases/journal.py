"""The case journal: this node's own record of every case message it sent or received.

Owns the ``case_messages`` table. Invariants:

* :meth:`CaseJournal.record` runs only inside the caller's transaction — the one that moves the
  case and writes the outbox row (a message we send) or the inbox row (one we receive) — so a
  case's timeline, its state and its delivery records never disagree, even across a crash. It
  does not flush: the entry is written with the transaction's next flush (a batch of received
  messages journals with one ``INSERT``), the journal order being the order of the calls.
* :meth:`CaseJournal.recorded_in` answers a case's entries recorded in the current transaction
  from what was recorded (the typed messages), without a query or a decryption: the timeline of
  a case opened by that transaction.
* The body is the message's exact encoding, sealed under the **case key** by the vault, bound to
  the case, the direction and the message id (purpose ``case.message:<direction>:<id hex>``): a
  database dump reveals only which kinds of message a case exchanged and when; shredding the case
  key erases every body with it.
* The delivery state shown for a sent message is its outbox row's (joined by message id; for a
  message resent after the peer's restore, its newest receipted row, else its newest): queued,
  sent, receipted, failed or expired; a received message is ``received`` (we stored it, then
  returned our signed receipt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from sqlalchemy import Row, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from node.delivery import DeliveryState
from node.storage.case_store import load_case_key
from node.storage.database import Database
from node.storage.schema import CaseMessageRow, OutboxRow
from node.storage.vault import CaseVault
from protocol import codec
from protocol.cases import Direction
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import AnyMessage, Message, decode_message, message_type_name

_RECORDED: Final = "citynode.journal_recorded"  # session.info: rows added, with their messages
RECEIVED: Final = "received"
"""The delivery shown for a message this node received (and receipted)."""
# Built once (every case view runs them): a case's messages, and its sent messages' delivery.
_MESSAGES: Final = CaseMessageRow.metadata.tables[CaseMessageRow.__tablename__]
_CASE_MESSAGES: Final = (
    select(
        _MESSAGES.c.seq,
        _MESSAGES.c.case_id,
        _MESSAGES.c.direction,
        _MESSAGES.c.message_type,
        _MESSAGES.c.message_id,
        _MESSAGES.c.at,
        _MESSAGES.c.body,
    )
    .where(_MESSAGES.c.case_id == bindparam("k_case_id"))
    .order_by(_MESSAGES.c.seq)
)
# A message resent after the peer's restore (``node.resend``) has several rows: the last one read
# wins, so its newest receipted envelope gives its delivery, else its newest envelope.
_DELIVERIES: Final = (
    select(OutboxRow.message_id, OutboxRow.state, OutboxRow.receipted_at)
    .where(OutboxRow.message_id.in_(bindparam("k_ids", expanding=True)))
    .order_by(OutboxRow.state == DeliveryState.RECEIPTED.value, OutboxRow.seq)
)


def _recorded(session: AsyncSession) -> list[tuple[CaseMessageRow, Message]]:
    """What :meth:`CaseJournal.record` added in this transaction, with the typed messages (a row
    of a savepoint rolled back since is no longer in the session, and is left out)."""
    return cast(list[tuple[CaseMessageRow, Message]], session.info.setdefault(_RECORDED, []))


def message_purpose(direction: Direction, message_id: bytes) -> str:
    """The vault purpose a journal body is sealed under."""
    return f"case.message:{direction.value}:{message_id.hex()}"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One case message, decrypted, with its delivery.

    Attributes:
        seq: the journal's order (the order this node sent or received them).
        direction: sent or received.
        message_type: e.g. ``"referral"``.
        message_id: the envelope's message id.
        at: when it was queued (sent) or accepted (received), Unix seconds.
        message: the typed message (a referral's person included: the caller decides what to
            show).
        delivery: the outbox state of a sent message, ``received`` for a received one.
        receipted_at: when the peer's receipt was stored (sent messages), else ``None``.
    """

    seq: int
    direction: Direction
    message_type: str
    message_id: bytes
    at: float
    message: AnyMessage
    delivery: str
    receipted_at: float | None


class CaseJournal:
    """Records and reads the messages of each case.

    Args:
        db: the database.
        vault: the vault (the node's data key) that unwraps case keys.
        limits: the protocol limits (message body size when reading back).
    """

    def __init__(self, db: Database, vault: CaseVault, limits: Limits = DEFAULT_LIMITS) -> None:
        self._db = db
        self._vault = vault
        self._limits = limits

    async def record(
        self,
        session: AsyncSession,
        *,
        case_id: bytes,
        direction: Direction,
        message: Message,
        message_id: bytes,
        at: float,
    ) -> None:
        """Add a message to its case's journal, in the caller's transaction.

        Raises:
            CaseNotFound: no such case.
            CaseShredded: the case was shredded.
        """
        case_key = await load_case_key(session, self._vault, case_id)
        body = self._vault.seal(
            case_key, case_id, message_purpose(direction, message_id), codec.encode(message)
        )
        row = CaseMessageRow(
            case_id=case_id,
            direction=direction.value,
            message_type=message_type_name(message),
            message_id=message_id,
            at=at,
            body=body,
        )
        session.add(row)  # written with the transaction's next flush, with the other rows
        _recorded(session).append((row, message))

    @staticmethod
    async def recorded_in(
        session: AsyncSession, case_id: bytes, *, delivery: str
    ) -> Sequence[JournalEntry]:
        """The entries of a case recorded in this transaction, in order, without a query or a
        decryption (the typed messages recorded): the timeline of a case the transaction opened.

        Args:
            session: the transaction that recorded them (flushed here, for their ``seq``).
            case_id: the case.
            delivery: the delivery shown for the sent ones (``queued``: the transaction queued
                them with their outbox rows).
        """
        await session.flush()
        return [
            JournalEntry(
                seq=row.seq,
                direction=Direction(row.direction),
                message_type=row.message_type,
                message_id=row.message_id,
                at=row.at,
                message=cast(AnyMessage, message),
                delivery=delivery if row.direction == Direction.SENT.value else RECEIVED,
                receipted_at=None,
            )
            for row, message in _recorded(session)
            if row.case_id == case_id and row in session  # not from a rolled-back savepoint
        ]

    async def entries(self, case_id: bytes) -> Sequence[JournalEntry]:
        """Return a case's messages in journal order, decrypted, with their delivery state.

        Raises:
            CaseNotFound: no such case.
            CaseShredded: the case was shredded.
            VaultError: a stored body does not open (altered, or moved from another row).
        """
        async with self._db.reading() as s:
            return await self.entries_in(s, case_id)

    async def entries_in(self, session: AsyncSession, case_id: bytes) -> Sequence[JournalEntry]:
        """:meth:`entries` inside the caller's transaction (a read joined to others).

        Raises:
            CaseNotFound, CaseShredded, VaultError: as :meth:`entries`.
        """
        case_key = await load_case_key(session, self._vault, case_id)
        rows = (await session.execute(_CASE_MESSAGES, {"k_case_id": case_id})).all()
        sent_ids = [row.message_id for row in rows if row.direction == Direction.SENT.value]
        outbox: dict[bytes, tuple[str, float | None]] = {}
        if sent_ids:
            found = await session.execute(_DELIVERIES, {"k_ids": sent_ids})
            outbox = {row[0]: (row[1], row[2]) for row in found.all()}
        return [self._entry(row, case_key, outbox.get(row.message_id)) for row in rows]

    def _entry(
        self,
        row: Row[*tuple[Any, ...]],
        case_key: bytes,
        delivery: tuple[str, float | None] | None,
    ) -> JournalEntry:
        """One entry from a row of :data:`_CASE_MESSAGES`; ``delivery``: the outbox row's state
        and receipt time of a sent message."""
        direction = Direction(row.direction)
        purpose = message_purpose(direction, row.message_id)
        body = self._vault.open(case_key, row.case_id, purpose, row.body)
        sent = direction is Direction.SENT
        return JournalEntry(
            seq=row.seq,
            direction=direction,
            message_type=row.message_type,
            message_id=row.message_id,
            at=row.at,
            message=decode_message(body, self._limits),
            delivery=(delivery[0] if delivery is not None else "unknown") if sent else RECEIVED,
            receipted_at=delivery[1] if sent and delivery is not None else None,
        )
