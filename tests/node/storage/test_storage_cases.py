"""Cases at rest: identities sealed under per-case keys, crypto-shredding, dumps reveal nothing."""

from __future__ import annotations

import pytest
from storage_fixtures import (
    T0,
    Backend,
    FakeClock,
    case_id,
    inbox_accept,
    inquiry,
    logical_dump,
    opened_envelope,
)

from node.storage.case_store import CaseNotFound, CaseStore
from node.storage.database import Database, StorageConflict
from node.storage.inbox_store import InboxStore
from node.storage.vault import CaseShredded, CaseVault
from protocol.cases import CaseState, Role

# Obviously fake people: a Skatteverket-style test personnummer and marker strings.
IDENTITY = b"Tess Testsson|19121212-1212|MARKER-IDENTITY-7f3a"
MESSAGE_MARKER = "MARKER-MESSAGE-91bc"


@pytest.fixture
def cases(db: Database, vault: CaseVault, clock: FakeClock) -> CaseStore:
    return CaseStore(db, vault, clock)


async def _new_case(cases: CaseStore, n: int, state: CaseState = CaseState.NEW) -> bytes:
    await cases.create(case_id(n), role=Role.HOME, peer="goteborg", unit="jarva", state=state)
    return case_id(n)


async def test_a_new_case_is_stored_with_its_metadata(cases: CaseStore) -> None:
    case = await _new_case(cases, 1)
    record = await cases.get(case)
    assert record is not None
    assert (record.role, record.peer, record.unit, record.state) == (
        Role.HOME,
        "goteborg",
        "jarva",
        CaseState.NEW,
    )
    assert (record.created_at, record.closed_at, record.shredded) == (T0, None, False)
    assert await cases.get(case_id(99)) is None


async def test_the_same_case_id_cannot_be_created_twice(cases: CaseStore) -> None:
    await _new_case(cases, 1)
    with pytest.raises(StorageConflict):
        await _new_case(cases, 1)


async def test_the_identity_reads_back_and_the_key_is_stable(cases: CaseStore) -> None:
    case = await _new_case(cases, 1)
    key = await cases.case_key(case)
    await cases.seal_identity(case, IDENTITY)
    assert await cases.open_identity(case) == IDENTITY
    assert await cases.case_key(case) == key


async def test_reaching_a_terminal_state_stamps_closed_at(
    cases: CaseStore, clock: FakeClock
) -> None:
    case = await _new_case(cases, 1)
    clock.now = T0 + 10
    await cases.set_state(case, CaseState.AWAITING_REPLY)
    clock.now = T0 + 20
    await cases.set_state(case, CaseState.DECLINED)
    record = await cases.get(case)
    assert record is not None
    assert (record.state, record.updated_at, record.closed_at) == (
        CaseState.DECLINED,
        T0 + 20,
        T0 + 20,
    )


async def test_a_shredded_case_cannot_be_read_while_other_cases_still_can(
    cases: CaseStore, db: Database, vault: CaseVault, clock: FakeClock
) -> None:
    inbox = InboxStore(db, vault, clock)
    shredded, kept = await _new_case(cases, 1), await _new_case(cases, 2)
    for case in (shredded, kept):
        await cases.seal_identity(case, IDENTITY)
        await inbox_accept(inbox, opened_envelope(inquiry(case), mid=case))

    assert await cases.shred(shredded) is True
    assert await cases.shred(shredded) is False  # nothing left to destroy

    with pytest.raises(CaseShredded):
        await cases.open_identity(shredded)
    with pytest.raises(CaseShredded):
        await cases.case_key(shredded)
    with pytest.raises(CaseShredded):
        await inbox.messages_for_case(shredded)
    record = await cases.get(shredded)
    assert record is not None
    assert record.shredded
    assert not record.has_identity
    assert await cases.open_identity(kept) == IDENTITY
    assert len(await inbox.messages_for_case(kept)) == 1


async def test_an_unknown_case_is_reported_as_such(cases: CaseStore) -> None:
    with pytest.raises(CaseNotFound) as caught:
        await cases.open_identity(case_id(7))
    assert caught.value.code == "unknown_case"
    with pytest.raises(CaseNotFound):
        await cases.shred(case_id(7))


async def test_a_database_dump_holds_no_identity_or_message_text(
    backend: Backend, cases: CaseStore, db: Database, vault: CaseVault, clock: FakeClock
) -> None:
    inbox = InboxStore(db, vault, clock)
    case = await _new_case(cases, 1)
    await cases.seal_identity(case, IDENTITY)
    await inbox_accept(inbox, opened_envelope(inquiry(case, f"Behöver boende. {MESSAGE_MARKER}")))
    assert await cases.open_identity(case) == IDENTITY  # it is there, readable with the key

    dump = await logical_dump(db)  # every value of every table, as pg_dump would write it
    if backend.files is not None:
        dump += backend.raw_bytes()  # and the SQLite file itself, with its WAL
    assert b"goteborg" in dump  # the dump is real: routing metadata is in clear
    for secret in (b"MARKER-IDENTITY", b"19121212", b"Testsson", MESSAGE_MARKER.encode()):
        assert secret not in dump
