"""Key transparency on the node: exchanging, countersigning and comparing key-log checkpoints.

Owns the node side of ``POST /federation/v1/checkpoints`` (``protocol.checkpoint_exchange``):

* :class:`CheckpointWitness` answers a peer's offer (verify it, keep every checkpoint it shows,
  countersign the peer's own, reply with our offer) and makes the same exchange as a client
  (:meth:`CheckpointWitness.exchange`). Every node therefore holds each peer's checkpoints as
  the peer showed them *and* as every other peer saw them (relayed countersignatures).
* :func:`gossip` runs the exchange with every peer from ``serve``: shortly after the start, then
  every ``every_s`` seconds (sooner after a failed round). When a peer's checkpoint shows its log
  grew, the node fetches the log itself (``POST /federation/v1/keylogs``,
  :meth:`CheckpointWitness.fetch_log`), keeps it, and compares every checkpoint of that peer it
  holds with it: a smaller checkpoint the log does not pass through is an alarm as well, with
  the entries that show it in the proof. The kept logs are served back on request
  (:meth:`CheckpointWitness.serve_log`): a node restored from a backup takes back from them the
  entries of its own log it lost (``node.key_recovery``).
* A checkpoint that conflicts with one kept (same city and size, another head) stores the proof
  (``node.storage.checkpoint_store``), logs one warning naming the city and the size, and sets
  ``citynode_keylog_equivocations{city}``. ``keys show`` reads :func:`transparency_status`.
* A checkpoint of our own city that a peer saw is compared with our own log: another head for
  a size we had means our identity key signs for someone else — the alarm is raised against our
  own city, with a proof made of our checkpoint of that size and the foreign one.

Invariants: only verified objects are stored; an offer or reply that fails verification changes
nothing and is refused with its code; logs and metrics carry city names, sizes and codes only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.errors import NodeError
from node.federation.wire import API_PREFIX
from node.key_history import KeyHistory
from node.metrics import NodeMetrics
from node.storage.checkpoint_store import CheckpointStore
from node.storage.database import StorageConflict
from protocol.checkpoint_exchange import (
    VerifiedOffer,
    decode_log_request,
    encode_log_copy,
    encode_log_request,
    encode_offer,
    encode_reply,
    verify_log_copy,
    verify_offer,
    verify_reply,
)
from protocol.equivocation import detect_equivocation
from protocol.errors import ProtocolError
from protocol.keylog import (
    Countersignature,
    KeyLog,
    Keyring,
    SignedCheckpoint,
    VerifiedCheckpoint,
    countersign,
    decode_countersignature,
    sign_checkpoint,
    verify_checkpoint,
    verify_countersignature,
)
from protocol.keys import KeyKind, identity_key, identity_key_id
from protocol.limits import Limits

if TYPE_CHECKING:
    from node.service import Node

logger = logging.getLogger(__name__)

CHECKPOINTS_PATH: Final = API_PREFIX + "/checkpoints"
KEYLOGS_PATH: Final = API_PREFIX + "/keylogs"
EXCHANGE_S: Final = 10.0
RETRY_S: Final = 2.0

Post = Callable[[str, bytes], Awaitable[bytes]]
"""``(peer, offer) -> reply``: how an offer reaches a peer (the federation client, or a test's
in-process transport)."""


@dataclass
class CheckpointWitness:
    """This node as a witness of its peers' key-history logs.

    Args:
        city: this node's city.
        history: this node's key-history log.
        store: the stored checkpoints, countersignatures and proofs.
        metrics: the node's metrics (``equivocations``).
        identity: the identity private key that signs at a given time (``Node.identity_at``).
        keyring: city → trusted identity keys, this node's own included.
        clock: Unix seconds now.
        limits: the protocol limits.
    """

    city: str
    history: KeyHistory
    store: CheckpointStore
    metrics: NodeMetrics
    identity: Callable[[int], Ed25519PrivateKey]
    keyring: Callable[[], Keyring]
    clock: Callable[[], float]
    limits: Limits

    async def log_for(self, peer: str) -> KeyLog:
        """The log this node shows ``peer`` (an honest node shows everyone the same one)."""
        return await self.history.load()

    async def offer(self, peer: str) -> tuple[SignedCheckpoint, bytes]:
        """Our fresh signed checkpoint and the offer carrying it, for ``peer``.

        The offer relays our latest countersignature of every other city's checkpoint, made by
        the identity key we sign with now and still verifying under our keys — ``peer``'s own
        included, which is how a peer that only answered gets our countersignature back.
        """
        now = int(self.clock())
        identity = self.identity(now)
        signed = sign_checkpoint(await self.log_for(peer), self.city, now, identity)
        relayed: list[Countersignature] = []
        keyring = self.keyring()
        for data in await self.store.latest_by_witness(self.city, exclude=self.city):
            countersignature = decode_countersignature(data, limits=self.limits)
            if countersignature.witness_key_id != identity_key_id(identity):
                continue  # made by a key we no longer sign with: we countersign again
            try:
                verify_countersignature(countersignature, keyring, limits=self.limits)
            except ProtocolError:
                continue  # a key replaced or revoked since: that view is no longer evidence
            relayed.append(countersignature)
        return signed, encode_offer(signed, relayed)

    async def answer(self, peer: str, body: bytes) -> bytes:
        """Answer ``peer``'s offer (the federation route's handler).

        Returns:
            The reply: our countersignature of its checkpoint and our own offer.

        Raises:
            DecodeError, RemoteProtocolError: the offer does not verify (nothing is kept).
        """
        offer = verify_offer(body, peer, self.keyring(), limits=self.limits)
        await self._witness(peer, offer)
        own = await self._countersign(offer.checkpoint)
        _, data = await self.offer(peer)
        return encode_reply(own, data)

    async def exchange(self, peer: str, post: Post) -> None:
        """Offer our checkpoint to ``peer``, keep its countersignature and its view.

        Raises:
            NodeError: the peer cannot be reached or refused (``PeerUnavailable``).
            DecodeError, RemoteProtocolError: the reply does not verify (nothing is kept).
        """
        signed, data = await self.offer(peer)
        reply = verify_reply(
            await post(peer, data), peer, signed, self.keyring(), limits=self.limits
        )
        await self._keep(reply.countersignature.signed, peer)
        await self._witness(peer, reply.offer)
        await self._countersign(reply.offer.checkpoint)

    async def serve_log(self, peer: str, body: bytes) -> bytes:
        """Answer a request for a city's log (the ``/federation/v1/keylogs`` handler).

        Our own log comes with a fresh checkpoint of it; a peer's, as kept, with the checkpoint
        of that city that vouches for it; a city we hold no log of gets an empty copy.

        Raises:
            DecodeError: the request is not a city name.
        """
        city = decode_log_request(body)
        if city == self.city:
            log = await self.log_for(peer)
            now = int(self.clock())
            return encode_log_copy(sign_checkpoint(log, self.city, now, self.identity(now)), log)
        kept = await self.store.log_copy(city)
        if kept is None:
            return encode_log_copy(None, KeyLog())
        return encode_log_copy(*kept)

    async def fetch_log(self, peer: str, post: Post) -> KeyLog | None:
        """Fetch ``peer``'s log when we hold a checkpoint of it larger than the log we keep, and
        compare every checkpoint of ``peer`` we hold with it, whatever its size.

        Returns:
            The log fetched and kept, or ``None`` when none was needed or it was not newer.

        Raises:
            NodeError: the peer cannot be reached or refused (``PeerUnavailable``).
            DecodeError, KeyLogBroken, RemoteProtocolError: the copy does not verify (nothing
                is kept).
        """
        latest = (await self.store.latest_checkpoints()).get(peer)
        if latest is None or latest[0] <= await self.store.held_log_size(peer):
            return None
        found = verify_log_copy(
            await post(peer, encode_log_request(peer)), peer, self.keyring(), limits=self.limits
        )
        if found is None:
            return None
        checkpoint, log = found
        await self._witness_checkpoint(checkpoint, peer)
        for older in await self.store.checkpoints_of(peer):
            if older.size >= log.size:
                continue
            proof = detect_equivocation(older, checkpoint, log)
            if proof is not None and await self.store.record_proof(proof, older.size, peer):
                await self._alarm(older, peer)
        return log if await self.store.keep_log(checkpoint, log, peer) else None

    async def _countersign(self, checkpoint: VerifiedCheckpoint) -> Countersignature:
        now = int(self.clock())
        made = countersign(checkpoint, self.city, now, self.identity(now))
        await self._keep(made, self.city)
        return made

    async def _keep(self, countersignature: Countersignature, peer: str) -> None:
        verified = verify_countersignature(countersignature, self.keyring(), limits=self.limits)
        try:
            await self.store.record_countersignature(verified)
        except StorageConflict:
            logger.debug("keys [%s] countersignature stored concurrently", peer)

    async def _witness(self, peer: str, offer: VerifiedOffer) -> None:
        for relayed in offer.witnessed:
            await self._keep(relayed.signed, peer)
        for checkpoint in offer.checkpoints():
            if checkpoint.city == self.city:
                await self._check_own(checkpoint, peer)
            else:
                await self._witness_checkpoint(checkpoint, peer)

    async def _witness_checkpoint(self, checkpoint: VerifiedCheckpoint, peer: str) -> None:
        try:
            proof = await self.store.record_checkpoint(checkpoint, peer)
        except StorageConflict:
            logger.debug("keys [%s] checkpoint stored concurrently", peer)
            return
        if proof is not None:
            await self._alarm(checkpoint, peer)

    async def _check_own(self, checkpoint: VerifiedCheckpoint, peer: str) -> None:
        """A checkpoint of our own city that a peer saw must be of our log: if not, someone
        signs with our identity key (it was stolen) — raise the alarm against ourselves."""
        log = await self.history.load()
        if checkpoint.size <= log.size and log.head_at(checkpoint.size) == checkpoint.head:
            return
        if checkpoint.size > log.size:
            logger.warning(
                "keys [%s] EQUIVOCATION: %s saw a checkpoint of our key log beyond its size %d: "
                "our identity key signs for someone else",
                self.city,
                peer,
                log.size,
            )
            return
        now = int(self.clock())
        ours = sign_checkpoint(
            KeyLog(log.entries[: checkpoint.size]), self.city, now, self.identity(now)
        )
        try:
            await self.store.record_checkpoint(verify_checkpoint(ours, self.keyring()), self.city)
            proof = await self.store.record_checkpoint(checkpoint, peer)
        except StorageConflict:
            return
        if proof is not None:
            await self._alarm(checkpoint, peer)

    async def _alarm(self, checkpoint: VerifiedCheckpoint, peer: str) -> None:
        logger.warning(
            "keys [%s] EQUIVOCATION: two signed key-log heads for size %d (completed by %s); "
            "proof kept, see `citynode keys show`",
            checkpoint.city,
            checkpoint.size,
            peer,
        )
        await refresh_alarm_metric(self.store, self.metrics)


async def refresh_alarm_metric(store: CheckpointStore, metrics: NodeMetrics) -> None:
    """Set ``citynode_keylog_equivocations{city}`` from the proofs stored."""
    counts: dict[str, int] = {}
    for alarm in await store.alarms():
        counts[alarm.city] = counts.get(alarm.city, 0) + 1
    for city, count in counts.items():
        metrics.equivocations.labels(city=city).set(count)


async def gossip(
    witness: CheckpointWitness,
    post: Post,
    peers: Callable[[], Sequence[str]],
    *,
    fetch: Post | None = None,
    every_s: float = EXCHANGE_S,
    retry_s: float = RETRY_S,
) -> None:
    """Exchange checkpoints with every peer, ``retry_s`` after the start, then every ``every_s``
    seconds (``retry_s`` after a round in which a peer could not be reached); after each
    exchange, fetch the peer's log through ``fetch`` (``/federation/v1/keylogs``) when its
    checkpoint shows it grew."""
    await refresh_alarm_metric(witness.store, witness.metrics)
    await asyncio.sleep(retry_s)
    while True:
        failed = False
        for peer in list(peers()):
            try:
                await witness.exchange(peer, post)
                if fetch is not None:
                    await witness.fetch_log(peer, fetch)
            except (NodeError, ProtocolError) as e:
                failed = True
                logger.debug("keys [%s] checkpoint exchange failed: %s", peer, e.code)
            except Exception:  # the loop must not die; the reason is logged
                failed = True
                logger.exception("keys [%s] checkpoint exchange failed", peer)
        await asyncio.sleep(retry_s if failed else every_s)


async def transparency_status(store: CheckpointStore, city: str) -> dict[str, Any]:
    """What ``keys show`` prints under ``key_transparency``.

    Returns:
        ``status`` (``ok`` or ``equivocation``), the ``alarms`` with their proofs (hex), the
        countersignatures of our own log (``countersigned_by``) and the largest checkpoint kept
        of each peer (``peers``).
    """
    alarms = await store.alarms()
    ours = await store.witnesses_of(city)
    latest = await store.latest_checkpoints()
    return {
        "status": "equivocation" if alarms else "ok",
        "alarms": [
            {
                "city": a.city,
                "size": a.size,
                "reported_by": a.reported_by,
                "detected_at": a.detected_at,
                "proof": a.proof.hex(),
            }
            for a in alarms
        ],
        "countersigned_by": [
            {"witness": w.witness, "size": w.size, "head": w.head.hex(), "seen_at": w.seen_at}
            for w in ours
        ],
        "peers": {c: {"size": size, "head": head.hex()} for c, (size, head) in latest.items()},
    }


def witness_for(node: Node) -> CheckpointWitness:
    """The witness of a running node: its log, its stores, its trusted keys and its own."""

    def keyring() -> Keyring:
        ring = {city: peer.identity for city, peer in node.trust().peers.items()}
        own = tuple(identity_key(k.public_key) for k in node.keystore.keys(KeyKind.IDENTITY))
        return {**ring, node.config.city: own}

    return CheckpointWitness(
        city=node.config.city,
        history=node.history,
        store=CheckpointStore(node.db, node.clock),
        metrics=node.metrics,
        identity=node.identity_at,
        keyring=keyring,
        clock=node.clock,
        limits=node.config.limits.protocol,
    )
