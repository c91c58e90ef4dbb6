"""The key-history log: hash-chained key changes, signed checkpoints and countersignatures.

Owns a node's log of key changes, its head, the checkpoints a city signs of it, the
countersignatures other nodes make of those checkpoints, and the check that a later log extends an
earlier checkpoint. Catching a city that shows different logs to different peers, and the proof of
it, is :mod:`protocol.equivocation`. Rules of this module:

* Every key change of a node (identity key, encryption key, TLS pin added or retired,
  succession, revocation, adopted agreement) is one :class:`KeyLogEntry`, appended to the node's
  log. Entry ``i`` carries its position ``i`` and the hash of entry ``i - 1`` (32 zero bytes for
  entry 0), so changing, removing, inserting or reordering any entry changes every hash after it.
* The **head** of a log of ``n`` entries is the hash of entry ``n - 1``; the head of the empty log
  is 32 zero bytes. Entry hashes are SHA-256 over a fixed binary layout (:func:`entry_hash_input`),
  not over MessagePack, so they do not depend on how an encoder chose to encode an integer. A key
  bundle carries ``(size, head)`` as a :class:`KeyLogHead`, made by :meth:`KeyLog.head_record`.
* A :class:`KeyLog` value always holds a valid chain: it is checked when built, and
  :meth:`KeyLog.append` only extends it.
* A **checkpoint** ``(city, size, head, timestamp)`` is signed by the city's identity key; other
  nodes **countersign** the exact checkpoint they received ("I, witness W, saw this checkpoint at
  time T") and relay it. Peers receive the whole log, so proving that a later log extends a
  checkpoint is a re-hash of its first ``size`` entries: no Merkle tree is needed for logs of a few
  thousand entries (see docs/spec/70-keylog.md).
* Unverified wire objects (:class:`SignedCheckpoint`, :class:`Countersignature`) and verified ones
  (:class:`VerifiedCheckpoint`, :class:`VerifiedCountersignature`) are different types.
* Pure: times and keys are arguments. Nothing here reads a clock or a disk.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Annotated, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import codec
from protocol.errors import ErrorCode, KeyLogBroken, LocalProtocolError, RemoteProtocolError
from protocol.fields import DIGEST_BYTES, MAX_I64, CityName, Digest, Signature, Timestamp
from protocol.keys import KeyId, VerifyKey, identity_key_id, key_at
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.signing import Purpose, check_signature, sign

ZERO_HASH: Final = bytes(DIGEST_BYTES)
MAX_PAYLOAD_BYTES: Final = 256 * 1024
"""Wire ceiling of an entry's payload: the largest signed statement (an agreement document)."""
MAX_CHECKPOINT_BYTES: Final = 256
MAX_STATEMENT_BYTES: Final = 1024
MAX_WIRE_ENTRIES: Final = 2**20
"""Wire ceiling of an entry array; ``Limits.max_keylog_entries`` is the bound actually applied."""
MAX_WIRE_BYTES: Final = 2 * MAX_PAYLOAD_BYTES
ENTRY_DOMAIN: Final = b"citynode/v1 keylog-entry\x00"

EntryIndex = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
LogSize = Annotated[int, msgspec.Meta(ge=1, le=2**32)]
Keyring = Mapping[str, Sequence[VerifyKey]]
"""A city's name → the identity keys we trust for it (current and past, with their windows)."""


class EntryKind(IntEnum):
    """What kind of key change an entry records. Codes are never reused."""

    IDENTITY_KEY = 1
    ENCRYPTION_KEY = 2
    TLS_PIN = 3
    SUCCESSION = 4
    REVOCATION = 5
    AGREEMENT_ADOPTED = 6
    ENCRYPTION_KEY_DESTROYED = 7
    TLS_PIN_RETIRED = 8


