"""The sending side of delivery: seal a message and queue it, with its case change, atomically.

Owns :class:`Outgoing`, the one way the node sends a protocol message to a peer. Invariants:

* A message is sealed once, when it is queued, to the peer's current encryption key; the outbox
  keeps exactly those bytes and every retry sends them again (so the receiver can recognise a
  duplicate by its hash). Encryption keys outlive the longest retry (checked in ``config``).
* The one exception is :meth:`Outgoing.resend`, for a peer restored from a backup that lost what
  it received: a message this node sent before is sealed afresh (now, the peer's current key,
  our current identity key) under its **original message id**, as a new outbox row, and is not
  applied to its case again (the case and its journal have it already). The receiver's
  exactly-once record (sender, message id) keeps a resend of what it still holds from being
  processed twice.
* The case change (``CaseLedger.on_sent``, which also records the message in the case's journal),
  the caller's own changes (``also``: the audit entry of the action) and the outbox row are
  written in one transaction: a case never shows a step whose message is not queued, a queued
  message is never lost, and no action is done without its audit entry.
* The sender loop of the peer is woken after the commit, never before (another process's rows
  are found by the serving node's idle sender loop, which polls every ``outbox_poll_s``).
* Message ids (128 bits) and HPKE ephemeral keys come from the OS RNG (``secrets``), passed into
  the pure protocol functions.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession

from node.case_ledger import CaseLedger, case_id_of
from node.storage.database import Database
from node.storage.outbox_store import NewEnvelope, OutboxStore
from node.trust import TrustState
from protocol.limits import Limits
from protocol.messages import Message, message_type_name
from protocol.sealing import seal_envelope

logger = logging.getLogger(__name__)

MESSAGE_ID_BYTES = 16
EPHEMERAL_KEY_BYTES = 32

AlsoInTransaction = Callable[[AsyncSession], Awaitable[None]]
"""The caller's own changes, committed with the message (or not at all)."""


@dataclass(frozen=True, slots=True)
class Queued:
    """A message accepted for sending.

    Attributes:
        seq: its outbox position.
        message_id: the envelope's message id.
    """

    seq: int
    message_id: bytes


@dataclass(frozen=True, slots=True)
class Resend:
    """A message this node sent before, to seal afresh under its original id.

    Attributes:
        message_id: the id it was first sent under (the receiver's exactly-once key).
        message: the typed message, as the case journal recorded it.
    """

    message_id: bytes
    message: Message


