"""The balance report: relocations sent and received per city and year, and where cities disagree.

Owns what coordinators and operators are shown of the balance (MISSION.md: "Stockholm has sent
three and received none"), for ``GET /api/v1/reports/balance`` and ``citynode report balance``.
Invariants:

* **Each city's numbers are its own word**: this node's from its own cases, every other city's
  from the newest statement it sent (``node.balance``); a city that stated nothing for a year is
  shown as such (``source: "none"``, counts ``null``), never as zero.
* **Disagreements are shown, not resolved**: for every pair of cities and year that either names,
  the report puts what the home city says it sent beside what the receiving city says it
  received; when both have stated the year and the numbers differ, the pair is a disagreement.
  (A statement in flight looks like one for a moment; a lasting one needs the coordinators.)
* Counts only: the report names cities, years and numbers, never a case or a person. Reading it is
  allowed to the roles with ``Action.READ_BALANCE`` (coordinators, operators) and audited
  (``balance_read``), as every refusal is.

The JSON shape is the :class:`BalanceReport` struct (its OpenAPI schema is generated from it).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Final, Literal

import msgspec

from node.access import Action, Forbidden, Principal, require
from node.audit import AuditTrail
from node.balance import StatedCounts, YearCounts, count_own, date_of, load_statements
from node.storage.database import Database
from protocol.fields import FIRST_DATE, LAST_DATE

FIRST_YEAR: Final = FIRST_DATE.year
LAST_YEAR: Final = LAST_DATE.year

Source = Literal["own", "statement", "none"]


class CityBalance(msgspec.Struct, frozen=True, kw_only=True):
    """One city's relocations, as that city states them.

    Attributes:
        city: the city.
        sent: referrals it made as home city (``null``: it stated nothing).
        received: referrals it received as receiving city (``null``: it stated nothing).
        source: ``own`` (this node, from its cases), ``statement`` (the city's newest statement),
            or ``none``.
        as_of: the newest day its counts were taken.
        missing_years: the years of the report it stated nothing for.
    """

    city: str
    sent: int | None
    received: int | None
    source: Source
    as_of: datetime.date | None
    missing_years: list[int]


class PairBalance(msgspec.Struct, frozen=True, kw_only=True):
    """What two cities say about the relocations between them in one year.

    Attributes:
        year: the year.
        home_city: the city that sent (as home city).
        receiving_city: the city that received.
        stated_by_home: how many the home city says it sent there (``null``: no statement).
        stated_by_receiving: how many the receiving city says it received from there.
        agree: whether both stated and agree (``null`` when one has not stated the year).
    """

    year: int
    home_city: str
    receiving_city: str
    stated_by_home: int | None
    stated_by_receiving: int | None
    agree: bool | None


class YearBalance(msgspec.Struct, frozen=True, kw_only=True):
    """The balance of one year."""

    year: int
    cities: list[CityBalance]
    pairs: list[PairBalance]


class BalanceReport(msgspec.Struct, frozen=True, kw_only=True):
    """The balance between the cities, as this node knows it.

    Attributes:
        city: this node's city.
        as_of: the day the report was made.
        years: the years covered, ascending.
        cities: per city, its counts summed over ``years``.
        by_year: the same per year, with the pairs of cities.
        disagreements: the pairs whose two cities both stated the year and differ.
    """

    city: str
    as_of: datetime.date
    years: list[int]
    cities: list[CityBalance]
    by_year: list[YearBalance]
    disagreements: list[PairBalance]


def build_report(
    *,
    city: str,
    today: datetime.date,
    members: Iterable[str],
    own: dict[int, YearCounts],
    stated: Sequence[StatedCounts],
    year: int | None,
) -> BalanceReport:
    """Put this node's counts and the peers' statements side by side.

    Args:
        city: this node's city.
        today: the report's date.
        members: the cities of the agreement in force (shown even when they stated nothing).
        own: this node's counts per year (``node.balance.count_own``).
        stated: the peers' newest statements.
        year: one year, or ``None`` for every year that a count or statement names (and the
            current one).

    Returns:
        The report.
    """
    words: dict[tuple[str, int], StatedCounts] = {(s.city, s.year): s for s in stated}
    for y, counts in own.items():  # this node's word on itself is its own count
        words[(city, y)] = StatedCounts(city=city, year=y, counts=counts, as_of=today, own=True)
    years = sorted({y for _, y in words} | {today.year}) if year is None else [year]
    for y in years:  # no relocation in a year: this node's own count is zero
        words.setdefault((city, y), StatedCounts(city, y, YearCounts(), today, own=True))
    cities = set(members) | {city} | {c for c, _ in words}
    for word in words.values():
        cities |= word.counts.sent_to.keys() | word.counts.received_from.keys()
    names = sorted(cities)
    by_year = [_year(y, names, words) for y in years]
    totals = [_total(name, by_year) for name in names]
    disagreements = [pair for y in by_year for pair in y.pairs if pair.agree is False]
    return BalanceReport(
        city=city,
        as_of=today,
        years=years,
        cities=totals,
        by_year=by_year,
        disagreements=disagreements,
    )


def _year(
    year: int, names: Sequence[str], words: dict[tuple[str, int], StatedCounts]
) -> YearBalance:
    cities = [_city(name, year, words.get((name, year))) for name in names]
    pairs: set[tuple[str, str]] = set()
    for name in names:
        word = words.get((name, year))
        if word is not None:
            pairs |= {(name, other) for other in word.counts.sent_to}
            pairs |= {(other, name) for other in word.counts.received_from}
    return YearBalance(
        year=year,
        cities=cities,
        pairs=[_pair(year, home, receiving, words) for home, receiving in sorted(pairs)],
    )


def _city(name: str, year: int, word: StatedCounts | None) -> CityBalance:
    if word is None:
        return CityBalance(
            city=name, sent=None, received=None, source="none", as_of=None, missing_years=[year]
        )
    return CityBalance(
        city=name,
        sent=word.counts.sent,
        received=word.counts.received,
        source="own" if word.own else "statement",
        as_of=word.as_of,
        missing_years=[],
    )


def _pair(
    year: int, home: str, receiving: str, words: dict[tuple[str, int], StatedCounts]
) -> PairBalance:
    by_home, by_receiving = words.get((home, year)), words.get((receiving, year))
    sent = None if by_home is None else by_home.counts.sent_to.get(receiving, 0)
    received = None if by_receiving is None else by_receiving.counts.received_from.get(home, 0)
    agree = None if sent is None or received is None else sent == received
    return PairBalance(
        year=year,
        home_city=home,
        receiving_city=receiving,
        stated_by_home=sent,
        stated_by_receiving=received,
        agree=agree,
    )


def _total(name: str, by_year: Sequence[YearBalance]) -> CityBalance:
    rows = [c for y in by_year for c in y.cities if c.city == name]
    known = [c for c in rows if c.source != "none"]
    missing = [y for row in rows for y in row.missing_years]
    if not known:
        return CityBalance(
            city=name, sent=None, received=None, source="none", as_of=None, missing_years=missing
        )
    dates = [c.as_of for c in known if c.as_of is not None]
    return CityBalance(
        city=name,
        sent=sum(c.sent or 0 for c in known),
        received=sum(c.received or 0 for c in known),
        source="own" if known[0].source == "own" else "statement",
        as_of=max(dates) if dates else None,
        missing_years=missing,
    )


class BalanceService:
    """The balance report for the users of one node.

    Args:
        city: this node's city.
        db: the database.
        audit: the audit trail (every read and refusal).
        members: the cities of the agreement in force (read at each call).
        clock: Unix seconds now.
    """

    def __init__(
        self,
        *,
        city: str,
        db: Database,
        audit: AuditTrail,
        members: Callable[[], Collection[str]],
        clock: Callable[[], float],
    ) -> None:
        self._city = city
        self._db = db
        self._audit = audit
        self._members = members
        self._clock = clock

    async def report(self, principal: Principal, year: int | None = None) -> BalanceReport:
        """The report, for a principal allowed to read the balance; the read is audited.

        Args:
            principal: who asks.
            year: one year (``FIRST_YEAR``..``LAST_YEAR``), or ``None`` for all.

        Raises:
            Forbidden: the role may not read the balance (audited).
        """
        try:
            require(principal, Action.READ_BALANCE)
        except Forbidden as e:
            await self._audit.record(
                None,
                principal=principal,
                action="balance_read",
                case_id=None,
                purpose=None,
                outcome=e.code,
            )
            raise
        report = await self.compute(year)
        await self._audit.record(
            None,
            principal=principal,
            action="balance_read",
            case_id=None,
            purpose=None,
            outcome="ok",
        )
        return report

    async def compute(self, year: int | None = None) -> BalanceReport:
        """The report, without access check or audit (for callers that did both)."""
        async with self._db.reading() as s:
            own = await count_own(s)
            stated = await load_statements(s, year)
        if year is not None:
            own = {year: own[year]} if year in own else {}
        return build_report(
            city=self._city,
            today=date_of(self._clock()),
            members=self._members(),
            own=own,
            stated=stated,
            year=year,
        )
