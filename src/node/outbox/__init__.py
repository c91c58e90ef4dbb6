"""The outbox's sending side: how a sealed envelope travels from enqueue to a stored receipt.

Delivery is at least once from here, at most once at the receiver (which persists an envelope
and its replay record together and answers a duplicate with the original receipt): exactly once
in all. The durable queue lives in ``node.storage`` (``delivery.OutboxQueue``); the HTTP client in
``node.federation`` (``delivery.PeerTransport``). This package is the loop between them.

The flow of one message::

    case API ──enqueue (storage, one transaction: state QUEUED)──► outbox table
        │
        └─► OutboxDispatcher.notify(peer) ─► PeerSender(peer).wake()      (doorbell, no data)

    PeerSender loop, one asyncio task per peer, one batch in flight at most:
        next_batch(peer, batch_size)        oldest first by seq: QUEUED and SENT-unreceipted
        mark_sent(seqs)                     QUEUED → SENT, attempts + 1   (before any byte leaves)
        transport.deliver(peer, batch)      POST /federation/v1/inbox, receipts verified
        record_results(final results)       accepted/duplicate + receipt → RECEIPTED (kept as
                                            evidence); permanent refusal → FAILED; transient
                                            refusal → left SENT, sent again after a backoff
        full batch? go again at once : doze until woken

    federation listener ─► OutboxDispatcher.peer_seen(peer) ─► backoff reset, retry at once
    every housekeeping interval: expire_older_than(max_retry_age_s) → EXPIRED (kept, alerted);
    backlog counts → metrics; messages older than alert_age_s → WARNING ``TX [peer] N messages
    older than ...`` and the ``citynode_outbox_overdue`` gauge.

Why it is safe to crash anywhere: an envelope is ``SENT`` before it leaves, and ``SENT``
envelopes are fetched again; a crash (or a cancelled batch at shutdown) after the peer stored it
only means the same bytes go again and come back as ``duplicate`` with the original receipt.
Order holds because each peer has exactly one loop, which fetches by ``seq`` and never has two
batches out, so the receiver sees each case's messages in the order they were queued.

Backoff (``backoff.Backoff``): exponential from ``retry_base_s``, full jitter, capped at
``retry_cap_s``; a ``Retry-After`` from the peer is honoured (within the cap). Unlike a backoff
that only resets on a successful send, the failure count here resets the moment the peer shows
any sign of life (``peer_seen``), so a backlog built during an outage drains as soon as it ends.
A message enqueued during an outage does not shorten the backoff: it waits with the rest.

Modules: ``backoff`` (the delay policy), ``verdicts`` (the one table of transient and permanent
refusal codes), ``sender`` (one peer's loop), ``dispatcher`` (one loop per peer, the signals).
"""

from node.outbox.backoff import Backoff
from node.outbox.dispatcher import OutboxDispatcher
from node.outbox.sender import (
    DeliveryMismatch,
    OutboxSettings,
    PeerSender,
    SenderStatus,
    wait_for_event,
)
from node.outbox.verdicts import TRANSIENT_CODES, Verdict, classify

__all__ = [
    "TRANSIENT_CODES",
    "Backoff",
    "DeliveryMismatch",
    "OutboxDispatcher",
    "OutboxSettings",
    "PeerSender",
    "SenderStatus",
    "Verdict",
    "classify",
    "wait_for_event",
]