class Outgoing:
    """Seals and queues messages for peers.

    Args:
        city: this node's city.
        identity: our identity private key (signs every envelope), or the node's choice of key
            by the envelope's timestamp (after an identity succession, each key signs its time).
        trust: the current trust snapshot (the peer's key, the agreement version).
        db: the database (the transaction shared by the case change and the outbox row).
        outbox: the outbox.
        ledger: applies the message to its case.
        notify: wakes the peer's sender loop after the commit.
        clock: Unix seconds now.
        limits: the protocol limits.
        random_bytes: the RNG (``secrets.token_bytes``; tests may inject their own).
    """

    def __init__(
        self,
        *,
        city: str,
        identity: Ed25519PrivateKey | Callable[[int], Ed25519PrivateKey],
        trust: Callable[[], TrustState],
        db: Database,
        outbox: OutboxStore,
        ledger: CaseLedger,
        notify: Callable[[str], None],
        clock: Callable[[], float],
        limits: Limits,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._city = city
        self._identity = identity
        self._trust = trust
        self._db = db
        self._outbox = outbox
        self._ledger = ledger
        self._notify = notify
        self._clock = clock
        self._limits = limits
        self._random_bytes = random_bytes

    async def send(
        self, peer: str, message: Message, also: AlsoInTransaction | None = None
    ) -> Queued:
        """Seal ``message`` to ``peer`` and queue it, applying it to its case.

        Args:
            peer: the recipient city (a member of the adopted agreement).
            message: the typed message.
            also: the caller's changes, run last in the same transaction (the audit entry of
                the action); nothing is queued if it raises.

        Returns:
            Where it was queued.

        Raises:
            UnknownPeer: not a member, or no key bundle from it yet.
            LocalProtocolError: ``invalid_transition`` and other refusals of our own input.
            OutboxFull: the peer's outbox is full (nothing queued, the case unchanged).
            IdentityRevoked: our identity key is revoked (``keys revoke``) and not yet
                replaced: nothing is signed or queued (``node.key_replacement``).
            StorageError: the database failed (nothing queued, the case unchanged).
        """
        now = self._clock()
        message_id = self._random_bytes(MESSAGE_ID_BYTES)
        envelope = self._seal(peer, message, message_id, now)
        async with self._db.transaction() as session:
            await self._ledger.on_sent(session, peer, message, message_id=message_id, at=now)
            seq = await self._outbox.enqueue(
                session,
                peer=peer,
                case_id=case_id_of(message),
                message_id=message_id,
                message_type=message_type_name(message),
                envelope=envelope,
                now=now,
            )
            if also is not None:  # last: the audit trail's lock is held until the commit
                await also(session)
        self._notify(peer)
        logger.info("TX [%s] queued %s", peer, message_type_name(message))
        return Queued(seq=seq, message_id=message_id)

    async def resend(
        self, peer: str, messages: Sequence[Resend], also: AlsoInTransaction | None = None
    ) -> list[Queued]:
        """Seal messages sent before afresh, under their original ids, and queue them in order.

        For a peer restored from a backup (``node.resend``): each message is sealed now, to the
        peer's current encryption key, signed by our current identity key, with the id it was
        first sent under, and queued as a new outbox row. Its case is NOT moved and nothing is
        journaled: the case already took the message when it was first sent.

        Args:
            peer: the recipient city (a member of the adopted agreement).
            messages: the messages and their original ids, in the order to send them.
            also: the caller's changes, run last in the same transaction (its check that the
                outbox did not change meanwhile, and the audit entries); nothing is queued if it
                raises.

        Returns:
            Where each was queued, in order.

        Raises:
            UnknownPeer: not a member, or no key bundle from it yet.
            OutboxFull: the peer's outbox cannot take them all (nothing queued).
            StorageConflict: an envelope of one of these ids is still in flight (nothing
                queued).
            IdentityRevoked: our identity key is revoked and not yet replaced.
            StorageError: the database failed (nothing queued).
        """
        if not messages:
            return []
        now = self._clock()
        items = [
            NewEnvelope(
                peer=peer,
                case_id=case_id_of(item.message),
                message_id=item.message_id,
                message_type=message_type_name(item.message),
                envelope=self._seal(peer, item.message, item.message_id, now),
            )
            for item in messages
        ]
        async with self._db.transaction() as session:
            seqs = await self._outbox.enqueue_many(session, items, now=now)
            if also is not None:  # last: the audit trail's lock is held until the commit
                await also(session)
        self._notify(peer)
        logger.info("TX [%s] resent %d message(s) sealed afresh", peer, len(items))
        return [
            Queued(seq=seq, message_id=item.message_id)
            for seq, item in zip(seqs, items, strict=True)
        ]

    def _seal(self, peer: str, message: Message, message_id: bytes, now: float) -> bytes:
        """Seal ``message`` to ``peer``'s key at ``now``, signed by our key of that time."""
        trust = self._trust()
        return seal_envelope(
            sender=self._city,
            sender_identity=(
                self._identity
                if isinstance(self._identity, Ed25519PrivateKey)
                else self._identity(int(now))
            ),
            recipient=peer,
            recipient_key=trust.sealing_key(peer, int(now)),
            agreement_version=trust.agreement.version,
            message=message,
            message_id=message_id,
            timestamp=int(now),
            ephemeral=self._random_bytes(EPHEMERAL_KEY_BYTES),
            limits=self._limits,
        )
