"""``citynode outbox resend``: a peer restored from a backup gets back what it lost, exactly once.

Stockholm (the home city) sends case messages to Göteborg, the time T of Göteborg's backup is
noted, more messages go, and Göteborg is then restored from its data directory as copied at T.
Stockholm resends since T: every lost case message is sealed afresh under its original id and
reaches Göteborg once, in order per case, while Stockholm's cases and journal do not move. A
resend of what Göteborg still holds is answered ``replayed`` by its exactly-once record and
processes nothing twice. Messages travel through the real inbox processor
(:func:`~node_fixtures.deliver_outbox`), whose receipts Stockholm checks as its transport does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from node_fixtures import (
    SECRET,
    UNITS,
    Federation,
    accept,
    closure,
    copy_federation,
    deliver_outbox,
    inquiry,
    new_case_id,
    open_case,
    personal_data_in,
    referral,
    send,
    statuses,
    stored,
)
from sqlalchemy import func, select

from node.audit import AuditTrail
from node.cli_resend import register_resend, resender_for
from node.delivery import ACCEPTED, DeliveryState
from node.errors import NodeError
from node.outgoing import Resend
from node.resend import RESENT, ResendPlan, ResendRaced, parse_since
from node.service import Node
from node.storage.database import StorageConflict
from node.storage.schema import CaseMessageRow, OutboxRow
from protocol.cases import CaseState, Direction
from protocol.errors import ErrorCode
from protocol.messages import KeyUpdate, Message

HOME = "stockholm"
PEER = "goteborg"


@pytest.fixture(autouse=True)
def _capture_every_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


# --- helpers ------------------------------------------------------------------------------------


async def back_up(fed: Federation, city: str, to: Path) -> Node:
    """Copy the city's data directory (database and keys) while its node is closed; reopen it."""
    node = fed.nodes.pop(city)
    await node.close()
    shutil.copytree(node.config.data_dir, to)
    return await fed.open(city)


async def restore(fed: Federation, city: str, backup: Path) -> Node:
    """Replace the city's data directory by the backup: it loses all that came after."""
    node = fed.nodes.pop(city)
    await node.close()
    shutil.rmtree(node.config.data_dir)
    shutil.copytree(backup, node.config.data_dir)
    return await fed.open(city)


async def plan_and_queue(node: Node, peer: str, since: float) -> tuple[ResendPlan, int]:
    resender = resender_for(node)
    plan = await resender.plan(peer, since)
    return plan, len(await resender.queue(plan))


async def journal(node: Node, case_id: bytes) -> list[tuple[Direction, str, bytes]]:
    return [
        (entry.direction, entry.message_type, entry.message_id)
        for entry in await node.journal.entries(case_id)
    ]


async def journal_rows(node: Node) -> int:
    async with node.db.reading() as s:
        return int(await s.scalar(select(func.count()).select_from(CaseMessageRow)) or 0)


async def outbox_rows(node: Node, message_id: bytes) -> list[tuple[str, bytes | None, str | None]]:
    async with node.db.reading() as s:
        rows = await s.execute(
            select(OutboxRow.state, OutboxRow.receipt, OutboxRow.last_error)
            .where(OutboxRow.message_id == message_id)
            .order_by(OutboxRow.seq)
        )
        return [(str(state), receipt, error) for state, receipt, error in rows.all()]


async def sent_ids(node: Node, case_id: bytes) -> list[bytes]:
    return [
        mid for direction, _, mid in await journal(node, case_id) if direction is Direction.SENT
    ]


async def state(node: Node, case_id: bytes) -> CaseState | None:
    record = await node.cases.get(case_id)
    return None if record is None else record.state


def withdrawal(case_id: bytes, node: Node) -> Message:
    return closure(case_id, UNITS[HOME], node.today())


# --- the restore ------------------------------------------------------------------------------


