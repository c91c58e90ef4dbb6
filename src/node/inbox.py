"""The receiving side of delivery: open, persist and receipt each envelope of a batch.

Owns :class:`InboxProcessor`, the :class:`~node.delivery.InboxHandler` the federation listener
calls. Invariants:

* Each envelope is handled on its own: a bad one gets its code, the others of the batch are not
  affected, and nothing of a refused envelope is stored.
* Exactly once: an envelope is opened (``protocol.sealing.open_envelope``: every check in the
  protocol's order), then its replay record, its case change (``CaseLedger``) and its inbox row
  are stored in one transaction, and only then is the signed receipt returned. A duplicate — the
  same envelope again, after a lost response or a sender crash — gets the original receipt back;
  the same message id with other bytes is ``replayed``. Only when the original receipt no longer
  verifies under our own keys as the peers trust them (its key was revoked or replaced after a
  compromise, ``node.key_replacement``) is a fresh receipt signed by the key in use now: the
  original would be refused by the sender for ever.
* One opaque error to the peer for authentication failures (``rejected``); the precise code is
  logged (tagged ``RX [peer]``, without personal data) and counted in the metrics.
* One ``INFO`` line per batch (its counts by outcome); each refusal is a ``WARNING`` of its own,
  each accepted or duplicate envelope a ``DEBUG`` line.
* The peer that authenticated the TLS connection must be the envelope's sender.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession

from node.case_ledger import CaseLedger
from node.delivery import ACCEPTED, DUPLICATE, REJECTED, DeliveryResult
from node.metrics import NodeMetrics
from node.storage.inbox_store import (
    Arrival,
    BatchOutcome,
    DuplicateEnvelope,
    InboxStore,
    Refused,
)
from node.trust import TrustState
from protocol.errors import ErrorCode, ProtocolError
from protocol.keys import VerifyKey, identity_key_id
from protocol.limits import Limits
from protocol.messages import Message
from protocol.sealing import (
    DecryptionKey,
    OpenedEnvelope,
    open_envelope,
    receipt_for,
    sign_receipt,
    verify_receipt,
)

logger = logging.getLogger(__name__)

# Reported to the peer as the single opaque code ``rejected``: telling a forger which of the
# cryptographic checks failed helps nobody but the forger.
OPAQUE_CODES: Final = frozenset({ErrorCode.DECRYPT_FAILED, ErrorCode.BAD_SIGNATURE})


class _NotYetSeen:
    """Replay answer for ``open_envelope``: duplicates are decided atomically by the store."""

    def seen(self, sender: str, message_id: bytes) -> bool:
        return False


class InboxProcessor:
    """Opens, stores and receipts the envelopes a peer delivers.

    Args:
        city: this node's city.
        identity: our identity private key (signs the receipts), or the node's choice of key by
            the receipt's time (after an identity succession, each key signs its time).
        decryption_keys: our encryption keys still held, by key id (read at each call, so a
            rotation applies at once).
        trust: the current trust snapshot (read at each call).
        inbox: the inbox and replay store.
        ledger: applies case messages to cases in the same transaction.
        metrics: the node's metrics.
        clock: Unix seconds now.
        limits: the protocol limits.
        on_accepted: called with the peer and the message after each new message is committed
            (control messages such as ``KeyUpdate`` act on it); it must not block.
        own_keys: our identity keys as the peers trust them (``Node.own_verify_keys``): a
            duplicate's original receipt that no longer verifies under them is signed afresh.
    """

    def __init__(
        self,
        *,
        city: str,
        identity: Ed25519PrivateKey | Callable[[int], Ed25519PrivateKey],
        decryption_keys: Callable[[], Mapping[bytes, DecryptionKey]],
        trust: Callable[[], TrustState],
        inbox: InboxStore,
        ledger: CaseLedger,
        metrics: NodeMetrics,
        clock: Callable[[], float],
        limits: Limits,
        on_accepted: Callable[[str, Message], None] | None = None,
        own_keys: Callable[[], Sequence[VerifyKey]] | None = None,
    ) -> None:
        self._on_accepted = on_accepted
        self._own_keys = own_keys
        self._city = city
        self._identity = identity
        self._decryption_keys = decryption_keys
        self._trust = trust
        self._inbox = inbox
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._limits = limits
        # The key id of the identity key that signed the last receipt (a hash of its public key).
        self._signer: tuple[Ed25519PrivateKey, bytes] | None = None

    async def handle_batch(self, peer: str, envelopes: Sequence[bytes]) -> Sequence[DeliveryResult]:
        """Handle each envelope of a batch from ``peer``: open all, then store them in one commit.

        Raises:
            Overloaded: the replay store is full; the listener answers 503 and nothing of the
                batch is kept.
        """
        now = self._clock()
        results: list[DeliveryResult | None] = []
        arrivals: list[Arrival] = []
        positions: list[int] = []
        for data in envelopes:
            opened = self._open(peer, data, now)
            if isinstance(opened, DeliveryResult):
                results.append(opened)
                continue
            positions.append(len(results))
            results.append(None)
            arrivals.append(self._arrival(peer, opened, now))
        outcomes = await self._inbox.accept_batch(arrivals) if arrivals else []
        for position, arrival, outcome in zip(positions, arrivals, outcomes, strict=True):
            results[position] = self._answer(peer, arrival, outcome)
        done = [r for r in results if r is not None]
        _log_batch(peer, done)
        return done

    def _open(self, peer: str, data: bytes, now: float) -> OpenedEnvelope | DeliveryResult:
        try:
            opened = open_envelope(
                data,
                me=self._city,
                my_keys=self._decryption_keys(),
                sender_keys=self._trust().sender_keys,
                replay=_NotYetSeen(),
                now=int(now),
                limits=self._limits,
            )
        except ProtocolError as e:
            return self._refused(peer, e.code, e.message)
        if opened.header.sender != peer:
            return self._refused(peer, ErrorCode.UNKNOWN_SENDER, "envelope sender is not the peer")
        return opened

    def _receipt(self, opened: OpenedEnvelope, now: float) -> bytes:
        """Sign the receipt of ``opened`` as received ``now``.

        Raises:
            IdentityRevoked: our key is revoked and not yet replaced (nothing is signed).
        """
        identity = (
            self._identity
            if isinstance(self._identity, Ed25519PrivateKey)
            else self._identity(int(now))
        )
        if self._signer is None or self._signer[0] is not identity:
            self._signer = (identity, identity_key_id(identity))
        return sign_receipt(receipt_for(opened, received_at=int(now)), identity, self._signer[1])

    def _arrival(self, peer: str, opened: OpenedEnvelope, now: float) -> Arrival:
        receipt = self._receipt(opened, now)

        async def apply(session: AsyncSession) -> None:
            await self._ledger.on_received(
                session, peer, opened.message, message_id=opened.header.message_id, at=now
            )

        return Arrival(opened=opened, receipt=receipt, received_at=now, apply=apply)

    def _answer(self, peer: str, arrival: Arrival, outcome: BatchOutcome) -> DeliveryResult:
        if isinstance(outcome, Refused):
            return self._refused(peer, outcome.error.code, outcome.error.message)
        if isinstance(outcome, DuplicateEnvelope):
            return self._duplicate(peer, arrival.opened, outcome)
        logger.debug("RX [%s] accepted %s", peer, type(arrival.opened.message).__name__)
        if self._on_accepted is not None:
            self._on_accepted(peer, arrival.opened.message)
        return DeliveryResult(ACCEPTED, arrival.receipt)

    def _duplicate(
        self, peer: str, opened: OpenedEnvelope, outcome: DuplicateEnvelope
    ) -> DeliveryResult:
        original = outcome.original
        if original is None or original.envelope_hash != opened.envelope_hash:
            return self._refused(peer, ErrorCode.REPLAYED, "message id seen with other bytes")
        if self._own_keys is not None:
            try:
                verify_receipt(
                    original.receipt,
                    signer=self._city,
                    verify_keys=self._own_keys(),
                    limits=self._limits,
                )
            except ProtocolError as e:  # signed by a key replaced since: it would never verify
                logger.info("RX [%s] duplicate: original receipt %s, signed afresh", peer, e.code)
                return DeliveryResult(DUPLICATE, self._receipt(opened, self._clock()))
        logger.debug("RX [%s] duplicate answered with its original receipt", peer)
        return DeliveryResult(DUPLICATE, original.receipt)

    def _refused(self, peer: str, code: str, reason: str) -> DeliveryResult:
        self._metrics.refusals.labels(peer, code).inc()
        logger.warning("RX [%s] refused: %s (%s)", peer, code, reason)
        return DeliveryResult(REJECTED if code in OPAQUE_CODES else code, None)


def _log_batch(peer: str, results: Sequence[DeliveryResult]) -> None:
    accepted = sum(1 for r in results if r.status == ACCEPTED)
    duplicates = sum(1 for r in results if r.status == DUPLICATE)
    logger.info(
        "RX [%s] batch of %d: %d accepted, %d duplicate(s), %d refused",
        peer,
        len(results),
        accepted,
        duplicates,
        len(results) - accepted - duplicates,
    )
