"""The audit trail: hash-chained, committed with its action, never forked, and damage named.

Every database case runs on SQLite and on PostgreSQL (``CITYNODE_TEST_PG_URL``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import stat
import struct
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, update
from sqlalchemy.sql.dml import Executable
from users_audit_support import (
    BACKENDS,
    FakeClock,
    Opened,
    Template,
    build_template,
    drop_template,
    fresh_database,
)

from node.access import Principal, UserRole
from node.audit import AuditError, AuditTrail, InvalidPurpose, check_purpose, verify_file
from node.audit_chain import (
    ZERO_HASH,
    AuditEntry,
    ChainChecker,
    Head,
    Problem,
    VerifyReport,
    entry_hash,
)
from node.storage.database import Database
from node.storage.schema import AuditRow, PeerRow

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "audit_chain.json"
ANNA = Principal(user="anna.berg", role=UserRole.CASEWORKER, unit="socialnamnden")
SARA = Principal(user="sara", role=UserRole.COORDINATOR, unit=None)


def case(n: int) -> bytes:
    return n.to_bytes(2, "big") * 8


@pytest.fixture(scope="module", params=BACKENDS)
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Template]:
    built = build_template(request.param, tmp_path_factory.mktemp("audit-db"))
    yield built
    drop_template(built)


@pytest.fixture
async def opened(template: Template, tmp_path: Path) -> AsyncIterator[Opened]:
    async with fresh_database(template, tmp_path) as database:
        yield database


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    return build_template("sqlite", tmp_path_factory.mktemp("audit-sqlite"))


@pytest.fixture
async def local_trail(
    sqlite_template: Template, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[AuditTrail]:
    """A trail on SQLite only, for what does not depend on the backend (checks, export files)."""
    async with fresh_database(sqlite_template, tmp_path) as database:
        yield AuditTrail(database.db, clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def trail(opened: Opened, clock: FakeClock) -> AuditTrail:
    return AuditTrail(opened.db, clock)


async def record_many(trail: AuditTrail, clock: FakeClock, n: int) -> list[AuditEntry]:
    """Record ``n`` entries in one transaction (the entries chain within it as across them)."""
    entries = []
    async with trail.db.transaction() as s:
        for i in range(n):
            clock.now += 1.25
            who = ANNA if i % 2 == 0 else SARA
            entries.append(
                await trail.record(
                    s,
                    principal=who,
                    action="read_identity",
                    case_id=case(i),
                    purpose="handover meeting",
                    outcome="ok",
                )
            )
    return entries


async def run(db: Database, *statements: Executable) -> None:
    """Tamper with the table directly, as someone with database access could."""
    async with db.transaction() as s:
        for statement in statements:
            await s.execute(statement)


def only(report: VerifyReport) -> tuple[int, Problem]:
    assert not report.ok
    return report.findings[0].seq, report.findings[0].problem


# --- recording ------------------------------------------------------------------------------


async def test_a_fresh_trail_verifies_and_each_entry_chains_to_the_one_before(
    trail: AuditTrail, clock: FakeClock
) -> None:
    entries = await record_many(trail, clock, 5)
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].previous_hash == ZERO_HASH
    for before, after in itertools.pairwise(entries):
        assert after.previous_hash == before.entry_hash
    report = await trail.verify()
    assert report.ok
    assert report.count == 5
    assert report.head == Head(5, entries[-1].entry_hash)


async def test_an_entry_records_who_when_which_case_why_and_the_outcome(
    trail: AuditTrail, clock: FakeClock
) -> None:
    await trail.record(
        None,
        principal=None,
        action="list_cases",
        case_id=None,
        purpose=None,
        outcome="unauthenticated",
    )
    await trail.record(
        None,
        principal=ANNA,
        action="read_identity",
        case_id=case(7),
        purpose="  quarterly review ",
        outcome="ok",
    )
    newest, first = await trail.entries()
    assert (first.user, first.role, first.outcome) == (None, None, "unauthenticated")
    assert newest.user == "anna.berg"
    assert newest.role == "caseworker"
    assert newest.case_id == case(7)
    assert newest.purpose == "quarterly review"
    assert newest.at == clock.now


async def test_an_action_rolled_back_leaves_no_audit_entry(
    opened: Opened, trail: AuditTrail
) -> None:
    class ActionFailed(Exception):
        pass

    async def act_then_fail() -> None:
        async with opened.db.transaction() as s:
            s.add(PeerRow(city="malmo", endpoint="https://malmo.example"))
            await trail.record(
                s,
                principal=SARA,
                action="act_on_case",
                case_id=case(1),
                purpose=None,
                outcome="ok",
            )
            raise ActionFailed

    with pytest.raises(ActionFailed):
        await act_then_fail()
    assert await trail.entries() == []
    async with opened.db.reading() as s:
        assert await s.get(PeerRow, "malmo") is None


async def test_an_action_and_its_entry_commit_together(opened: Opened, trail: AuditTrail) -> None:
    async with opened.db.transaction() as s:
        s.add(PeerRow(city="malmo", endpoint="https://malmo.example"))
        await trail.record(
            s, principal=SARA, action="act_on_case", case_id=case(1), purpose=None, outcome="ok"
        )
    (entry,) = await trail.entries()
    assert entry.action == "act_on_case"
    async with opened.db.reading() as s:
        assert await s.get(PeerRow, "malmo") is not None


async def test_concurrent_records_never_fork_the_chain(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    second = await opened.another()  # a second process's connection pool
    try:
        other = AuditTrail(second, clock)

        async def one(i: int) -> AuditEntry:
            chosen = trail if i % 2 else other
            return await chosen.record(
                None,
                principal=ANNA,
                action="read_case",
                case_id=case(i),
                purpose=None,
                outcome="ok",
            )

        recorded = await asyncio.gather(*(one(i) for i in range(24)))
    finally:
        await second.close()
    assert sorted(e.seq for e in recorded) == list(range(1, 25))
    assert len({e.previous_hash for e in recorded}) == 24  # no two chained to the same entry
    assert (await trail.verify()).ok


@pytest.mark.parametrize(
    "purpose",
    [
        "19121212-1212",  # a personnummer
        "ring 0701234567",  # a phone number
        "mejl till anna@example.se",
        "two\nlines",
        "",
        "   ",
        "x" * 121,
    ],
)
async def test_a_purpose_that_could_carry_personal_data_is_refused_and_nothing_is_written(
    local_trail: AuditTrail, purpose: str
) -> None:
    with pytest.raises(InvalidPurpose) as caught:
        await local_trail.record(
            None,
            principal=ANNA,
            action="read_identity",
            case_id=case(1),
            purpose=purpose,
            outcome="ok",
        )
    assert caught.value.code == "invalid_purpose"
    assert purpose.strip() == "" or purpose not in caught.value.message
    assert await local_trail.entries() == []


def test_short_purposes_naming_why_are_accepted() -> None:
    for purpose in ("handover meeting", "Uppföljning 2026, vecka 3", "quarterly review"):
        assert check_purpose(purpose) == purpose


@pytest.mark.parametrize(
    ("action", "outcome", "case_id"),
    [("Read Identity", "ok", None), ("read_identity", "OK!", None), ("read_case", "ok", b"x")],
)
async def test_malformed_codes_and_case_ids_are_refused(
    local_trail: AuditTrail, action: str, outcome: str, case_id: bytes | None
) -> None:
    with pytest.raises(AuditError):
        await local_trail.record(
            None, principal=ANNA, action=action, case_id=case_id, purpose=None, outcome=outcome
        )


async def test_entries_are_newest_first_and_filter_by_case_and_time(
    trail: AuditTrail, clock: FakeClock
) -> None:
    entries = await record_many(trail, clock, 6)
    assert [e.seq for e in await trail.entries(limit=3)] == [6, 5, 4]
    assert [e.seq for e in await trail.entries(case_id=case(2))] == [3]
    assert [e.seq for e in await trail.entries(since=entries[3].at)] == [6, 5, 4]
    with pytest.raises(AuditError):
        await trail.entries(limit=0)


# --- damage in the database, found and named ------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"purpose": "routine check"},
        {"outcome": "forbidden"},
        {"user_name": "someone.else"},
        {"at": 1_700_000_000.0},
        {"case_id": bytes(16)},
        {"role": None},
    ],
)
async def test_an_edited_field_is_found_and_the_entry_named(
    opened: Opened, trail: AuditTrail, clock: FakeClock, change: dict[str, Any]
) -> None:
    await record_many(trail, clock, 6)
    await run(opened.db, update(AuditRow).where(AuditRow.seq == 4).values(**change))
    report = await trail.verify()
    assert only(report) == (4, Problem.EDITED)
    assert len(report.findings) == 1
    assert report.findings[0].describe().startswith("entry 4: edited")


async def test_an_edited_and_rehashed_entry_is_named_by_the_entry_after_it(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    entries = await record_many(trail, clock, 6)
    forged = dataclasses.replace(entries[2], purpose="nothing to see")
    rehash = entry_hash(forged)
    await run(
        opened.db,
        update(AuditRow)
        .where(AuditRow.seq == 3)
        .values(purpose="nothing to see", entry_hash=rehash),
    )
    report = await trail.verify()
    assert only(report) == (3, Problem.EDITED)
    assert "re-hashed" in report.findings[0].detail


async def test_a_deleted_entry_is_found_and_its_number_named(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    await record_many(trail, clock, 6)
    await run(opened.db, delete(AuditRow).where(AuditRow.seq.in_([3, 4])))
    report = await trail.verify()
    assert only(report) == (3, Problem.DELETED)
    assert report.findings[0].describe() == "entries 3-4: deleted: missing from the sequence"


async def test_a_deleted_entry_is_found_even_when_the_later_rows_were_renumbered(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    await record_many(trail, clock, 7)
    await run(
        opened.db,
        delete(AuditRow).where(AuditRow.seq.in_([3, 4])),
        update(AuditRow).where(AuditRow.seq >= 5).values(seq=AuditRow.seq - 2),
    )
    report = await trail.verify()
    assert [f.describe() for f in report.findings] == [
        "entries 3-4: deleted: removed, and the entries after renumbered to close the gap",
        "entries 3-5: reordered: holds the content of entry 5: moved by -2"
        " (and each entry after it in the range likewise)",
    ]


async def test_deleting_the_first_entry_is_found(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    await record_many(trail, clock, 3)
    await run(opened.db, delete(AuditRow).where(AuditRow.seq == 1))
    assert only(await trail.verify()) == (1, Problem.DELETED)


async def test_deleting_the_newest_entries_is_found_against_a_kept_anchor(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    await record_many(trail, clock, 5)
    anchor = (await trail.verify()).head
    await run(opened.db, delete(AuditRow).where(AuditRow.seq >= 4))
    assert (await trail.verify()).ok  # a shorter chain is consistent in itself...
    assert only(await trail.verify(anchor)) == (5, Problem.TRUNCATED)  # ...but not the anchor's


async def test_an_inserted_entry_is_found_and_named(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    entries = await record_many(trail, clock, 6)
    # Make room after entry 4 by renumbering the later rows, then insert a well-formed entry.
    await run(
        opened.db,
        update(AuditRow).where(AuditRow.seq >= 5).values(seq=AuditRow.seq + 1_000_000),
        update(AuditRow).where(AuditRow.seq >= 1_000_000).values(seq=AuditRow.seq - 999_999),
    )
    fake = dataclasses.replace(
        entries[3], seq=5, purpose="planted", previous_hash=entries[3].entry_hash
    )
    fake = dataclasses.replace(fake, entry_hash=entry_hash(fake))
    async with opened.db.transaction() as s:
        s.add(_row(fake))
    report = await trail.verify()
    assert only(report) == (5, Problem.INSERTED)
    moved = report.findings[1]
    assert (moved.seq, moved.last_seq, moved.problem) == (6, 7, Problem.REORDERED)


async def test_reordered_entries_are_found_and_named(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    await record_many(trail, clock, 6)
    await run(
        opened.db,
        update(AuditRow).where(AuditRow.seq == 3).values(seq=1_000_003),
        update(AuditRow).where(AuditRow.seq == 4).values(seq=3),
        update(AuditRow).where(AuditRow.seq == 1_000_003).values(seq=4),
    )
    report = await trail.verify()
    described = [f.describe() for f in report.findings]
    assert described == [
        "entry 3: reordered: holds the content of entry 4: moved by -1",
        "entry 4: reordered: holds the content of entry 3: moved by +1",
    ]


# --- the export, verified offline -------------------------------------------------------------


async def exported(trail: AuditTrail, clock: FakeClock, tmp_path: Path, n: int = 5) -> Path:
    await record_many(trail, clock, n)
    result = await trail.export(tmp_path / "audit.jsonl")
    assert result.count == n
    assert result.head.seq == n
    return result.path


async def test_an_export_verifies_offline_and_is_private(
    trail: AuditTrail, clock: FakeClock, tmp_path: Path
) -> None:
    path = await exported(trail, clock, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert len(lines) == 6
    head = json.loads(lines[-1])
    assert head["kind"] == "head"
    assert head["seq"] == 5
    report = verify_file(path)
    assert report.ok
    assert report.head == (await trail.verify()).head
    with pytest.raises(AuditError, match="exists"):
        await trail.export(path)


def _rewrite(path: Path, change: Any) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def _edit_line(index: int, key: str, value: object) -> Any:
    def change(lines: list[str]) -> list[str]:
        record = json.loads(lines[index])
        record[key] = value
        lines[index] = json.dumps(record)
        return lines

    return change


@pytest.mark.parametrize(
    ("change", "seq", "problem"),
    [
        (_edit_line(1, "purpose", "routine check"), 2, Problem.EDITED),
        (lambda lines: lines[:2] + lines[3:], 3, Problem.DELETED),
        (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], 2, Problem.REORDERED),
        (lambda lines: [*lines[:3], lines[2], *lines[3:]], 3, Problem.INSERTED),
        (lambda lines: lines[:-1], 6, Problem.TRUNCATED),
        (lambda lines: lines[:-3] + lines[-1:], 4, Problem.TRUNCATED),
        (
            lambda lines: [*lines[:2], '{"kind": "entry", "seq": "x"}', *lines[2:]],
            3,
            Problem.MALFORMED,
        ),
        (lambda lines: [*lines, lines[0]], 6, Problem.MALFORMED),
    ],
    ids=[
        "edited",
        "deleted",
        "reordered",
        "duplicated",
        "head-cut",
        "tail-cut",
        "garbage",
        "after-head",
    ],
)
async def test_damage_to_an_export_is_found_offline_and_named(
    local_trail: AuditTrail,
    clock: FakeClock,
    tmp_path: Path,
    change: Any,
    seq: int,
    problem: Problem,
) -> None:
    path = await exported(local_trail, clock, tmp_path)
    _rewrite(path, change)
    report = verify_file(path)
    assert (seq, problem) in [(f.seq, f.problem) for f in report.findings]
    assert report.findings[0].seq == seq


async def test_an_export_cut_but_with_a_forged_head_is_found_against_the_kept_anchor(
    local_trail: AuditTrail, clock: FakeClock, tmp_path: Path
) -> None:
    path = await exported(local_trail, clock, tmp_path)
    anchor = verify_file(path).head
    lines = path.read_text().splitlines()
    fourth = json.loads(lines[3])
    forged_head = {
        "kind": "head",
        "format": "citynode-audit/1",
        "seq": 4,
        "entry_hash": fourth["entry_hash"],
        "count": 4,
    }
    path.write_text("\n".join([*lines[:4], json.dumps(forged_head)]) + "\n")
    assert verify_file(path).ok  # consistent in itself
    assert only(verify_file(path, anchor)) == (5, Problem.TRUNCATED)


def test_an_unreadable_export_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot read"):
        verify_file(tmp_path / "missing.jsonl")


# --- the chain itself: the known-answer vector and tampering at random ----------------------


def independent_hash(record: dict[str, Any]) -> bytes:
    """The entry hash written again from the module docstring's description, for the vector."""

    def optional(value: bytes | None) -> bytes:
        return b"\x00" if value is None else b"\x01" + len(value).to_bytes(4, "big") + value

    def utf8(value: str | None) -> bytes | None:
        return None if value is None else value.encode()

    case_id = None if record["case_id"] is None else bytes.fromhex(record["case_id"])
    data = (
        b"citynode/audit-entry/v1\x00"
        + record["seq"].to_bytes(8, "big")
        + struct.pack(">d", record["at"])
        + b"".join(optional(utf8(record[k])) for k in ("user", "role", "action", "subject"))
        + optional(case_id)
        + optional(utf8(record["purpose"]))
        + optional(utf8(record["outcome"]))
        + bytes.fromhex(record["previous_hash"])
    )
    return hashlib.sha256(data).digest()


