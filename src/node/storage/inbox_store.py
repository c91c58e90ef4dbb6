"""The inbox and the replay store: every envelope accepted once, its evidence, its receipt.

Owns the ``inbox`` and ``replay_guard`` tables. Invariants:

* **Exactly once.** :meth:`InboxStore.accept` writes the replay record, the caller's own changes
  (``apply``, e.g. the case state) and the inbox row in ONE transaction: either the message was
  processed and will be answered as a duplicate forever after, or nothing of it was kept. Two
  concurrent deliveries of the same envelope race on the unique keys; the loser rolls back and
  gets :class:`DuplicateEnvelope` with the winner's receipt, never an ``IntegrityError``.
* **Batches.** :meth:`InboxStore.accept_batch` does the same for a whole inbox request in one
  transaction (one commit, one disk flush). It first tries the batch *together*: the cases of
  the batch read with one query, every envelope's changes applied without a savepoint, and
  everything written with one flush (an ``INSERT`` per table). Only if an envelope's changes
  fail does it roll that attempt back and run the batch again *apart*, each envelope inside its
  own savepoint: a duplicate or a refused envelope (its ``apply`` raised a node or protocol
  error) is then rolled back alone and the others are kept. Either way the outcome is the same;
  any other failure keeps nothing of the batch.
* **Evidence, encrypted.** The inbox row keeps the verified header, body and signature (so the
  sender's signature can be checked again later) and the receipt we returned. The three parts are
  sealed by the vault under the case key for a case message, or under the data key for a control
  message, bound to the purpose ``inbox:<sender>:<message id hex>`` so a payload cannot be moved
  to another row. The raw envelope is not kept: it is sealed to an encryption key that is
  destroyed after its grace window.
* **Replay window.** ``(sender, message id)`` stays in ``replay_guard`` until the header
  timestamp leaves the accepted window (``expires_at = timestamp + max_message_age_s``; after
  that ``open_envelope`` refuses the envelope as ``stale`` anyway), across restarts.
* **Bounded.** At most ``replay_capacity`` replay records. When full, expired records are purged;
  if it is still full, a new envelope gets :class:`~node.delivery.Overloaded` (503) and nothing
  is stored: the node refuses rather than forgets. A duplicate is still answered. The count is
  kept in memory and is exact as long as one process writes the database (the node's rule: one
  node process per database).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from sqlalchemy import delete, func, insert, null, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from node.config import NodeLimits
from node.delivery import Overloaded
from node.errors import NodeError
from node.storage.case_store import forget_cases, load_case_key, preload_cases
from node.storage.database import Database, StorageConflict
from node.storage.schema import InboxRow, ReplayGuardRow
from node.storage.vault import CaseVault
from protocol import codec
from protocol.errors import ProtocolError
from protocol.messages import CASE_MESSAGES, Message, message_type_name
from protocol.sealing import OpenedEnvelope

logger = logging.getLogger(__name__)

DEFAULT_NODE_LIMITS: Final = NodeLimits()
MAX_PAYLOAD_BYTES: Final = 1024 * 1024  # far above any header + body + signature

ApplyInTransaction = Callable[[AsyncSession], Awaitable[None]]
"""The caller's own changes, run inside the transaction that accepts the envelope."""


class StoredReceipt(NamedTuple):
    """What a duplicate is answered with: the original envelope's hash and our receipt."""

    envelope_hash: bytes
    receipt: bytes


@dataclass(frozen=True, slots=True)
class Accepted:
    """The envelope was new: it is stored, with its replay record and the caller's changes.

    Attributes:
        inbox_id: the inbox row's id (arrival order).
    """

    inbox_id: int


@dataclass(frozen=True, slots=True)
class DuplicateEnvelope:
    """The envelope was already accepted (perhaps concurrently): nothing new was stored.

    Attributes:
        original: the original's hash and receipt, or ``None`` if only the replay record
            remains (the inbox row was removed since): answer ``replayed``.
    """

    original: StoredReceipt | None


@dataclass(frozen=True, slots=True)
class Refused:
    """The envelope's own changes failed: nothing of it was stored; the others of the batch were.

    Attributes:
        error: what ``apply`` raised (a node or protocol error: its ``code`` answers the peer),
            :class:`~node.storage.case_store.CaseNotFound` / ``CaseShredded`` for a case
            message without a readable case, or ``StorageConflict`` for a conflict in ``apply``.
    """

    error: NodeError | ProtocolError


