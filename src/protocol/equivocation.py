"""Equivocation: catching a city that shows different key-history logs to different peers.

Owns the proof that two checkpoints of one city cannot both be true, how to find one, how anyone
holding the city's identity keys checks it offline, and the :class:`CheckpointBook` of every
checkpoint seen, which raises the proof as soon as a conflicting checkpoint reaches us. The log,
its checkpoints and countersignatures are :mod:`protocol.keylog`. Rules of this module:

* Two validly signed checkpoints of one city **conflict** when they have the same size and
  different heads, or when the larger one's log does not pass through the smaller one's head. An
  :class:`EquivocationProof` carries both checkpoints (and, for different sizes, the entries that
  link the larger head back to the smaller size) so that it can be checked offline.
* The :class:`CheckpointBook` only takes verified checkpoints and logs, and is an immutable value.
* Pure: keys are arguments. Nothing here reads a clock or a disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated

import msgspec

from protocol import codec
from protocol.errors import (
    EquivocationDetected,
    ErrorCode,
    KeyLogBroken,
    LocalProtocolError,
    ProtocolError,
)
from protocol.keylog import (
    MAX_WIRE_ENTRIES,
    Checkpoint,
    KeyLog,
    KeyLogEntry,
    Keyring,
    SignedCheckpoint,
    VerifiedCheckpoint,
    entry_hash,
    verify_checkpoint,
)
from protocol.limits import DEFAULT_LIMITS, Limits


class EquivocationProof(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Two checkpoints of one city that cannot both be true, checkable offline.

    Attributes:
        first: the checkpoint with the smaller (or equal) size.
        second: the other checkpoint.
        extension: empty when the sizes are equal; otherwise the entries ``first.size - 1`` to
            ``second.size - 1`` of the log ``second`` vouches for, which link its head back to
            ``first``'s size and show a different head there.
    """

    first: SignedCheckpoint
    second: SignedCheckpoint
    extension: Annotated[tuple[KeyLogEntry, ...], msgspec.Meta(max_length=MAX_WIRE_ENTRIES)]


def _shows_conflict(small: Checkpoint, large: Checkpoint, extension: Sequence[KeyLogEntry]) -> bool:
    if small.city != large.city or small.size > large.size:
        return False
    if small.size == large.size:
        return not extension and small.head != large.head
    if len(extension) != large.size - small.size + 1:
        return False
    for offset, entry in enumerate(extension):
        if entry.index != small.size - 1 + offset:
            return False
        if offset and entry.previous_hash != entry_hash(extension[offset - 1]):
            return False
    return entry_hash(extension[-1]) == large.head and entry_hash(extension[0]) != small.head


def detect_equivocation(
    a: VerifiedCheckpoint, b: VerifiedCheckpoint, larger_log: KeyLog | None = None
) -> EquivocationProof | None:
    """Return a proof if two verified checkpoints of one city conflict.

    Args:
        a: a verified checkpoint.
        b: another verified checkpoint of the same city.
        larger_log: the log the larger checkpoint vouches for; needed to judge checkpoints of
            different sizes (without it they are taken as consistent).

    Returns:
        The proof, or ``None`` when nothing shows a conflict.

    Raises:
        LocalProtocolError: the checkpoints are of different cities.
        KeyLogBroken: ``larger_log`` is not the log the larger checkpoint names.
    """
    if a.city != b.city:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "checkpoints are of different cities")
    small, large = (a, b) if a.size <= b.size else (b, a)
    if small.size == large.size:
        if small.head == large.head:
            return None
        return EquivocationProof(first=small.signed, second=large.signed, extension=())
    if larger_log is None:
        return None
    if larger_log.size != large.size or larger_log.head != large.head:
        raise KeyLogBroken(min(larger_log.size, large.size), "key log is not the checkpoint's")
    if larger_log.head_at(small.size) == small.head:
        return None
    extension = larger_log.entries[small.size - 1 : large.size]
    return EquivocationProof(first=small.signed, second=large.signed, extension=extension)


def verify_equivocation_proof(
    proof: EquivocationProof, keyring: Keyring, *, limits: Limits = DEFAULT_LIMITS
) -> bool:
    """Check an equivocation proof offline.

    Args:
        proof: the proof, decoded.
        keyring: city → trusted identity keys.
        limits: the bounds applied to the checkpoints.

    Returns:
        True only if both checkpoints verify under keys of one city and the proof shows that they
        conflict (see docs/spec/70-keylog.md for the rule). Never raises for a bad proof.
    """
    try:
        first = verify_checkpoint(proof.first, keyring, limits=limits)
        second = verify_checkpoint(proof.second, keyring, limits=limits)
    except ProtocolError:
        return False
    return _shows_conflict(first.checkpoint, second.checkpoint, proof.extension)


