"""The case ledger: every case message, sent or received, moves its case by the one table.

Owns the link between the message catalogue and the case state machine on a node. Invariants:

* The state machine is ``protocol.cases``' table, nothing else: a message whose event is not in
  the table for the case's state is refused with ``invalid_transition`` and changes nothing.
* The ledger runs inside the transaction that stores the message — the outbox row for a message
  we send, the inbox row for one we receive — so a case's state and its messages never disagree,
  even across a crash.
* A case comes into being on the home node when it sends the first inquiry, and on the receiving
  node when that inquiry arrives. Any other message for an unknown case is refused.
* A case has one peer: a message about a case from another city than the case's peer is refused.
* Every case message moved through the ledger is recorded in the case's journal
  (:class:`~node.cases.journal.CaseJournal`, sealed under the case key) in the same transaction,
  and what the case knows of itself follows the message: the two cities and the police-advice
  warning from the inquiry, the unit that answered (a reply assigns an unaddressed inquiry to the
  replying unit), the quota slot and the protected-identity flag from the referral, whose person
  is sealed as the case's identity (``CaseStore.seal_identity``) at both ends.
* The agreement's rules that need the node's own records (:class:`~node.cases.rules.CaseRules`)
  run first: on arrival for a received message (a refusal is the peer's fault and keeps nothing
  of the envelope), under the write lock for a message we send.
* A received balance statement (a control message, no case) is kept by
  :func:`node.balance.record_statement` in the same transaction, under the same refusal rule.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from node.balance import record_statement
from node.cases.journal import CaseJournal
from node.cases.records import POLICE_ADVICE, UNASSIGNED_UNIT, encode_identity
from node.cases.rules import CaseRules
from node.storage.case_store import CaseStore, find_case
from node.storage.schema import CaseRow
from protocol.agreement_rules import police_advice_warning
from protocol.cases import (
    CaseEvent,
    CaseState,
    Direction,
    EventKind,
    Role,
    initial_state,
    next_state,
)
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import (
    BalanceStatement,
    Closure,
    Decision,
    Inquiry,
    Intake,
    Message,
    ProgressReport,
    Referral,
    Reply,
)

_KINDS: Final[dict[type[Message], EventKind]] = {
    Inquiry: EventKind.INQUIRY,
    Referral: EventKind.REFERRAL,
    Intake: EventKind.INTAKE,
    ProgressReport: EventKind.PROGRESS_REPORT,
    Closure: EventKind.CLOSURE,
}
_DECISIONS: Final = {
    Decision.ACCEPT: EventKind.ACCEPT,
    Decision.DECLINE: EventKind.DECLINE,
    Decision.NEED_INFO: EventKind.NEED_INFO,
}


def event_kind(message: Message) -> EventKind | None:
    """Return the case-flow event a message is, or ``None`` for a control message."""
    if isinstance(message, Reply):
        return _DECISIONS[message.decision]
    return _KINDS.get(type(message))


def case_id_of(message: Message) -> bytes | None:
    """Return the case a message is about, or ``None`` for a control message."""
    case_id = getattr(message, "case_id", None)
    return case_id if isinstance(case_id, bytes) else None


class CaseLedger:
    """Applies case messages to the node's cases, inside the caller's transaction.

    Args:
        city: this node's city.
        cases: the case store (creates cases and their keys, seals identities).
        journal: the case journal (records each message, sealed).
        rules: the agreement's rules that need the node's records.
    """

    def __init__(
        self, *, city: str, cases: CaseStore, journal: CaseJournal, rules: CaseRules
    ) -> None:
        self._city = city
        self._cases = cases
        self._journal = journal
        self._rules = rules

    async def on_sent(
        self,
        session: AsyncSession,
        peer: str,
        message: Message,
        *,
        message_id: bytes,
        at: float,
    ) -> None:
        """Move the case for a message this node sends to ``peer``, and record it.

        Raises:
            LocalProtocolError: ``invalid_transition`` — our own user broke the flow;
                ``quota_exceeded`` — the referral's quota slot was taken meanwhile.
        """
        await self._rules.check_sent(session, message)
        await self._apply(
            session, peer, message, direction=Direction.SENT, message_id=message_id, at=at
        )

    async def on_received(
        self,
        session: AsyncSession,
        sender: str,
        message: Message,
        *,
        message_id: bytes,
        at: float,
    ) -> None:
        """Check and move the case for a message received from ``sender``, and record it.

        Raises:
            RemoteProtocolError: ``invalid_transition`` — the peer broke the flow; or the
                agreement rule it broke (``quota_exceeded``, ``not_eligible`` ...).
        """
        try:
            if isinstance(message, BalanceStatement):
                await record_statement(session, sender, message, message_id=message_id, at=at)
                return
            case_id = case_id_of(message)
            if case_id is not None:
                # A case of another city is refused as such before the agreement's rules run.
                await self._require_peer(session, case_id, sender)
                await self._rules.check_received(session, sender, message)
            await self._apply(
                session,
                sender,
                message,
                direction=Direction.RECEIVED,
                message_id=message_id,
                at=at,
            )
        except LocalProtocolError as e:
            raise e.as_remote() from e

    async def _apply(
        self,
        session: AsyncSession,
        peer: str,
        message: Message,
        *,
        direction: Direction,
        message_id: bytes,
        at: float,
    ) -> None:
        kind = event_kind(message)
        case_id = case_id_of(message)
        if kind is None or case_id is None:
            return
        sent = direction is Direction.SENT
        event = CaseEvent(kind, direction)
        row = await find_case(session, case_id)
        if row is None:
            row = await self._open(session, peer, message, event, sent=sent)
        else:
            await self._require_peer(session, case_id, peer)
            new = next_state(Role(row.role), CaseState(row.state), event)
            await self._cases.set_state(case_id, new, session=session)
        await self._follow(session, row, message, sent=sent)
        await self._journal.record(
            session,
            case_id=case_id,
            direction=direction,
            message=message,
            message_id=message_id,
            at=at,
        )

    @staticmethod
    async def _require_peer(session: AsyncSession, case_id: bytes, peer: str) -> None:
        row = await find_case(session, case_id)
        if row is not None and row.peer != peer:
            raise LocalProtocolError(
                ErrorCode.INVALID_TRANSITION, "the case belongs to another city"
            )

    async def _open(
        self, session: AsyncSession, peer: str, message: Message, event: CaseEvent, *, sent: bool
    ) -> CaseRow:
        """Create the case a first inquiry opens (at the home node on sending, else on arrival)."""
        if not isinstance(message, Inquiry):
            raise LocalProtocolError(ErrorCode.INVALID_TRANSITION, "no such case on this node")
        role = Role.HOME if sent else Role.RECEIVING
        state = next_state(role, initial_state(role), event)
        unit = message.from_unit if sent else (message.to_unit or UNASSIGNED_UNIT)
        await self._cases.create(
            message.case_id, role=role, peer=peer, unit=unit, state=state, session=session
        )
        row = await find_case(session, message.case_id)
        assert row is not None  # created just above, in this transaction
        row.home_city = self._city if sent else peer
        row.receiving_city = peer if sent else self._city
        if not sent:
            row.peer_unit = message.from_unit
        elif message.to_unit is not None:
            row.peer_unit = message.to_unit
        return row

    async def _follow(
        self, session: AsyncSession, row: CaseRow, message: Message, *, sent: bool
    ) -> None:
        """Update what the case knows of itself from the message it just took."""
        if isinstance(message, Inquiry):
            row.warning = POLICE_ADVICE if police_advice_warning(message.threat_level) else None
        elif isinstance(message, Reply):
            if not sent:
                row.peer_unit = message.unit
            elif row.unit == UNASSIGNED_UNIT:
                row.unit = message.unit
        elif isinstance(message, Referral):
            row.quota_year = message.quota.year
            row.quota_index = message.quota.index
            row.protected_identity = message.person.protected_identity
            if not sent:
                row.peer_unit = message.from_unit
            await self._cases.seal_identity(
                message.case_id, encode_identity(message.person), session=session
            )
