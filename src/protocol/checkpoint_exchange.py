"""Checkpoint exchange: what two nodes send each other so that every node witnesses every log.

Owns the two wire objects of the exchange at ``/federation/v1/checkpoints`` and their
verification. The checkpoints, countersignatures and the equivocation check they feed are
:mod:`protocol.keylog` and :mod:`protocol.equivocation`. Rules of this module:

* An **offer** is what a node says on contact: its own signed checkpoint, and the
  countersignatures *it* made of the other cities' checkpoints it saw (its view of them, relayed
  as gossip). A **reply** is the responder's countersignature of the offered checkpoint followed
  by the responder's own offer, so one round trip gives both sides a countersignature and both
  views.
* An offer verifies only as a whole: the checkpoint must be the sender's own city's, each relayed
  countersignature must be made by the sender, of another city's checkpoint, at most one per
  city. A reply verifies only if its countersignature is the responder's, of exactly the
  checkpoint offered (the same bytes). Each failure has its own code; nothing is half-accepted.
* Unverified wire objects (:class:`CheckpointOffer`, :class:`CheckpointReply`) and verified ones
  (:class:`VerifiedOffer`, :class:`VerifiedReply`) are different types.
* A **log copy** (``/federation/v1/keylogs``) is a city's whole log as one node holds it, with
  a checkpoint *signed by that city* vouching for exactly its size and head: a copy verifies only
  if the chain re-hashes to that head, so a peer relaying it can withhold it but never alter it.
  Nodes fetch each peer's log to compare checkpoints of different sizes, and a node restored from
  a backup takes back from its peers the entries of its own log it lost.
* Pure: keys and times are arguments; nothing here reads a clock, a disk or the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from protocol import codec
from protocol.errors import ErrorCode, KeyLogBroken, RemoteProtocolError
from protocol.fields import CityName
from protocol.keylog import (
    MAX_WIRE_ENTRIES,
    Countersignature,
    KeyLog,
    KeyLogEntry,
    Keyring,
    SignedCheckpoint,
    VerifiedCheckpoint,
    VerifiedCountersignature,
    verify_checkpoint,
    verify_countersignature,
)
from protocol.limits import DEFAULT_LIMITS, Limits

MAX_WITNESSED: Final = 512
"""Wire ceiling of relayed countersignatures in one offer: one per other member at most."""


class CheckpointOffer(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """What a node sends on contact (unverified).

    Attributes:
        checkpoint: the sender's own signed checkpoint, fresh.
        witnessed: the sender's countersignatures of other cities' checkpoints, one per city.
    """

    checkpoint: SignedCheckpoint
    witnessed: Annotated[tuple[Countersignature, ...], msgspec.Meta(max_length=MAX_WITNESSED)]


class CheckpointReply(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The answer to an offer (unverified).

    Attributes:
        countersignature: the responder's countersignature of the offered checkpoint.
        offer: the responder's own offer.
    """

    countersignature: Countersignature
    offer: CheckpointOffer


@dataclass(frozen=True, slots=True)
class VerifiedOffer:
    """An offer whose checkpoint and every relayed countersignature verified.

    Attributes:
        sender: the city that made the offer.
        checkpoint: its own checkpoint.
        witnessed: its countersignatures of other cities' checkpoints.
    """

    sender: str
    checkpoint: VerifiedCheckpoint
    witnessed: tuple[VerifiedCountersignature, ...]

    def checkpoints(self) -> tuple[VerifiedCheckpoint, ...]:
        """Every checkpoint the offer shows: the sender's, then those it relays."""
        return (self.checkpoint, *(w.checkpoint for w in self.witnessed))


@dataclass(frozen=True, slots=True)
class VerifiedReply:
    """A reply whose countersignature is the responder's, of our checkpoint, and whose offer
    verified.

    Attributes:
        countersignature: the responder's countersignature of our checkpoint.
        offer: the responder's verified offer.
    """

    countersignature: VerifiedCountersignature
    offer: VerifiedOffer


def encode_offer(checkpoint: SignedCheckpoint, witnessed: Sequence[Countersignature]) -> bytes:
    """Encode an offer.

    Args:
        checkpoint: our own signed checkpoint (``keylog.sign_checkpoint``).
        witnessed: our countersignatures of other cities' checkpoints, one per city.

    Returns:
        The offer's bytes.

    Raises:
        LocalProtocolError: ``oversized`` (too many countersignatures) or ``invalid_field``.
    """
    offer = codec.check(CheckpointOffer(checkpoint, tuple(witnessed)), what="checkpoint offer")
    return codec.encode(offer)


def encode_reply(countersignature: Countersignature, offer: bytes) -> bytes:
    """Encode a reply: our countersignature of the peer's checkpoint and our own offer.

    Args:
        countersignature: ``keylog.countersign`` of the verified offered checkpoint.
        offer: our own offer, from :func:`encode_offer`.

    Returns:
        The reply's bytes.
    """
    own = codec.decode(offer, CheckpointOffer, max_bytes=len(offer), what="checkpoint offer")
    return codec.encode(CheckpointReply(countersignature, own))


def _verify_offer(
    offer: CheckpointOffer, sender: str, keyring: Keyring, limits: Limits
) -> VerifiedOffer:
    checkpoint = verify_checkpoint(offer.checkpoint, keyring, limits=limits)
    if checkpoint.city != sender:
        raise RemoteProtocolError(
            ErrorCode.INVALID_FIELD, "the offered checkpoint is not the sender's own"
        )
    witnessed: list[VerifiedCountersignature] = []
    cities: set[str] = set()
    for relayed in offer.witnessed:
        verified = verify_countersignature(relayed, keyring, limits=limits)
        if verified.witness != sender:
            raise RemoteProtocolError(
                ErrorCode.INVALID_FIELD, "a relayed countersignature is not the sender's"
            )
        if verified.checkpoint.city in cities:
            raise RemoteProtocolError(
                ErrorCode.INVALID_FIELD, "two relayed countersignatures for one city"
            )
        cities.add(verified.checkpoint.city)
        witnessed.append(verified)
    return VerifiedOffer(sender=sender, checkpoint=checkpoint, witnessed=tuple(witnessed))