# --- The book of checkpoints seen ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CityCheckpoints:
    """What the book holds for one city.

    Attributes:
        log: the longest log of the city that a verified checkpoint vouched for (may be empty).
        log_checkpoint: that checkpoint, or ``None`` while ``log`` is empty.
        pending: checkpoints larger than ``log``, one per size, smallest first. Checkpoints not
            larger than ``log`` are dropped once found consistent with it: ``log`` stands for them.
    """

    log: KeyLog = field(default_factory=KeyLog)
    log_checkpoint: VerifiedCheckpoint | None = None
    pending: tuple[VerifiedCheckpoint, ...] = ()


def _check_against(known: CityCheckpoints, new: VerifiedCheckpoint, log: KeyLog | None) -> None:
    seen: list[tuple[VerifiedCheckpoint, KeyLog | None]] = [(p, None) for p in known.pending]
    if known.log_checkpoint is not None:
        seen.append((known.log_checkpoint, known.log))
    for old, old_log in seen:
        larger_log = old_log if old.size > new.size else log
        proof = detect_equivocation(old, new, larger_log)
        if proof is not None:
            raise EquivocationDetected(
                f"{new.city} signed two key-log checkpoints that conflict", proof
            )


def _merge(known: CityCheckpoints, new: VerifiedCheckpoint, log: KeyLog | None) -> CityCheckpoints:
    if log is not None and log.size > known.log.size:
        pending = tuple(p for p in known.pending if p.size > log.size)
        return CityCheckpoints(log=log, log_checkpoint=new, pending=pending)
    if new.size <= known.log.size or any(p.size == new.size for p in known.pending):
        return known
    pending = tuple(sorted((*known.pending, new), key=lambda p: p.size))
    return CityCheckpoints(log=known.log, log_checkpoint=known.log_checkpoint, pending=pending)


@dataclass(frozen=True, slots=True)
class CheckpointBook:
    """Every city's checkpoints we have seen, directly or relayed in countersignatures.

    An immutable value: :meth:`record` returns a new book. Each new checkpoint is compared with
    every one kept for its city, and with the longest log we hold for the city, so a city that
    shows two peers two different logs is caught as soon as one checkpoint of each reaches us.

    Attributes:
        cities: city → :class:`CityCheckpoints`.
    """

    cities: Mapping[str, CityCheckpoints] = field(default_factory=lambda: MappingProxyType({}))

    def record(self, checkpoint: VerifiedCheckpoint, log: KeyLog | None = None) -> CheckpointBook:
        """Record a verified checkpoint, and the log it vouches for when we have it.

        Args:
            checkpoint: a verified checkpoint (from its city, or from a verified countersignature).
            log: the city's verified log at exactly ``checkpoint.size`` entries, if fetched.

        Returns:
            The new book (``self`` if nothing new was learnt).

        Raises:
            KeyLogBroken: ``log`` does not produce the checkpoint's head at its size.
            EquivocationDetected: the checkpoint conflicts with one already recorded; the error's
                ``proof`` is the :class:`EquivocationProof` to show the other cities.
        """
        if log is not None and (log.size != checkpoint.size or log.head != checkpoint.head):
            raise KeyLogBroken(min(log.size, checkpoint.size), "key log is not the checkpoint's")
        known = self.cities.get(checkpoint.city, CityCheckpoints())
        _check_against(known, checkpoint, log)
        merged = _merge(known, checkpoint, log)
        if merged is known:
            return self
        return CheckpointBook(MappingProxyType({**self.cities, checkpoint.city: merged}))

    def latest(self, city: str) -> VerifiedCheckpoint | None:
        """Return the largest checkpoint recorded for ``city``, or ``None``."""
        known = self.cities.get(city)
        if known is None:
            return None
        if known.pending:
            return known.pending[-1]
        return known.log_checkpoint


def decode_equivocation_proof(data: bytes, *, limits: Limits = DEFAULT_LIMITS) -> EquivocationProof:
    """Decode an equivocation proof (then check it with :func:`verify_equivocation_proof`).

    Raises:
        DecodeError: malformed, oversized or wrongly typed.
    """
    return codec.decode(
        data, EquivocationProof, max_bytes=limits.max_keylog_bytes, what="equivocation proof"
    )
