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
"""

from __future__ import annotations

from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from node.storage.case_store import CaseStore
from node.storage.schema import CaseRow
from protocol.cases import CaseEvent, CaseState, EventKind, Role, initial_state, next_state
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import (
    Closure,
    Decision,
    Inquiry,
    Intake,
    Message,
    ProgressReport,
    Referral,
    Reply,
)

UNASSIGNED_UNIT: Final = ""
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
        cases: the case store (creates cases and their keys).
    """

    def __init__(self, cases: CaseStore) -> None:
        self._cases = cases

    async def on_sent(self, session: AsyncSession, peer: str, message: Message) -> None:
        """Move the case for a message this node sends to ``peer``.

        Raises:
            LocalProtocolError: ``invalid_transition`` — our own user broke the flow.
        """
        await self._apply(session, peer, message, sent=True)

    async def on_received(self, session: AsyncSession, sender: str, message: Message) -> None:
        """Move the case for a message received from ``sender``.

        Raises:
            RemoteProtocolError: ``invalid_transition`` — the peer broke the flow.
        """
        try:
            await self._apply(session, sender, message, sent=False)
        except LocalProtocolError as e:
            raise e.as_remote() from e

    async def _apply(
        self, session: AsyncSession, peer: str, message: Message, *, sent: bool
    ) -> None:
        kind = event_kind(message)
        case_id = case_id_of(message)
        if kind is None or case_id is None:
            return
        event = CaseEvent.sent(kind) if sent else CaseEvent.received(kind)
        row = await session.get(CaseRow, case_id)
        if row is None:
            role = Role.HOME if sent else Role.RECEIVING
            if kind is not EventKind.INQUIRY:
                raise LocalProtocolError(ErrorCode.INVALID_TRANSITION, "no such case on this node")
            state = next_state(role, initial_state(role), event)
            assert isinstance(message, Inquiry)  # kind INQUIRY is only ever an Inquiry
            unit = message.from_unit if sent else (message.to_unit or UNASSIGNED_UNIT)
            await self._cases.create(
                case_id, role=role, peer=peer, unit=unit, state=state, session=session
            )
            return
        if row.peer != peer:
            raise LocalProtocolError(
                ErrorCode.INVALID_TRANSITION, "the case belongs to another city"
            )
        new = next_state(Role(row.role), CaseState(row.state), event)
        await self._cases.set_state(case_id, new, session=session)
