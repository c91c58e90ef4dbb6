"""The balance between the cities: each node's own counts, and the statements nodes exchange.

Owns the ``balance_statements`` table and the node's side of ``BalanceStatement`` (tag 20,
``docs/spec/20-messages.md`` §3.5). MISSION.md ("Balance"): the cities want to see how many
relocations each sent and received, per year. No node holds the whole picture — a node only holds
the cases it is a party to — so each city counts its own and states the counts to the others.
Invariants:

* **Counted from non-secret columns only**: a relocation is a case with a referral, counted in its
  quota year (``cases.quota_year``, the year of the referral's ``QuotaCount``) at the home node as
  *sent* and at the receiving node as *received*, per other city (``cases.peer``). These columns
  survive crypto-shredding (``node.retention``), so the counts never drop when a case is erased,
  and they name no case or person: a statement is anonymous.
* **What a node states**: for every year in which it took part in a relocation, or for which a
  peer stated one, its counts per other city (:func:`statement_of`), sent to every peer through
  :class:`~node.outgoing.Outgoing` like any message (sealed, signed, receipted). The
  :class:`BalanceAnnouncer` queues a statement for a peer only when the counts differ from the
  last it queued for that peer since the node started: once after a start, then on each change.
  ``serve`` runs it every ``BALANCE_S`` (30 s), the first time that long after the start (the
  peers' keys are fetched by then), so a referral sent or received is stated within 30 s.
  A city with no relocation and no peer's statement states nothing.
* **What a node keeps**: per stating city and year, the newest statement (:func:`record_statement`,
  run by the case ledger in the inbox's transaction): a later ``as_of`` wins, and on the same day
  the larger total (counts never go down). A statement is refused (``invalid_field``, the peer's
  fault) when its city is not the envelope's sender or its ``as_of`` lies more than a day after
  the receiver's date. Every statement received stays in the inbox as signed evidence.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from node.errors import NodeError
from node.storage.database import Database
from node.storage.schema import BalanceStatementRow, CaseRow
from protocol import codec
from protocol.cases import Role
from protocol.errors import ErrorCode, LocalProtocolError, ProtocolError
from protocol.messages import BalanceStatement, CityCount

if TYPE_CHECKING:  # the case ledger (imported by node.outgoing) records statements from here
    from node.outgoing import Outgoing

logger = logging.getLogger(__name__)

MAX_STATEMENT_BYTES: Final = 64 * 1024
"""The largest stored statement read back (512 cities of counts fit in a few KiB)."""
FUTURE_DAYS: Final = 1
"""How far after the receiver's date a statement's ``as_of`` may lie (time zones, clock skew)."""


@dataclass(frozen=True, slots=True)
class YearCounts:
    """One city's relocations in one year, per other city.

    Attributes:
        sent_to: referrals it made as home city, by receiving city.
        received_from: referrals it received as receiving city, by home city.
    """

    sent_to: Mapping[str, int] = field(default_factory=dict)
    received_from: Mapping[str, int] = field(default_factory=dict)

    @property
    def sent(self) -> int:
        """All referrals made."""
        return sum(self.sent_to.values())

    @property
    def received(self) -> int:
        """All referrals received."""
        return sum(self.received_from.values())


@dataclass(frozen=True, slots=True)
class StatedCounts:
    """What a city says of one year: its own counts, or the newest statement it sent us.

    Attributes:
        city: the city whose counts these are.
        year: the year.
        counts: the counts per other city.
        as_of: the day they were counted.
        own: this node's own count (from its cases), not a statement received.
        message_id: the envelope that carried a received statement (``None`` for our own).
    """

    city: str
    year: int
    counts: YearCounts
    as_of: datetime.date
    own: bool
    message_id: bytes | None = None


def date_of(at: float) -> datetime.date:
    """The UTC date of a Unix time."""
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).date()


async def count_own(session: AsyncSession) -> dict[int, YearCounts]:
    """Count this node's relocations per quota year, from the non-secret columns of ``cases``.

    Args:
        session: a reading (or writing) session.

    Returns:
        The counts of every year in which this node took part in a referral.
    """
    rows = (
        await session.execute(
            select(CaseRow.quota_year, CaseRow.role, CaseRow.peer, func.count())
            .where(CaseRow.quota_year.is_not(None))
            .group_by(CaseRow.quota_year, CaseRow.role, CaseRow.peer)
        )
    ).all()
    sent: dict[int, dict[str, int]] = {}
    received: dict[int, dict[str, int]] = {}
    for year, role, peer, count in rows:
        if year is None:  # pragma: no cover - excluded by the query
            continue
        side = sent if role == Role.HOME.value else received
        side.setdefault(int(year), {})[str(peer)] = int(count)
    return {
        year: YearCounts(sent_to=sent.get(year, {}), received_from=received.get(year, {}))
        for year in sorted(sent.keys() | received.keys())
    }


def statement_of(
    city: str, year: int, counts: YearCounts, as_of: datetime.date
) -> BalanceStatement:
    """The statement of ``counts``, in its one canonical form (cities ascending, no zeros).

    Raises:
        LocalProtocolError: ``invalid_field`` — ``as_of`` precedes ``year``, or a count is out
            of range.
    """
    return codec.check(
        BalanceStatement(
            city=city,
            year=year,
            sent=counts.sent,
            received=counts.received,
            as_of=as_of,
            sent_to=_city_counts(counts.sent_to),
            received_from=_city_counts(counts.received_from),
        ),
        what="balance statement",
    )


def counts_of(statement: BalanceStatement) -> YearCounts:
    """The per-city counts a statement gives."""
    return YearCounts(
        sent_to={entry.city: entry.count for entry in statement.sent_to},
        received_from={entry.city: entry.count for entry in statement.received_from},
    )


def _city_counts(counts: Mapping[str, int]) -> tuple[CityCount, ...]:
    return tuple(CityCount(city=c, count=n) for c, n in sorted(counts.items()) if n > 0)


async def record_statement(
    session: AsyncSession,
    sender: str,
    statement: BalanceStatement,
    *,
    message_id: bytes,
    at: float,
) -> bool:
    """Keep a statement received from ``sender`` if it is the newest of its year.

    Runs in the transaction that stores the envelope in the inbox (the case ledger calls it).

    Returns:
        Whether it replaced what was kept (an older one arriving late is only kept in the inbox).

    Raises:
        LocalProtocolError: ``invalid_field`` — the statement's city is not the sender, or its
            ``as_of`` lies in the future; the ledger makes it the peer's fault.
    """
    if statement.city != sender:
        raise LocalProtocolError(
            ErrorCode.INVALID_FIELD, "balance_statement city is not the envelope's sender"
        )
    if statement.as_of > date_of(at) + datetime.timedelta(days=FUTURE_DAYS):
        raise LocalProtocolError(
            ErrorCode.INVALID_FIELD, "balance_statement as_of lies in the future"
        )
    row = await session.get(BalanceStatementRow, (sender, statement.year))
    total = statement.sent + statement.received
    if row is not None and (row.as_of, row.sent + row.received) > (statement.as_of, total):
        return False
    if row is None:
        row = BalanceStatementRow(sender=sender, year=statement.year)
        session.add(row)
    row.sent = statement.sent
    row.received = statement.received
    row.as_of = statement.as_of
    row.statement = codec.encode(statement)
    row.message_id = message_id
    row.received_at = at
    await session.flush()
    return True


async def load_statements(session: AsyncSession, year: int | None = None) -> list[StatedCounts]:
    """The statements kept, of one year or all, ordered by year then city.

    Raises:
        DecodeError: a stored statement does not decode (the row was altered).
    """
    query = select(BalanceStatementRow).order_by(
        BalanceStatementRow.year, BalanceStatementRow.sender
    )
    if year is not None:
        query = query.where(BalanceStatementRow.year == year)
    found = []
    for row in (await session.scalars(query)).all():
        statement = codec.decode(
            row.statement, BalanceStatement, max_bytes=MAX_STATEMENT_BYTES, what="statement"
        )
        found.append(
            StatedCounts(
                city=row.sender,
                year=row.year,
                counts=counts_of(statement),
                as_of=row.as_of,
                own=False,
                message_id=bytes(row.message_id),
            )
        )
    return found


async def stated_years(session: AsyncSession) -> set[int]:
    """The years for which some peer's statement is kept."""
    return {int(y) for y in (await session.scalars(select(BalanceStatementRow.year))).all()}


