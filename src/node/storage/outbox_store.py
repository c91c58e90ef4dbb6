"""The durable outbox: every sealed envelope to send, its delivery state, and its receipt.

Owns the ``outbox`` table and implements :class:`node.delivery.OutboxQueue` for the sender loops.
Invariants:

* ``seq`` is a global, strictly increasing order (never reused): each peer's envelopes are sent
  oldest first, so the messages of one case, which has one peer, arrive in the order queued.
* An envelope is stored exactly as sealed and never changed; only its delivery state moves:
  ``queued → sent`` when handed to the peer, ``→ receipted`` on a receipt, ``→ failed`` on a
  permanent refusal, ``queued|sent → expired`` once older than the retry limit. A ``sent``
  envelope without a receipt (a transient refusal, a crash, a timeout) stays ``sent`` and is sent
  again by the next batch: the receiver's duplicate answer carries the original receipt. A
  receipt, once stored, is final; it is stored even for an envelope that expired meanwhile.
* Nothing is deleted: receipts are evidence, and failed or expired envelopes stay visible
  (``citynode outbox status``) until an operator deals with them.
* A message id is unique among the envelopes in flight (``queued``/``sent``), not for ever: a
  message re-sealed after the peer lost it (``citynode outbox resend``, :mod:`node.resend`) is
  a new row under the same id, beside its earlier rows and their receipts. Look-ups by message
  id answer with its newest receipted row, else its newest (:data:`_DELIVERY_FIRST`).
* The queue is bounded: :meth:`OutboxStore.enqueue` refuses with :class:`OutboxFull` when a peer
  already has ``max_queue_length`` undelivered envelopes, so a caller can answer 503 before it
  commits anything. (On PostgreSQL, concurrent enqueues at the very limit may overshoot it by the
  number of concurrent callers; SQLite serialises writers, so the bound is exact there.)
* :meth:`OutboxStore.enqueue` can join the caller's transaction: a case change and the message
  announcing it commit together, or neither does.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from sqlalchemy import (
    Double,
    LargeBinary,
    String,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from node.config import NodeLimits
from node.delivery import (
    ACCEPTED,
    BAD_RECEIPT,
    DUPLICATE,
    REJECTED_RECEIPT,
    DeliveryResult,
    DeliveryState,
    OutboxQueue,
    OutgoingEnvelope,
    Overloaded,
    PeerBacklog,
)
from node.storage.database import Database
from node.storage.schema import OutboxRow

logger = logging.getLogger(__name__)

DEFAULT_NODE_LIMITS: Final = NodeLimits()

UNDELIVERED: Final = (DeliveryState.QUEUED.value, DeliveryState.SENT.value)
NOT_REFUSALS: Final = frozenset({ACCEPTED, DUPLICATE, BAD_RECEIPT, REJECTED_RECEIPT})
"""Statuses that never mean a refusal: without a verified receipt the envelope is left as it is."""

_OUTBOX: Final = OutboxRow.metadata.tables["outbox"]
_RECORD_RECEIPT: Final = (
    update(_OUTBOX)
    .where(
        _OUTBOX.c.seq == bindparam("k_seq"),
        _OUTBOX.c.state != DeliveryState.RECEIPTED.value,
    )
    .values(
        state=DeliveryState.RECEIPTED.value,
        receipt=bindparam("k_receipt", type_=LargeBinary),
        receipted_at=bindparam("k_receipted_at", type_=Double),
        last_error=None,
    )
)
_RECORD_REFUSAL: Final = (
    update(_OUTBOX)
    # One plain parameter per state, not an "expanding" list: the statement runs executemany.
    .where(
        _OUTBOX.c.seq == bindparam("k_seq"),
        _OUTBOX.c.state.in_([literal(state) for state in UNDELIVERED]),
    )
    .values(state=DeliveryState.FAILED.value, last_error=bindparam("k_error", type_=String))
)

# Built once: the statements every enqueue runs (building one anew costs more than running it).
_COUNT_UNDELIVERED: Final = (
    select(func.count())
    .select_from(_OUTBOX)
    .where(_OUTBOX.c.peer == bindparam("k_peer"), _OUTBOX.c.state.in_(UNDELIVERED))
)
_ENQUEUE: Final = insert(_OUTBOX).returning(_OUTBOX.c.seq, sort_by_parameter_order=True)
_DELIVERY_FIRST: Final = (
    (_OUTBOX.c.state == DeliveryState.RECEIPTED.value).desc(),
    _OUTBOX.c.seq.desc(),
)
"""Which envelope of a message id answers for it: its newest receipted one, else its newest."""


class OutboxFull(Overloaded):
    """A peer's outbox holds ``max_queue_length`` undelivered envelopes: refuse new ones (503)."""

    code: ClassVar[str] = "outbox_full"