async def test_a_restored_peer_gets_every_lost_case_message_once_and_in_order(
    fed: Federation, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home, peer = await fed.open(HOME), await fed.open(PEER)
    kept, referred, withdrawn, shredded, late = (new_case_id() for _ in range(5))
    await open_case(home, peer, kept, accepted=False)
    await open_case(home, peer, referred, accepted=True)

    since = fed.clock()  # Göteborg's backup is taken now
    peer = await back_up(fed, PEER, tmp_path / "backup")
    home = fed.nodes[HOME]
    await send(home, peer, referral(referred, year=home.today().year))
    await send(home, peer, inquiry(withdrawn))
    await send(home, peer, withdrawal(withdrawn, home))
    await send(home, peer, inquiry(shredded))
    await send(home, peer, KeyUpdate(bundle=home.signed_bundle()))  # a control message
    assert statuses(await deliver_outbox(home, peer)) == [ACCEPTED] * 5
    assert await home.cases.shred(shredded)
    await send(home, peer, inquiry(late))  # still on its way when Göteborg is lost
    before = {case_id: await journal(home, case_id) for case_id in (kept, referred, withdrawn)}
    home_journal_rows = await journal_rows(home)

    peer = await restore(fed, PEER, tmp_path / "backup")
    assert (await peer.cases.get(withdrawn)) is None
    assert (await peer.cases.get(referred)) is not None

    plan, queued = await plan_and_queue(home, PEER, since)

    assert plan.counts() == {
        "peer": PEER,
        "since": since,
        "to_queue": 3,
        "in_flight": 1,
        "held_back": 0,
        "not_case": {"key_update": 1},
        "shredded": 1,
        "unreadable": 0,
    }
    assert [item.message_type for item in plan.to_queue] == ["referral", "inquiry", "closure"]
    assert queued == 3
    results = await deliver_outbox(home, peer)  # the late inquiry first (queued before)
    assert statuses(results) == [ACCEPTED] * 4

    # Göteborg holds each lost message once, under its original id, in its case's order.
    assert await state(peer, referred) == CaseState.REFERRED
    assert await state(peer, withdrawn) == CaseState.CLOSED
    assert await state(peer, late) == CaseState.AWAITING_REPLY
    assert await state(peer, shredded) is None  # its messages died with the case key
    for case_id in (referred, withdrawn):
        theirs = [(t, m) for d, t, m in await journal(peer, case_id) if d is Direction.RECEIVED]
        ours = [(t, m) for d, t, m in before[case_id] if d is Direction.SENT]
        assert theirs == ours
    # Stockholm's cases and journal did not move; every envelope of a resent id is receipted.
    assert {c: await journal(home, c) for c in before} == before
    assert await journal_rows(home) == home_journal_rows
    for message_id in await sent_ids(home, withdrawn):
        rows = await outbox_rows(home, message_id)
        assert [state for state, _, _ in rows] == [DeliveryState.RECEIPTED.value] * 2
        assert rows[0][1] != rows[1][1]  # the original receipt kept as evidence beside the new
    assert await home.outbox.state_of(plan.to_queue[0].resend.message_id) == (
        DeliveryState.RECEIPTED
    )
    # Audited per case, by the console, with no personal data; nothing personal logged.
    entries = await AuditTrail(home.db, home.clock).entries()
    resent = [e for e in entries if e.action == RESENT]
    assert sorted(e.case_id for e in resent if e.case_id) == sorted([referred, withdrawn])
    assert {(e.user, e.outcome) for e in resent} == {("console", "ok")}
    assert (await AuditTrail(home.db, home.clock).verify()).ok
    assert personal_data_in(caplog.records) == []


async def test_a_resend_of_what_the_peer_still_holds_is_refused_as_replayed_and_changes_nothing(
    fed: Federation,
) -> None:
    home, peer = await fed.open(HOME), await fed.open(PEER)
    since = fed.clock()
    case_id = new_case_id()
    await open_case(home, peer, case_id, accepted=True)
    await send(home, peer, referral(case_id, year=home.today().year))
    assert statuses(await deliver_outbox(home, peer)) == [ACCEPTED]
    held = await stored(peer)
    received = await journal(peer, case_id)

    plan, queued = await plan_and_queue(home, PEER, since)
    assert (len(plan.to_queue), queued) == (2, 2)  # the inquiry and the referral
    results = await deliver_outbox(home, peer)

    # Fresh envelopes (new bytes) under ids the peer holds: refused, nothing processed twice.
    assert statuses(results) == [ErrorCode.REPLAYED.value] * 2
    assert await stored(peer) == held
    assert await journal(peer, case_id) == received
    for message_id in await sent_ids(home, case_id):
        rows = await outbox_rows(home, message_id)
        assert rows[0][0] == DeliveryState.RECEIPTED.value  # the original receipt stays
        assert rows[1] == (DeliveryState.FAILED.value, None, ErrorCode.REPLAYED.value)
    # The case still shows each message delivered: a receipted envelope answers for it.
    deliveries = [e.delivery for e in await home.journal.entries(case_id)]
    assert deliveries == ["receipted", "received", "receipted"]
    assert await home.outbox.state_of(plan.to_queue[1].resend.message_id) == (
        DeliveryState.RECEIPTED
    )


# --- what is left alone -------------------------------------------------------------------------


async def test_messages_still_on_their_way_are_skipped_and_a_case_behind_them_is_flagged(
    fed: Federation,
) -> None:
    home, peer = await fed.open(HOME), await fed.open(PEER)
    since = fed.clock()
    case_id = new_case_id()
    await open_case(home, peer, case_id, accepted=True)
    await send(home, peer, referral(case_id, year=home.today().year))
    await send(home, peer, withdrawal(case_id, home))  # queued, not yet delivered

    plan = await resender_for(home).plan(PEER, since)

    assert [item.message_type for item in plan.to_queue] == ["inquiry"]
    assert (plan.in_flight, plan.held_back) == (2, 2)
    # The outbox refuses a second envelope of a message still in flight, whatever the caller.
    in_flight = (await sent_ids(home, case_id))[-1]
    with pytest.raises(StorageConflict):
        await home.outgoing(lambda _: None).resend(
            PEER, [Resend(in_flight, withdrawal(case_id, home))]
        )


async def test_a_message_of_a_resent_case_queued_between_plan_and_write_stops_the_resend(
    fed: Federation,
) -> None:
    home, peer = await fed.open(HOME), await fed.open(PEER)
    since = fed.clock()
    case_id = new_case_id()
    await open_case(home, peer, case_id, accepted=False)
    resender = resender_for(home)
    plan = await resender.plan(PEER, since)
    await send(home, peer, withdrawal(case_id, home))  # the case moves on meanwhile
    rows = await home.outbox.queue_length(PEER)

    with pytest.raises(ResendRaced) as caught:
        await resender.queue(plan)

    assert caught.value.code == "resend_raced"
    assert await home.outbox.queue_length(PEER) == rows
    entries = await AuditTrail(home.db, home.clock).entries()
    assert not [e for e in entries if e.action == RESENT]


async def test_messages_of_other_cases_queued_meanwhile_do_not_stop_the_resend(
    fed: Federation,
) -> None:
    home, peer = await fed.open(HOME), await fed.open(PEER)
    since = fed.clock()
    await open_case(home, peer, new_case_id(), accepted=False)
    resender = resender_for(home)
    plan = await resender.plan(PEER, since)
    await send(home, peer, inquiry(new_case_id()))  # a case worker on another case, meanwhile

    queued = await resender.queue(plan)

    assert len(queued) == len(plan.to_queue) == 1


async def test_a_peer_that_is_not_a_member_or_this_node_is_refused(fed: Federation) -> None:
    home = await fed.open(HOME)
    for city in ("uppsala", HOME):
        with pytest.raises(NodeError) as caught:
            await resender_for(home).plan(city, home.clock() - 60)
        assert caught.value.code == "unknown_peer"


@pytest.mark.parametrize(
    ("text", "code"),
    [("yesterday", "bad_time"), ("2026-13-01T00:00:00", "bad_time"), ("", "bad_time")],
)
def test_a_time_that_is_not_a_time_is_refused_with_its_code(text: str, code: str) -> None:
    with pytest.raises(NodeError) as caught:
        parse_since(text, 2_000_000_000.0)
    assert caught.value.code == code


def test_since_reads_iso_times_with_or_without_a_zone_and_unix_seconds() -> None:
    now = 1_800_000_000.0
    assert parse_since("2026-11-27T12:00:00+01:00", now) == 1_795_777_200.0
    assert parse_since("2026-11-27T11:00:00", now) == 1_795_777_200.0  # UTC when no zone
    assert parse_since("1795777200", now) == 1_795_777_200.0
    with pytest.raises(NodeError) as caught:
        parse_since("2030-01-01T00:00:00Z", now)
    assert caught.value.code == "time_in_future"


# --- the command --------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    """``citynode outbox`` as ``node.cli.build_parser`` builds it, with ``resend`` registered."""
    parser = argparse.ArgumentParser(prog="citynode")
    sub = parser.add_subparsers(dest="command", required=True)
    outbox = sub.add_parser("outbox")
    register_resend(outbox.add_subparsers(dest="outbox_command", required=True))
    return parser


def _run(argv: Sequence[str]) -> tuple[int, str | None]:
    """Run the command as ``node.cli.main`` does: the exit code, and the error code if any."""
    args = _parser().parse_args(["outbox", *argv])
    try:
        return int(args.handler(args)), None
    except NodeError as e:
        return 1, e.code


@pytest.fixture
def console(template: Path, tmp_path: Path) -> tuple[Federation, list[str]]:
    fed = copy_federation(template, tmp_path / "fed")
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET.value)
    secret.chmod(0o600)
    options = ["--config", str(fed.root / f"{HOME}.toml"), "--secret-file", str(secret)]
    return fed, options