@dataclass(frozen=True, slots=True)
class Arrival:
    """One verified envelope to accept.

    Attributes:
        opened: the envelope as ``open_envelope`` verified it.
        receipt: the signed receipt we answer with (returned again for any duplicate).
        received_at: when it was received (Unix seconds; the receipt says the same).
        apply: the caller's changes, run in the envelope's transaction before its inbox row is
            written (a new case must exist by then: the payload is sealed under its key). It
            must act only through the session it is given: it may run again if the batch is
            retried, and its changes are rolled back with the envelope's.
    """

    opened: OpenedEnvelope
    receipt: bytes
    received_at: float
    apply: ApplyInTransaction | None = None


AcceptOutcome = Accepted | DuplicateEnvelope


class _NewRow(NamedTuple):
    """The columns of an inbox row to insert (the id comes from the database)."""

    sender: str
    message_id: bytes
    envelope_hash: bytes
    message_type: str
    case_id: bytes | None
    header_timestamp: float
    received_at: float
    payload: bytes
    receipt: bytes


class _TryApart(Exception):
    """An envelope of a batch tried together failed: roll back, run each envelope apart."""


BatchOutcome = Accepted | DuplicateEnvelope | Refused


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A received message read back from the inbox, decrypted.

    Attributes:
        inbox_id: arrival order.
        sender: the sending city.
        message_id: the header's message id.
        message_type: e.g. ``"referral"``.
        case_id: its case, or ``None``.
        header_timestamp: the signed header timestamp.
        received_at: when we accepted it.
        envelope_hash: the hash our receipt names.
        header_bytes: the exact header received.
        body_bytes: the exact body received (``protocol.messages.decode_message`` reads it).
        signature: the sender's signature over them.
        receipt: the receipt we returned.
    """

    inbox_id: int
    sender: str
    message_id: bytes
    message_type: str
    case_id: bytes | None
    header_timestamp: float
    received_at: float
    envelope_hash: bytes
    header_bytes: bytes
    body_bytes: bytes
    signature: bytes
    receipt: bytes


class InboxStore:
    """The inbox and the replay store.

    Args:
        db: the database.
        vault: the vault (the node's data key) that seals payloads at rest.
        clock: Unix seconds now (to purge expired replay records when full).
        limits: the node's limits (``replay_capacity``, ``protocol.max_message_age_s``).
    """

    def __init__(
        self,
        db: Database,
        vault: CaseVault,
        clock: Callable[[], float],
        *,
        limits: NodeLimits = DEFAULT_NODE_LIMITS,
    ) -> None:
        self._db = db
        self._vault = vault
        self._clock = clock
        self._capacity = limits.replay_capacity
        self._window_s = limits.protocol.max_message_age_s
        self._replay_rows: int | None = None  # records stored or reserved; None: not yet read

    async def lookup(self, sender: str, message_id: bytes) -> StoredReceipt | None:
        """Return the stored envelope hash and receipt of an accepted message, or ``None``."""
        async with self._db.reading() as s:
            duplicate = await _duplicate_of(s, sender, message_id)
        return None if duplicate is None else duplicate.original

    async def seen(self, sender: str, message_id: bytes) -> bool:
        """Return whether the message id is remembered (inbox row or replay record)."""
        async with self._db.reading() as s:
            return await _duplicate_of(s, sender, message_id) is not None

    async def accept(
        self,
        opened: OpenedEnvelope,
        *,
        receipt: bytes,
        received_at: float,
        apply: ApplyInTransaction | None = None,
    ) -> AcceptOutcome:
        """Store a verified envelope, its replay record and the caller's changes, atomically.

        Args:
            opened: the envelope as ``open_envelope`` verified it.
            receipt: the signed receipt we answer with (returned again for any duplicate).
            received_at: when it was received (Unix seconds; the receipt says the same).
            apply: the caller's changes, run in the same transaction before the inbox row is
                written (a new case must exist by then: the payload is sealed under its key).

        Returns:
            :class:`Accepted`, or :class:`DuplicateEnvelope` if it was accepted before.

        Raises:
            Overloaded: the replay store is full of unexpired records and the envelope is new;
                nothing was stored.
            CaseNotFound: a case message whose case does not exist (after ``apply``).
            CaseShredded: a case message for a shredded case.
            StorageConflict: ``apply`` collided with an existing row.
            StorageError: the database failed; nothing was stored.
            Exception: whatever ``apply`` raises; nothing was stored.
        """
        [outcome] = await self.accept_batch([Arrival(opened, receipt, received_at, apply)])
        if isinstance(outcome, Refused):
            raise outcome.error
        return outcome

    async def accept_batch(self, arrivals: Sequence[Arrival]) -> list[BatchOutcome]:
        """Accept a batch of verified envelopes in one transaction (one commit for the batch).

        Duplicates are found for the whole batch with one query per sender; each ``apply`` runs
        in its own savepoint, so a refused envelope rolls back alone; the replay records and
        inbox rows of the batch are then written together. Should a concurrent delivery of the
        same envelope commit first (PostgreSQL), the batch is rolled back and run once more, and
        that envelope is then answered as a duplicate.

        Args:
            arrivals: the envelopes, in the order received.

        Returns:
            One outcome per arrival, in order: :class:`Accepted`, :class:`DuplicateEnvelope`
            (also for an envelope repeated within the batch) or :class:`Refused`.

        Raises:
            Overloaded: the replay store cannot take the batch's new envelopes; nothing was
                stored (a batch of duplicates only is still answered).
            StorageError: the database failed; nothing of the batch was stored.
            Exception: anything but a node or protocol error from an ``apply``; nothing of the
                batch was stored.
        """
        if not arrivals:
            return []
        if not await self._reserve_replay_slots(len(arrivals)):
            return await self._answer_when_full(arrivals)
        kept = 0
        try:
            try:
                outcomes = await self._accept_all(arrivals)
            except StorageConflict:  # a concurrent duplicate won the race: it is now visible
                outcomes = await self._accept_all(arrivals)
            kept = sum(1 for outcome in outcomes if isinstance(outcome, Accepted))
        finally:
            self._release_replay_slots(len(arrivals) - kept)
        return outcomes

    async def _accept_all(self, arrivals: Sequence[Arrival]) -> list[BatchOutcome]:
        try:
            return await self._accept_together(arrivals)
        except _TryApart:  # an envelope failed: nothing of that attempt was kept
            return await self._accept_apart(arrivals)

    async def _accept_together(self, arrivals: Sequence[Arrival]) -> list[BatchOutcome]:
        """Accept the batch with no savepoint and one flush; :class:`_TryApart` if one fails."""
        outcomes: list[BatchOutcome | None] = []  # None: accepted, its row id known after flush
        accepted: list[tuple[int, _NewRow]] = []
        async with self._db.transaction() as s:
            known = await _stored_receipts(s, arrivals)
            await preload_cases(s, _case_ids(arrivals))
            for arrival in arrivals:
                key = (arrival.opened.header.sender, arrival.opened.header.message_id)
                if key in known:
                    outcomes.append(DuplicateEnvelope(known[key]))
                    continue
                try:
                    if arrival.apply is not None:
                        await arrival.apply(s)
                    row = await self._inbox_row(s, arrival)
                except (IntegrityError, NodeError, ProtocolError) as e:
                    raise _TryApart from e
                known[key] = StoredReceipt(row.envelope_hash, row.receipt)
                accepted.append((len(outcomes), row))
                outcomes.append(None)
            try:
                await self._write(s, outcomes, accepted)
            except IntegrityError as e:
                raise _TryApart from e
        return [outcome for outcome in outcomes if outcome is not None]

    async def _accept_apart(self, arrivals: Sequence[Arrival]) -> list[BatchOutcome]:
        """Accept the batch with each envelope's changes in a savepoint of their own."""
        outcomes: list[BatchOutcome | None] = []
        accepted: list[tuple[int, _NewRow]] = []
        async with self._db.transaction() as s:
            known = await _stored_receipts(s, arrivals)
            for arrival in arrivals:
                key = (arrival.opened.header.sender, arrival.opened.header.message_id)
                if key in known:
                    outcomes.append(DuplicateEnvelope(known[key]))
                    continue
                outcome = await self._process(s, arrival)
                if isinstance(outcome, Refused):
                    outcomes.append(outcome)
                    continue
                known[key] = StoredReceipt(outcome.envelope_hash, outcome.receipt)
                accepted.append((len(outcomes), outcome))
                outcomes.append(None)
            await self._write(s, outcomes, accepted)
        return [outcome for outcome in outcomes if outcome is not None]

    async def _write(
        self,
        session: AsyncSession,
        outcomes: list[BatchOutcome | None],
        accepted: list[tuple[int, _NewRow]],
    ) -> None:
        """Flush the envelopes' changes, then insert the replay records and the inbox rows.

        The two tables are written with one multi-row ``INSERT`` each (no ORM object per row).
        """
        await session.flush()
        if not accepted:
            return
        replays = [
            {
                "sender": row.sender,
                "message_id": row.message_id,
                "expires_at": row.header_timestamp + self._window_s,
            }
            for _, row in accepted
        ]
        await session.execute(insert(ReplayGuardRow), replays)
        inserted = await session.execute(
            insert(InboxRow).returning(InboxRow.message_id, InboxRow.id),
            [row._asdict() for _, row in accepted],
        )
        ids: dict[bytes, int] = {}
        for message_id, row_id in inserted.all():
            ids[message_id] = row_id
        for position, row in accepted:
            outcomes[position] = Accepted(ids[row.message_id])

    async def _process(self, session: AsyncSession, arrival: Arrival) -> _NewRow | Refused:
        """Run the caller's changes and seal the payload; refuse the envelope alone on failure."""
        try:
            if arrival.apply is None:
                return await self._inbox_row(session, arrival)
            async with session.begin_nested():
                await arrival.apply(session)
                return await self._inbox_row(session, arrival)
        except IntegrityError:
            forget_cases(session)  # the savepoint rolled back: what it created is gone
            return Refused(StorageConflict("the envelope's changes collide with a stored row"))
        except (NodeError, ProtocolError) as e:
            forget_cases(session)
            return Refused(e)

    async def purge_replay(self, now: float) -> int:
        """Forget replay records whose timestamp has left the window (``expires_at < now``).

        Returns:
            How many were removed.
        """
        async with self._db.transaction() as s:
            result = await s.execute(
                delete(ReplayGuardRow)
                .where(ReplayGuardRow.expires_at < now)
                .execution_options(synchronize_session=False)
            )
        removed = int(getattr(result, "rowcount", 0) or 0)
        if self._replay_rows is not None:
            self._replay_rows = max(0, self._replay_rows - removed)
        if removed:
            logger.info("replay store: %d expired record(s) purged", removed)
        return removed

    async def replay_count(self) -> int:
        """Return how many replay records are stored."""
        async with self._db.reading() as s:
            return int(await s.scalar(select(func.count()).select_from(ReplayGuardRow)) or 0)

    async def count(self) -> int:
        """Return how many envelopes the inbox holds."""
        async with self._db.reading() as s:
            return int(await s.scalar(select(func.count()).select_from(InboxRow)) or 0)

    async def messages_for_case(self, case_id: bytes) -> list[StoredMessage]:
        """Return a case's received messages, decrypted, in arrival order.

        Raises:
            CaseNotFound: no such case.
            CaseShredded: the case was shredded.
            VaultError: a stored payload does not open (altered, or moved from another row).
        """
        async with self._db.reading() as s:
            case_key = await load_case_key(s, self._vault, case_id)
            rows = (
                await s.scalars(
                    select(InboxRow).where(InboxRow.case_id == case_id).order_by(InboxRow.id)
                )
            ).all()
            return [
                _stored(row, self._vault.open(case_key, case_id, _purpose(row), row.payload))
                for row in rows
            ]

    async def _answer_when_full(self, arrivals: Sequence[Arrival]) -> list[BatchOutcome]:
        """Answer a batch of duplicates even when full (nothing new to remember); else refuse."""
        outcomes: list[BatchOutcome] = []
        async with self._db.reading() as s:
            for arrival in arrivals:
                header = arrival.opened.header
                duplicate = await _duplicate_of(s, header.sender, header.message_id)
                if duplicate is None:
                    logger.warning("RX [%s] replay store full: batch refused", header.sender)
                    raise Overloaded("the replay store is full: try again later")
                outcomes.append(duplicate)
        return outcomes

    async def _inbox_row(self, session: AsyncSession, arrival: Arrival) -> _NewRow:
        opened = arrival.opened
        header = opened.header
        case_id = _case_id_of(opened.message)
        plaintext = codec.encode((opened.header_bytes, opened.body_bytes, opened.signature))
        purpose = _purpose_of(header.sender, header.message_id)
        if case_id is None:
            payload = self._vault.seal_with_data_key(purpose, plaintext)
        else:  # the case as it is now, in this transaction (apply may have shredded it)
            case_key = await load_case_key(session, self._vault, case_id)
            payload = self._vault.seal(case_key, case_id, purpose, plaintext)
        return _NewRow(
            sender=header.sender,
            message_id=header.message_id,
            envelope_hash=opened.envelope_hash,
            message_type=message_type_name(opened.message),
            case_id=case_id,
            header_timestamp=float(header.timestamp),
            received_at=arrival.received_at,
            payload=payload,
            receipt=arrival.receipt,
        )

    async def _reserve_replay_slots(self, count: int) -> bool:
        """Count ``count`` more replay records; ``False`` if they do not fit even after a purge.

        Check and increment happen with no ``await`` between them, so concurrent batches in this
        process cannot overshoot the capacity together. Unused slots are released afterwards.
        """
        if self._replay_rows is None:
            counted = await self.replay_count()
            if self._replay_rows is None:
                self._replay_rows = counted
        if self._replay_rows + count > self._capacity:
            await self.purge_replay(self._clock())
            if self._replay_rows + count > self._capacity:
                return False
        self._replay_rows += count
        return True

    def _release_replay_slots(self, count: int) -> None:
        if self._replay_rows is not None:
            self._replay_rows = max(0, self._replay_rows - count)


async def _stored_receipts(
    session: AsyncSession, arrivals: Sequence[Arrival]
) -> dict[tuple[str, bytes], StoredReceipt | None]:
    """Which of the batch's envelopes are already remembered: one query per sender.

    An inbox row gives the original receipt; a replay record alone (its inbox row was removed)
    gives ``None``.
    """
    by_sender: dict[str, set[bytes]] = {}
    for arrival in arrivals:
        header = arrival.opened.header
        by_sender.setdefault(header.sender, set()).add(header.message_id)
    known: dict[tuple[str, bytes], StoredReceipt | None] = {}
    for sender, ids in by_sender.items():
        stored = select(InboxRow.message_id, InboxRow.envelope_hash, InboxRow.receipt).where(
            InboxRow.sender == sender, InboxRow.message_id.in_(ids)
        )
        guarded = select(ReplayGuardRow.message_id, null(), null()).where(
            ReplayGuardRow.sender == sender, ReplayGuardRow.message_id.in_(ids)
        )
        found: Sequence[Any] = (await session.execute(union_all(stored, guarded))).all()
        for row in found:
            mid: bytes = row[0]
            envelope_hash: bytes | None = row[1]
            receipt: bytes | None = row[2]
            if envelope_hash is not None and receipt is not None:
                known[(sender, mid)] = StoredReceipt(envelope_hash, receipt)
            else:
                known.setdefault((sender, mid), None)
    return known


async def _duplicate_of(
    session: AsyncSession, sender: str, message_id: bytes
) -> DuplicateEnvelope | None:
    """The answer to an envelope already accepted, or ``None`` if it is not remembered."""
    original = (
        await session.execute(
            select(InboxRow.envelope_hash, InboxRow.receipt).where(
                InboxRow.sender == sender, InboxRow.message_id == message_id
            )
        )
    ).first()
    if original is not None:
        return DuplicateEnvelope(StoredReceipt(original.envelope_hash, original.receipt))
    guarded = await session.scalar(
        select(ReplayGuardRow.sender).where(
            ReplayGuardRow.sender == sender, ReplayGuardRow.message_id == message_id
        )
    )
    return None if guarded is None else DuplicateEnvelope(None)


def _case_ids(arrivals: Sequence[Arrival]) -> list[bytes]:
    """The cases a batch's case messages are about."""
    ids = (_case_id_of(arrival.opened.message) for arrival in arrivals)
    return [case_id for case_id in ids if case_id is not None]


def _case_id_of(message: Message) -> bytes | None:
    """The case a message belongs to, or ``None`` for a control message."""
    if type(message) not in CASE_MESSAGES:
        return None
    case_id = getattr(message, "case_id", None)
    if not isinstance(case_id, bytes):  # pragma: no cover - every case message has one
        raise TypeError("a case message without a case id")
    return case_id


def _purpose_of(sender: str, message_id: bytes) -> str:
    return f"inbox:{sender}:{message_id.hex()}"


def _purpose(row: InboxRow) -> str:
    return _purpose_of(row.sender, row.message_id)


def _stored(row: InboxRow, plaintext: bytes) -> StoredMessage:
    try:
        header_bytes, body_bytes, signature = codec.decode(
            plaintext, tuple[bytes, bytes, bytes], max_bytes=MAX_PAYLOAD_BYTES, what="inbox payload"
        )
    except ProtocolError as e:  # pragma: no cover - it opened, so we wrote it
        raise TypeError("an inbox payload that is not header, body and signature") from e
    return StoredMessage(
        inbox_id=row.id,
        sender=row.sender,
        message_id=row.message_id,
        message_type=row.message_type,
        case_id=row.case_id,
        header_timestamp=row.header_timestamp,
        received_at=row.received_at,
        envelope_hash=row.envelope_hash,
        header_bytes=header_bytes,
        body_bytes=body_bytes,
        signature=signature,
        receipt=row.receipt,
    )