@dataclass(frozen=True, slots=True)
class NewEnvelope:
    """A sealed envelope to queue (see :meth:`OutboxStore.enqueue` for the fields)."""

    peer: str
    case_id: bytes | None
    message_id: bytes
    message_type: str
    envelope: bytes


@dataclass(frozen=True, slots=True)
class PeerOutboxStatus:
    """The outbox as an operator sees it for one peer.

    Attributes:
        peer: the city.
        counts: envelopes by delivery state (every state present, zero included).
        oldest_undelivered_age_s: age of the oldest queued or sent envelope, or ``None``.
        overdue: undelivered envelopes older than the alert age.
    """

    peer: str
    counts: Mapping[DeliveryState, int]
    oldest_undelivered_age_s: float | None
    overdue: int

    @property
    def undelivered(self) -> int:
        """Envelopes still queued or sent."""
        return self.counts[DeliveryState.QUEUED] + self.counts[DeliveryState.SENT]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One envelope's visible delivery record (for a case timeline).

    Attributes:
        seq: its outbox position.
        peer: the recipient city.
        case_id: its case, or ``None``.
        message_id: the header's message id.
        message_type: e.g. ``"inquiry"``.
        state: the delivery state.
        attempts: how many times it was sent.
        created_at: when it was queued.
        last_attempt_at: when it was last sent, or ``None``.
        receipted_at: when its receipt was stored, or ``None``.
        last_error: the last refusal code, or ``None``.
        receipt: the peer's signed receipt, or ``None``.
    """

    seq: int
    peer: str
    case_id: bytes | None
    message_id: bytes
    message_type: str
    state: DeliveryState
    attempts: int
    created_at: float
    last_attempt_at: float | None
    receipted_at: float | None
    last_error: str | None
    receipt: bytes | None


class OutboxStore:
    """The outbox table, as the sender loops, the case service and the operator use it.

    Args:
        db: the database.
        clock: Unix seconds now (used when a method is not given ``now``).
        limits: the node's limits (``max_queue_length``).
    """

    def __init__(
        self, db: Database, clock: Callable[[], float], *, limits: NodeLimits = DEFAULT_NODE_LIMITS
    ) -> None:
        self._db = db
        self._clock = clock
        self._max_queue_length = limits.max_queue_length
        self._alert_age_s = limits.alert_age_s

    async def enqueue(
        self,
        session: AsyncSession | None,
        *,
        peer: str,
        case_id: bytes | None,
        message_id: bytes,
        message_type: str,
        envelope: bytes,
        now: float | None = None,
    ) -> int:
        """Queue a sealed envelope for ``peer``.

        Args:
            session: the caller's transaction to join, or ``None`` for a transaction of its own.
            peer: the recipient city.
            case_id: the case it belongs to, or ``None`` for a control message.
            message_id: the envelope header's message id.
            message_type: the message type name (``protocol.messages.message_type_name``).
            envelope: the sealed envelope, exactly as it will be sent.
            now: when it is queued (default: the clock).

        Returns:
            Its ``seq``.

        Raises:
            OutboxFull: ``peer`` already has ``max_queue_length`` undelivered envelopes.
            StorageConflict: an envelope with this message id is already in flight (queued or
                sent; own transaction; in a joined one, the caller's transaction fails with it).
            StorageError: the database failed.
        """
        item = NewEnvelope(peer, case_id, message_id, message_type, envelope)
        [seq] = await self.enqueue_many(session, [item], now=now)
        return seq

    async def enqueue_many(
        self,
        session: AsyncSession | None,
        items: Sequence[NewEnvelope],
        *,
        now: float | None = None,
    ) -> list[int]:
        """Queue several sealed envelopes in one transaction, in the order given.

        Args:
            session: the caller's transaction to join, or ``None`` for a transaction of its own.
            items: the envelopes.
            now: when they are queued (default: the clock).

        Returns:
            Their ``seq`` numbers, in order.

        Raises:
            OutboxFull: a peer's queue cannot take its share of ``items``; none is queued.
            StorageConflict: a message id is already in flight (queued or sent).
            StorageError: the database failed.
        """
        if not items:
            return []
        queued_at = self._clock() if now is None else now
        wanted = Counter(item.peer for item in items)
        async with self._db.transaction(session) as s:
            for peer, count in sorted(wanted.items()):
                if await _undelivered(s, peer) + count > self._max_queue_length:
                    logger.warning("TX [%s] outbox full: new message(s) refused", peer)
                    raise OutboxFull(
                        f"the outbox for {peer} cannot take {count} more message(s) beyond "
                        f"{self._max_queue_length} undelivered: try again later"
                    )
            rows = [
                {
                    "peer": item.peer,
                    "case_id": item.case_id,
                    "message_id": item.message_id,
                    "message_type": item.message_type,
                    "envelope": item.envelope,
                    "state": DeliveryState.QUEUED.value,
                    "attempts": 0,
                    "created_at": queued_at,
                }
                for item in items
            ]
            # One INSERT ... RETURNING, no ORM object per row; seqs come back in the given order.
            inserted = await s.execute(_ENQUEUE, rows)
            return [int(seq) for seq in inserted.scalars().all()]

    async def next_batch(self, peer: str, limit: int, now: float) -> Sequence[OutgoingEnvelope]:
        """Return up to ``limit`` queued or sent-but-unreceipted envelopes for ``peer``, by seq."""
        async with self._db.reading() as s:
            return await _fetch(s, peer, limit)

    async def mark_sent(self, seqs: Sequence[int], now: float) -> None:
        """Record that these envelopes were handed to the peer (attempts + 1).

        Envelopes already receipted, failed or expired are left as they are.
        """
        if not seqs:
            return
        async with self._db.transaction() as s:
            await _mark_sent(s, seqs, now)

    async def record_results(
        self, batch: Sequence[OutgoingEnvelope], results: Sequence[DeliveryResult], now: float
    ) -> None:
        """Store the peer's final answers for a batch, in one transaction.

        The sender passes final results only (``node.outbox.verdicts`` sorts them): a delivered
        result (``accepted`` or ``duplicate`` with a receipt) marks the envelope receipted and
        keeps the receipt; a permanent refusal marks it failed with the code, if it is still in
        flight. A status in :data:`NOT_REFUSALS` without a receipt changes nothing (the envelope
        stays sent and goes again). A receipted envelope never changes again.

        Raises:
            ValueError: ``results`` does not answer ``batch`` one to one.
            StorageError: the database failed (nothing was recorded).
        """
        async with self._db.transaction() as s:
            await _record(s, batch, results, now)

    async def claim_batch(
        self,
        peer: str,
        limit: int,
        now: float,
        settle: tuple[Sequence[OutgoingEnvelope], Sequence[DeliveryResult]] | None = None,
    ) -> Sequence[OutgoingEnvelope]:
        """Record a batch's final results, then fetch the next batch and mark it sent: one commit.

        Args:
            peer: the recipient city.
            limit: the most envelopes to fetch.
            now: when (for ``last_attempt_at`` and ``receipted_at``).
            settle: the previous batch and its final results, as :meth:`record_results` takes
                them, or ``None``.

        Returns:
            The next batch as :meth:`next_batch` returns it (``attempts`` as before this send),
            now ``sent``.

        Raises:
            ValueError: ``settle``'s results do not answer its batch one to one.
            StorageError: the database failed (nothing was recorded or marked).
        """
        async with self._db.transaction() as s:
            if settle is not None:
                await _record(s, *settle, now)
            batch = await _fetch(s, peer, limit)
            if batch:
                await _mark_sent(s, [envelope.seq for envelope in batch], now)
        return batch

    async def expire_older_than(self, peer: str, cutoff: float) -> int:
        """Mark ``peer``'s undelivered envelopes queued before ``cutoff`` expired.

        Returns:
            How many were expired (kept and visible, never deleted).
        """
        async with self._db.transaction() as s:
            result = await s.execute(
                update(OutboxRow)
                .where(
                    OutboxRow.peer == peer,
                    OutboxRow.state.in_(UNDELIVERED),
                    OutboxRow.created_at < cutoff,
                )
                .values(state=DeliveryState.EXPIRED.value)
                .execution_options(synchronize_session=False)
            )
        expired = int(getattr(result, "rowcount", 0) or 0)
        if expired:
            logger.warning("TX [%s] %d undelivered message(s) expired", peer, expired)
        return expired

    async def backlog(self, peer: str, overdue_before: float) -> PeerBacklog:
        """Count ``peer``'s envelopes that are not receipted, by state (for metrics and alerts).

        Args:
            peer: the city.
            overdue_before: undelivered envelopes created before this time are overdue.

        Returns:
            The counts; receipted envelopes are not counted (they only grow).
        """
        unfinished = [state.value for state in DeliveryState if state != DeliveryState.RECEIPTED]
        async with self._db.reading() as s:
            counts = await s.execute(
                select(OutboxRow.state, func.count())
                .where(OutboxRow.peer == peer, OutboxRow.state.in_(unfinished))
                .group_by(OutboxRow.state)
            )
            by_state = {DeliveryState(state): int(count) for state, count in counts.all()}
            overdue = await s.scalar(
                select(func.count())
                .select_from(OutboxRow)
                .where(
                    OutboxRow.peer == peer,
                    OutboxRow.state.in_(UNDELIVERED),
                    OutboxRow.created_at < overdue_before,
                )
            )
        return PeerBacklog(
            queued=by_state.get(DeliveryState.QUEUED, 0),
            sent=by_state.get(DeliveryState.SENT, 0),
            failed=by_state.get(DeliveryState.FAILED, 0),
            expired=by_state.get(DeliveryState.EXPIRED, 0),
            overdue=int(overdue or 0),
        )

    async def status(
        self, now: float | None = None, alert_age_s: float | None = None
    ) -> list[PeerOutboxStatus]:
        """Summarise the outbox per peer, for ``citynode outbox status`` and the alerts.

        Args:
            now: the time to measure ages at (default: the clock).
            alert_age_s: an undelivered envelope older than this is overdue (default: the
                limits' ``alert_age_s``).

        Returns:
            One entry per peer that has any envelope, sorted by peer.
        """
        at = self._clock() if now is None else now
        alert_age_s = self._alert_age_s if alert_age_s is None else alert_age_s
        undelivered = OutboxRow.state.in_(UNDELIVERED)
        async with self._db.reading() as s:
            counts = await s.execute(
                select(OutboxRow.peer, OutboxRow.state, func.count()).group_by(
                    OutboxRow.peer, OutboxRow.state
                )
            )
            ages = await s.execute(
                select(
                    OutboxRow.peer,
                    func.min(OutboxRow.created_at),
                    func.sum(case((OutboxRow.created_at < at - alert_age_s, 1), else_=0)),
                )
                .where(undelivered)
                .group_by(OutboxRow.peer)
            )
            by_peer: dict[str, dict[DeliveryState, int]] = {}
            for peer, state, count in counts.all():
                by_peer.setdefault(peer, dict.fromkeys(DeliveryState, 0))[DeliveryState(state)] = (
                    count
                )
            oldest = {peer: (at - first, int(overdue or 0)) for peer, first, overdue in ages.all()}
        return [
            PeerOutboxStatus(
                peer=peer,
                counts=by_peer[peer],
                oldest_undelivered_age_s=oldest[peer][0] if peer in oldest else None,
                overdue=oldest[peer][1] if peer in oldest else 0,
            )
            for peer in sorted(by_peer)
        ]

    async def state_of(self, message_id: bytes) -> DeliveryState | None:
        """Return the delivery state of a message (see :data:`_DELIVERY_FIRST`), or ``None``."""
        async with self._db.reading() as s:
            state = await s.scalar(
                select(OutboxRow.state)
                .where(OutboxRow.message_id == message_id)
                .order_by(*_DELIVERY_FIRST)
                .limit(1)
            )
        return None if state is None else DeliveryState(state)

    async def entry(self, message_id: bytes) -> OutboxEntry | None:
        """Return the delivery record of a message (see :data:`_DELIVERY_FIRST`), or ``None``."""
        async with self._db.reading() as s:
            row = await s.scalar(
                select(OutboxRow)
                .where(OutboxRow.message_id == message_id)
                .order_by(*_DELIVERY_FIRST)
                .limit(1)
            )
            return None if row is None else _entry(row)

    async def pending_peers(self) -> list[str]:
        """Return the peers with queued or sent envelopes (each needs a sender loop), sorted."""
        async with self._db.reading() as s:
            peers = await s.scalars(
                select(OutboxRow.peer).where(OutboxRow.state.in_(UNDELIVERED)).distinct()
            )
            return sorted(peers.all())

    async def queue_length(self, peer: str | None = None) -> int:
        """Return how many envelopes are undelivered (queued or sent), for one peer or all."""
        async with self._db.reading() as s:
            if peer is not None:
                return await _undelivered(s, peer)
            count = await s.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.state.in_(UNDELIVERED))
            )
            return int(count or 0)


async def _fetch(session: AsyncSession, peer: str, limit: int) -> list[OutgoingEnvelope]:
    columns = (
        OutboxRow.seq,
        OutboxRow.case_id,
        OutboxRow.message_id,
        OutboxRow.envelope,
        OutboxRow.created_at,
        OutboxRow.attempts,
    )
    rows: list[Any] = []
    # One index range per state (peer, state, seq), merged here: no sort of the queue.
    for state in UNDELIVERED:
        result = await session.execute(
            select(*columns)
            .where(OutboxRow.peer == peer, OutboxRow.state == state)
            .order_by(OutboxRow.seq)
            .limit(limit)
        )
        rows.extend(result.all())
    rows.sort(key=lambda row: row.seq)
    return [
        OutgoingEnvelope(
            seq=row.seq,
            peer=peer,
            case_id=row.case_id,
            message_id=row.message_id,
            envelope=row.envelope,
            created_at=row.created_at,
            attempts=row.attempts,
        )
        for row in rows[:limit]
    ]


async def _mark_sent(session: AsyncSession, seqs: Sequence[int], now: float) -> None:
    await session.execute(
        update(OutboxRow)
        .where(OutboxRow.seq.in_(list(seqs)), OutboxRow.state.in_(UNDELIVERED))
        .values(
            state=DeliveryState.SENT.value,
            attempts=OutboxRow.attempts + 1,
            last_attempt_at=now,
        )
        .execution_options(synchronize_session=False)
    )


async def _record(
    session: AsyncSession,
    batch: Sequence[OutgoingEnvelope],
    results: Sequence[DeliveryResult],
    now: float,
) -> None:
    """Store receipts and permanent refusals (see :meth:`OutboxStore.record_results`)."""
    if len(batch) != len(results):
        raise ValueError("the peer's results do not answer the batch one to one")
    receipted: list[dict[str, object]] = []
    refused: list[dict[str, object]] = []
    for envelope, result in zip(batch, results, strict=True):
        receipt = _receipt_change(envelope.seq, result, now)
        refusal = None if receipt else _refusal_change(envelope.seq, result)
        if receipt is not None:
            receipted.append(receipt)
        elif refusal is not None:
            refused.append(refusal)
    if receipted:  # a receipt wins over any state but receipted (it is evidence)
        await session.execute(_RECORD_RECEIPT, receipted)
    if refused:  # only an envelope still in flight can fail
        await session.execute(_RECORD_REFUSAL, refused)
        peer = batch[0].peer
        logger.warning("TX [%s] %d message(s) refused for good by the peer", peer, len(refused))


async def _undelivered(session: AsyncSession, peer: str) -> int:
    count = await session.scalar(_COUNT_UNDELIVERED, {"k_peer": peer})
    return int(count or 0)


def _receipt_change(seq: int, result: DeliveryResult, now: float) -> dict[str, object] | None:
    """The parameters that store a result's receipt, or ``None`` if it did not deliver."""
    if not result.delivered:
        return None
    return {"k_seq": seq, "k_receipt": result.receipt, "k_receipted_at": now}


def _refusal_change(seq: int, result: DeliveryResult) -> dict[str, object] | None:
    """The parameters that mark a permanent refusal failed, or ``None`` for a non-refusal."""
    if result.status in NOT_REFUSALS:
        return None
    return {"k_seq": seq, "k_error": result.status}


def _entry(row: OutboxRow) -> OutboxEntry:
    return OutboxEntry(
        seq=row.seq,
        peer=row.peer,
        case_id=row.case_id,
        message_id=row.message_id,
        message_type=row.message_type,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        created_at=row.created_at,
        last_attempt_at=row.last_attempt_at,
        receipted_at=row.receipted_at,
        last_error=row.last_error,
        receipt=row.receipt,
    )


if TYPE_CHECKING:  # mypy proves that the store is the queue the sender loops expect

    def _is_an_outbox_queue(store: OutboxStore) -> OutboxQueue:
        return store
