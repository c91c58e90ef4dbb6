"""The sending side of delivery: seal a message and queue it, with its case change, atomically.

Owns :class:`Outgoing`, the one way the node sends a protocol message to a peer. Invariants:

* A message is sealed once, when it is queued, to the peer's current encryption key; the outbox
  keeps exactly those bytes and every retry sends them again (so the receiver can recognise a
  duplicate by its hash). Encryption keys outlive the longest retry (checked in ``config``).
* The case change (``CaseLedger.on_sent``, which also records the message in the case's journal),
  the caller's own changes (``also``: the audit entry of the action) and the outbox row are
  written in one transaction: a case never shows a step whose message is not queued, a queued
  message is never lost, and no action is done without its audit entry.
* The sender loop of the peer is woken after the commit, never before.
* Message ids (128 bits) and HPKE ephemeral keys come from the OS RNG (``secrets``), passed into
  the pure protocol functions.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncSession

from node.case_ledger import CaseLedger, case_id_of
from node.storage.database import Database
from node.storage.outbox_store import OutboxStore
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
        trust = self._trust()
        message_id = self._random_bytes(MESSAGE_ID_BYTES)
        envelope = seal_envelope(
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