def _exchange(fed: Federation) -> float:
    """Stockholm opens a case with Göteborg (inquiry, acceptance); return a time before it."""

    async def run() -> float:
        try:
            home, peer = await fed.open(HOME), await fed.open(PEER)
            since = fed.clock() - 1
            case_id = new_case_id()
            await send(home, peer, inquiry(case_id))
            assert statuses(await deliver_outbox(home, peer)) == [ACCEPTED]
            await send(peer, home, accept(case_id, UNITS[PEER]))
            assert statuses(await deliver_outbox(peer, home)) == [ACCEPTED]
            return since
        finally:
            await fed.close()

    return asyncio.run(run())


def _undelivered(fed: Federation) -> int:
    async def run() -> int:
        try:
            return await (await fed.open(HOME)).outbox.queue_length(PEER)
        finally:
            await fed.close()

    return asyncio.run(run())


def test_the_command_asks_first_and_queues_only_when_told_yes(
    console: tuple[Federation, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fed, options = console
    since = str(int(_exchange(fed)))
    command = ["resend", "--peer", PEER, "--since", since, *options]

    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    assert _run(command) == (1, None)
    assert "1 case message(s) to queue again for goteborg" in capsys.readouterr().err
    assert _undelivered(fed) == 0

    monkeypatch.setattr("builtins.input", lambda prompt: "yes")
    assert _run([*command, "--json"]) == (0, None)
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert (doc["queued"], doc["to_queue"], doc["confirmed"]) == (1, 1, True)
    assert _undelivered(fed) == 1


def test_the_command_with_yes_does_not_ask_and_reports_counts(
    console: tuple[Federation, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fed, options = console
    since = str(int(_exchange(fed)))

    def never(prompt: str) -> str:
        raise AssertionError("--yes must not ask")

    monkeypatch.setattr("builtins.input", never)
    assert _run(["resend", "--peer", PEER, "--since", since, "--yes", *options]) == (0, None)
    out = capsys.readouterr().out
    assert "Queued 1 message(s) for goteborg." in out
    assert _undelivered(fed) == 1


@pytest.mark.parametrize(
    ("peer", "since", "code"),
    [
        ("uppsala", "2026-01-01T00:00:00Z", "unknown_peer"),
        (PEER, "last tuesday", "bad_time"),
        (PEER, "2999-01-01T00:00:00+00:00", "time_in_future"),
    ],
)
def test_the_command_refuses_bad_input_with_a_stable_code_and_queues_nothing(
    console: tuple[Federation, list[str]], peer: str, since: str, code: str
) -> None:
    fed, options = console
    assert _run(["resend", "--peer", peer, "--since", since, "--yes", *options]) == (1, code)
    assert _undelivered(fed) == 0
