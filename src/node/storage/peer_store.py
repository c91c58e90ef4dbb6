"""The ``peers`` table: the other member cities, where to reach them, and their key bundles.

Owns what this node remembers about each peer between restarts. Invariants:

* The store keeps bytes it was given; it does not verify them. A key bundle and its TLS
  certificates are stored only after the caller verified them against the agreement
  (``protocol.keys``); a bundle whose sequence is lower than the one stored is refused
  (:class:`StaleBundle`), so a replayed old bundle cannot roll a peer's keys back here.
* ``fingerprint_verified_at`` records when an operator compared the peer's numeric fingerprint
  out of band; ``last_seen_at`` when the peer last reached us (it never moves backwards).
* TLS certificates are stored as one MessagePack array of DER or PEM byte strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from node.errors import NodeError
from node.storage.database import Database
from node.storage.schema import PeerRow
from protocol import codec

MAX_CERTIFICATES: Final = 16
MAX_CERTIFICATE_BYTES: Final = 64 * 1024
MAX_STATEMENTS_BYTES: Final = 256 * 1024


class UnknownPeer(NodeError):
    """The city is not among the stored peers (``upsert_peer`` it first)."""

    code: ClassVar[str] = "unknown_peer"


class StaleBundle(NodeError):
    """A key bundle older (by sequence) than the one stored: refused, the stored one is kept."""

    code: ClassVar[str] = "stale_key_bundle"


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """What this node knows about one peer.

    Attributes:
        city: the peer's city name.
        endpoint: the base URL of its federation listener.
        bundle: its signed key bundle as last stored, or ``None`` before the first fetch.
        bundle_sequence: that bundle's sequence number, or ``None``.
        tls_certificates: its TLS certificates (DER or PEM), empty before the first fetch.
        fingerprint_verified_at: when an operator verified its fingerprint, or ``None``.
        last_seen_at: when it last reached us, or ``None``.
        identity_successions: its identity-key succession statements, oldest first (the chain
            from the agreement's key to the key that signed ``bundle``), empty if none.
        identity_revocations: its identity-key revocations, empty if none.
    """

    city: str
    endpoint: str
    bundle: bytes | None
    bundle_sequence: int | None
    tls_certificates: tuple[bytes, ...]
    fingerprint_verified_at: float | None
    last_seen_at: float | None
    identity_successions: tuple[bytes, ...] = ()
    identity_revocations: tuple[bytes, ...] = ()


class PeerStore:
    """The peers table.

    Args:
        db: the database.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def upsert_peer(self, city: str, endpoint: str) -> None:
        """Add a peer, or change its endpoint (everything else is kept)."""
        insert = postgresql_insert if self._db.dialect == "postgresql" else sqlite_insert
        statement = insert(PeerRow).values(city=city, endpoint=endpoint)
        statement = statement.on_conflict_do_update(
            index_elements=[PeerRow.city], set_={"endpoint": statement.excluded.endpoint}
        )
        async with self._db.transaction() as s:
            await s.execute(statement)

    async def store_bundle(
        self,
        city: str,
        bundle: bytes,
        sequence: int,
        certificates: Sequence[bytes],
        *,
        successions: Sequence[bytes] | None = None,
        revocations: Sequence[bytes] = (),
    ) -> None:
        """Store a peer's verified key bundle and TLS certificates.

        Args:
            city: the peer.
            bundle: the signed key bundle bytes, as received.
            sequence: its sequence number.
            certificates: its TLS certificates.
            successions: its identity-key succession statements (``None``: keep the stored
                statements).
            revocations: its identity-key revocations (with ``successions``).

        Raises:
            UnknownPeer: ``city`` is not stored.
            StaleBundle: ``sequence`` is lower than the stored bundle's.
            ValueError: too many or too large certificates.
        """
        if len(certificates) > MAX_CERTIFICATES or any(
            len(c) > MAX_CERTIFICATE_BYTES for c in certificates
        ):
            raise ValueError(
                f"at most {MAX_CERTIFICATES} certificates of {MAX_CERTIFICATE_BYTES} bytes each"
            )
        async with self._db.transaction() as s:
            row = await _row(s, city)
            if row.bundle_sequence is not None and sequence < row.bundle_sequence:
                raise StaleBundle(
                    f"key bundle {sequence} of {city} is older than the stored "
                    f"{row.bundle_sequence}: kept the stored one"
                )
            row.bundle = bundle
            row.bundle_sequence = sequence
            row.tls_certificates = codec.encode(tuple(certificates))
            if successions is not None:
                row.identity_statements = codec.encode((tuple(successions), tuple(revocations)))

    async def get(self, city: str) -> PeerRecord | None:
        """Return the peer, or ``None`` if it is not stored."""
        async with self._db.reading() as s:
            row = await s.get(PeerRow, city)
            return None if row is None else _record(row)

    async def all(self) -> list[PeerRecord]:
        """Return every stored peer, sorted by city."""
        async with self._db.reading() as s:
            rows = (await s.scalars(select(PeerRow).order_by(PeerRow.city))).all()
            return [_record(row) for row in rows]

    async def mark_seen(self, city: str, at: float) -> None:
        """Record that the peer reached us at ``at`` (ignored if not later than the stored time).

        Raises:
            UnknownPeer: ``city`` is not stored.
        """
        async with self._db.transaction() as s:
            row = await _row(s, city)
            if row.last_seen_at is None or at > row.last_seen_at:
                row.last_seen_at = at

    async def mark_verified(self, city: str, at: float | None) -> None:
        """Record that an operator verified the peer's fingerprint out of band at ``at``
        (``None``: a package with another identity key was imported, not verified yet).

        Raises:
            UnknownPeer: ``city`` is not stored.
        """
        async with self._db.transaction() as s:
            row = await _row(s, city)
            row.fingerprint_verified_at = at


async def _row(session: AsyncSession, city: str) -> PeerRow:
    row = await session.get(PeerRow, city)
    if row is None:
        raise UnknownPeer(f"{city} is not a stored peer")
    return row


def _record(row: PeerRow) -> PeerRecord:
    certificates: tuple[bytes, ...] = ()
    if row.tls_certificates is not None:
        certificates = codec.decode(
            row.tls_certificates,
            tuple[bytes, ...],
            max_bytes=MAX_CERTIFICATES * (MAX_CERTIFICATE_BYTES + 8) + 8,
            what="stored TLS certificates",
        )
    return PeerRecord(
        city=row.city,
        endpoint=row.endpoint,
        bundle=row.bundle,
        bundle_sequence=row.bundle_sequence,
        tls_certificates=certificates,
        fingerprint_verified_at=row.fingerprint_verified_at,
        last_seen_at=row.last_seen_at,
        identity_successions=_statements(row.identity_statements)[0],
        identity_revocations=_statements(row.identity_statements)[1],
    )


def _statements(stored: bytes | None) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    if stored is None:
        return (), ()
    return codec.decode(
        stored,
        tuple[tuple[bytes, ...], tuple[bytes, ...]],
        max_bytes=MAX_STATEMENTS_BYTES,
        what="stored identity statements",
    )