def verify_offer(
    data: bytes, sender: str, keyring: Keyring, *, limits: Limits = DEFAULT_LIMITS
) -> VerifiedOffer:
    """Decode and verify an offer received from ``sender`` (authenticated by the transport).

    Args:
        data: the offer's bytes, at most ``limits.max_document_bytes``.
        sender: the city the request came from.
        keyring: city → trusted identity keys (the sender, the relayed cities, us).
        limits: the bounds.

    Returns:
        The verified offer.

    Raises:
        DecodeError: malformed, oversized or wrongly typed.
        RemoteProtocolError: the codes of ``keylog.verify_checkpoint`` and
            ``keylog.verify_countersignature`` (``unknown_sender``, ``unknown_key``,
            ``bad_signature``, ``revoked_key``, ``expired_key``, ``from_future``...), or
            ``invalid_field``: the checkpoint is not the sender's, a relayed countersignature
            is not by the sender, or two are of one city.
    """
    offer = codec.decode(
        data, CheckpointOffer, max_bytes=limits.max_document_bytes, what="checkpoint offer"
    )
    return _verify_offer(offer, sender, keyring, limits)


def verify_reply(
    data: bytes,
    responder: str,
    offered: SignedCheckpoint,
    keyring: Keyring,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedReply:
    """Decode and verify the reply to our offer.

    Args:
        data: the reply's bytes, at most ``limits.max_document_bytes``.
        responder: the city we sent the offer to.
        offered: the signed checkpoint we offered.
        keyring: city → trusted identity keys.
        limits: the bounds.

    Returns:
        The verified reply.

    Raises:
        DecodeError: malformed, oversized or wrongly typed.
        RemoteProtocolError: as :func:`verify_offer`, or ``invalid_field`` when the
            countersignature is not the responder's or not of exactly the checkpoint offered.
    """
    reply = codec.decode(
        data, CheckpointReply, max_bytes=limits.max_document_bytes, what="checkpoint reply"
    )
    countersignature = verify_countersignature(reply.countersignature, keyring, limits=limits)
    if countersignature.witness != responder:
        raise RemoteProtocolError(
            ErrorCode.INVALID_FIELD, "the reply's countersignature is not the responder's"
        )
    if countersignature.checkpoint.signed != offered:
        raise RemoteProtocolError(
            ErrorCode.INVALID_FIELD, "the reply countersigns another checkpoint than ours"
        )
    offer = _verify_offer(reply.offer, responder, keyring, limits)
    return VerifiedReply(countersignature=countersignature, offer=offer)


# --- Log copies (``/federation/v1/keylogs``) -------------------------------------------------


class LogCopy(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A city's key-history log as one node holds it (unverified).

    Attributes:
        checkpoint: a checkpoint signed by the log's city that vouches for exactly these
            entries (its size and head), or ``None`` when the node holds no log of the city.
        entries: the log's entries, entry 0 first (empty with no checkpoint).
    """

    checkpoint: SignedCheckpoint | None
    entries: Annotated[tuple[KeyLogEntry, ...], msgspec.Meta(max_length=MAX_WIRE_ENTRIES)]


class _LogRequest(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    city: CityName


MAX_LOG_REQUEST_BYTES: Final = 128
"""Wire ceiling of a log request (a city's name)."""


def encode_log_request(city: str) -> bytes:
    """Encode the request for ``city``'s log: the city's name.

    Raises:
        LocalProtocolError: ``invalid_field`` (not a city name).
    """
    return codec.encode(codec.check(_LogRequest(city), what="key log request"))


def decode_log_request(data: bytes) -> str:
    """Decode a request for a city's log and return the city's name.

    Raises:
        DecodeError: malformed, oversized or not a city name.
    """
    request = codec.decode(
        data, _LogRequest, max_bytes=MAX_LOG_REQUEST_BYTES, what="key log request"
    )
    return request.city


def encode_log_copy(checkpoint: SignedCheckpoint | None, log: KeyLog) -> bytes:
    """Encode the log we hold of a city and the checkpoint that vouches for it."""
    return codec.encode(LogCopy(checkpoint, log.entries if checkpoint is not None else ()))


def verify_log_copy(
    data: bytes, city: str, keyring: Keyring, *, limits: Limits = DEFAULT_LIMITS
) -> tuple[VerifiedCheckpoint, KeyLog] | None:
    """Decode and verify a copy of ``city``'s log sent by a peer.

    Returns:
        The vouching checkpoint and the log, or ``None`` when the peer holds no log of ``city``.

    Raises:
        DecodeError: malformed, oversized or wrongly typed.
        KeyLogBroken: the entries' chain is broken, or they are not the checkpoint's log.
        RemoteProtocolError: the checkpoint does not verify under ``city``'s keys, or it is
            another city's (``invalid_field``).
    """
    copy = codec.decode(data, LogCopy, max_bytes=limits.max_keylog_bytes, what="key log copy")
    if copy.checkpoint is None:
        return None
    checkpoint = verify_checkpoint(copy.checkpoint, keyring, limits=limits)
    if checkpoint.city != city:
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "the key log copy is another city's")
    log = KeyLog.from_entries(copy.entries, limits=limits)
    if log.size != checkpoint.size or log.head != checkpoint.head:
        raise KeyLogBroken(min(log.size, checkpoint.size), "key log is not the checkpoint's")
    return checkpoint, log
