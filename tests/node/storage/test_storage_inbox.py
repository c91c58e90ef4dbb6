"""The inbox and replay store: exactly-once acceptance, original receipts, bounded, durable."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from storage_fixtures import (
    T0,
    Backend,
    FakeClock,
    case_id,
    inbox_accept,
    inquiry,
    key_update,
    message_id,
    opened_envelope,
    receipt_for_test,
)

from node.config import NodeLimits
from node.delivery import Overloaded
from node.storage.case_store import CaseNotFound, CaseStore
from node.storage.database import Database, StorageConflict
from node.storage.inbox_store import (
    Accepted,
    Arrival,
    DuplicateEnvelope,
    InboxStore,
    Refused,
    StoredReceipt,
)
from node.storage.schema import InboxRow, PeerRow
from node.storage.vault import CaseVault, VaultError
from protocol.cases import CaseState, Role
from protocol.errors import ErrorCode, LocalProtocolError

WINDOW = NodeLimits().protocol.max_message_age_s


@pytest.fixture
def inbox(db: Database, vault: CaseVault, clock: FakeClock) -> InboxStore:
    return InboxStore(db, vault, clock)


@pytest.fixture
async def cases(db: Database, vault: CaseVault, clock: FakeClock) -> CaseStore:
    store = CaseStore(db, vault, clock)
    for n in (1, 2):
        await store.create(
            case_id(n), role=Role.RECEIVING, peer="stockholm", unit="nordost", state=CaseState.NEW
        )
    return store


async def test_an_accepted_envelope_is_answered_with_its_receipt_ever_after(
    inbox: InboxStore, cases: CaseStore
) -> None:
    opened = opened_envelope(inquiry(case_id(1)), mid=message_id(1))
    outcome = await inbox_accept(inbox, opened)
    assert isinstance(outcome, Accepted)
    assert await inbox.lookup("stockholm", message_id(1)) == StoredReceipt(
        opened.envelope_hash, receipt_for_test(opened)
    )
    assert await inbox.seen("stockholm", message_id(1))
    assert not await inbox.seen("malmo", message_id(1))  # message ids are per sender
    assert await inbox.lookup("stockholm", message_id(2)) is None
    assert (await inbox.count(), await inbox.replay_count()) == (1, 1)


async def test_a_duplicate_gets_the_original_receipt_and_changes_nothing(
    inbox: InboxStore, cases: CaseStore
) -> None:
    opened = opened_envelope(inquiry(case_id(1)), mid=message_id(1))
    await inbox_accept(inbox, opened)
    applied: list[int] = []

    async def apply(session: AsyncSession) -> None:
        applied.append(1)

    again = await inbox.accept(opened, receipt=b"a new receipt", received_at=T0 + 5, apply=apply)
    assert again == DuplicateEnvelope(StoredReceipt(opened.envelope_hash, receipt_for_test(opened)))
    assert applied == []  # the duplicate was caught before the caller's changes ran
    assert (await inbox.count(), await inbox.replay_count()) == (1, 1)


async def test_concurrent_deliveries_of_one_envelope_are_accepted_once(
    inbox: InboxStore, cases: CaseStore, db: Database
) -> None:
    opened = opened_envelope(inquiry(case_id(1)), mid=message_id(1))
    applied: list[str] = []

    async def slow_apply(session: AsyncSession) -> None:
        applied.append("applied")
        session.add(PeerRow(city=f"effect-{len(applied)}", endpoint="https://x.example"))
        await asyncio.sleep(0.05)  # keep both deliveries in flight together

    outcomes = await asyncio.gather(
        inbox_accept(inbox, opened, apply=slow_apply),
        inbox_accept(inbox, opened, apply=slow_apply),
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["Accepted", "DuplicateEnvelope"]
    duplicate = next(o for o in outcomes if isinstance(o, DuplicateEnvelope))
    assert duplicate.original == StoredReceipt(opened.envelope_hash, receipt_for_test(opened))
    async with db.reading() as s:
        effects = (await s.scalars(select(PeerRow.city))).all()
    assert len(effects) == 1  # the caller's change was kept exactly once
    assert (await inbox.count(), await inbox.replay_count()) == (1, 1)


async def test_the_callers_change_commits_with_the_envelope(
    inbox: InboxStore, cases: CaseStore
) -> None:
    async def accept_inquiry(session: AsyncSession) -> None:
        await cases.set_state(case_id(1), CaseState.AWAITING_REPLY, session=session)

    await inbox_accept(inbox, opened_envelope(inquiry(case_id(1))), apply=accept_inquiry)
    record = await cases.get(case_id(1))
    assert record is not None
    assert record.state == CaseState.AWAITING_REPLY


async def test_a_failing_caller_change_keeps_nothing_of_the_envelope(
    inbox: InboxStore, cases: CaseStore
) -> None:
    async def refuse(session: AsyncSession) -> None:
        await cases.set_state(case_id(1), CaseState.AWAITING_REPLY, session=session)
        raise RuntimeError("invalid_transition")

    with pytest.raises(RuntimeError):
        await inbox_accept(inbox, opened_envelope(inquiry(case_id(1))), apply=refuse)
    assert (await inbox.count(), await inbox.replay_count()) == (0, 0)
    record = await cases.get(case_id(1))
    assert record is not None
    assert record.state == CaseState.NEW
    assert isinstance(await inbox_accept(inbox, opened_envelope(inquiry(case_id(1)))), Accepted)


async def test_a_conflict_in_the_callers_change_is_not_mistaken_for_a_duplicate(
    inbox: InboxStore, cases: CaseStore
) -> None:
    async def create_existing_case(session: AsyncSession) -> None:
        await cases.create(
            case_id(1),
            role=Role.RECEIVING,
            peer="stockholm",
            unit="nordost",
            state=CaseState.NEW,
            session=session,
        )

    with pytest.raises(StorageConflict):
        await inbox_accept(inbox, opened_envelope(inquiry(case_id(1))), apply=create_existing_case)
    assert not await inbox.seen("stockholm", message_id(1))


async def test_a_first_message_can_create_its_case_in_the_same_transaction(
    inbox: InboxStore, cases: CaseStore
) -> None:
    new_case = case_id(3)

    async def open_case(session: AsyncSession) -> None:
        await cases.create(
            new_case,
            role=Role.RECEIVING,
            peer="stockholm",
            unit="nordost",
            state=CaseState.AWAITING_REPLY,
            session=session,
        )

    await inbox_accept(inbox, opened_envelope(inquiry(new_case)), apply=open_case)
    [stored] = await inbox.messages_for_case(new_case)
    assert stored.message_type == "inquiry"


async def test_a_message_for_an_unknown_case_is_not_stored(inbox: InboxStore) -> None:
    with pytest.raises(CaseNotFound):
        await inbox_accept(inbox, opened_envelope(inquiry(case_id(9))))
    assert (await inbox.count(), await inbox.replay_count()) == (0, 0)


async def test_a_case_reads_back_its_messages_decrypted_in_arrival_order(
    inbox: InboxStore, cases: CaseStore
) -> None:
    first = opened_envelope(inquiry(case_id(1), "Första förfrågan."), mid=message_id(2))
    other = opened_envelope(inquiry(case_id(2)), mid=message_id(3))
    second = opened_envelope(inquiry(case_id(1), "Andra förfrågan."), mid=message_id(1))
    for n, opened in enumerate((first, other, second)):
        await inbox_accept(inbox, opened, received_at=T0 + n)

    stored = await inbox.messages_for_case(case_id(1))
    assert [m.message_id for m in stored] == [message_id(2), message_id(1)]
    assert [(m.header_bytes, m.body_bytes, m.signature) for m in stored] == [
        (first.header_bytes, first.body_bytes, first.signature),
        (second.header_bytes, second.body_bytes, second.signature),
    ]
    assert stored[0].sender == "stockholm"
    assert stored[0].header_timestamp == T0
    assert stored[1].received_at == T0 + 2
    assert stored[0].receipt == receipt_for_test(first)


async def test_a_payload_moved_to_another_row_does_not_open(
    inbox: InboxStore, cases: CaseStore, db: Database
) -> None:
    for n in (1, 2):
        await inbox_accept(inbox, opened_envelope(inquiry(case_id(1)), mid=message_id(n)))
    async with db.transaction() as s:
        moved = await s.scalar(select(InboxRow.payload).where(InboxRow.message_id == message_id(1)))
        await s.execute(
            update(InboxRow).where(InboxRow.message_id == message_id(2)).values(payload=moved)
        )
    with pytest.raises(VaultError):
        await inbox.messages_for_case(case_id(1))


async def test_a_control_message_is_sealed_under_the_data_key(
    inbox: InboxStore, db: Database, vault: CaseVault
) -> None:
    opened = opened_envelope(key_update(), sender="malmo", mid=message_id(5))
    assert isinstance(await inbox_accept(inbox, opened), Accepted)
    async with db.reading() as s:
        row = await s.scalar(select(InboxRow))
    assert row is not None
    assert (row.case_id, row.message_type) == (None, "key_update")
    assert opened.body_bytes not in row.payload
    purpose = f"inbox:malmo:{message_id(5).hex()}"
    assert opened.body_bytes in vault.open_with_data_key(purpose, row.payload)


async def test_a_full_replay_store_refuses_and_keeps_nothing(
    db: Database, vault: CaseVault, clock: FakeClock, cases: CaseStore
) -> None:
    inbox = InboxStore(db, vault, clock, limits=NodeLimits(replay_capacity=2))
    for n in (1, 2):
        await inbox_accept(inbox, opened_envelope(inquiry(case_id(1)), mid=message_id(n)))
    with pytest.raises(Overloaded) as caught:
        await inbox_accept(inbox, opened_envelope(inquiry(case_id(1)), mid=message_id(3)))
    assert caught.value.code == "overloaded"
    assert not await inbox.seen("stockholm", message_id(3))
    assert (await inbox.count(), await inbox.replay_count()) == (2, 2)

    # A duplicate is still answered (nothing new to remember)...
    again = await inbox_accept(inbox, opened_envelope(inquiry(case_id(1)), mid=message_id(1)))
    assert isinstance(again, DuplicateEnvelope)
    # ...and once the first records leave the window, room is made by purging them.
    clock.now = T0 + WINDOW + 1
    later = opened_envelope(inquiry(case_id(1)), mid=message_id(3), timestamp=clock.now)
    assert isinstance(await inbox_accept(inbox, later), Accepted)
    assert await inbox.replay_count() == 1


async def test_replay_records_are_purged_only_after_the_window(
    inbox: InboxStore, cases: CaseStore
) -> None:
    await inbox_accept(inbox, opened_envelope(inquiry(case_id(1)), mid=message_id(1), timestamp=T0))
    await inbox_accept(
        inbox, opened_envelope(inquiry(case_id(1)), mid=message_id(2), timestamp=T0 + 100)
    )
    assert await inbox.purge_replay(T0 + WINDOW) == 0  # at the edge: still inside the window
    assert await inbox.purge_replay(T0 + WINDOW + 1) == 1
    assert await inbox.replay_count() == 1
    # The inbox row (the evidence) stays, so a late duplicate still gets its receipt.
    assert await inbox.lookup("stockholm", message_id(1)) is not None
    assert await inbox.count() == 2


async def test_a_replayed_envelope_is_recognised_after_a_restart(
    backend: Backend, db: Database, vault: CaseVault, clock: FakeClock, cases: CaseStore
) -> None:
    opened = opened_envelope(inquiry(case_id(1)), mid=message_id(1))
    await inbox_accept(InboxStore(db, vault, clock), opened)
    await db.close()
    backend.opened.remove(db)

    reopened = await backend.open()
    inbox = InboxStore(reopened, vault, clock, limits=NodeLimits(replay_capacity=1))
    assert await inbox.seen("stockholm", message_id(1))
    again = await inbox_accept(inbox, opened)
    assert again == DuplicateEnvelope(StoredReceipt(opened.envelope_hash, receipt_for_test(opened)))
    with pytest.raises(Overloaded):  # the stored record still counts against the capacity
        await inbox_accept(inbox, opened_envelope(inquiry(case_id(1)), mid=message_id(2)))


async def test_a_batch_keeps_each_good_envelope_and_answers_each_bad_one_alone(
    inbox: InboxStore, cases: CaseStore
) -> None:
    stored_before = opened_envelope(inquiry(case_id(1)), mid=message_id(1))
    await inbox_accept(inbox, stored_before)

    async def refuse(session: AsyncSession) -> None:
        await cases.set_state(case_id(2), CaseState.CLOSED, session=session)
        raise LocalProtocolError(ErrorCode.INVALID_TRANSITION, "not from this state")

    new = [opened_envelope(inquiry(case_id(1)), mid=message_id(n)) for n in (2, 3)]
    refused = opened_envelope(inquiry(case_id(2)), mid=message_id(4))
    orphan = opened_envelope(inquiry(case_id(9)), mid=message_id(5))  # no such case
    arrivals = [
        Arrival(new[0], b"receipt 2", T0),
        Arrival(stored_before, b"a second receipt", T0),  # seen in an earlier batch
        Arrival(refused, b"receipt 4", T0, apply=refuse),
        Arrival(new[0], b"receipt 2 again", T0),  # repeated within the batch
        Arrival(orphan, b"receipt 5", T0),
        Arrival(new[1], b"receipt 3", T0),
    ]
    outcomes = await inbox.accept_batch(arrivals)

    assert isinstance(outcomes[0], Accepted)
    assert outcomes[1] == DuplicateEnvelope(
        StoredReceipt(stored_before.envelope_hash, receipt_for_test(stored_before))
    )
    assert isinstance(outcomes[2], Refused)
    assert isinstance(outcomes[2].error, LocalProtocolError)
    assert outcomes[3] == DuplicateEnvelope(StoredReceipt(new[0].envelope_hash, b"receipt 2"))
    assert isinstance(outcomes[4], Refused)
    assert isinstance(outcomes[4].error, CaseNotFound)
    assert isinstance(outcomes[5], Accepted)

    assert (await inbox.count(), await inbox.replay_count()) == (3, 3)
    assert not await inbox.seen("stockholm", message_id(4))
    record = await cases.get(case_id(2))
    assert record is not None
    assert record.state == CaseState.NEW  # the refused envelope's change was rolled back
    assert [m.message_id for m in await inbox.messages_for_case(case_id(1))] == [
        message_id(1),
        message_id(2),
        message_id(3),
    ]


async def test_a_full_replay_store_refuses_a_whole_batch_with_a_new_envelope(
    db: Database, vault: CaseVault, clock: FakeClock, cases: CaseStore
) -> None:
    inbox = InboxStore(db, vault, clock, limits=NodeLimits(replay_capacity=2))
    old = [opened_envelope(inquiry(case_id(1)), mid=message_id(n)) for n in (1, 2)]
    for opened in old:
        await inbox_accept(inbox, opened)
    repeats = [Arrival(opened, b"r", T0) for opened in old]
    assert all(isinstance(o, DuplicateEnvelope) for o in await inbox.accept_batch(repeats))

    fresh = Arrival(opened_envelope(inquiry(case_id(1)), mid=message_id(3)), b"r", T0)
    with pytest.raises(Overloaded):
        await inbox.accept_batch([*repeats, fresh])
    assert (await inbox.count(), await inbox.replay_count()) == (2, 2)
    assert await inbox.accept_batch([]) == []
