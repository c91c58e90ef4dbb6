"""Delivery vocabulary shared by the outbox, the federation transport and the inbox.

The node delivers every sealed envelope at least once (a durable outbox that retries) to a
receiver that processes it at most once (it persists the envelope and its replay record in one
transaction and answers a duplicate with the original receipt): together, exactly once.

This module owns the typed values and the narrow interfaces (``typing.Protocol``) between those
parts, so each can be built and tested with fakes of the others:

* :class:`OutboxQueue` — the durable queue (``node.storage``) seen by a sender loop;
* :class:`PeerTransport` — how a sender loop reaches a peer (``node.federation.client``);
* :class:`InboxHandler` — what the federation listener calls with a batch it received
  (``node.federation.inbox``).

Wire format of ``POST /federation/v1/inbox`` (MessagePack, see docs/protocol.md):
request ``[envelope: bin, ...]`` (at most ``batch_size``), response ``[[status: str,
receipt: bin | nil], ...]`` in the same order, where status is ``"accepted"`` (a new envelope,
persisted), ``"duplicate"`` (seen before: the original receipt is returned) or an error code.
Authentication failures are reported to the peer as the single opaque code ``"rejected"``; the
precise reason goes only to the local log and metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Final, Protocol

from node.errors import NodeError

ACCEPTED: Final = "accepted"
DUPLICATE: Final = "duplicate"
REJECTED: Final = "rejected"
# The sender's own status for a result whose receipt is missing or does not verify: NOT
# delivered; the envelope stays queued and is sent again (the receiver answers a duplicate).
BAD_RECEIPT: Final = "bad_receipt"
# Set by the transport (never sent by a peer) when a peer's receipt fails our verification.
REJECTED_RECEIPT: Final = "rejected_receipt"


class PeerUnavailable(NodeError):
    """A peer could not be reached, or asked us to come back later: retry with backoff.

    Attributes:
        retry_after: seconds the peer asked us to wait (503 Retry-After), or ``None``.
    """

    code: ClassVar[str] = "peer_unavailable"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(NodeError):
    """This node cannot take more now (replay store or queue full): answer 503, keep nothing."""

    code: ClassVar[str] = "overloaded"


class DeliveryState(StrEnum):
    """The visible state of every message in the outbox."""

    QUEUED = "queued"  # waiting to be sent, or to be sent again
    SENT = "sent"  # handed to the peer, no receipt yet
    RECEIPTED = "receipted"  # the peer's signed receipt is stored: done
    FAILED = "failed"  # the peer refused it for good (a code that no retry changes)
    EXPIRED = "expired"  # older than the retry limit: kept, alerted, never silently dropped


@dataclass(frozen=True, slots=True)
class OutgoingEnvelope:
    """One sealed envelope waiting in the outbox.

    Attributes:
        seq: the outbox position; FIFO order of the whole queue, so also of each case.
        peer: the recipient city.
        case_id: the case the message belongs to, or ``None`` for a control message.
        message_id: the 16-byte id in the envelope's header.
        envelope: the sealed bytes, exactly as they are sent.
        created_at: when it was queued (Unix seconds).
        attempts: how many times it has been sent so far.
    """

    seq: int
    peer: str
    case_id: bytes | None
    message_id: bytes
    envelope: bytes
    created_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """The peer's answer for one envelope of a batch.

    Attributes:
        status: ``accepted``, ``duplicate`` or an error code; :data:`BAD_RECEIPT` (set by the
            transport, never by a peer's word alone) is retried, not a permanent refusal.
        receipt: the signed receipt bytes (verified by the transport), or ``None`` on a refusal.
    """

    status: str
    receipt: bytes | None

    @property
    def delivered(self) -> bool:
        """True when the peer holds the envelope (new or duplicate) and receipted it."""
        return self.status in (ACCEPTED, DUPLICATE) and self.receipt is not None


@dataclass(frozen=True, slots=True)
class PeerBacklog:
    """What the outbox holds for one peer, counted by the queue (for metrics and alerts).

    Attributes:
        queued: envelopes waiting to be sent (or sent again).
        sent: envelopes handed to the peer, no receipt yet.
        failed: envelopes the peer refused for good.
        expired: envelopes that outlived the retry limit.
        overdue: undelivered (queued or sent) envelopes created before the cutoff asked for.
    """

    queued: int
    sent: int
    failed: int
    expired: int
    overdue: int


class OutboxQueue(Protocol):
    """The durable outbox as a sender loop sees it: one peer at a time, oldest first."""

    async def next_batch(self, peer: str, limit: int, now: float) -> Sequence[OutgoingEnvelope]:
        """Return up to ``limit`` queued or sent-unreceipted envelopes for ``peer``, by ``seq``."""
        ...

    async def mark_sent(self, seqs: Sequence[int], now: float) -> None:
        """Record that these envelopes were handed to the peer (attempts + 1)."""
        ...

    async def record_results(
        self, batch: Sequence[OutgoingEnvelope], results: Sequence[DeliveryResult], now: float
    ) -> None:
        """Store receipts (→ receipted) and permanent refusals (→ failed), in one transaction.

        The sender passes final results only (see ``node.outbox.verdicts``): each result is
        either delivered (store its receipt) or a permanent refusal (store its code); an envelope
        refused for a transient reason is left out and stays ``sent``, to be sent again.
        """
        ...

    async def claim_batch(
        self,
        peer: str,
        limit: int,
        now: float,
        settle: tuple[Sequence[OutgoingEnvelope], Sequence[DeliveryResult]] | None = None,
    ) -> Sequence[OutgoingEnvelope]:
        """``record_results(*settle)`` if given, then ``next_batch`` and ``mark_sent`` of it.

        All in one transaction: a sender loop's one write to the queue per batch.
        """
        ...

    async def expire_older_than(self, peer: str, cutoff: float) -> int:
        """Mark still-undelivered envelopes queued before ``cutoff`` expired; return how many."""
        ...

    async def backlog(self, peer: str, overdue_before: float) -> PeerBacklog:
        """Count ``peer``'s envelopes by state, and the undelivered ones created before a cutoff."""
        ...


class PeerTransport(Protocol):
    """How a sender loop reaches one peer over mutual TLS."""

    async def deliver(
        self, peer: str, envelopes: Sequence[OutgoingEnvelope]
    ) -> Sequence[DeliveryResult]:
        """POST the batch to the peer's inbox; return one verified result per envelope, in order.

        Raises:
            PeerUnavailable: the peer could not be reached or answered 5xx / 503 (retry later).
        """
        ...


class InboxHandler(Protocol):
    """What the federation listener calls with a batch received from an authenticated peer."""

    async def handle_batch(self, peer: str, envelopes: Sequence[bytes]) -> Sequence[DeliveryResult]:
        """Open, persist and receipt each envelope independently; one result per envelope.

        Raises:
            Overloaded: the node cannot take the batch now (replay store full, queue full);
                the listener answers 503 with Retry-After and nothing of the batch is kept.
        """
        ...
