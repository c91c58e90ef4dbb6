"""Batched writes: envelopes in one flush, the sender's one write per batch, SQLite turns.

The performance work of the delivery path must not change what is stored: each test checks the
outcome as well as the shape of the work (statements per batch, waits).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from storage_fixtures import T0, FakeClock, case_id, inquiry, message_id, opened_envelope

from node.delivery import ACCEPTED, DeliveryResult, DeliveryState
from node.storage.case_store import CaseStore, find_case, forget_cases, load_case_key
from node.storage.database import Database, StorageConflict
from node.storage.inbox_store import Accepted, Arrival, InboxStore, Refused
from node.storage.outbox_store import NewEnvelope, OutboxStore
from node.storage.vault import CaseVault
from protocol.cases import CaseState, Role
from protocol.errors import ErrorCode, LocalProtocolError

PEER = "goteborg"


@pytest.fixture
def statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the database runs during the test (the first words of each)."""
    seen: list[str] = []

    def note(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(" ".join(statement.split()[:3]))

    event.listen(db.engine.sync_engine, "before_cursor_execute", note)
    yield seen
    event.remove(db.engine.sync_engine, "before_cursor_execute", note)


def _opening(cases: CaseStore, n: int, *, fail: bool = False) -> Arrival:
    """An inquiry whose changes open its case (and, with ``fail``, then refuse it)."""

    async def apply(session: AsyncSession) -> None:
        await cases.create(
            case_id(n),
            role=Role.RECEIVING,
            peer="stockholm",
            unit="",
            state=CaseState.NEW,
            session=session,
        )
        if fail:
            raise LocalProtocolError(ErrorCode.NOT_ELIGIBLE, "refused after opening its case")

    opened = opened_envelope(inquiry(case_id(n)), mid=message_id(n))
    return Arrival(opened, b"receipt %d" % n, T0, apply=apply)


async def test_a_batch_of_new_cases_is_written_with_one_insert_per_table(
    db: Database, vault: CaseVault, clock: FakeClock, statements: list[str]
) -> None:
    cases, inbox = CaseStore(db, vault, clock), InboxStore(db, vault, clock)
    arrivals = [_opening(cases, n) for n in range(1, 21)]

    outcomes = await inbox.accept_batch(arrivals)

    assert all(isinstance(outcome, Accepted) for outcome in outcomes)
    ids = [outcome.inbox_id for outcome in outcomes if isinstance(outcome, Accepted)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20
    inserts = [s for s in statements if s.startswith("INSERT")]
    assert sorted(inserts) == [
        "INSERT INTO cases",
        "INSERT INTO inbox",
        "INSERT INTO replay_guard",
    ]
    for n in (1, 20):  # each payload sealed under its own new case's key
        [stored] = await inbox.messages_for_case(case_id(n))
        assert stored.message_id == message_id(n)


async def test_one_refused_envelope_sends_the_batch_apart_and_only_it_is_undone(
    db: Database, vault: CaseVault, clock: FakeClock, statements: list[str]
) -> None:
    cases, inbox = CaseStore(db, vault, clock), InboxStore(db, vault, clock)
    arrivals = [_opening(cases, 1), _opening(cases, 2, fail=True), _opening(cases, 3)]

    outcomes = await inbox.accept_batch(arrivals)

    assert [type(o) for o in outcomes] == [Accepted, Refused, Accepted]
    assert await cases.get(case_id(2)) is None  # opened, then refused: nothing kept
    assert await cases.get(case_id(1)) is not None
    assert await cases.get(case_id(3)) is not None
    assert not await inbox.seen("stockholm", message_id(2))
    assert any(s.startswith("SAVEPOINT") for s in statements)  # the second attempt


async def test_a_transaction_remembers_its_cases_until_a_savepoint_rolls_back(
    db: Database, vault: CaseVault, clock: FakeClock, statements: list[str]
) -> None:
    cases = CaseStore(db, vault, clock)
    async with db.transaction() as session:
        key = await cases.create(
            case_id(1),
            role=Role.HOME,
            peer=PEER,
            unit="jarva",
            state=CaseState.NEW,
            session=session,
        )
        before = len(statements)
        assert (await find_case(session, case_id(1))) is not None  # pending, found unflushed
        assert await load_case_key(session, vault, case_id(1)) == key
        assert len(statements) == before  # no query, no flush
        savepoint = await session.begin_nested()
        await cases.create(
            case_id(2),
            role=Role.HOME,
            peer=PEER,
            unit="jarva",
            state=CaseState.NEW,
            session=session,
        )
        await savepoint.rollback()
        forget_cases(session)
        assert await find_case(session, case_id(2)) is None
        assert await find_case(session, case_id(1)) is not None
    assert await cases.get(case_id(1)) is not None


async def test_a_claim_stores_the_last_results_and_marks_the_next_batch_sent_in_one_commit(
    db: Database, clock: FakeClock, statements: list[str]
) -> None:
    outbox = OutboxStore(db, clock)
    for n in range(1, 6):
        item = NewEnvelope(PEER, None, message_id(n), "key_update", b"sealed %d" % n)
        await outbox.enqueue_many(None, [item], now=T0)
    first = await outbox.claim_batch(PEER, 2, T0 + 1)
    assert [e.seq for e in first] == [1, 2]
    assert [e.attempts for e in first] == [0, 0]

    statements.clear()
    results = [DeliveryResult(ACCEPTED, b"receipt"), DeliveryResult("wrong_recipient", None)]
    second = await outbox.claim_batch(PEER, 2, T0 + 2, settle=(first, results))

    assert [e.seq for e in second] == [3, 4]
    begins = [s for s in statements if s.startswith("BEGIN")]
    assert begins in ([], ["BEGIN IMMEDIATE"])  # one transaction (none shown on PostgreSQL)
    assert [await outbox.state_of(message_id(n)) for n in range(1, 6)] == [
        DeliveryState.RECEIPTED,
        DeliveryState.FAILED,
        DeliveryState.SENT,
        DeliveryState.SENT,
        DeliveryState.QUEUED,
    ]
    entry = await outbox.entry(message_id(3))
    assert entry is not None
    assert entry.attempts == 1
    assert entry.last_attempt_at == T0 + 2
    assert await outbox.claim_batch(PEER, 9, T0 + 3, settle=(second, [results[0]] * 2)) != []
    assert await outbox.claim_batch(PEER, 9, T0 + 4) != []  # 5 was sent, not yet receipted


async def test_writers_of_one_process_take_turns_without_sleeping_on_sqlite(
    db: Database,
) -> None:
    if db.dialect != "sqlite":
        pytest.skip("PostgreSQL has row locks: its writers do not take turns")
    committed: list[float] = []
    began: list[float] = []

    async def writer(hold_s: float) -> None:
        async with db.transaction() as session:
            began.append(time.monotonic())
            await session.execute(text("UPDATE outbox SET attempts = attempts WHERE seq < 0"))
            await asyncio.sleep(hold_s)
        committed.append(time.monotonic())

    await asyncio.gather(writer(0.2), writer(0.0), writer(0.0))

    assert len(began) == 3
    for start, end in zip(began[1:], committed, strict=False):
        assert 0 <= start - end < 0.05  # the next writer starts as the previous one commits


async def test_the_sqlite_driver_reports_rows_counts_and_conflicts_as_before(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(
            text("INSERT INTO peers (city, endpoint) VALUES (:city, :url)"),
            [{"city": c, "url": f"https://{c}.example:8443"} for c in ("malmo", "umea", "lund")],
        )
        changed = await session.execute(
            text("UPDATE peers SET last_seen_at = 1 WHERE city <> :city"), {"city": "lund"}
        )
        assert getattr(changed, "rowcount", None) == 2
        rows = (await session.execute(text("SELECT city FROM peers ORDER BY city"))).all()
        assert [row[0] for row in rows] == ["lund", "malmo", "umea"]
    with pytest.raises(StorageConflict):
        async with db.transaction() as session:
            await session.execute(
                text("INSERT INTO peers (city, endpoint) VALUES ('lund', 'https://x:1')")
            )
    async with db.reading() as session:
        count = await session.scalar(text("SELECT count(*) FROM peers"))
    assert count == 3