def _entry_of(record: dict[str, Any]) -> AuditEntry:
    return AuditEntry(
        seq=record["seq"],
        at=record["at"],
        user=record["user"],
        role=record["role"],
        action=record["action"],
        subject=record["subject"],
        case_id=None if record["case_id"] is None else bytes.fromhex(record["case_id"]),
        purpose=record["purpose"],
        outcome=record["outcome"],
        previous_hash=bytes.fromhex(record["previous_hash"]),
        entry_hash=bytes.fromhex(record["entry_hash"]),
    )


def test_the_known_answer_chain_hashes_as_specified_both_ways() -> None:
    vector = json.loads(VECTORS.read_text())
    checker = ChainChecker()
    previous = ZERO_HASH.hex()
    for record in vector["entries"]:
        assert record["previous_hash"] == previous
        assert independent_hash(record).hex() == record["entry_hash"]
        entry = _entry_of(record)
        assert entry_hash(entry).hex() == record["entry_hash"]
        assert entry.as_json() == record
        checker.add(entry)
        previous = record["entry_hash"]
    report = checker.finish()
    assert report.ok
    assert str(report.head) == vector["head"]


def _chain(n: int) -> list[AuditEntry]:
    entries: list[AuditEntry] = []
    previous = ZERO_HASH
    for seq in range(1, n + 1):
        draft = AuditEntry(
            seq,
            1_767_225_600.0 + seq,
            "anna.berg",
            "caseworker",
            "read_identity",
            None,
            case(seq),
            "handover meeting",
            "ok",
            previous,
            ZERO_HASH,
        )
        entries.append(dataclasses.replace(draft, entry_hash=entry_hash(draft)))
        previous = entries[-1].entry_hash
    return entries