class BalanceAnnouncer:
    """States this node's counts to every peer, when they change (and once after a start).

    Args:
        city: this node's city.
        db: the database (cases and statements are read).
        outgoing: seals and queues each statement.
        peers: the peers to state to (read at each call: the agreement's other members).
        clock: Unix seconds now (the ``as_of`` date).
    """

    def __init__(
        self,
        *,
        city: str,
        db: Database,
        outgoing: Outgoing,
        peers: Callable[[], Collection[str]],
        clock: Callable[[], float],
    ) -> None:
        self._city = city
        self._db = db
        self._outgoing = outgoing
        self._peers = peers
        self._clock = clock
        self._queued: dict[tuple[str, int], YearCounts] = {}

    async def statements(self) -> list[BalanceStatement]:
        """This node's statements as of now: every year it counts a relocation or a peer
        stated one, ascending."""
        async with self._db.reading() as s:
            own = await count_own(s)
            years = {year for year, counts in own.items() if counts.sent or counts.received}
            years |= await stated_years(s)
        today = date_of(self._clock())
        return [
            statement_of(self._city, year, own.get(year, YearCounts()), today)
            for year in sorted(years)
            if year <= today.year
        ]

    async def announce(self) -> int:
        """Queue a statement for each peer whose last one from us differs, or that has none.

        A peer that cannot be sent to now (no keys from it yet, a full outbox, the database) is
        logged and tried again at the next call.

        Returns:
            How many statements were queued.
        """
        queued = 0
        for statement in await self.statements():
            counts = counts_of(statement)
            for peer in sorted(self._peers()):
                if self._queued.get((peer, statement.year)) == counts:
                    continue
                try:
                    await self._outgoing.send(peer, statement)
                except (NodeError, ProtocolError) as e:
                    logger.warning(
                        "TX [%s] balance statement of %d not queued: %s",
                        peer,
                        statement.year,
                        e.code,
                    )
                    continue
                self._queued[(peer, statement.year)] = counts
                queued += 1
        return queued
