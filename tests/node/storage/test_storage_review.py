"""Review of group commit and the SQLite driver's kept control statements: the failure paths.

Each test is a way a grouped unit of work (``node.storage.write_groups``) could be told "kept"
while its rows were lost, keep rows of a failed unit, fail units that did nothing wrong, or
surface a database failure as something other than ``StorageError``. SQLite ending a whole
transaction on its own (what it does after ``SQLITE_FULL`` or an I/O error mid-transaction, seen on
a full tmpfs) is played by a trigger that raises ``RAISE(ROLLBACK, ...)``: the same outcome,
without a full disk. Tests that need no SQLite-only trick also run on PostgreSQL, where
``grouped`` changes nothing and the same outcomes must hold.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable

import aiosqlite
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from storage_fixtures import Backend, FakeClock

from node.access import Principal, UserRole
from node.audit import AuditTrail
from node.storage import database as database_module
from node.storage.database import Database, StorageConflict, StorageError
from node.storage.schema import AuditRow
from node.storage.write_groups import grouped, wants_group

WORKER = Principal(user="anna", role=UserRole.CASEWORKER, unit="jarva")
LOSE = "lose"  # an audit outcome the trigger of ``_sqlite_ends_transactions_on`` refuses


async def _outcomes(db: Database) -> list[str]:
    async with db.reading() as s:
        rows = await s.execute(text("SELECT outcome FROM audit_log ORDER BY seq"))
        return [row[0] for row in rows]


async def _entry(trail: AuditTrail, session: AsyncSession | None, outcome: str) -> None:
    await trail.record(
        session, principal=WORKER, action="case_list", case_id=None, purpose=None, outcome=outcome
    )


def _orm_entry(seq: int, outcome: str) -> AuditRow:
    """An audit row added through the ORM (written by the session's next flush)."""
    return AuditRow(
        seq=seq, at=0.0, action="case_list", outcome=outcome, previous_hash=bytes(32),
        entry_hash=bytes(32),
    )  # fmt: skip


async def _grouped(db: Database, work: Callable[[AsyncSession], Awaitable[None]]) -> None:
    with grouped():
        async with db.transaction() as session:
            await work(session)


def _sqlite_path(backend: Backend) -> str:
    assert backend.files is not None
    return str(backend.files)


def _sqlite_ends_transactions_on(backend: Backend, outcome: str) -> None:
    """Make SQLite roll the whole transaction back when an audit row with ``outcome`` is
    written, as it does after ``SQLITE_FULL`` mid-transaction."""
    raw = sqlite3.connect(_sqlite_path(backend), isolation_level=None)
    try:
        raw.execute(
            f"CREATE TRIGGER ends_transaction BEFORE INSERT ON audit_log "
            f"WHEN NEW.outcome = '{outcome}' BEGIN SELECT RAISE(ROLLBACK, 'disk full'); END"
        )
    finally:
        raw.close()


async def test_a_database_failure_inside_a_grouped_block_is_a_storage_error(
    db: Database, clock: FakeClock
) -> None:
    trail = AuditTrail(db, clock)
    await _entry(trail, None, "first")

    async def duplicate(session: AsyncSession) -> None:
        session.add(_orm_entry(1, "again"))
        await session.flush()

    with pytest.raises(StorageConflict):  # as from an ungrouped transaction, not IntegrityError
        await _grouped(db, duplicate)
    assert await _outcomes(db) == ["first"]


async def test_a_unit_failing_at_its_last_flush_fails_no_other_unit_of_its_group(
    db: Database, clock: FakeClock
) -> None:
    trail = AuditTrail(db, clock)
    await _entry(trail, None, "first")
    others_done = asyncio.Event()

    async def good(n: int) -> None:
        async def work(session: AsyncSession) -> None:
            await _entry(trail, session, f"g{n}")
            others_done.set()
            await asyncio.sleep(0)  # the conflicting unit joins this group meanwhile

        await _grouped(db, work)

    async def conflicting() -> None:
        await others_done.wait()

        async def work(session: AsyncSession) -> None:
            session.add(_orm_entry(1, "clash"))  # flushed when the block ends: a conflict

        await _grouped(db, work)

    results = await asyncio.gather(
        *(good(n) for n in range(3)), conflicting(), return_exceptions=True
    )
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], StorageConflict)
    assert sorted(await _outcomes(db)) == sorted(["first", "g0", "g1", "g2"])
    assert (await trail.verify()).ok


