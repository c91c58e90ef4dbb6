"""Key transparency at rest: peers' checkpoints, countersignatures and equivocation proofs.

Owns the ``keylog_checkpoints``, ``keylog_countersignatures``, ``keylog_equivocations`` and
``peer_keylogs`` tables. Invariants:

* Only verified objects come in (the caller verified them with ``protocol.checkpoint_exchange``);
  each is stored as the exact bytes received, so what is kept is what was signed.
* A checkpoint is compared, in the transaction that records it, with every stored checkpoint of
  the same city and size (``protocol.equivocation.detect_equivocation``); a conflict stores the
  proof (both signed checkpoints) once per city and size. Rows are never updated or deleted:
  the first proof found stays the evidence.
* Bounded: at most :data:`HEADS_KEPT` heads per city and size, of checkpoints and of each
  witness's countersignatures, and sizes are bounded by ``max_keylog_entries``.
* A city's log is kept only with a stored checkpoint of that city vouching for exactly its size
  and head, and only a longer log replaces it.
* Public key material only: city names, sizes, hashes, signatures and times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select

from node.storage.database import Database
from node.storage.schema import (
    KeylogCheckpointRow,
    KeylogCountersignatureRow,
    KeylogEquivocationRow,
    PeerKeylogRow,
)
from protocol import codec
from protocol.equivocation import EquivocationProof, detect_equivocation
from protocol.keylog import (
    MAX_CHECKPOINT_BYTES,
    Checkpoint,
    KeyLog,
    KeyLogEntry,
    SignedCheckpoint,
    VerifiedCheckpoint,
    VerifiedCountersignature,
)


@dataclass(frozen=True, slots=True)
class Alarm:
    """A stored equivocation proof.

    Attributes:
        city: the city that signed two conflicting checkpoints.
        size: the size of the smaller checkpoint.
        proof: the exact encoded ``EquivocationProof``.
        reported_by: the peer whose message completed the proof.
        detected_at: when (Unix seconds).
    """

    city: str
    size: int
    proof: bytes
    reported_by: str
    detected_at: float


@dataclass(frozen=True, slots=True)
class Witnessing:
    """One countersignature of a city's checkpoint, as listed by ``keys show``.

    Attributes:
        witness: the countersigning city.
        size: the checkpoint's log size.
        head: the checkpoint's head.
        seen_at: when the witness saw it.
    """

    witness: str
    size: int
    head: bytes
    seen_at: float


HEADS_KEPT: Final = 2
"""Distinct heads kept per city and log size: two are the proof; more would only let a peer that
signs head after head fill the database."""


def _stored_checkpoint(signed_bytes: bytes) -> VerifiedCheckpoint:
    # Only verified checkpoints are ever stored: the row's bytes are what passed verification.
    signed = codec.decode(
        signed_bytes, SignedCheckpoint, max_bytes=len(signed_bytes), what="stored checkpoint"
    )
    checkpoint = codec.decode(
        signed.checkpoint_bytes, Checkpoint, max_bytes=MAX_CHECKPOINT_BYTES, what="checkpoint"
    )
    return VerifiedCheckpoint(checkpoint=checkpoint, signed=signed)


class CheckpointStore:
    """The stored checkpoints, countersignatures and proofs.

    Args:
        db: the database.
        clock: Unix seconds now.
    """

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    async def record_checkpoint(
        self, checkpoint: VerifiedCheckpoint, source: str
    ) -> EquivocationProof | None:
        """Keep a verified checkpoint and compare it with those of the same city and size.

        Args:
            checkpoint: the verified checkpoint.
            source: the peer that showed it (its city, or a witness relaying it).

        Returns:
            The proof when this checkpoint completes a **new** one (stored here), else ``None``.

        Raises:
            StorageConflict: a concurrent writer stored the same row first (nothing kept).
        """
        now = self._clock()
        async with self._db.transaction() as s:
            rows = (
                await s.scalars(
                    select(KeylogCheckpointRow).where(
                        KeylogCheckpointRow.city == checkpoint.city,
                        KeylogCheckpointRow.size == checkpoint.size,
                    )
                )
            ).all()
            if len(rows) < HEADS_KEPT and not any(row.head == checkpoint.head for row in rows):
                s.add(
                    KeylogCheckpointRow(
                        city=checkpoint.city,
                        size=checkpoint.size,
                        head=checkpoint.head,
                        signed=codec.encode(checkpoint.signed),
                        source=source,
                        received_at=now,
                    )
                )
            proof = next(
                (
                    found
                    for row in rows
                    if (found := detect_equivocation(_stored_checkpoint(row.signed), checkpoint))
                ),
                None,
            )
            if proof is None:
                return None
            key = (checkpoint.city, checkpoint.size)
            if await s.get(KeylogEquivocationRow, key) is not None:
                return None
            s.add(
                KeylogEquivocationRow(
                    city=checkpoint.city,
                    size=checkpoint.size,
                    proof=codec.encode(proof),
                    reported_by=source,
                    detected_at=now,
                )
            )
            return proof

    async def record_countersignature(self, verified: VerifiedCountersignature) -> None:
        """Keep a verified countersignature (a no-op if that witness's one of that head is kept,
        or two heads of that size are kept already).

        Raises:
            StorageConflict: a concurrent writer stored the same row first (nothing kept).
        """
        checkpoint = verified.checkpoint
        async with self._db.transaction() as s:
            heads = (
                await s.scalars(
                    select(KeylogCountersignatureRow.head).where(
                        KeylogCountersignatureRow.city == checkpoint.city,
                        KeylogCountersignatureRow.witness == verified.witness,
                        KeylogCountersignatureRow.size == checkpoint.size,
                    )
                )
            ).all()
            if checkpoint.head in heads or len(heads) >= HEADS_KEPT:
                return
            s.add(
                KeylogCountersignatureRow(
                    city=checkpoint.city,
                    witness=verified.witness,
                    size=checkpoint.size,
                    head=checkpoint.head,
                    countersignature=codec.encode(verified.signed),
                    seen_at=float(verified.seen_at),
                    received_at=self._clock(),
                )
            )

    async def latest_by_witness(self, witness: str, exclude: str) -> list[bytes]:
        """The countersignature ``witness`` made of each city's largest checkpoint (to relay).

        Args:
            witness: the countersigning city (this node, to build its offer).
            exclude: a city whose checkpoints are left out (the witness itself).

        Returns:
            One encoded ``Countersignature`` per city, ordered by city.
        """
        largest = (
            select(KeylogCountersignatureRow.city, func.max(KeylogCountersignatureRow.size))
            .where(KeylogCountersignatureRow.witness == witness)
            .group_by(KeylogCountersignatureRow.city)
        )
        async with self._db.reading() as s:
            sizes = {city: int(size) for city, size in (await s.execute(largest)).all()}
            rows = (
                await s.scalars(
                    select(KeylogCountersignatureRow)
                    .where(KeylogCountersignatureRow.witness == witness)
                    .order_by(KeylogCountersignatureRow.city, KeylogCountersignatureRow.seen_at)
                )
            ).all()
        chosen: dict[str, bytes] = {}
        for row in rows:  # one per city: of its largest size, the latest seen
            if row.city != exclude and row.size == sizes[row.city]:
                chosen[row.city] = row.countersignature
        return list(chosen.values())

    async def witnesses_of(self, city: str) -> list[Witnessing]:
        """The countersignatures kept of ``city``'s checkpoints, largest size first."""
        async with self._db.reading() as s:
            rows = (
                await s.scalars(
                    select(KeylogCountersignatureRow)
                    .where(KeylogCountersignatureRow.city == city)
                    .order_by(
                        KeylogCountersignatureRow.size.desc(), KeylogCountersignatureRow.witness
                    )
                )
            ).all()
        return [Witnessing(r.witness, r.size, r.head, r.seen_at) for r in rows]

    async def latest_checkpoints(self) -> dict[str, tuple[int, bytes]]:
        """Each city's largest stored checkpoint: city → (size, head)."""
        async with self._db.reading() as s:
            rows = (
                await s.execute(
                    select(
                        KeylogCheckpointRow.city, KeylogCheckpointRow.size, KeylogCheckpointRow.head
                    )
                )
            ).all()
        latest: dict[str, tuple[int, bytes]] = {}
        for city, size, head in rows:
            if city not in latest or size > latest[city][0]:
                latest[city] = (size, head)
        return latest

    async def alarms(self) -> list[Alarm]:
        """Every stored equivocation proof, oldest first."""
        async with self._db.reading() as s:
            rows = (
                await s.scalars(
                    select(KeylogEquivocationRow).order_by(KeylogEquivocationRow.detected_at)
                )
            ).all()
        return [Alarm(r.city, r.size, r.proof, r.reported_by, r.detected_at) for r in rows]

    async def checkpoints_of(self, city: str) -> list[VerifiedCheckpoint]:
        """Every stored checkpoint of ``city``, smallest size first."""
        async with self._db.reading() as s:
            rows = (
                await s.scalars(
                    select(KeylogCheckpointRow.signed)
                    .where(KeylogCheckpointRow.city == city)
                    .order_by(KeylogCheckpointRow.size)
                )
            ).all()
        return [_stored_checkpoint(signed) for signed in rows]

    async def held_log_size(self, city: str) -> int:
        """The size of the log of ``city`` kept (0 when none is)."""
        async with self._db.reading() as s:
            size = await s.scalar(select(PeerKeylogRow.size).where(PeerKeylogRow.city == city))
        return int(size or 0)

    async def log_copy(self, city: str) -> tuple[SignedCheckpoint, KeyLog] | None:
        """The log of ``city`` kept and the stored checkpoint that vouches for it, if any."""
        async with self._db.reading() as s:
            row = await s.get(PeerKeylogRow, city)
            if row is None:
                return None
            signed = await s.scalar(
                select(KeylogCheckpointRow.signed).where(
                    KeylogCheckpointRow.city == city,
                    KeylogCheckpointRow.size == row.size,
                    KeylogCheckpointRow.head == row.head,
                )
            )
            data = row.log
        if signed is None:  # pragma: no cover - keep_log stores only vouched logs
            return None
        entries = codec.decode(
            data, tuple[KeyLogEntry, ...], max_bytes=len(data), what="stored key log"
        )
        return _stored_checkpoint(signed).signed, KeyLog(entries)

    async def keep_log(self, checkpoint: VerifiedCheckpoint, log: KeyLog, source: str) -> bool:
        """Keep ``log`` as the city's log if it is longer than the one kept.

        The caller verified that ``checkpoint`` (stored before, by :meth:`record_checkpoint`)
        vouches for exactly ``log``.

        Returns:
            True if it replaced the kept log (or none was kept).
        """
        now = self._clock()
        async with self._db.transaction() as s:
            row = await s.get(PeerKeylogRow, checkpoint.city)
            if row is not None and row.size >= log.size:
                return False
            if row is None:
                row = PeerKeylogRow(city=checkpoint.city)
                s.add(row)
            row.size, row.head, row.log = log.size, log.head, codec.encode(log.entries)
            row.source, row.fetched_at = source, now
        return True

    async def record_proof(self, proof: EquivocationProof, size: int, source: str) -> bool:
        """Keep a proof found by comparing checkpoints of different sizes through a fetched log.

        Returns:
            True if it is new (none was kept for that city and size).
        """
        city = _stored_checkpoint(codec.encode(proof.first)).city
        async with self._db.transaction() as s:
            if await s.get(KeylogEquivocationRow, (city, size)) is not None:
                return False
            s.add(
                KeylogEquivocationRow(
                    city=city,
                    size=size,
                    proof=codec.encode(proof),
                    reported_by=source,
                    detected_at=self._clock(),
                )
            )
        return True
