"""What a case knows of itself, without its secrets: the summary, the warnings, the quota count.

Owns the read side of the ``cases`` table for the case workflow (the columns of revision 0003)
and the encoding of the sealed identity. Invariants:

* A :class:`CaseSummary` never holds an identity, a message body or a key: only routing metadata
  (cities, units, states, times), the protected-identity flag, the quota slot and the warning id.
  It is safe to list.
* The identity is stored as the exact MessagePack encoding of the referral's
  :class:`~protocol.messages.Person`, sealed under the case key by ``CaseStore.seal_identity``;
  :func:`decode_identity` checks it as strictly as a peer's message.
* Quota counts are read from ``cases.quota_year``: a referral uses a slot of its home city's year
  when it is sent (home node) or received (receiving node), and keeps it whatever happens next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from node.storage.schema import CaseRow
from protocol import codec
from protocol.agreement_rules import POLICE_ADVICE_WARNING
from protocol.cases import CaseState, Role
from protocol.messages import Person

UNASSIGNED_UNIT: Final = ""
"""The unit of a received inquiry addressed to no unit: any case worker of the city may take it."""

POLICE_ADVICE: Final = "police_advice"
"""Warning id: the police handbook advises against relocation when the threat is not high."""

WARNINGS: Final[dict[str, str]] = {POLICE_ADVICE: POLICE_ADVICE_WARNING}
"""Every warning a case can carry, by id, with the sentence shown to the case worker."""

MAX_IDENTITY_BYTES: Final = 8 * 1024
MAX_LISTED: Final = 500
"""The most cases one listing returns."""


@dataclass(frozen=True, slots=True)
class CaseSummary:
    """A case as this node holds it, without identity, messages or keys.

    Attributes:
        case_id: the 16-byte id, the same at both nodes.
        role: whether this node is the home or the receiving city.
        state: the case state.
        peer: the other city.
        unit: this node's unit handling it (:data:`UNASSIGNED_UNIT` for a received inquiry
            addressed to no unit, until a unit replies).
        home_city: the home city.
        receiving_city: the receiving city.
        peer_unit: the other city's unit, once known.
        protected_identity: the person has protected personal data.
        quota_year: the quota year of its referral, once referred.
        quota_index: the referral's slot in that year.
        warning: the id of the warning shown on the case (:data:`WARNINGS`), or ``None``.
        created_at: when the case came to this node (Unix seconds).
        updated_at: when it last changed.
        closed_at: when it ended, or ``None``.
        shredded: whether its key was destroyed.
        has_identity: whether an identity is stored (sealed) for it.
    """

    case_id: bytes
    role: Role
    state: CaseState
    peer: str
    unit: str
    home_city: str
    receiving_city: str
    peer_unit: str | None
    protected_identity: bool
    quota_year: int | None
    quota_index: int | None
    warning: str | None
    created_at: float
    updated_at: float
    closed_at: float | None
    shredded: bool
    has_identity: bool

    @property
    def assigned(self) -> bool:
        """Whether a unit of this node holds the case."""
        return self.unit != UNASSIGNED_UNIT


def summary_of(row: CaseRow, city: str) -> CaseSummary:
    """Read a case row (``city``: this node, for rows written before revision 0003)."""
    role = Role(row.role)
    home_city = row.home_city or (city if role is Role.HOME else row.peer)
    receiving_city = row.receiving_city or (row.peer if role is Role.HOME else city)
    return CaseSummary(
        case_id=row.case_id,
        role=role,
        state=CaseState(row.state),
        peer=row.peer,
        unit=row.unit,
        home_city=home_city,
        receiving_city=receiving_city,
        peer_unit=row.peer_unit,
        protected_identity=bool(row.protected_identity),
        quota_year=row.quota_year,
        quota_index=row.quota_index,
        warning=row.warning,
        created_at=row.created_at,
        updated_at=row.updated_at,
        closed_at=row.closed_at,
        shredded=row.wrapped_key is None,
        has_identity=row.sealed_identity is not None,
    )


async def load_summary(session: AsyncSession, case_id: bytes, city: str) -> CaseSummary | None:
    """Return the case, or ``None`` if this node holds no such case."""
    row = await session.get(CaseRow, case_id)
    return None if row is None else summary_of(row, city)


async def list_summaries(
    session: AsyncSession, city: str, *, unit: str | None, limit: int
) -> Sequence[CaseSummary]:
    """Return cases, newest change first.

    Args:
        session: a reading session.
        city: this node's city.
        unit: only this unit's cases and the unassigned ones, or ``None`` for every case.
        limit: the most to return.
    """
    query = select(CaseRow).order_by(CaseRow.updated_at.desc(), CaseRow.case_id).limit(limit)
    if unit is not None:
        query = query.where(or_(CaseRow.unit == unit, CaseRow.unit == UNASSIGNED_UNIT))
    rows = (await session.scalars(query)).all()
    return [summary_of(row, city) for row in rows]


async def count_referrals(session: AsyncSession, home_city: str, year: int) -> int:
    """Return how many referrals of ``home_city`` in quota ``year`` this node holds."""
    count = await session.scalar(
        select(func.count())
        .select_from(CaseRow)
        .where(CaseRow.home_city == home_city, CaseRow.quota_year == year)
    )
    return int(count or 0)


async def quota_slot_taken(session: AsyncSession, home_city: str, year: int, index: int) -> bool:
    """Return whether a referral of ``home_city`` already used slot ``index`` of ``year``."""
    found = await session.scalar(
        select(CaseRow.case_id).where(
            CaseRow.home_city == home_city,
            CaseRow.quota_year == year,
            CaseRow.quota_index == index,
        )
    )
    return found is not None


def encode_identity(person: Person) -> bytes:
    """The bytes sealed as a case's identity: the referral's person, as on the wire."""
    return codec.encode(person)


def decode_identity(data: bytes) -> Person:
    """Read back what :func:`encode_identity` wrote.

    Raises:
        DecodeError: the bytes are not a valid person (a stored value was altered).
    """
    return codec.decode(data, Person, max_bytes=MAX_IDENTITY_BYTES, what="identity")