async def test_rows_added_by_a_failed_unit_are_not_flushed_by_the_next_unit(
    db: Database, clock: FakeClock
) -> None:
    trail = AuditTrail(db, clock)
    first_inside = asyncio.Event()

    async def first(session: AsyncSession) -> None:
        await _entry(trail, session, "first")
        first_inside.set()
        await asyncio.sleep(0.01)  # the others join this group

    async def failing(session: AsyncSession) -> None:
        session.add(_orm_entry(100, "pending"))  # never flushed by this unit
        raise RuntimeError("the unit's own failure")

    async def after(session: AsyncSession) -> None:
        await _entry(trail, session, "after")
        await session.flush()

    async def joining(work: Callable[[AsyncSession], Awaitable[None]]) -> None:
        await first_inside.wait()
        await _grouped(db, work)

    results = await asyncio.gather(
        _grouped(db, first), joining(failing), joining(after), return_exceptions=True
    )
    assert results[0] is None
    assert isinstance(results[1], RuntimeError)
    assert results[2] is None
    assert await _outcomes(db) == ["first", "after"]


async def test_a_task_started_inside_a_grouped_block_writes_ungrouped(
    db: Database, clock: FakeClock
) -> None:
    trail = AuditTrail(db, clock)

    async def background() -> tuple[bool, bool]:  # a sender loop woken for a new peer, say
        async with db.transaction() as session:
            await _entry(trail, session, "background")
            return wants_group(), session.in_nested_transaction()

    with grouped():
        assert wants_group()
        started = asyncio.create_task(background())
    assert await started == (False, False)  # a transaction of its own, no group's savepoint
    assert await _outcomes(db) == ["background"]


async def test_units_done_before_sqlite_ended_the_transaction_are_not_told_kept(
    backend: Backend, clock: FakeClock
) -> None:
    if backend.name != "sqlite":
        pytest.skip("SQLite ends a transaction on its own; PostgreSQL does not")
    db = await backend.open()
    _sqlite_ends_transactions_on(backend, LOSE)
    trail = AuditTrail(db, clock)
    done_inside = asyncio.Event()

    async def done(session: AsyncSession) -> None:
        await _entry(trail, session, "done")
        done_inside.set()
        await asyncio.sleep(0.01)  # the next two join this group

    async def ending(session: AsyncSession) -> None:
        session.add(_orm_entry(100, LOSE))
        await session.flush()  # SQLite rolls back the whole transaction: "done" is gone

    async def waiting(session: AsyncSession) -> None:
        await _entry(trail, session, "waiting")

    async def joining(work: Callable[[AsyncSession], Awaitable[None]]) -> None:
        await done_inside.wait()
        await _grouped(db, work)

    results = await asyncio.gather(
        _grouped(db, done), joining(ending), joining(waiting), return_exceptions=True
    )
    kept = await _outcomes(db)
    assert "done" not in kept
    assert isinstance(results[0], StorageError)  # not told kept: its rows were rolled back
    assert isinstance(results[1], StorageError)
    assert results[2] is None  # it had not run yet: it ran in the next group, with BEGIN IMMEDIATE
    assert kept == ["waiting"]
    assert (await trail.verify()).ok


