"""In-memory fakes of the outbox's collaborators, reusable by any node test.

* :class:`ManualClock` — a Unix-seconds clock that moves only when told, and the matching wait
  primitive (``clock.wait``) for ``PeerSender(clock=clock, wait=clock.wait)``.
* :class:`MemoryOutbox` — a :class:`node.delivery.OutboxQueue` in a dict, with the same visible
  states as the durable one; a call that breaks the queue's contract (a transient result
  recorded as final, a result for an envelope not sent) is noted in ``violations``, which the
  ``outbox`` fixture checks is empty after each test (an ``assert`` would be swallowed by the
  sender loop's top-level ``except``).
* :class:`ScriptedTransport` — a :class:`node.delivery.PeerTransport` whose answers are scripted
  per peer, in front of an idempotent :class:`FakeReceiver` per peer (a duplicate gets its
  original receipt back). It records every call and the most batches ever in flight per peer.
* :func:`until` / :func:`settle` — let the event loop run until a condition holds / for a while;
  :func:`all_done`, :func:`failures_reach`, :func:`fail_times`, :func:`sample` — predicates and
  steps the outbox tests share.

Import it as ``outbox_fakes`` (``tests/node/outbox/conftest.py`` registers it under that name, so
its basename cannot clash with another ``fakes.py``); from another test directory, load it the
same way or move the registration to a shared conftest.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from node.delivery import (
    ACCEPTED,
    DUPLICATE,
    DeliveryResult,
    DeliveryState,
    OutgoingEnvelope,
    PeerBacklog,
    PeerUnavailable,
)
from node.metrics import NodeMetrics
from node.outbox import PeerSender
from node.outbox.verdicts import TRANSIENT_CODES, TRANSPORT_STATUSES

START_TIME = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a fixed "now"
PEER = "goteborg"  # the peer most tests send to
HOUR = 3600.0
DAY = 24 * HOUR
_TOLERANCE = 1e-6  # seconds: float rounding of deadline - now, never a real wait


async def settle(rounds: int = 50) -> None:
    """Let every ready task run ``rounds`` times (to show that something did NOT happen)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], bool], *, timeout: float = 2.0) -> None:
    """Let the event loop run until ``predicate()`` holds; fail after ``timeout`` real seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.0005)


class ManualClock:
    """A clock that moves only on :meth:`advance`, with a wait primitive bound to it.

    Attributes:
        now: the current Unix time.
        waits: every timeout asked of :meth:`wait`, in order.
    """

    def __init__(self, start: float = START_TIME) -> None:
        self.now = start
        self.waits: list[float] = []
        self._timers: list[tuple[float, asyncio.Event]] = []

    def __call__(self) -> float:
        return self.now

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set or the clock has been advanced by ``timeout``.

        A timeout within float rounding of zero counts as elapsed (the clock moves by it), so
        that a loop computing ``deadline - now`` cannot spin on a rounding error.
        """
        if event.is_set() or timeout <= _TOLERANCE:
            await asyncio.sleep(0)
            if not event.is_set():
                self.now += max(0.0, timeout)
            return event.is_set()
        self.waits.append(timeout)
        timer = asyncio.Event()
        entry = (self.now + timeout, timer)
        self._timers.append(entry)
        woken = asyncio.ensure_future(event.wait())
        rung = asyncio.ensure_future(timer.wait())
        try:
            await asyncio.wait({woken, rung}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            rung.cancel()
            self._timers.remove(entry)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move time forward and release every wait whose timeout has run out."""
        self.advance_to(self.now + seconds)

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` exactly (never back) and release the waits due."""
        self.now = max(self.now, when)
        for deadline, timer in self._timers:
            if deadline <= self.now + _TOLERANCE:
                timer.set()


@dataclass
class _Row:
    envelope: OutgoingEnvelope
    state: DeliveryState = DeliveryState.QUEUED
    receipt: bytes | None = None
    refusal: str | None = None


@dataclass
class MemoryOutbox:
    """An in-memory :class:`node.delivery.OutboxQueue` with the durable queue's states."""

    rows: dict[int, _Row] = field(default_factory=dict)
    backlog_calls: int = 0  # one per housekeeping round of a sender
    violations: list[str] = field(default_factory=list)  # broken contracts, checked by fixtures
    _seqs: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def enqueue(
        self,
        peer: str,
        created_at: float,
        *,
        case_id: bytes | None = None,
        envelope: bytes = b"sealed",
    ) -> OutgoingEnvelope:
        """Queue one envelope (the message id is derived from its seq)."""
        seq = next(self._seqs)
        item = OutgoingEnvelope(
            seq=seq,
            peer=peer,
            case_id=case_id,
            message_id=seq.to_bytes(16, "big"),
            envelope=envelope,
            created_at=created_at,
            attempts=0,
        )
        self.rows[seq] = _Row(item)
        return item

    def state(self, seq: int) -> DeliveryState:
        return self.rows[seq].state

    def states(self, peer: str) -> list[DeliveryState]:
        """Every envelope's state for ``peer``, by seq."""
        return [row.state for seq, row in sorted(self.rows.items()) if row.envelope.peer == peer]

    def attempts(self, seq: int) -> int:
        return self.rows[seq].envelope.attempts

    async def next_batch(self, peer: str, limit: int, now: float) -> Sequence[OutgoingEnvelope]:
        pending = (DeliveryState.QUEUED, DeliveryState.SENT)
        rows = [r for _, r in sorted(self.rows.items()) if r.envelope.peer == peer]
        return [r.envelope for r in rows if r.state in pending][:limit]

    async def mark_sent(self, seqs: Sequence[int], now: float) -> None:
        for seq in seqs:
            row = self.rows[seq]
            if row.state not in (DeliveryState.QUEUED, DeliveryState.SENT):
                self.violations.append("mark_sent: only an undelivered envelope is sent")
            row.state = DeliveryState.SENT
            row.envelope = replace(row.envelope, attempts=row.envelope.attempts + 1)

    async def record_results(
        self, batch: Sequence[OutgoingEnvelope], results: Sequence[DeliveryResult], now: float
    ) -> None:
        if len(batch) != len(results):
            self.violations.append("record_results: one result per envelope")
        for envelope, result in zip(batch, results, strict=False):
            row = self.rows[envelope.seq]
            if result.status in TRANSIENT_CODES or (
                not result.delivered and result.status in (ACCEPTED, DUPLICATE)
            ):
                self.violations.append("record_results: a transient result is not final")
                continue
            if row.state is not DeliveryState.SENT:
                self.violations.append("record_results: only a sent envelope gets a result")
            if result.delivered:
                row.state, row.receipt = DeliveryState.RECEIPTED, result.receipt
            else:
                row.state, row.refusal = DeliveryState.FAILED, result.status

    async def claim_batch(
        self,
        peer: str,
        limit: int,
        now: float,
        settle: tuple[Sequence[OutgoingEnvelope], Sequence[DeliveryResult]] | None = None,
    ) -> Sequence[OutgoingEnvelope]:
        if settle is not None:
            await self.record_results(*settle, now)
        batch = await self.next_batch(peer, limit, now)
        await self.mark_sent([envelope.seq for envelope in batch], now)
        return batch

    async def expire_older_than(self, peer: str, cutoff: float) -> int:
        count = 0
        for row in self.rows.values():
            undelivered = row.state in (DeliveryState.QUEUED, DeliveryState.SENT)
            if row.envelope.peer == peer and undelivered and row.envelope.created_at < cutoff:
                row.state = DeliveryState.EXPIRED
                count += 1
        return count

    async def backlog(self, peer: str, overdue_before: float) -> PeerBacklog:
        self.backlog_calls += 1
        rows = [r for r in self.rows.values() if r.envelope.peer == peer]

        def count(state: DeliveryState) -> int:
            return sum(1 for r in rows if r.state is state)

        overdue = sum(
            1
            for r in rows
            if r.state in (DeliveryState.QUEUED, DeliveryState.SENT)
            and r.envelope.created_at < overdue_before
        )
        return PeerBacklog(
            queued=count(DeliveryState.QUEUED),
            sent=count(DeliveryState.SENT),
            failed=count(DeliveryState.FAILED),
            expired=count(DeliveryState.EXPIRED),
            overdue=overdue,
        )


@dataclass
class FakeReceiver:
    """One peer's idempotent inbox: processes each message id once, in arrival order."""

    processed: list[bytes] = field(default_factory=list)
    deliveries: int = 0

    def take(self, envelope: OutgoingEnvelope) -> DeliveryResult:
        """Process one envelope (or recognise a duplicate) and answer with its receipt."""
        self.deliveries += 1
        receipt = b"receipt:" + envelope.message_id
        if envelope.message_id in self.processed:
            return DeliveryResult(DUPLICATE, receipt)
        self.processed.append(envelope.message_id)
        return DeliveryResult(ACCEPTED, receipt)


Step = Callable[[FakeReceiver, Sequence[OutgoingEnvelope]], Awaitable[Sequence[DeliveryResult]]]
"""One scripted answer of a peer to one batch."""


async def accept(receiver: FakeReceiver, batch: Sequence[OutgoingEnvelope]) -> list[DeliveryResult]:
    """The peer takes every envelope."""
    return [receiver.take(envelope) for envelope in batch]


def unavailable(retry_after: float | None = None) -> Step:
    """The peer cannot be reached (or answers 503, with ``retry_after`` when given)."""

    async def step(
        receiver: FakeReceiver, batch: Sequence[OutgoingEnvelope]
    ) -> list[DeliveryResult]:
        raise PeerUnavailable("peer unreachable in the test", retry_after)

    return step


def crash(exc: Exception | None = None) -> Step:
    """The transport fails with an unexpected exception (a bug, not an outage)."""

    async def step(
        receiver: FakeReceiver, batch: Sequence[OutgoingEnvelope]
    ) -> list[DeliveryResult]:
        raise exc or RuntimeError("transport bug in the test")

    return step


def answer(*statuses: str | None) -> Step:
    """Answer the batch envelope by envelope: ``None`` accepts, a string refuses with that code.

    A refused envelope is not processed, except ``bad_receipt`` / ``rejected_receipt`` (the peer
    stored it but the receipt failed our check); ``"accepted:no-receipt"`` stores it and returns
    no receipt.
    """

    async def step(
        receiver: FakeReceiver, batch: Sequence[OutgoingEnvelope]
    ) -> list[DeliveryResult]:
        assert len(statuses) == len(batch), "script one status per envelope"
        results = []
        for envelope, status in zip(batch, statuses, strict=True):
            if status is None:
                results.append(receiver.take(envelope))
            elif status in TRANSPORT_STATUSES:
                receiver.take(envelope)
                results.append(DeliveryResult(status, None))
            elif status == "accepted:no-receipt":
                receiver.take(envelope)
                results.append(DeliveryResult(ACCEPTED, None))
            else:
                results.append(DeliveryResult(status, None))
        return results

    return step


def hold(gate: asyncio.Event, *, process_first: bool = False) -> Step:
    """Keep the batch in flight until ``gate`` is set, then accept it.

    With ``process_first`` the receiver stores the batch before hanging (an answer lost on the
    way back), so a later resend meets duplicates.
    """

    async def step(
        receiver: FakeReceiver, batch: Sequence[OutgoingEnvelope]
    ) -> list[DeliveryResult]:
        results = [receiver.take(envelope) for envelope in batch] if process_first else None
        await gate.wait()
        return results if results is not None else await accept(receiver, batch)

    return step


async def too_few_results(
    receiver: FakeReceiver, batch: Sequence[OutgoingEnvelope]
) -> list[DeliveryResult]:
    """A buggy transport: one result short."""
    return [receiver.take(envelope) for envelope in batch][:-1]


class ScriptedTransport:
    """A :class:`node.delivery.PeerTransport` answering from a per-peer script.

    Each peer has a queue of :data:`Step` answers, used one per batch; when it is empty the peer
    is "up" (accepts everything) or "down" (:meth:`set_down`: unavailable on every batch).

    Attributes:
        receivers: the idempotent inbox of each peer.
        calls: every batch delivered, as ``(peer, seqs)``, in order.
        max_in_flight: the most batches ever in flight at once, per peer.
    """

    def __init__(self) -> None:
        self.receivers: defaultdict[str, FakeReceiver] = defaultdict(FakeReceiver)
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.max_in_flight: defaultdict[str, int] = defaultdict(int)
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._scripts: defaultdict[str, deque[Step]] = defaultdict(deque)
        self._down: dict[str, float | None] = {}

    def then(self, peer: str, *steps: Step) -> None:
        """Append answers to ``peer``'s script."""
        self._scripts[peer].extend(steps)

    def set_down(self, peer: str, retry_after: float | None = None) -> None:
        """Make ``peer`` unreachable once its script is used up."""
        self._down[peer] = retry_after

    def set_up(self, peer: str) -> None:
        """Make ``peer`` accept everything once its script is used up."""
        self._down.pop(peer, None)

    def calls_to(self, peer: str) -> list[tuple[int, ...]]:
        """The seqs of every batch sent to ``peer``."""
        return [seqs for p, seqs in self.calls if p == peer]

    async def deliver(
        self, peer: str, envelopes: Sequence[OutgoingEnvelope]
    ) -> Sequence[DeliveryResult]:
        self.calls.append((peer, tuple(envelope.seq for envelope in envelopes)))
        self._in_flight[peer] += 1
        self.max_in_flight[peer] = max(self.max_in_flight[peer], self._in_flight[peer])
        try:
            await settle(3)  # stay in flight a while, so an overlapping batch would be seen
            step = self._next_step(peer)
            return await step(self.receivers[peer], envelopes)
        finally:
            self._in_flight[peer] -= 1

    def _next_step(self, peer: str) -> Step:
        if self._scripts[peer]:
            return self._scripts[peer].popleft()
        if peer in self._down:
            return unavailable(self._down[peer])
        return accept


# -- small predicates and steps shared by the outbox tests -------------------------------------


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float:
    """A metric's current value (0 when never set)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def all_done(outbox: MemoryOutbox, peer: str = PEER) -> Callable[[], bool]:
    """True once no envelope for ``peer`` is queued or sent."""
    pending = (DeliveryState.QUEUED, DeliveryState.SENT)
    return lambda: all(state not in pending for state in outbox.states(peer))


def failures_reach(sender: PeerSender, count: int) -> Callable[[], bool]:
    """True once ``sender`` has failed ``count`` times in a row and has no batch out."""
    return lambda: sender.status().failures == count and not sender.status().in_flight


async def fail_times(sender: PeerSender, clock: ManualClock, count: int) -> None:
    """Let the sender fail ``count`` times in a row, running the clock to each retry."""
    for n in range(1, count + 1):
        await until(failures_reach(sender, n))
        if n < count:
            retry_at = sender.status().retry_at
            assert retry_at is not None
            clock.advance_to(retry_at)