class KeyLogEntry(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One key change.

    Attributes:
        index: the entry's position in the log, from 0.
        previous_hash: the hash of entry ``index - 1``, or 32 zero bytes for entry 0.
        timestamp: when the change was made (Unix seconds); never earlier than the entry before.
        kind: what changed.
        payload: the exact signed statement bytes of the change (a key bundle, a succession...).
    """

    index: EntryIndex
    previous_hash: Digest
    timestamp: Timestamp
    kind: EntryKind
    payload: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_PAYLOAD_BYTES)]


def entry_hash_input(entry: KeyLogEntry) -> bytes:
    """Return the exact bytes hashed to name an entry.

    ``ENTRY_DOMAIN || u64be(index) || previous_hash || u64be(timestamp) || u8(kind) ||
    u32be(len(payload)) || payload``.

    Args:
        entry: the entry.

    Returns:
        The hash input.
    """
    return b"".join(
        (
            ENTRY_DOMAIN,
            struct.pack(">Q", entry.index),
            entry.previous_hash,
            struct.pack(">QBI", entry.timestamp, entry.kind, len(entry.payload)),
            entry.payload,
        )
    )


def entry_hash(entry: KeyLogEntry) -> bytes:
    """Return the 32-byte SHA-256 hash of an entry (see :func:`entry_hash_input`)."""
    return hashlib.sha256(entry_hash_input(entry)).digest()


def chain_hashes(entries: Sequence[KeyLogEntry]) -> tuple[bytes, ...]:
    """Check the hash chain of a log and return the hash of every entry.

    Args:
        entries: the log, entry 0 first.

    Returns:
        ``hashes[i] == entry_hash(entries[i])``; the log's head is the last one.

    Raises:
        KeyLogBroken: an entry has the wrong index, does not name the hash of the entry before it,
            or is dated before it; ``index`` is the first such position.
    """
    hashes: list[bytes] = []
    previous, last_time = ZERO_HASH, 0
    for position, entry in enumerate(entries):
        if entry.index != position:
            raise KeyLogBroken(position, f"key log entry {position} holds the wrong index")
        if entry.previous_hash != previous:
            raise KeyLogBroken(position, f"key log entry {position} does not chain to its parent")
        if entry.timestamp < last_time:
            raise KeyLogBroken(position, f"key log entry {position} is older than its parent")
        previous, last_time = entry_hash(entry), entry.timestamp
        hashes.append(previous)
    return tuple(hashes)


def verify_entries(entries: Sequence[KeyLogEntry], *, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Verify a log received whole and return its head.

    Args:
        entries: the log, entry 0 first.
        limits: ``max_keylog_entries`` bounds its length.

    Returns:
        The head: the hash of the last entry, or 32 zero bytes for an empty log.

    Raises:
        KeyLogBroken: the log is too long or its chain is broken at ``index``.
    """
    if len(entries) > limits.max_keylog_entries:
        raise KeyLogBroken(limits.max_keylog_entries, "key log holds more entries than allowed")
    hashes = chain_hashes(entries)
    return hashes[-1] if hashes else ZERO_HASH


class KeyLogHead(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A log's size and head as another record carries them (a key bundle): ``[size, root]``.

    Attributes:
        size: the number of entries in the log.
        root: the log's head at that size (:attr:`KeyLog.head`).
    """

    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_I64)]
    root: Digest


@dataclass(frozen=True, slots=True)
class KeyLog:
    """A verified key-history log (an immutable value).

    Attributes:
        entries: the entries, entry 0 first. Building a ``KeyLog`` checks their chain.
        hashes: the hash of every entry, computed when built.
    """

    entries: tuple[KeyLogEntry, ...] = ()
    hashes: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hashes", chain_hashes(self.entries))

    @classmethod
    def from_entries(
        cls, entries: Sequence[KeyLogEntry], *, limits: Limits = DEFAULT_LIMITS
    ) -> KeyLog:
        """Verify received entries and return them as a log.

        Raises:
            KeyLogBroken: too many entries, or the chain is broken (``index`` names where).
        """
        verify_entries(entries, limits=limits)
        return cls(tuple(entries))

    @property
    def size(self) -> int:
        """The number of entries."""
        return len(self.entries)

    @property
    def head(self) -> bytes:
        """The hash of the last entry, or 32 zero bytes for the empty log."""
        return self.head_at(self.size)

    def head_record(self) -> KeyLogHead:
        """The log's size and head, as a key bundle carries them."""
        return KeyLogHead(self.size, self.head)

    def head_at(self, size: int) -> bytes:
        """Return the head the log had when it held ``size`` entries.

        Raises:
            LocalProtocolError: ``size`` is negative or larger than the log.
        """
        if not 0 <= size <= self.size:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, "key log size is out of range")
        return self.hashes[size - 1] if size else ZERO_HASH

    def append(
        self, kind: EntryKind, payload: bytes, timestamp: int, *, limits: Limits = DEFAULT_LIMITS
    ) -> KeyLog:
        """Return a new log with one more entry.

        Args:
            kind: what changed.
            payload: the exact signed statement bytes of the change.
            timestamp: when (Unix seconds); not earlier than the last entry.
            limits: ``max_keylog_entries`` bounds the log.

        Returns:
            The longer log; ``self`` is unchanged.

        Raises:
            LocalProtocolError: the log is full, the timestamp goes back, or a field is invalid.
        """
        if self.size >= limits.max_keylog_entries:
            raise LocalProtocolError(ErrorCode.OVERSIZED, "key log is full")
        if self.entries and timestamp < self.entries[-1].timestamp:
            raise LocalProtocolError(
                ErrorCode.INVALID_FIELD, "key log entry timestamp is earlier than the last entry"
            )
        entry = codec.check(
            KeyLogEntry(self.size, self.head, timestamp, kind, payload), what="key log entry"
        )
        return KeyLog((*self.entries, entry))


# --- Checkpoints and countersignatures -------------------------------------------------------


class Checkpoint(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """What a city states about its log: "after ``size`` entries my head was ``head``".

    Attributes:
        city: the city whose log this is.
        size: the number of entries, at least 1.
        head: the log's head at that size.
        timestamp: when the city signed it (Unix seconds).
    """

    city: CityName
    size: LogSize
    head: Digest
    timestamp: Timestamp


class SignedCheckpoint(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A checkpoint as it travels: its exact bytes and the city's signature over them.

    Attributes:
        checkpoint_bytes: the MessagePack encoding of a :class:`Checkpoint`, exactly as signed.
        signer_key_id: the key id of the identity key that signed.
        signature: Ed25519 with purpose ``keylog-checkpoint`` over ``checkpoint_bytes``.
    """

    checkpoint_bytes: Annotated[bytes, msgspec.Meta(max_length=MAX_CHECKPOINT_BYTES)]
    signer_key_id: KeyId
    signature: Signature


class CountersignStatement(
    msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True
):
    """What a witness states: "I, ``witness``, saw this signed checkpoint at ``seen_at``".

    Attributes:
        witness: the countersigning city (never the checkpoint's own city).
        seen_at: when the witness verified the checkpoint (Unix seconds).
        checkpoint: the signed checkpoint, exactly as received, with its signature.
    """

    witness: CityName
    seen_at: Timestamp
    checkpoint: SignedCheckpoint


class Countersignature(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A countersignature as it travels.

    Attributes:
        statement_bytes: the MessagePack encoding of a :class:`CountersignStatement`, as signed.
        witness_key_id: the key id of the witness's identity key.
        signature: Ed25519 with purpose ``keylog-countersign`` over ``statement_bytes``.
    """

    statement_bytes: Annotated[bytes, msgspec.Meta(max_length=MAX_STATEMENT_BYTES)]
    witness_key_id: KeyId
    signature: Signature


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    """A checkpoint whose signature verified under a key we trust for its city.

    Attributes:
        checkpoint: the decoded checkpoint.
        signed: the wire object it came from (kept for relaying and for proofs).
    """

    checkpoint: Checkpoint
    signed: SignedCheckpoint

    @property
    def city(self) -> str:
        """The city whose log this is."""
        return self.checkpoint.city

    @property
    def size(self) -> int:
        """The log size the checkpoint names."""
        return self.checkpoint.size

    @property
    def head(self) -> bytes:
        """The head the checkpoint names."""
        return self.checkpoint.head


@dataclass(frozen=True, slots=True)
class VerifiedCountersignature:
    """A countersignature whose own signature and whose checkpoint both verified.

    Attributes:
        witness: the countersigning city.
        seen_at: when the witness saw the checkpoint.
        checkpoint: the verified checkpoint it vouches for.
        signed: the wire object it came from.
    """

    witness: str
    seen_at: int
    checkpoint: VerifiedCheckpoint
    signed: Countersignature


def _city_keys(keyring: Keyring, city: str, what: str) -> Sequence[VerifyKey]:
    keys = keyring.get(city)
    if keys is None:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_SENDER, f"{what} names an unknown city")
    return keys


def sign_checkpoint(
    log: KeyLog, city: str, timestamp: int, private_key: Ed25519PrivateKey
) -> SignedCheckpoint:
    """Sign a checkpoint of our own log.

    Args:
        log: our log, at least one entry.
        city: our city.
        timestamp: now (Unix seconds).
        private_key: our identity key.

    Returns:
        The signed checkpoint, ready to publish.

    Raises:
        LocalProtocolError: the log is empty or a field is invalid.
    """
    checkpoint = codec.check(Checkpoint(city, log.size, log.head, timestamp), what="checkpoint")
    data = codec.encode(checkpoint)
    return SignedCheckpoint(
        checkpoint_bytes=data,
        signer_key_id=identity_key_id(private_key),
        signature=sign(private_key, Purpose.KEYLOG_CHECKPOINT, data),
    )


def verify_checkpoint(
    signed: SignedCheckpoint, keyring: Keyring, *, limits: Limits = DEFAULT_LIMITS
) -> VerifiedCheckpoint:
    """Verify a signed checkpoint against the keys we trust for the city it names.

    Checks, in order: the checkpoint decodes, its city is in ``keyring`` and its signer key is
    one of that city's keys, the signature verifies over the exact bytes, the key counted at the
    checkpoint's timestamp, and the size is within ``limits.max_keylog_entries``.

    Args:
        signed: the checkpoint as received.
        keyring: city → trusted identity keys.
        limits: the bounds.

    Returns:
        The verified checkpoint.

    Raises:
        RemoteProtocolError: ``malformed``/``bad_type``/``invalid_field`` (decoding),
            ``unknown_sender``, ``unknown_key``, ``bad_signature``, ``revoked_key``,
            ``expired_key`` or ``oversized``.
    """
    checkpoint = codec.decode(
        signed.checkpoint_bytes, Checkpoint, max_bytes=MAX_CHECKPOINT_BYTES, what="checkpoint"
    )
    keys = _city_keys(keyring, checkpoint.city, "checkpoint")
    key = key_at(keys, signed.signer_key_id, checkpoint.timestamp)
    check_signature(
        key.public_key,
        Purpose.KEYLOG_CHECKPOINT,
        signed.checkpoint_bytes,
        signed.signature,
        what="checkpoint",
    )
    if checkpoint.size > limits.max_keylog_entries:
        raise RemoteProtocolError(ErrorCode.OVERSIZED, "checkpoint names a log that is too long")
    return VerifiedCheckpoint(checkpoint=checkpoint, signed=signed)


def countersign(
    checkpoint: VerifiedCheckpoint,
    witness: str,
    seen_at: int,
    private_key: Ed25519PrivateKey,
) -> Countersignature:
    """Countersign another city's checkpoint that we verified.

    Args:
        checkpoint: the verified checkpoint of another city.
        witness: our city.
        seen_at: now (Unix seconds).
        private_key: our identity key.

    Returns:
        The countersignature, to send back and to relay to the other peers.

    Raises:
        LocalProtocolError: ``witness`` is the checkpoint's own city, or a field is invalid.
    """
    if witness == checkpoint.city:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "a city cannot countersign itself")
    statement = codec.check(
        CountersignStatement(witness, seen_at, checkpoint.signed), what="countersignature"
    )
    data = codec.encode(statement)
    return Countersignature(
        statement_bytes=data,
        witness_key_id=identity_key_id(private_key),
        signature=sign(private_key, Purpose.KEYLOG_COUNTERSIGN, data),
    )


def verify_countersignature(
    countersignature: Countersignature,
    keyring: Keyring,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedCountersignature:
    """Verify a countersignature and the checkpoint inside it.

    Args:
        countersignature: as received (from the witness or relayed by anyone).
        keyring: city → trusted identity keys; must hold the witness and the checkpoint's city.
        limits: the bounds (``max_clock_skew_s`` lets the witness's clock lag the signer's).

    Returns:
        The verified countersignature.

    Raises:
        RemoteProtocolError: decoding errors, ``unknown_sender``, ``unknown_key``,
            ``bad_signature``, ``revoked_key``, ``expired_key`` (of either signature),
            ``invalid_field`` (a city countersigning itself) or ``from_future`` (a checkpoint
            dated after the witness saw it).
    """
    statement = codec.decode(
        countersignature.statement_bytes,
        CountersignStatement,
        max_bytes=MAX_STATEMENT_BYTES,
        what="countersignature",
    )
    keys = _city_keys(keyring, statement.witness, "countersignature")
    key = key_at(keys, countersignature.witness_key_id, statement.seen_at)
    check_signature(
        key.public_key,
        Purpose.KEYLOG_COUNTERSIGN,
        countersignature.statement_bytes,
        countersignature.signature,
        what="witness",
    )
    checkpoint = verify_checkpoint(statement.checkpoint, keyring, limits=limits)
    if statement.witness == checkpoint.city:
        raise RemoteProtocolError(ErrorCode.INVALID_FIELD, "a city countersigned itself")
    if checkpoint.checkpoint.timestamp > statement.seen_at + limits.max_clock_skew_s:
        raise RemoteProtocolError(
            ErrorCode.FROM_FUTURE, "countersigned checkpoint is dated after it was seen"
        )
    return VerifiedCountersignature(
        witness=statement.witness,
        seen_at=statement.seen_at,
        checkpoint=checkpoint,
        signed=countersignature,
    )


def verify_consistency(checkpoint: Checkpoint | VerifiedCheckpoint, log: KeyLog) -> None:
    """Check that ``log`` extends ``checkpoint``: its first ``size`` entries give the same head.

    Args:
        checkpoint: an earlier checkpoint (size ``n``).
        log: a verified log of ``m >= n`` entries.

    Raises:
        KeyLogBroken: the log is shorter than the checkpoint (``index`` = the log's size) or its
            first ``n`` entries give another head (``index`` = ``n - 1``).
    """
    if log.size < checkpoint.size:
        raise KeyLogBroken(log.size, "key log is shorter than the checkpoint")
    if log.head_at(checkpoint.size) != checkpoint.head:
        raise KeyLogBroken(checkpoint.size - 1, "key log does not extend the checkpoint")


# --- Decoding peer input ---------------------------------------------------------------------


def decode_signed_checkpoint(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> SignedCheckpoint:
    """Decode a signed checkpoint received from a peer (not yet verified).

    Raises:
        DecodeError: malformed, oversized or wrongly typed.
    """
    return codec.decode(
        data, SignedCheckpoint, max_bytes=limits.max_document_bytes, what="signed checkpoint"
    )


def decode_countersignature(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> Countersignature:
    """Decode a countersignature received from a peer (not yet verified).

    Raises:
        DecodeError: malformed, oversized or wrongly typed.
    """
    return codec.decode(
        data, Countersignature, max_bytes=limits.max_document_bytes, what="countersignature"
    )


def decode_log(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> KeyLog:
    """Decode and verify a peer's log, sent as a MessagePack array of entries.

    Raises:
        DecodeError: malformed, oversized or wrongly typed.
        KeyLogBroken: too many entries, or the chain is broken at ``index``.
    """
    entries = codec.decode(
        data, tuple[KeyLogEntry, ...], max_bytes=limits.max_keylog_bytes, what="key log"
    )
    return KeyLog.from_entries(entries, limits=limits)