async def test_a_write_lock_held_elsewhere_fails_a_grouped_unit_as_locked_and_the_rest_retry(
    backend: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.name != "sqlite":
        pytest.skip("the SQLite driver's kept BEGIN IMMEDIATE")
    monkeypatch.setattr(database_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    db = await backend.open()
    other = sqlite3.connect(_sqlite_path(backend), timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock

    async def unit(n: int) -> None:
        async def work(session: AsyncSession) -> None:
            session.add(_orm_entry(100 + n, f"u{n}"))
            await session.flush()  # the kept BEGIN IMMEDIATE goes with this flush
            if n == 1:
                await asyncio.sleep(0.6)  # the lock is given back meanwhile

        await _grouped(db, work)

    try:
        units = [asyncio.create_task(unit(n)) for n in range(4)]
        await asyncio.sleep(0.4)  # past the busy timeout: the first unit failed
    finally:
        other.execute("ROLLBACK")
        other.close()
    results = await asyncio.gather(*units, return_exceptions=True)
    assert isinstance(results[0], StorageError)
    assert "database is locked" in str(results[0])  # not "no such savepoint"
    assert results[1:] == [None, None, None]
    assert await _outcomes(db) == ["u1", "u2", "u3"]


async def test_a_failed_group_commit_fails_every_unit_and_leaves_no_transaction_open(
    backend: Backend, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.name != "sqlite":
        pytest.skip("group commit is SQLite's")
    db = await backend.open()
    trail = AuditTrail(db, clock)
    real_commit = aiosqlite.Connection.commit
    failures = [sqlite3.OperationalError("database or disk is full")]

    async def failing_once(self: aiosqlite.Connection) -> None:
        if failures:  # fails, and SQLite keeps the transaction open (as on SQLITE_BUSY)
            raise failures.pop()
        await real_commit(self)

    monkeypatch.setattr(aiosqlite.Connection, "commit", failing_once)
    first_inside = asyncio.Event()

    async def first(session: AsyncSession) -> None:
        await _entry(trail, session, "first")
        first_inside.set()
        await asyncio.sleep(0.01)

    async def joining(n: int) -> None:
        await first_inside.wait()
        await _grouped(db, lambda session: _entry(trail, session, f"j{n}"))

    results = await asyncio.gather(
        _grouped(db, first), *(joining(n) for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StorageError) and "full" in str(r) for r in results)
    async with asyncio.timeout(5):  # the write lock is free, no pooled connection in a transaction
        assert await _outcomes(db) == []
        await _entry(trail, None, "next")
        await _grouped(db, lambda session: _entry(trail, session, "next_grouped"))
        assert await _outcomes(db) == ["next", "next_grouped"]
    assert (await trail.verify()).ok


async def test_a_statement_after_sqlite_ended_the_transaction_fails_instead_of_autocommitting(
    backend: Backend, clock: FakeClock
) -> None:
    if backend.name != "sqlite":
        pytest.skip("the SQLite driver")
    db = await backend.open()
    _sqlite_ends_transactions_on(backend, LOSE)
    trail = AuditTrail(db, clock)
    ending = text(
        "INSERT INTO audit_log (seq, at, action, outcome, previous_hash, entry_hash) "
        "VALUES (99, 0, 'x', :lose, x'00', x'00')"
    )

    async def carry_on_after_a_failure() -> None:
        async with db.transaction() as session:
            await _entry(trail, session, "a")
            with pytest.raises(IntegrityError):  # SQLite rolled back "a" with it
                await session.execute(ending, {"lose": LOSE})
            await _entry(trail, session, "b")  # would run on its own, in autocommit mode

    with pytest.raises(StorageError, match="no longer open"):
        await carry_on_after_a_failure()
    assert await _outcomes(db) == []


async def test_a_health_check_does_not_wait_for_a_writer(backend: Backend) -> None:
    if backend.name != "sqlite":
        pytest.skip("SQLite's write lock")
    db = await backend.open()
    other = sqlite3.connect(_sqlite_path(backend), timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a long write (a migration, another tool) holds the lock
    try:
        await db.check(timeout_s=1.0)  # a read: it must not queue for the write lock
    finally:
        other.execute("ROLLBACK")
        other.close()
