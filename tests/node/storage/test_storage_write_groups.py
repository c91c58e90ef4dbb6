"""Group commit (``node.storage.write_groups``) and the SQLite driver's kept control statements.

Grouped units of work must behave exactly as transactions of their own — all or nothing each, in
order, the audit chain one chain, nothing returned before it is durable — while sharing commits
on SQLite. On PostgreSQL ``grouped`` changes nothing, and the same outcomes must hold.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator

import aiosqlite
import pytest
from sqlalchemy import event, text
from storage_fixtures import FakeClock

from node.access import Principal, UserRole
from node.audit import AuditTrail
from node.storage.database import Database
from node.storage.write_groups import MAX_UNITS, grouped

WORKER = Principal(user="anna", role=UserRole.CASEWORKER, unit="jarva")
UNITS = 20


class Boom(Exception):
    """A unit's own failure."""


@pytest.fixture
def commits(db: Database) -> Iterator[list[None]]:
    seen: list[None] = []

    def note(_conn: object) -> None:
        seen.append(None)

    event.listen(db.engine.sync_engine, "commit", note)
    yield seen
    event.remove(db.engine.sync_engine, "commit", note)


async def _record(db: Database, trail: AuditTrail, n: int, *, fail: bool = False) -> int:
    """One grouped unit: an audit entry (``case_list``/``ok``), then optionally a failure."""
    with grouped():
        async with db.transaction() as session:
            entry = await trail.record(
                session, principal=WORKER, action="case_list", case_id=None, purpose=None,
                outcome=f"n{n}",
            )  # fmt: skip
            if fail:
                raise Boom
    return entry.seq


async def _outcomes(db: Database) -> list[str]:
    async with db.reading() as s:
        rows = await s.execute(text("SELECT outcome FROM audit_log ORDER BY seq"))
        return [row[0] for row in rows]


async def test_concurrent_grouped_units_keep_one_chain_and_share_commits(
    db: Database, clock: FakeClock, commits: list[None]
) -> None:
    trail = AuditTrail(db, clock)
    seqs = await asyncio.gather(*(_record(db, trail, n) for n in range(UNITS)))
    assert sorted(seqs) == list(range(1, UNITS + 1))
    assert (await trail.verify()).ok
    assert sorted(await _outcomes(db)) == sorted(f"n{n}" for n in range(UNITS))
    if db.dialect == "sqlite":
        assert len(commits) < UNITS  # units that queued behind the first shared its commit


async def test_a_failing_unit_keeps_nothing_and_fails_no_other(
    db: Database, clock: FakeClock
) -> None:
    trail = AuditTrail(db, clock)
    results = await asyncio.gather(
        *(_record(db, trail, n, fail=n % 4 == 1) for n in range(UNITS)), return_exceptions=True
    )
    failed = [n for n, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [n for n in range(UNITS) if n % 4 == 1]
    assert all(isinstance(results[n], Boom) for n in failed)
    kept = await _outcomes(db)
    assert sorted(kept) == sorted(f"n{n}" for n in range(UNITS) if n % 4 != 1)
    report = await trail.verify()
    assert report.ok
    assert report.count == len(kept)


async def test_a_unit_is_durable_when_its_block_ends(db: Database, clock: FakeClock) -> None:
    trail = AuditTrail(db, clock)

    async def record_then_read(n: int) -> bool:
        await _record(db, trail, n)
        return f"n{n}" in await _outcomes(db)  # another connection: only committed rows

    assert all(await asyncio.gather(*(record_then_read(n) for n in range(UNITS))))


async def test_more_units_than_a_group_takes_form_several_groups(
    db: Database, clock: FakeClock, commits: list[None]
) -> None:
    trail = AuditTrail(db, clock)
    count = MAX_UNITS + 10
    await asyncio.gather(*(_record(db, trail, n) for n in range(count)))
    assert (await trail.verify()).count == count
    if db.dialect == "sqlite":
        assert len(commits) >= 2


async def test_a_unit_cancelled_while_waiting_leaves_no_group_holding_the_lock(
    db: Database, clock: FakeClock
) -> None:
    trail = AuditTrail(db, clock)
    inside, go_on = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        with grouped():
            async with db.transaction() as session:
                await trail.record(
                    session, principal=WORKER, action="case_list", case_id=None, purpose=None,
                    outcome="slow",
                )  # fmt: skip
                inside.set()
                await go_on.wait()

    first = asyncio.create_task(slow())
    await inside.wait()
    waiting = asyncio.create_task(_record(db, trail, 1))
    await asyncio.sleep(0.01)
    waiting.cancel()
    go_on.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with asyncio.timeout(5):  # neither a grouped nor a plain writer is left waiting
        await _record(db, trail, 2)
        await trail.record(
            None, principal=WORKER, action="case_list", case_id=None, purpose=None, outcome="n3"
        )
    assert await _outcomes(db) == ["slow", "n2", "n3"]
    assert (await trail.verify()).ok


async def test_ungrouped_writers_take_turns_with_groups(db: Database, clock: FakeClock) -> None:
    trail = AuditTrail(db, clock)

    async def plain(n: int) -> None:
        await trail.record(
            None, principal=WORKER, action="case_list", case_id=None, purpose=None, outcome=f"p{n}"
        )

    await asyncio.gather(*(plain(n) if n % 3 == 0 else _record(db, trail, n) for n in range(30)))
    report = await trail.verify()
    assert report.ok
    assert report.count == 30


# --- the driver: control statements ride with the next statement ---------------------------------


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call made on an aiosqlite connection's thread (one round trip each)."""
    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: object, *args: object) -> object:
        calls.append(getattr(fn, "__name__", "?"))
        return await original(self, fn, *args)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    return calls


async def test_a_read_of_one_statement_is_two_round_trips(
    db: Database, round_trips: list[str]
) -> None:
    if db.dialect != "sqlite":
        pytest.skip("the SQLite driver only")
    async with db.reading() as s:
        assert (await s.execute(text("SELECT 1"))).scalar() == 1
    assert len(round_trips) == 2  # BEGIN with the SELECT, then the COMMIT


async def test_a_look_up_of_one_statement_is_one_round_trip(
    db: Database, round_trips: list[str]
) -> None:
    found = await db.first_row(text("SELECT 1 + :n"), {"n": 1})
    assert found is not None
    assert found[0] == 2
    if db.dialect == "sqlite":
        assert len(round_trips) == 1  # no BEGIN, no COMMIT: SQLite's autocommit read


async def test_a_write_transaction_that_wrote_nothing_costs_no_round_trip(
    db: Database, round_trips: list[str]
) -> None:
    if db.dialect != "sqlite":
        pytest.skip("the SQLite driver only")
    async with db.transaction():
        pass
    assert round_trips == []


async def test_a_kept_begin_immediate_still_takes_the_write_lock_first(db: Database) -> None:
    if db.dialect != "sqlite":
        pytest.skip("the SQLite driver only")
    path = db.engine.url.database
    assert path is not None
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        async with db.transaction() as s:
            await s.execute(text("SELECT 1"))  # BEGIN IMMEDIATE runs with it
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again after the commit
        other.execute("ROLLBACK")
    finally:
        other.close()
