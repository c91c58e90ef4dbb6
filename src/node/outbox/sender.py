"""One peer's sender loop: one batch in flight at most, FIFO, a backoff reset by the peer's return.

Owns the life of one asyncio task per peer (:class:`PeerSender`). The loop, in order:

1. housekeeping when due (every ``housekeeping_interval_s``, whatever else happens): expire
   messages older than ``max_retry_age_s``, count the backlog into the metrics, raise the
   operator alert for messages older than ``alert_age_s``;
2. when an attempt is due: claim the oldest batch (by ``seq``: fetched and marked sent) and
   ``deliver`` it. When every result is final, the next attempt is due at once and its claim
   stores these results in the same transaction (``claim_batch``: one write per batch; on stop
   they are stored alone); a batch with a result to retry stores its final results and backs
   off;
3. otherwise doze until the next attempt, the next housekeeping, or a doorbell (``wake``,
   ``peer_seen``, ``stop``), whichever comes first; an idle loop that is not backing off also
   looks for messages queued by another process every ``poll_interval_s`` (a read).

Invariants:

* At most one batch is in flight per peer: the loop is the only caller of ``deliver`` for its
  peer and awaits each batch before fetching the next. Envelopes are fetched by ``seq`` and a
  transient refusal leaves an envelope ``sent`` (so it heads the next fetch): FIFO per case and
  per peer holds across batches, restarts and retries.
* An attempt is due when its backoff has run out; when new data arrives while not backing off
  (``wake``); or when the peer is seen again (``peer_seen``: any request or heartbeat from it),
  which resets the failure count and retries at once. A message enqueued during an outage does
  *not* cut the backoff short: a busy node must not hammer a peer that is down.
* A peer's ``Retry-After`` is honoured: no attempt before it (capped by ``Backoff.cap``, so a
  peer cannot stall us beyond our own longest delay), not even on ``peer_seen``.
* The only broad ``except`` is at the top of the loop; it logs with the traceback and backs off.
  The task never dies of an error; only :meth:`PeerSender.stop` ends it.
* Cancelling a batch in flight is safe: its envelopes are already ``sent``, are fetched again by
  the next run, and the receiver answers a duplicate with its original receipt.
* Logs are tagged ``TX [peer]`` and carry counts, durations and bounded codes only: never a
  message id, a case id, a key or any content.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from node.config import NodeLimits
from node.delivery import (
    ACCEPTED,
    DUPLICATE,
    DeliveryResult,
    OutboxQueue,
    OutgoingEnvelope,
    PeerBacklog,
    PeerTransport,
    PeerUnavailable,
)
from node.errors import NodeError
from node.metrics import NodeMetrics
from node.outbox.backoff import Backoff
from node.outbox.verdicts import (
    KEY_REFRESH_CODES,
    TRANSPORT_STATUSES,
    Verdict,
    classify,
    refusal_label,
)

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Unix seconds now (``time.time`` in production, a manual clock in tests)."""
WaitForEvent = Callable[[asyncio.Event, float], Awaitable[bool]]
"""Wait until the event is set or ``timeout`` seconds pass; return whether it is set."""
KeyRefresh = Callable[[str], Awaitable[None]]
"""Fetch a peer's key state again (called with the peer's name)."""

_BACKLOG_STATES: Final = ("queued", "sent", "failed", "expired")


