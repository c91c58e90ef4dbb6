"""Resending what a restored peer lost: the case messages sent to it since a time, sealed afresh.

A peer restored from a backup taken at time T has lost every message it received after T. This
node still has them: each was recorded in its case's journal (``node.cases.journal``, sealed
under the case key) when it was queued, and its outbox row names its message id. The old
envelopes cannot be posted again (their signed timestamps are outside the replay window by now,
and they may be sealed to an encryption key the peer no longer holds), so each message is read
back from the journal and sealed afresh, under its original message id, by
:meth:`node.outgoing.Outgoing.resend`.

Owns :class:`Resender` (plan, then queue) and :func:`parse_since`. Invariants:

* **Case messages only.** A row without a case (key updates, balance statements...) is counted
  and left alone; so is a message of a shredded case (its body is gone with the case key), and
  one whose journal entry is missing or does not open. Nothing of this ever raises.
* **Nothing twice on the way.** A message whose newest envelope is still ``queued`` or ``sent``
  is on its way already: it is skipped and reported (the outbox's unique index on in-flight
  message ids refuses a second one anyway). Every other message id since the time is queued
  once, however many rows it has (a second run after a first resend queues each once more).
* **Original order.** Messages are queued in the order of their first outbox row since the time,
  so each case's messages reach the peer in the order they were first sent. The plan and the
  queueing are separate reads; the write checks, in its transaction, that no row was queued for
  the peer meanwhile in any case being resent, and that none of them was shredded meanwhile
  (:class:`ResendRaced`: nothing is queued, run it again), so no newer message of such a case can
  slip in before the resent ones and no shredded case's message goes out again. Messages of
  other cases, queued by a serving node meanwhile, do not matter to the order.
* **The case is not moved again.** Nothing is journaled and no case changes state: the case
  took each message when it was first sent. The receiver's exactly-once record (sender, message
  id) keeps a resend of a message it still holds from being processed twice: it answers
  ``replayed`` (the row becomes ``failed``), which here means "the peer had it".
* **Audited, without personal data.** Re-sealing reads the journal (a referral carries the
  person): one audit entry per case whose messages were queued, by the operator's console
  (``node.users.CONSOLE``), in the transaction that queues them. Logs carry the peer and counts,
  never an id or content.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar, Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from node.audit import AuditTrail
from node.cases.journal import message_purpose
from node.errors import NodeError
from node.outgoing import Outgoing, Queued, Resend
from node.storage.case_store import CaseNotFound, load_case_key
from node.storage.database import Database
from node.storage.outbox_store import UNDELIVERED
from node.storage.schema import CaseMessageRow, CaseRow, OutboxRow
from node.storage.vault import CaseShredded, CaseVault, VaultError
from node.trust import TrustState, UnknownPeer
from node.users import CONSOLE
from protocol.cases import Direction
from protocol.errors import ProtocolError
from protocol.limits import Limits
from protocol.messages import AnyMessage, decode_message

logger = logging.getLogger(__name__)

RESENT: Final = "messages_resent"
"""The audit action of a resend (one entry per case)."""
IDS_PER_QUERY: Final = 500  # message ids looked up in the journal per query (bounded parameters)


class ResendError(NodeError):
    """A resend that cannot be done as asked; nothing was queued."""

    code: ClassVar[str] = "resend_invalid"


class BadResendTime(ResendError):
    """``--since`` is neither an ISO 8601 time nor Unix seconds."""

    code: ClassVar[str] = "bad_time"


class ResendTimeInFuture(ResendError):
    """``--since`` is after now: there is nothing to resend from the future."""

    code: ClassVar[str] = "time_in_future"


class ResendRaced(ResendError):
    """A message for the peer was queued between the plan and the write: nothing was queued."""

    code: ClassVar[str] = "resend_raced"


def parse_since(text: str, now: float) -> float:
    """Read ``--since``: ISO 8601 (UTC when it names no zone) or Unix seconds.

    Args:
        text: what the operator typed.
        now: Unix seconds now.

    Returns:
        The time, Unix seconds.

    Raises:
        BadResendTime: neither form (the message does not quote it).
        ResendTimeInFuture: after ``now``.
    """
    cleaned = text.strip()
    if cleaned.isdigit():
        since = float(int(cleaned))
    else:
        try:
            parsed = datetime.datetime.fromisoformat(cleaned)
        except ValueError:
            raise BadResendTime(
                "--since must be an ISO 8601 time (2026-11-27T12:00:00+01:00) or Unix seconds"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        since = parsed.timestamp()
    if since > now:
        raise ResendTimeInFuture(
            "--since is in the future: give the time the peer's backup was taken"
        )
    return since


@dataclass(frozen=True, slots=True)
class PlannedResend:
    """One message to seal afresh.

    Attributes:
        first_seq: the outbox position of its first row since the time (its order).
        case_id: its case.
        message_type: e.g. ``"referral"``.
        resend: the message and its original id (``repr`` leaves the message out).
    """

    first_seq: int
    case_id: bytes
    message_type: str
    resend: Resend = field(repr=False)


@dataclass(frozen=True, slots=True)
class ResendPlan:
    """What a resend to ``peer`` since ``since`` would queue, and what it leaves alone.

    Attributes:
        peer: the restored peer.
        since: the time (Unix seconds) from which the outbox rows are taken.
        last_seq: the newest outbox position for the peer when planned (the race check).
        to_queue: the messages to seal afresh, in their original order.
        in_flight: messages whose newest envelope is still queued or sent: skipped.
        held_back: of those, how many follow a resent message of the same case: the peer may
            refuse them as out of order (``invalid_transition``); a later run resends them.
        not_case: rows without a case, by message type: never resent.
        shredded: messages of shredded cases: cannot be resent.
        unreadable: messages whose journal entry is missing or does not open or decode.
    """

    peer: str
    since: float
    last_seq: int
    to_queue: tuple[PlannedResend, ...]
    in_flight: int
    held_back: int
    not_case: Mapping[str, int]
    shredded: int
    unreadable: int

    def counts(self) -> dict[str, object]:
        """The plan as counts (no id, no content): for the prompt, the output and the log."""
        return {
            "peer": self.peer,
            "since": self.since,
            "to_queue": len(self.to_queue),
            "in_flight": self.in_flight,
            "held_back": self.held_back,
            "not_case": dict(self.not_case),
            "shredded": self.shredded,
            "unreadable": self.unreadable,
        }


@dataclass(frozen=True, slots=True)
class _Row:
    """The columns of one outbox row the plan reads."""

    seq: int
    case_id: bytes | None
    message_id: bytes
    message_type: str
    state: str


class Resender:
    """Plans and queues the resend of a restored peer's lost case messages.

    Args:
        db: the database.
        vault: opens the journal's bodies (the node's data key).
        outgoing: seals and queues (:meth:`Outgoing.resend`).
        audit: the audit trail.
        trust: the current trust snapshot (the peer must be a member with a key bundle).
        clock: Unix seconds now.
        limits: the protocol limits (decoding a journal body).
    """

    def __init__(
        self,
        *,
        db: Database,
        vault: CaseVault,
        outgoing: Outgoing,
        audit: AuditTrail,
        trust: Callable[[], TrustState],
        clock: Callable[[], float],
        limits: Limits,
    ) -> None:
        self._db = db
        self._vault = vault
        self._outgoing = outgoing
        self._audit = audit
        self._trust = trust
        self._clock = clock
        self._limits = limits

    async def plan(
        self, peer: str, since: float, only: frozenset[bytes] | None = None
    ) -> ResendPlan:
        """Work out what a resend to ``peer`` since ``since`` would queue; changes nothing.

        Args:
            peer: the restored peer.
            since: outbox rows created at or after this time (Unix seconds) are considered.
            only: consider only these message ids (a plan confirmed before), or all.

        Returns:
            The plan.

        Raises:
            UnknownPeer: not a member of the adopted agreement, this node itself, or a member
                whose key bundle this node has not fetched yet.
            ResendTimeInFuture: ``since`` is after now.
            StorageError: the database failed.
        """
        now = self._clock()
        if since > now:
            raise ResendTimeInFuture("--since is in the future: give the time the backup was taken")
        trust = self._trust()
        if peer == trust.city:
            raise UnknownPeer("this node cannot resend to itself")
        trust.sealing_key(peer, int(now))  # a member with a key bundle, or UnknownPeer
        async with self._db.reading() as s:
            last_seq = await _last_seq(s, peer)
            rows = await _rows_since(s, peer, since)
            return await self._plan(
                s, peer=peer, since=since, last_seq=last_seq, rows=rows, only=only
            )

    async def queue(self, plan: ResendPlan) -> list[Queued]:
        """Seal the plan's messages afresh and queue them, with their audit entries: one commit.

        Args:
            plan: a plan from :meth:`plan`, made just before (see :class:`ResendRaced`).

        Returns:
            Where each was queued, in order (empty when the plan queues nothing).

        Raises:
            ResendRaced: a row of a case being resent was queued for the peer since the plan, or
                such a case was shredded since (nothing queued).
            UnknownPeer: the peer's key bundle is gone.
            OutboxFull: the peer's outbox cannot take them all (nothing queued).
            StorageConflict: a concurrent resend queued one of them first (nothing queued).
            StorageError: the database failed (nothing queued).
        """
        if not plan.to_queue:
            return []
        cases = list(dict.fromkeys(item.case_id for item in plan.to_queue))
        purpose = f"peer {plan.peer} restored from a backup"

        async def check_and_audit(session: AsyncSession) -> None:
            newer = await session.scalar(
                select(func.count())
                .select_from(OutboxRow)
                .where(
                    OutboxRow.peer == plan.peer,
                    OutboxRow.seq > plan.last_seq,
                    OutboxRow.case_id.in_(cases),
                )
            )
            if int(newer or 0) != len(plan.to_queue):
                raise ResendRaced(
                    f"a message of a case being resent to {plan.peer} was queued meanwhile: "
                    "nothing was resent, run the command again"
                )
            # The bodies were read before this transaction: a case shredded since must not send
            # its (personal) messages again. FOR SHARE holds a shred off until the commit.
            readable = await session.scalars(
                select(CaseRow.case_id)
                .where(CaseRow.case_id.in_(cases), CaseRow.wrapped_key.is_not(None))
                .with_for_update(read=True)
            )
            if len(readable.all()) != len(cases):
                raise ResendRaced(
                    f"a case being resent to {plan.peer} was shredded meanwhile: nothing was "
                    "resent, run the command again"
                )
            for case_id in cases:  # last: the audit trail's lock is held until the commit
                await self._audit.record(
                    session,
                    principal=CONSOLE,
                    action=RESENT,
                    case_id=case_id,
                    purpose=purpose,
                    outcome="ok",
                )

        queued = await self._outgoing.resend(
            plan.peer, [item.resend for item in plan.to_queue], also=check_and_audit
        )
        logger.info(
            "TX [%s] resend: %d queued for %d case(s), %d in flight, %d not case messages, "
            "%d shredded, %d unreadable",
            plan.peer,
            len(queued),
            len(cases),
            plan.in_flight,
            sum(plan.not_case.values()),
            plan.shredded,
            plan.unreadable,
        )
        return queued

    async def _plan(
        self,
        session: AsyncSession,
        *,
        peer: str,
        since: float,
        last_seq: int,
        rows: Sequence[_Row],
        only: frozenset[bytes] | None,
    ) -> ResendPlan:
        wanted, in_flight, not_case = _sort_out(rows, only)
        bodies = await _journal_bodies(session, [row.message_id for row in wanted])
        to_queue: list[PlannedResend] = []
        shredded = unreadable = 0
        for row in wanted:
            assert row.case_id is not None  # rows without a case were set aside above
            outcome = await self._read_back(session, row.case_id, row.message_id, bodies)
            if outcome == "shredded":
                shredded += 1
            elif isinstance(outcome, str):
                unreadable += 1
            else:
                resend = Resend(message_id=row.message_id, message=outcome)
                to_queue.append(PlannedResend(row.seq, row.case_id, row.message_type, resend))
        first_resent: dict[bytes, int] = {}
        for item in to_queue:
            first_resent.setdefault(item.case_id, item.first_seq)
        held_back = sum(
            1
            for row in in_flight
            if row.case_id in first_resent and first_resent[row.case_id] < row.seq
        )
        return ResendPlan(
            peer=peer,
            since=since,
            last_seq=last_seq,
            to_queue=tuple(to_queue),
            in_flight=len(in_flight),
            held_back=held_back,
            not_case=MappingProxyType(dict(sorted(not_case.items()))),
            shredded=shredded,
            unreadable=unreadable,
        )

    async def _read_back(
        self,
        session: AsyncSession,
        case_id: bytes,
        message_id: bytes,
        bodies: dict[bytes, tuple[bytes, bytes]],
    ) -> AnyMessage | str:
        """The message as the journal recorded it, or why not (``shredded``, ``unreadable``)."""
        found = bodies.get(message_id)
        if found is None or found[0] != case_id:
            return "unreadable"
        try:
            case_key = await load_case_key(session, self._vault, case_id)
            purpose = message_purpose(Direction.SENT, message_id)
            body = self._vault.open(case_key, case_id, purpose, found[1])
            return decode_message(body, self._limits)
        except CaseShredded:
            return "shredded"
        except (CaseNotFound, VaultError, ProtocolError):
            return "unreadable"


def _sort_out(
    rows: Sequence[_Row], only: frozenset[bytes] | None
) -> tuple[list[_Row], list[_Row], dict[str, int]]:
    """Split the rows since the time by message id (each id once, by its first row's order).

    Returns:
        The first rows of the case messages to resend, the newest rows of those still in
        flight, and the count of the messages without a case by type.
    """
    firsts: dict[bytes, _Row] = {}
    newest: dict[bytes, _Row] = {}
    for row in rows:  # by seq: the first row of an id gives its order, the last its state
        if only is not None and row.message_id not in only:
            continue
        firsts.setdefault(row.message_id, row)
        newest[row.message_id] = row
    wanted: list[_Row] = []
    in_flight: list[_Row] = []
    not_case: dict[str, int] = {}
    for message_id, first in firsts.items():
        if first.case_id is None:
            not_case[first.message_type] = not_case.get(first.message_type, 0) + 1
        elif newest[message_id].state in UNDELIVERED:
            in_flight.append(newest[message_id])
        else:
            wanted.append(first)
    return wanted, in_flight, not_case


async def _last_seq(session: AsyncSession, peer: str) -> int:
    newest = await session.scalar(select(func.max(OutboxRow.seq)).where(OutboxRow.peer == peer))
    return int(newest or 0)


async def _rows_since(session: AsyncSession, peer: str, since: float) -> list[_Row]:
    result = await session.execute(
        select(
            OutboxRow.seq,
            OutboxRow.case_id,
            OutboxRow.message_id,
            OutboxRow.message_type,
            OutboxRow.state,
        )
        .where(OutboxRow.peer == peer, OutboxRow.created_at >= since)
        .order_by(OutboxRow.seq)
    )
    return [
        _Row(
            seq=int(row.seq),
            case_id=None if row.case_id is None else bytes(row.case_id),
            message_id=bytes(row.message_id),
            message_type=str(row.message_type),
            state=str(row.state),
        )
        for row in result.all()
    ]


async def _journal_bodies(
    session: AsyncSession, message_ids: Sequence[bytes]
) -> dict[bytes, tuple[bytes, bytes]]:
    """The journal's sealed body (and case) of each sent message, by message id."""
    bodies: dict[bytes, tuple[bytes, bytes]] = {}
    for start in range(0, len(message_ids), IDS_PER_QUERY):
        chunk = list(message_ids[start : start + IDS_PER_QUERY])
        result = await session.execute(
            select(CaseMessageRow.message_id, CaseMessageRow.case_id, CaseMessageRow.body).where(
                CaseMessageRow.direction == Direction.SENT.value,
                CaseMessageRow.message_id.in_(chunk),
            )
        )
        for message_id, case_id, body in result.all():
            bodies[bytes(message_id)] = (bytes(case_id), bytes(body))
    return bodies
