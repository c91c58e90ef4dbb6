"""The outbox's front door: one :class:`~node.outbox.sender.PeerSender` per peer, made lazily.

Owns the map from peer to sender loop and the three signals the rest of the node gives it:

* :meth:`OutboxDispatcher.notify` — a message was enqueued for a peer (call it after the
  enqueue's transaction committed, so the loop's fetch sees the row);
* :meth:`OutboxDispatcher.peer_seen` — an authenticated request or heartbeat came from a peer:
  wire it to the federation listener's ``on_peer_seen``. It resets that peer's backoff, so a
  backlog starts draining the moment the peer is back rather than when a long delay runs out;
* :meth:`OutboxDispatcher.start` / :meth:`OutboxDispatcher.stop` — the node's life cycle.

Invariants: at most one sender per peer, hence at most one batch in flight per peer; senders are
independent tasks, so one peer that is down or slow never delays another. Peers are city names
of authenticated members (the listener only calls ``peer_seen`` after mTLS and the pin check),
so the map is bounded by the agreement's member list.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from node.delivery import OutboxQueue, PeerTransport
from node.metrics import NodeMetrics
from node.outbox.backoff import Backoff
from node.outbox.sender import (
    Clock,
    KeyRefresh,
    OutboxSettings,
    PeerSender,
    SenderStatus,
    WaitForEvent,
    wait_for_event,
)


class OutboxDispatcher:
    """Owns one sender loop per peer and routes the node's signals to it."""

    def __init__(
        self,
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
        """Prepare the dispatcher (no task runs before :meth:`start`).

        Args:
            queue: the durable outbox.
            transport: how batches reach peers.
            settings: bounds shared by every sender loop.
            backoff: the retry delay policy (stateless; each loop counts its own failures).
            metrics: the node's metrics.
            clock: Unix seconds now.
            wait: the wait primitive (inject a manual clock's in tests).
            on_unknown_key: called with a peer that answered ``unknown_key``.
        """
        self._queue = queue
        self._transport = transport
        self._settings = settings
        self._backoff = backoff
        self._metrics = metrics
        self._clock = clock
        self._wait = wait
        self._on_unknown_key = on_unknown_key
        self._senders: dict[str, PeerSender] = {}
        self._running = False

    def start(self, peers: Iterable[str]) -> None:
        """Start a sender for each peer given, and for any made before by a signal.

        Args:
            peers: the peers to send to from the start — at least those with undelivered
                messages in the outbox (after a restart), or simply every member.
        """
        self._running = True
        for peer in peers:
            self._sender(peer)
        for sender in self._senders.values():
            sender.start()

    def notify(self, peer: str) -> None:
        """A message was enqueued for ``peer``: send it now unless the peer is backing off.

        Args:
            peer: the recipient city.
        """
        self._sender(peer).wake()

    def peer_seen(self, peer: str) -> None:
        """``peer`` is alive (any request or heartbeat from it): reset its backoff, retry now.

        Args:
            peer: the authenticated peer's city name.
        """
        self._sender(peer).peer_seen()

    async def stop(self) -> None:
        """Stop every sender (each lets its batch in flight finish within its grace time)."""
        self._running = False
        await asyncio.gather(*(sender.stop() for sender in self._senders.values()))

    def status(self) -> tuple[SenderStatus, ...]:
        """Return a snapshot of every sender loop, ordered by peer."""
        return tuple(self._senders[peer].status() for peer in sorted(self._senders))

    def _sender(self, peer: str) -> PeerSender:
        sender = self._senders.get(peer)
        if sender is None:
            sender = PeerSender(
                peer,
                self._queue,
                self._transport,
                settings=self._settings,
                backoff=self._backoff,
                metrics=self._metrics,
                clock=self._clock,
                wait=self._wait,
                on_unknown_key=self._on_unknown_key,
            )
            self._senders[peer] = sender
        if self._running:
            sender.start()
        return sender
