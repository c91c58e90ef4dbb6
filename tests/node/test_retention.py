"""Retention: the receiving city's ended cases are crypto-shredded when their period runs out.

Between real nodes (Stockholm home, Göteborg receiving) on SQLite and PostgreSQL: a case that
ended longer ago than the period loses its key — its identity, journal and inbox payloads can
never be read again, the shredding is audited — while its relocation still counts in the
balance; a case that ended more recently is untouched, an open case is never touched, and the
home city shreds nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from node_fixtures import (
    UNITS,
    Federation,
    accept,
    fresh_federation,
    inquiry,
    new_case_id,
    wait_until,
)
from relocation_support import (
    BACKENDS,
    backend_federation,
    deliver,
    end_relocation,
    relocation,
    sqlite_template,
)

from node import config
from node.audit import AuditTrail
from node.balance import YearCounts, count_own
from node.retention import DAY_S, SHREDDED, CaseRetention
from node.service import Node
from node.serving import serve
from node.storage.schema import CaseDocumentRow
from node.storage.vault import CaseShredded

PERIOD_DAYS = 2


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sqlite_template(tmp_path_factory)


@pytest.fixture(params=BACKENDS)
async def fed(
    request: pytest.FixtureRequest, template: Path, tmp_path: Path
) -> AsyncIterator[Federation]:
    """The trio on SQLite and on PostgreSQL."""
    async with backend_federation(request.param, template, tmp_path) as federation:
        yield federation


@pytest.fixture
async def trio(template: Path, tmp_path: Path) -> AsyncIterator[Federation]:
    """The trio on SQLite (what is checked does not depend on the database)."""
    async with backend_federation("sqlite", template, tmp_path) as federation:
        yield federation


def _retention(node: Node, *, days_later: float = 0.0) -> CaseRetention:
    """The node's retention, with a clock ``days_later`` than the node's."""
    return CaseRetention(
        db=node.db,
        cases=node.cases,
        audit=AuditTrail(node.db, node.clock),
        after_days=PERIOD_DAYS,
        clock=lambda: node.clock() + days_later * DAY_S,
    )


async def _readable(node: Node, case_id: bytes) -> bool:
    """Whether the case's identity (if any), journal and inbox payloads can still be read."""
    try:
        await node.cases.open_identity(case_id)
        entries = await node.journal.entries(case_id)
        await node.inbox.messages_for_case(case_id)
    except CaseShredded:
        return False
    assert entries  # every case here has messages
    return True


async def test_a_case_ended_longer_ago_than_the_period_is_shredded_and_still_counted(
    fed: Federation,
) -> None:
    stockholm, goteborg = await fed.open("stockholm"), await fed.open("goteborg")
    year = stockholm.today().year
    old = await relocation(stockholm, goteborg, index=1)
    await end_relocation(stockholm, goteborg, old)
    fed.clock.offset += 3 * DAY_S  # three days pass
    recent = await relocation(stockholm, goteborg, index=2)
    await end_relocation(stockholm, goteborg, recent)
    still_open = new_case_id()
    await deliver(stockholm, goteborg, inquiry(still_open))
    await deliver(goteborg, stockholm, accept(still_open, UNITS["goteborg"]))

    retention = _retention(goteborg)
    assert [case.case_id for case in await retention.retained()] == [old, recent]
    assert [case.case_id for case in await retention.due()] == [old]
    assert await retention.shred_due() == [old]

    record = await goteborg.cases.get(old)
    assert record is not None
    assert record.shredded
    assert not record.has_identity
    for read in (goteborg.cases.open_identity, goteborg.journal.entries):
        with pytest.raises(CaseShredded):
            await read(old)
    with pytest.raises(CaseShredded):
        await goteborg.inbox.messages_for_case(old)
    assert await _readable(goteborg, recent)
    assert await _readable(goteborg, still_open)
    assert await goteborg.cases.open_identity(recent) is not None
    # The relocation still counts: the balance is read from columns that are not secret.
    async with goteborg.db.reading() as s:
        assert (await count_own(s))[year] == YearCounts(received_from={"stockholm": 2})
    # Audited, once, by the node's console account.
    entries = await AuditTrail(goteborg.db, goteborg.clock).entries(case_id=old)
    assert [(e.user, e.action, e.outcome) for e in entries] == [("console", SHREDDED, "ok")]
    assert await retention.shred_due() == []  # nothing left to do


async def test_an_open_case_is_never_shredded_and_the_home_city_shreds_nothing(
    trio: Federation,
) -> None:
    stockholm, goteborg = await trio.open("stockholm"), await trio.open("goteborg")
    ended = await relocation(stockholm, goteborg, index=1)
    await end_relocation(stockholm, goteborg, ended)
    in_progress = await relocation(stockholm, goteborg, index=2)

    far_later = _retention(goteborg, days_later=10 * 365)
    assert await far_later.shred_due() == [ended]
    assert await _readable(goteborg, in_progress)
    assert await _readable(stockholm, ended)
    assert await _retention(stockholm, days_later=10 * 365).shred_due() == []
    assert await _readable(stockholm, ended)


async def test_the_serving_node_shreds_due_cases_in_its_housekeeping(tmp_path: Path) -> None:
    async with fresh_federation(tmp_path / "fed", ("stockholm", "goteborg"), listening=True) as fed:
        stockholm, goteborg = await fed.open("stockholm"), await fed.open("goteborg")
        ended = await relocation(stockholm, goteborg, index=1)
        await end_relocation(stockholm, goteborg, ended)
        # A period of zero days: the case is due at once.
        goteborg.config = dataclasses.replace(
            goteborg.config, retention=config.Retention(shred_case_key_after_days=0)
        )
        stop = asyncio.Event()
        task = asyncio.create_task(serve(goteborg, stop))
        try:

            async def shredded() -> bool:
                record = await goteborg.cases.get(ended)
                return record is not None and record.shredded

            await wait_until(shredded, timeout_s=15.0)
        finally:
            stop.set()
            await task


async def test_shredding_a_case_deletes_its_document_streams_and_no_other(trio: Federation) -> None:
    stockholm, goteborg = await trio.open("stockholm"), await trio.open("goteborg")
    ended = await relocation(stockholm, goteborg, index=1)
    await end_relocation(stockholm, goteborg, ended)
    ongoing = await relocation(stockholm, goteborg, index=2)
    streams = {}
    for case_id in (ended, ongoing):
        attachment_id = new_case_id()  # 16 random bytes, as an attachment id is
        async with goteborg.db.transaction() as s:
            s.add(
                CaseDocumentRow(
                    case_id=case_id,
                    attachment_id=attachment_id,
                    direction="received",
                    peer="stockholm",
                    state="verified",
                    sealed_ref=None,
                    attempts=1,
                    next_attempt_at=0.0,
                    last_error=None,
                    created_at=goteborg.clock(),
                    updated_at=goteborg.clock(),
                )
            )
        upload = await goteborg.attachments.open("stockholm", attachment_id)
        await upload.write(b"sealed stream of a fictive document")
        await upload.commit()
        streams[case_id] = goteborg.attachments.received("stockholm", attachment_id)

    retention = CaseRetention(
        db=goteborg.db,
        cases=goteborg.cases,
        audit=AuditTrail(goteborg.db, goteborg.clock),
        after_days=PERIOD_DAYS,
        clock=lambda: goteborg.clock() + 3 * DAY_S,
        attachments=goteborg.attachments,
    )
    assert await retention.shred_due() == [ended]
    assert not streams[ended].exists()
    assert streams[ongoing].read_bytes() == b"sealed stream of a fictive document"