def _is_receipt_problem(result: DeliveryResult) -> bool:
    """A result without a verified receipt that is no refusal by the peer."""
    return result.status in (ACCEPTED, DUPLICATE) or result.status in TRANSPORT_STATUSES


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds of real time (the default wait primitive).

    Args:
        event: the doorbell to wait for.
        timeout: seconds; ``<= 0`` only looks at the event.

    Returns:
        True when the event is set.
    """
    if event.is_set() or timeout <= 0:
        await asyncio.sleep(0)  # always yield: a caller that loops on this cannot starve others
        return event.is_set()
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class DeliveryMismatch(NodeError):
    """The transport returned a number of results other than the number of envelopes sent."""

    code: ClassVar[str] = "delivery_mismatch"


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """The timing and size bounds of every sender loop.

    Attributes:
        batch_size: the most envelopes in one inbox request.
        alert_age_s: an undelivered message older than this raises the operator alert.
        max_retry_age_s: an undelivered message older than this is marked expired.
        housekeeping_interval_s: how often expiry, backlog metrics and the alert run.
        alert_repeat_s: while messages stay overdue, the alert is logged again this often.
        stop_grace_s: how long ``stop`` lets a batch in flight finish before cancelling it.
        poll_interval_s: how often an idle loop that is not backing off looks for messages
            queued by another process (the node's own enqueues ring the doorbell).
    """

    batch_size: int
    alert_age_s: float
    max_retry_age_s: float
    housekeeping_interval_s: float = 30.0
    alert_repeat_s: float = 900.0
    stop_grace_s: float = 5.0
    poll_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        for name in (
            "alert_age_s",
            "max_retry_age_s",
            "housekeeping_interval_s",
            "alert_repeat_s",
            "poll_interval_s",
        ):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of seconds")
        if not self.stop_grace_s >= 0:
            raise ValueError("stop_grace_s must not be negative")

    @classmethod
    def from_limits(cls, limits: NodeLimits) -> OutboxSettings:
        """Take the bounds from the node's configured limits (other fields keep defaults).

        Args:
            limits: the node's limits.

        Returns:
            The settings.
        """
        return cls(
            limits.batch_size,
            limits.alert_age_s,
            limits.max_retry_age_s,
            poll_interval_s=limits.outbox_poll_s,
        )


@dataclass(frozen=True, slots=True)
class SenderStatus:
    """A snapshot of one sender loop, for ``outbox status`` and tests.

    Attributes:
        peer: the recipient city.
        running: whether the task is alive.
        in_flight: whether a batch is awaiting the peer's answer.
        failures: consecutive failures (0 when the last exchange succeeded or the peer was seen).
        retry_at: when the next attempt is due (Unix seconds), or ``None`` when idle.
    """

    peer: str
    running: bool
    in_flight: bool
    failures: int
    retry_at: float | None


class PeerSender:
    """The sender loop for one peer: see the module docstring for its rules."""

    def __init__(
        self,
        peer: str,
        queue: OutboxQueue,
        transport: PeerTransport,
        *,
        settings: OutboxSettings,
        backoff: Backoff,
        metrics: NodeMetrics,
        clock: Clock = time.time,
        wait: WaitForEvent = wait_for_event,
        on_unknown_key: KeyRefresh | None = None,
    ) -> None:
        """Prepare the loop (it runs from :meth:`start`).

        Args:
            peer: the recipient city.
            queue: the durable outbox.
            transport: how batches reach the peer.
            settings: batch size, ages and intervals.
            backoff: the retry delay policy.
            metrics: the node's metrics.
            clock: Unix seconds now.
            wait: the wait primitive (inject a manual clock's in tests).
            on_unknown_key: called with the peer when it answers ``unknown_key``.
        """
        self.peer = peer
        self._queue = queue
        self._transport = transport
        self._settings = settings
        self._backoff = backoff
        self._metrics = metrics
        self._clock = clock
        self._wait = wait
        self._on_unknown_key = on_unknown_key
        self._doorbell = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._new_data = False
        self._in_flight = False
        self._failures = 0
        self._retry_at = 0.0  # the first attempt is due at once: there may be a backlog
        self._hold_until = 0.0  # no attempt before this (the peer's Retry-After)
        self._next_housekeeping = 0.0
        self._next_poll = 0.0
        self._peer_up: bool | None = None
        # A delivered batch and its final results, stored by the next claim.
        self._unsettled: tuple[Sequence[OutgoingEnvelope], Sequence[DeliveryResult]] | None = None
        self._last_alert_at: float | None = None

    # -- control -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop's task (no-op when it runs already)."""
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=f"outbox-tx-{self.peer}")

    def wake(self) -> None:
        """Signal that a message was enqueued for this peer: send now unless backing off."""
        self._new_data = True
        self._doorbell.set()

    def peer_seen(self) -> None:
        """Signal that the peer is alive (a request or heartbeat from it): reset the backoff.

        A pending retry happens at once (after any ``Retry-After`` the peer asked for).
        """
        if self._failures == 0:
            return
        logger.info("TX [%s] peer seen again: backoff reset, retrying now", self.peer)
        self._failures = 0
        self._retry_at = min(self._retry_at, max(self._clock(), self._hold_until))
        self._doorbell.set()

    async def stop(self) -> None:
        """Stop the loop: let a batch in flight finish within ``stop_grace_s``, else cancel it."""
        task = self._task
        if task is None:
            return
        self._stopping = True
        self._doorbell.set()
        done, _ = await asyncio.wait({task}, timeout=self._settings.stop_grace_s)
        if not done:
            logger.info("TX [%s] stopping: batch in flight cancelled, it stays sent", self.peer)
            task.cancel()
            await asyncio.wait({task})
        self._task = None

    def status(self) -> SenderStatus:
        """Return a snapshot of the loop's state."""
        return SenderStatus(
            peer=self.peer,
            running=self._task is not None and not self._task.done(),
            in_flight=self._in_flight,
            failures=self._failures,
            retry_at=self._retry_at if math.isfinite(self._retry_at) else None,
        )

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        logger.debug("TX [%s] sender started", self.peer)
        while not self._stopping:
            try:
                now = self._clock()
                if now >= self._next_housekeeping:
                    await self._housekeep(now)
                elif self._poll_due(now):
                    await self._poll(now)
                if self._attempt_due(self._clock()):
                    self._retry_at = await self._attempt()
            except Exception:  # the top of a background loop: log, back off, carry on
                logger.exception("TX [%s] sender loop error; backing off", self.peer)
                self._retry_at = self._after_failure()
            await self._doze()
        if self._unsettled is not None:  # stopping: store the last results, claim nothing
            try:
                await self._queue.record_results(*self._unsettled, self._clock())
            except Exception:  # they stay sent: sent again next time, answered as duplicates
                logger.exception("TX [%s] results of the last batch not stored", self.peer)
            self._unsettled = None
        logger.debug("TX [%s] sender stopped", self.peer)

    def _attempt_due(self, now: float) -> bool:
        if now < self._hold_until:
            return False
        return now >= self._retry_at or (self._new_data and self._failures == 0)

    async def _doze(self) -> None:
        now = self._clock()
        if self._stopping or self._attempt_due(now):
            return
        # No await between the check above and the clear: a doorbell rung later is not lost.
        self._doorbell.clear()
        until = min(max(self._retry_at, self._hold_until), self._next_housekeeping)
        if self._failures == 0:  # idle, not backing off: look for others' messages too
            until = min(until, self._next_poll)
        await self._wait(self._doorbell, max(0.0, until - now))

    def _poll_due(self, now: float) -> bool:
        return self._failures == 0 and not self._new_data and now >= self._next_poll

    async def _poll(self, now: float) -> None:
        """Look for envelopes queued by another process (a read; nothing is claimed)."""
        self._next_poll = now + self._settings.poll_interval_s
        if await self._queue.next_batch(self.peer, 1, now):
            self._new_data = True

    async def _attempt(self) -> float:
        """Send one batch; return when the next attempt is due (``inf``: when woken)."""
        self._new_data = False
        self._next_poll = self._clock() + self._settings.poll_interval_s
        # The previous batch's results are stored in the transaction that claims this one.
        batch = await self._queue.claim_batch(
            self.peer, self._settings.batch_size, self._clock(), settle=self._unsettled
        )
        self._unsettled = None
        if not batch:
            self._failures = 0
            return math.inf
        if any(envelope.attempts > 0 for envelope in batch):
            self._metrics.retries.labels(peer=self.peer).inc()
        self._in_flight = True
        try:
            results = await self._transport.deliver(self.peer, batch)
        except PeerUnavailable as exc:
            return self._unavailable(exc)
        finally:
            self._in_flight = False
        if len(results) != len(batch):
            self._set_peer_up(False)
            raise DeliveryMismatch("the transport did not return exactly one result per envelope")
        self._set_peer_up(True)
        verdicts = [classify(result) for result in results]
        if Verdict.RETRY in verdicts:
            final = [i for i, verdict in enumerate(verdicts) if verdict is not Verdict.RETRY]
            if final:
                await self._queue.record_results(
                    [batch[i] for i in final], [results[i] for i in final], self._clock()
                )
            self._count(batch, results, verdicts)
            if any(result.status in KEY_REFRESH_CODES for result in results):
                await self._refresh_keys()
            return self._after_failure()
        self._failures = 0
        self._count(batch, results, verdicts)
        # Every result is final: they are stored with the next claim, made at once (or on stop).
        self._unsettled = (batch, results)
        return self._clock()

    def _count(
        self,
        batch: Sequence[OutgoingEnvelope],
        results: Sequence[DeliveryResult],
        verdicts: Sequence[Verdict],
    ) -> None:
        """Count the stored results, and log refusals by code (never by message)."""
        now = self._clock()
        refused: dict[str, int] = {}
        for envelope, result, verdict in zip(batch, results, verdicts, strict=True):
            if verdict is Verdict.DELIVERED:
                latency = max(0.0, now - envelope.created_at)
                self._metrics.delivery_latency.labels(peer=self.peer).observe(latency)
                continue
            if _is_receipt_problem(result):
                continue  # the transport saw why, logged and counted it
            label = refusal_label(result.status)
            self._metrics.refusals.labels(peer=self.peer, code=label).inc()
            if verdict is Verdict.REFUSED:
                refused[label] = refused.get(label, 0) + 1
        if refused:
            codes = ", ".join(f"{code}={count}" for code, count in sorted(refused.items()))
            logger.warning(
                "TX [%s] %d messages refused for good (%s)", self.peer, sum(refused.values()), codes
            )
        logger.debug(
            "TX [%s] batch of %d: %d delivered, %d refused, %d to retry",
            self.peer,
            len(batch),
            verdicts.count(Verdict.DELIVERED),
            verdicts.count(Verdict.REFUSED),
            verdicts.count(Verdict.RETRY),
        )

    async def _refresh_keys(self) -> None:
        if self._on_unknown_key is None:
            logger.warning("TX [%s] peer reports unknown_key and no key refresh is set", self.peer)
            return
        logger.info("TX [%s] peer reports unknown_key: refreshing its keys", self.peer)
        await self._on_unknown_key(self.peer)

    def _unavailable(self, exc: PeerUnavailable) -> float:
        """Note a failed exchange; return when to try again (the peer's Retry-After, if any)."""
        if self._peer_up is not False:
            logger.warning(
                "TX [%s] peer unavailable (%s): retrying with backoff", self.peer, exc.message
            )
        self._set_peer_up(False)
        if exc.retry_after is None:
            return self._after_failure()
        self._failures += 1
        wait_s = min(max(0.0, exc.retry_after), self._backoff.cap)
        self._hold_until = self._clock() + wait_s
        logger.debug("TX [%s] peer asked to wait %.1f s", self.peer, wait_s)
        return self._hold_until

    def _after_failure(self) -> float:
        self._failures += 1
        delay = self._backoff.delay(self._failures)
        logger.debug("TX [%s] failure %d: next attempt in %.2f s", self.peer, self._failures, delay)
        return self._clock() + delay

    def _set_peer_up(self, up: bool) -> None:
        if up and self._peer_up is False:
            logger.info("TX [%s] peer reachable again", self.peer)
        self._peer_up = up
        self._metrics.peer_up.labels(peer=self.peer).set(1 if up else 0)

    # -- housekeeping --------------------------------------------------------------------------

    async def _housekeep(self, now: float) -> None:
        """Expire what outlived the retry limit, refresh backlog metrics, raise the alert."""
        self._next_housekeeping = now + self._settings.housekeeping_interval_s
        expired = await self._queue.expire_older_than(
            self.peer, now - self._settings.max_retry_age_s
        )
        if expired:
            logger.warning(
                "TX [%s] %d messages expired undelivered after %g s: kept, no longer retried",
                self.peer,
                expired,
                self._settings.max_retry_age_s,
            )
        backlog = await self._queue.backlog(self.peer, now - self._settings.alert_age_s)
        if backlog.queued or backlog.sent:
            # Queued by another writer of the database (an operator command, a restart): the
            # housekeeping pass is also the loop's periodic look at the queue.
            self._new_data = True
        self._publish_backlog(backlog)
        self._alert_overdue(backlog.overdue, now)

    def _publish_backlog(self, backlog: PeerBacklog) -> None:
        for state in _BACKLOG_STATES:
            count = getattr(backlog, state)
            self._metrics.queue_depth.labels(peer=self.peer, state=state).set(count)
        self._metrics.overdue.labels(peer=self.peer).set(backlog.overdue)

    def _alert_overdue(self, overdue: int, now: float) -> None:
        if overdue == 0:
            if self._last_alert_at is not None:
                logger.info("TX [%s] no overdue messages remain", self.peer)
            self._last_alert_at = None
            return
        if self._last_alert_at is not None and (
            now - self._last_alert_at < self._settings.alert_repeat_s
        ):
            return
        self._last_alert_at = now
        logger.warning(
            "TX [%s] %d messages older than %g s are still undelivered",
            self.peer,
            overdue,
            self._settings.alert_age_s,
        )