def _check(entries: list[AuditEntry]) -> VerifyReport:
    checker = ChainChecker()
    for entry in entries:
        checker.add(entry)
    return checker.finish()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=2, max_value=30),
    data=st.data(),
    field=st.sampled_from(["at", "user", "role", "action", "case_id", "purpose", "outcome"]),
)
def test_any_single_edit_anywhere_is_found_and_names_that_entry(
    n: int, data: st.DataObject, field: str
) -> None:
    entries = _chain(n)
    index = data.draw(st.integers(min_value=0, max_value=n - 1))
    values = {
        "at": 1.0,
        "user": "x",
        "role": "auditor",
        "action": "y",
        "case_id": bytes(16),
        "purpose": "other",
        "outcome": "z",
    }
    entries[index] = dataclasses.replace(entries[index], **{field: values[field]})
    report = _check(entries)
    assert [(f.seq, f.problem) for f in report.findings] == [(index + 1, Problem.EDITED)]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(min_value=3, max_value=30), data=st.data())
def test_any_run_deleted_and_closed_up_or_two_entries_exchanged_is_named(
    n: int, data: st.DataObject
) -> None:
    entries = _chain(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 2))
    k = data.draw(st.integers(min_value=1, max_value=n - 1 - i))
    closed_up = entries[:i] + [dataclasses.replace(e, seq=e.seq - k) for e in entries[i + k :]]
    found = [(f.seq, f.last_seq, f.problem) for f in _check(closed_up).findings]
    assert found == [(i + 1, i + k, Problem.DELETED), (i + 1, n - k, Problem.REORDERED)]
    j = data.draw(st.integers(min_value=i + 1, max_value=n - 1))
    exchanged = list(entries)  # any two entries' contents exchanged, numbers kept in place
    exchanged[i] = dataclasses.replace(entries[j], seq=i + 1)
    exchanged[j] = dataclasses.replace(entries[i], seq=j + 1)
    found = [(f.seq, f.problem) for f in _check(exchanged).findings]
    assert found == [(i + 1, Problem.REORDERED), (j + 1, Problem.REORDERED)]


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=3, max_value=30), data=st.data())
def test_any_deletion_or_swap_in_the_middle_is_found_and_named(n: int, data: st.DataObject) -> None:
    entries = _chain(n)
    i = data.draw(st.integers(min_value=0, max_value=n - 2))
    deleted = entries[:i] + entries[i + 1 :]
    assert [(f.seq, f.problem) for f in _check(deleted).findings] == [(i + 1, Problem.DELETED)]
    swapped = list(entries)  # contents of i and i+1 exchanged, numbers kept in place
    a, b = entries[i], entries[i + 1]
    swapped[i] = dataclasses.replace(b, seq=a.seq)
    swapped[i + 1] = dataclasses.replace(a, seq=b.seq)
    found = [(f.seq, f.problem) for f in _check(swapped).findings]
    assert found == [(i + 1, Problem.REORDERED), (i + 2, Problem.REORDERED)]


def _row(entry: AuditEntry) -> AuditRow:
    return AuditRow(
        seq=entry.seq,
        at=entry.at,
        user_name=entry.user,
        role=entry.role,
        action=entry.action,
        subject=entry.subject,
        case_id=entry.case_id,
        purpose=entry.purpose,
        outcome=entry.outcome,
        previous_hash=entry.previous_hash,
        entry_hash=entry.entry_hash,
    )


async def test_rows_read_back_are_the_entries_recorded(
    opened: Opened, trail: AuditTrail, clock: FakeClock
) -> None:
    recorded = await record_many(trail, clock, 3)
    async with opened.db.reading() as s:
        rows = (await s.scalars(select(AuditRow).order_by(AuditRow.seq))).all()
    assert [bytes(r.entry_hash) for r in rows] == [e.entry_hash for e in recorded]
    assert list(reversed(await trail.entries())) == recorded
