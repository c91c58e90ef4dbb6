"""The balance between the cities: own counts, signed statements exchanged, the report.

The report is checked first on its own (``build_report``: each city's word, disagreements, a
city that said nothing); then between real nodes on SQLite and PostgreSQL: a referral is counted
at both ends, stated by each to the other through the outbox and inbox, kept as the newest per
city and year, refused when it lies about its sender or its date; and last through ``serve``, the
statements going out by themselves and the report read through the case API.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from node_fixtures import (
    UNITS,
    Federation,
    deliver_outbox,
    fresh_federation,
    inbox_processor,
    seal,
    statuses,
    wait_until,
)
from relocation_support import BACKENDS, backend_federation, relocation, sqlite_template
from sqlalchemy import select

from node.access import Principal, UserRole
from node.audit import AuditTrail
from node.balance import (
    BalanceAnnouncer,
    StatedCounts,
    YearCounts,
    count_own,
    load_statements,
    statement_of,
)
from node.balance_report import BalanceReport, BalanceService, build_report
from node.delivery import ACCEPTED
from node.service import Node
from node.serving import serve
from node.storage.schema import BalanceStatementRow, InboxRow
from node.users import UserStore
from protocol.messages import BalanceStatement, CityCount

TODAY = datetime.date(2026, 11, 30)
MEMBERS = ("stockholm", "goteborg", "malmo")


def _stated(city: str, year: int, **counts: dict[str, int]) -> StatedCounts:
    return StatedCounts(
        city=city, year=year, counts=YearCounts(**counts), as_of=TODAY, own=False, message_id=None
    )


def _city(report: BalanceReport, city: str) -> tuple[int | None, int | None, str]:
    (found,) = [c for c in report.cities if c.city == city]
    return found.sent, found.received, found.source


# --- the report on its own -----------------------------------------------------------------------


def test_the_seed_stockholm_sent_three_and_received_none_is_the_report() -> None:
    own = {
        2024: YearCounts(sent_to={"goteborg": 1}),
        2025: YearCounts(sent_to={"goteborg": 1, "malmo": 1}),
    }
    stated = [
        _stated("goteborg", 2024, received_from={"stockholm": 1}),
        _stated("goteborg", 2025, received_from={"stockholm": 1}, sent_to={"malmo": 1}),
        _stated("malmo", 2025, received_from={"goteborg": 1, "stockholm": 1}),
    ]
    report = build_report(
        city="stockholm", today=TODAY, members=MEMBERS, own=own, stated=stated, year=None
    )
    assert report.years == [2024, 2025, 2026]
    assert _city(report, "stockholm") == (3, 0, "own")
    assert _city(report, "goteborg") == (1, 2, "statement")
    assert _city(report, "malmo") == (0, 2, "statement")
    assert report.disagreements == []
    malmo = next(c for c in report.cities if c.city == "malmo")
    assert malmo.missing_years == [2024, 2026]  # Malmö said nothing of those years


def test_two_cities_that_disagree_are_shown_with_both_numbers() -> None:
    own = {2026: YearCounts(sent_to={"goteborg": 2})}
    stated = [_stated("goteborg", 2026, received_from={"stockholm": 1})]
    report = build_report(
        city="stockholm", today=TODAY, members=MEMBERS, own=own, stated=stated, year=2026
    )
    (pair,) = report.disagreements
    assert (pair.home_city, pair.receiving_city, pair.year) == ("stockholm", "goteborg", 2026)
    assert (pair.stated_by_home, pair.stated_by_receiving, pair.agree) == (2, 1, False)


def test_a_third_city_sees_two_peers_disagree() -> None:
    stated = [
        _stated("stockholm", 2026, sent_to={"goteborg": 2}),
        _stated("goteborg", 2026, received_from={}),
    ]
    report = build_report(
        city="malmo", today=TODAY, members=MEMBERS, own={}, stated=stated, year=2026
    )
    (pair,) = report.disagreements
    assert (pair.stated_by_home, pair.stated_by_receiving) == (2, 0)
    assert _city(report, "malmo") == (0, 0, "own")


def test_a_city_that_stated_nothing_is_none_not_zero_and_not_a_disagreement() -> None:
    own = {2026: YearCounts(sent_to={"malmo": 1})}
    report = build_report(
        city="stockholm", today=TODAY, members=MEMBERS, own=own, stated=[], year=2026
    )
    assert _city(report, "malmo") == (None, None, "none")
    assert _city(report, "goteborg") == (None, None, "none")
    (year,) = report.by_year
    (pair,) = year.pairs
    assert (pair.stated_by_home, pair.stated_by_receiving, pair.agree) == (1, None, None)
    assert report.disagreements == []


def test_a_statement_has_one_canonical_form_without_zeros() -> None:
    counts = YearCounts(sent_to={"malmo": 1, "goteborg": 2, "uppsala": 0}, received_from={})
    statement = statement_of("stockholm", 2026, counts, TODAY)
    assert [c.city for c in statement.sent_to] == ["goteborg", "malmo"]
    assert (statement.sent, statement.received) == (3, 0)


# --- between real nodes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqlite_template(tmp_path_factory)


@pytest.fixture(params=BACKENDS)
async def fed(
    request: pytest.FixtureRequest, template: Path, tmp_path: Path
) -> AsyncIterator[Federation]:
    """The trio on SQLite and on PostgreSQL: for what the statements store."""
    async with backend_federation(request.param, template, tmp_path) as federation:
        yield federation


@pytest.fixture
async def trio(template: Path, tmp_path: Path) -> AsyncIterator[Federation]:
    """The trio on SQLite: for refusals, decided before anything is stored."""
    async with backend_federation("sqlite", template, tmp_path) as federation:
        yield federation


def _announcer(node: Node) -> BalanceAnnouncer:
    return BalanceAnnouncer(
        city=node.config.city,
        db=node.db,
        outgoing=node.outgoing(lambda _peer: None),
        peers=lambda: list(node.trust().peers),
        clock=node.clock,
    )


async def _kept(node: Node) -> list[StatedCounts]:
    async with node.db.reading() as s:
        return await load_statements(s)


async def test_a_referral_is_counted_at_both_ends_and_stated_to_every_peer(fed: Federation) -> None:
    stockholm, goteborg, malmo = [await fed.open(c) for c in MEMBERS]
    year = stockholm.today().year
    await relocation(stockholm, goteborg, index=1)
    async with stockholm.db.reading() as s:
        assert (await count_own(s))[year] == YearCounts(sent_to={"goteborg": 1})
    async with goteborg.db.reading() as s:
        assert (await count_own(s))[year] == YearCounts(received_from={"stockholm": 1})

    assert await _announcer(stockholm).announce() == 2  # one statement to each peer
    for peer in (goteborg, malmo):
        assert statuses(await deliver_outbox(stockholm, peer)) == [ACCEPTED]
        (kept,) = await _kept(peer)
        assert (kept.city, kept.year, kept.own) == ("stockholm", year, False)
        assert kept.counts == YearCounts(sent_to={"goteborg": 1})
        async with peer.db.reading() as s:  # the signed evidence stays in the inbox
            evidence = await s.scalar(
                select(InboxRow.message_type).where(InboxRow.message_id == kept.message_id)
            )
        assert evidence == "balance_statement"

    report = await BalanceService(
        city="malmo",
        db=malmo.db,
        audit=AuditTrail(malmo.db, malmo.clock),
        members=lambda: MEMBERS,
        clock=malmo.clock,
    ).compute(year)
    assert _city(report, "stockholm") == (1, 0, "statement")
    assert _city(report, "goteborg") == (None, None, "none")  # it has not stated yet


async def test_statements_are_queued_again_only_when_the_counts_change(trio: Federation) -> None:
    stockholm, goteborg = await trio.open("stockholm"), await trio.open("goteborg")
    announcer = _announcer(stockholm)
    assert await announcer.announce() == 0  # nothing to state: no relocation, no statement
    await relocation(stockholm, goteborg, index=1)
    assert await announcer.announce() == 2
    assert await announcer.announce() == 0
    await relocation(stockholm, goteborg, index=2)
    assert await announcer.announce() == 2
    # The first statement went out with the second case's inquiry; the new one is alone.
    assert statuses(await deliver_outbox(stockholm, goteborg)) == [ACCEPTED]
    (kept,) = await _kept(goteborg)
    assert kept.counts == YearCounts(sent_to={"goteborg": 2})
    # Göteborg answers for the same year, agreeing.
    assert await _announcer(goteborg).announce() == 2
    assert statuses(await deliver_outbox(goteborg, stockholm)) == [ACCEPTED]
    (answer,) = await _kept(stockholm)
    assert answer.counts == YearCounts(received_from={"stockholm": 2})


async def test_a_statement_in_another_citys_name_is_refused_and_nothing_kept(
    trio: Federation,
) -> None:
    stockholm, goteborg = await trio.open("stockholm"), await trio.open("goteborg")
    year = stockholm.today().year
    forged = statement_of("malmo", year, YearCounts(sent_to={"goteborg": 2}), stockholm.today())
    [result] = await inbox_processor(goteborg).handle_batch(
        "stockholm", [seal(stockholm, "goteborg", forged)]
    )
    assert result.status == "invalid_field"
    assert await _kept(goteborg) == []


async def test_a_statement_dated_after_tomorrow_is_refused(trio: Federation) -> None:
    stockholm, goteborg = await trio.open("stockholm"), await trio.open("goteborg")
    later = stockholm.today() + datetime.timedelta(days=2)
    statement = statement_of("stockholm", later.year, YearCounts(), later)
    [result] = await inbox_processor(goteborg).handle_batch(
        "stockholm", [seal(stockholm, "goteborg", statement)]
    )
    assert result.status == "invalid_field"
    assert await _kept(goteborg) == []


async def test_an_older_statement_arriving_late_does_not_replace_the_newer(
    trio: Federation,
) -> None:
    stockholm, goteborg = await trio.open("stockholm"), await trio.open("goteborg")
    today = stockholm.today()
    newer = statement_of("stockholm", today.year, YearCounts(sent_to={"goteborg": 2}), today)
    older = msgspec.structs.replace(
        statement_of("stockholm", today.year, YearCounts(sent_to={"goteborg": 1}), today),
        as_of=today - datetime.timedelta(days=1) if today.month > 1 or today.day > 1 else today,
    )
    processor = inbox_processor(goteborg)
    for statement in (newer, older):
        [result] = await processor.handle_batch(
            "stockholm", [seal(stockholm, "goteborg", statement)]
        )
        assert result.status == ACCEPTED
    (kept,) = await _kept(goteborg)
    assert kept.counts == YearCounts(sent_to={"goteborg": 2})
    async with goteborg.db.reading() as s:
        assert await s.scalar(select(BalanceStatementRow.sent)) == 2


async def test_reading_the_balance_is_for_coordinators_and_operators_and_is_audited(
    trio: Federation,
) -> None:
    node = await trio.open("stockholm")
    audit = AuditTrail(node.db, node.clock)
    service = BalanceService(
        city="stockholm", db=node.db, audit=audit, members=lambda: MEMBERS, clock=node.clock
    )
    coordinator = Principal(user="karin", role=UserRole.COORDINATOR, unit=None)
    caseworker = Principal(user="anna", role=UserRole.CASEWORKER, unit=UNITS["stockholm"])
    report = await service.report(coordinator, None)
    assert report.city == "stockholm"
    with pytest.raises(Exception, match="may not read balance"):
        await service.report(caseworker, None)
    entries = await audit.entries(limit=2)
    assert [(e.user, e.action, e.outcome) for e in entries] == [
        ("anna", "balance_read", "forbidden"),
        ("karin", "balance_read", "ok"),
    ]


# --- through serve ---------------------------------------------------------------------------


async def test_serving_nodes_state_their_counts_and_the_api_shows_the_balance(
    tmp_path: Path,
) -> None:
    async with fresh_federation(tmp_path / "fed", listening=True) as fed:
        stockholm, goteborg = await fed.open("stockholm"), await fed.open("goteborg")
        year = stockholm.today().year
        await relocation(stockholm, goteborg, index=1)
        users = UserStore(goteborg.db, goteborg.clock)
        await users.add("ines", UserRole.COORDINATOR, None, [UNITS["goteborg"]])
        token = await users.issue_token("ines", 3600.0)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(serve(node, stop, balance_every_s=0.2))
            for node in (stockholm, goteborg)
        ]
        try:

            async def both_stated() -> bool:
                stated = [len(await _kept(node)) for node in (stockholm, goteborg)]
                return stated == [1, 1]

            await wait_until(both_stated, timeout_s=15.0)
            url = f"http://127.0.0.1:{goteborg.config.api.port}/api/v1/reports/balance"
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    url,
                    params={"year": str(year)},
                    headers={"Authorization": f"Bearer {token}"},
                ) as response,
            ):
                assert response.status == 200
                report = msgspec.json.decode(await response.read(), type=BalanceReport)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
    assert _city(report, "stockholm") == (1, 0, "statement")
    assert _city(report, "goteborg") == (0, 1, "own")
    (pair,) = report.by_year[0].pairs
    assert (pair.home_city, pair.receiving_city, pair.agree) == ("stockholm", "goteborg", True)


def test_a_statement_names_no_case_and_no_person() -> None:
    statement = BalanceStatement(
        city="stockholm",
        year=2026,
        sent=1,
        received=0,
        as_of=TODAY,
        sent_to=(CityCount(city="goteborg", count=1),),
        received_from=(),
    )
    assert not any("case" in name or "person" in name for name in statement.__struct_fields__)
