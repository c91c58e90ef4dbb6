"""Delivery into a real node: batches, the case ledger through the inbox, overload, both backends.

Stockholm is the home city, Göteborg the receiving city, Malmö the third member. Messages are
sent the way the node sends them (``Node.outgoing``: the sender's case moves and the sealed
envelope is queued in one transaction) and handed to the receiver's real inbox processor
(:func:`~node_fixtures.deliver_outbox`), whose receipts the sender checks and stores; a few go
through the real federation listener over mutual TLS. The case flow follows
``protocol.cases``' table at both ends, and whatever the receiver refuses leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from node_fixtures import (
    PERSON_NAME,
    PERSONNUMMER,
    UNITS,
    Federation,
    accept,
    closure,
    decline,
    deliver_outbox,
    federation_listener,
    fresh_federation,
    inbox_processor,
    inquiry,
    intake,
    new_case_id,
    open_case,
    personal_data_in,
    progress_report,
    referral,
    reframe,
    refusals,
    seal,
    send,
    split,
    statuses,
    stored,
)

from node.delivery import (
    ACCEPTED,
    DUPLICATE,
    REJECTED,
    DeliveryResult,
    DeliveryState,
    Overloaded,
)
from node.service import Node
from protocol.cases import CaseState, Role
from protocol.messages import ClosureReason, Referral

HOME = "stockholm"
RECEIVING = "goteborg"
THIRD = "malmo"


@pytest.fixture
async def stockholm(fed: Federation) -> Node:
    return await fed.open(HOME)


@pytest.fixture
async def goteborg(fed: Federation) -> Node:
    return await fed.open(RECEIVING)


@pytest.fixture
async def malmo(fed: Federation) -> Node:
    return await fed.open(THIRD)


@pytest.fixture(autouse=True)
def _capture_every_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def referral_for(node: Node, case_id: bytes) -> Referral:
    return referral(case_id, year=node.today().year)


async def state(node: Node, case_id: bytes) -> CaseState | None:
    record = await node.cases.get(case_id)
    return None if record is None else record.state


# --- batches ------------------------------------------------------------------------------------


async def test_bad_envelopes_inside_a_batch_leave_the_good_ones_accepted(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    good_cases = [new_case_id(), new_case_id(), new_case_id()]
    good = [seal(stockholm, RECEIVING, inquiry(case_id)) for case_id in good_cases]
    _, _, sealed = split(good[1])
    tampered = reframe(good[1], sealed=sealed[:-1] + bytes([sealed[-1] ^ 1]))
    misaddressed = seal(stockholm, THIRD, inquiry(new_case_id()))
    unknown_case = seal(stockholm, RECEIVING, referral_for(stockholm, new_case_id()))
    batch = [good[0], tampered, b"\xc1", good[2], misaddressed, unknown_case]

    results = await inbox_processor(goteborg).handle_batch(HOME, batch)

    assert statuses(results) == [
        ACCEPTED,
        REJECTED,
        "malformed",
        ACCEPTED,
        "wrong_recipient",
        "invalid_transition",
    ]
    assert [r.receipt is not None for r in results] == [True, False, False, True, False, False]
    held = await stored(goteborg)
    assert (held.inbox, held.replay) == (2, 2)
    assert sorted(case_id for case_id, _ in held.cases) == sorted([good_cases[0], good_cases[2]])
    # The tampered twin of the second good envelope was refused: its message id is still free.
    [late] = await inbox_processor(goteborg).handle_batch(HOME, [good[1]])
    assert late.status == ACCEPTED
    assert personal_data_in(caplog.records) == []


async def test_the_same_envelope_twice_in_one_batch_is_stored_once(
    goteborg: Node, stockholm: Node
) -> None:
    envelope = seal(stockholm, RECEIVING, inquiry(new_case_id()))

    first, second = await inbox_processor(goteborg).handle_batch(HOME, [envelope, envelope])

    assert first.status == ACCEPTED
    assert second == DeliveryResult(DUPLICATE, first.receipt)
    held = await stored(goteborg)
    assert (held.inbox, held.replay, len(held.cases)) == (1, 1, 1)


async def test_a_batch_over_the_listener_answers_each_envelope_in_order(
    goteborg: Node, stockholm: Node
) -> None:
    good = seal(stockholm, RECEIVING, inquiry(new_case_id()))
    stale = seal(stockholm, RECEIVING, inquiry(new_case_id()), timestamp=1_700_000_000)
    async with federation_listener(goteborg) as listener:
        posted = await listener.post(stockholm, [stale, good, good])
    assert posted.status == 200
    assert statuses(DeliveryResult(s, r) for s, r in posted.results) == [
        "stale",
        ACCEPTED,
        DUPLICATE,
    ]
    assert posted.results[1][1] == posted.results[2][1]
    assert listener.seen == [HOME]
    assert refusals(goteborg, HOME, "stale") == 1
    assert (
        goteborg.metrics.registry.get_sample_value("citynode_inbox_accepted_total", {"peer": HOME})
        == 1.0
    )


# --- the case ledger through the inbox ----------------------------------------------------------


async def test_inquiry_creates_the_receiving_case(goteborg: Node, stockholm: Node) -> None:
    case_id = new_case_id()
    await send(stockholm, goteborg, inquiry(case_id))

    assert statuses(await deliver_outbox(stockholm, goteborg)) == [ACCEPTED]

    record = await goteborg.cases.get(case_id)
    assert record is not None
    assert (record.role, record.peer, record.state) == (
        Role.RECEIVING,
        HOME,
        CaseState.AWAITING_REPLY,
    )
    assert await state(stockholm, case_id) == CaseState.AWAITING_REPLY
    [message] = await goteborg.inbox.messages_for_case(case_id)
    assert (message.sender, message.message_type) == (HOME, "inquiry")


async def test_referral_for_a_case_the_receiver_does_not_hold_is_refused(
    goteborg: Node, stockholm: Node
) -> None:
    before = await stored(goteborg)
    envelope = seal(stockholm, RECEIVING, referral_for(stockholm, new_case_id()))

    [result] = await inbox_processor(goteborg).handle_batch(HOME, [envelope])

    assert result == DeliveryResult("invalid_transition", None)
    assert await stored(goteborg) == before
    assert refusals(goteborg, HOME, "invalid_transition") == 1


async def test_referral_before_the_acceptance_is_refused_and_the_case_unchanged(
    goteborg: Node, stockholm: Node
) -> None:
    case_id = new_case_id()
    await open_case(stockholm, goteborg, case_id, accepted=False)
    before = await stored(goteborg)
    early = seal(stockholm, RECEIVING, referral_for(stockholm, case_id))

    [result] = await inbox_processor(goteborg).handle_batch(HOME, [early])

    assert result == DeliveryResult("invalid_transition", None)
    assert await stored(goteborg) == before
    assert await state(goteborg, case_id) == CaseState.AWAITING_REPLY


async def test_referral_after_acceptance_is_stored_sealed_and_moves_both_ends(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    case_id = new_case_id()
    await open_case(stockholm, goteborg, case_id, accepted=True)
    await send(stockholm, goteborg, referral_for(stockholm, case_id))

    assert statuses(await deliver_outbox(stockholm, goteborg)) == [ACCEPTED]

    assert await state(stockholm, case_id) == CaseState.REFERRED
    assert await state(goteborg, case_id) == CaseState.REFERRED
    types = [m.message_type for m in await goteborg.inbox.messages_for_case(case_id)]
    assert types == ["inquiry", "referral"]
    await goteborg.close()  # checkpoint the WAL: every byte is now in the database file
    database = b"".join(p.read_bytes() for p in goteborg.config.data_dir.glob("*.sqlite3*"))
    assert PERSON_NAME.encode() not in database
    assert PERSONNUMMER.encode() not in database
    assert personal_data_in(caplog.records) == []


async def test_closures_crossing_in_flight_close_the_case_at_both_ends(
    goteborg: Node, stockholm: Node
) -> None:
    case_id = new_case_id()
    await open_case(stockholm, goteborg, case_id, accepted=True)
    on = stockholm.today()
    await send(stockholm, goteborg, closure(case_id, UNITS[HOME], on))
    await send(goteborg, stockholm, closure(case_id, UNITS[RECEIVING], on, ClosureReason.RETURNED))

    # Each end closed its side before the other's closure arrived: the table absorbs it.
    assert statuses(await deliver_outbox(stockholm, goteborg)) == [ACCEPTED]
    assert statuses(await deliver_outbox(goteborg, stockholm)) == [ACCEPTED]

    assert await state(stockholm, case_id) == CaseState.CLOSED
    assert await state(goteborg, case_id) == CaseState.CLOSED


async def test_withdrawal_crossing_a_decline_ends_the_case_at_both_ends(
    goteborg: Node, stockholm: Node
) -> None:
    case_id = new_case_id()
    await open_case(stockholm, goteborg, case_id, accepted=False)
    await send(stockholm, goteborg, closure(case_id, UNITS[HOME], stockholm.today()))
    await send(goteborg, stockholm, decline(case_id))

    assert statuses(await deliver_outbox(stockholm, goteborg)) == [ACCEPTED]
    assert statuses(await deliver_outbox(goteborg, stockholm)) == [ACCEPTED]

    assert await state(stockholm, case_id) == CaseState.CLOSED
    assert await state(goteborg, case_id) == CaseState.DECLINED


async def test_progress_report_crossing_a_closure_is_refused_and_kept_out(
    goteborg: Node, stockholm: Node
) -> None:
    case_id = new_case_id()
    on = stockholm.today()
    await open_case(stockholm, goteborg, case_id, accepted=True)
    await send(stockholm, goteborg, referral_for(stockholm, case_id))
    await deliver_outbox(stockholm, goteborg)
    await send(goteborg, stockholm, intake(case_id, on))
    await deliver_outbox(goteborg, stockholm)
    await send(stockholm, goteborg, closure(case_id, UNITS[HOME], on, ClosureReason.COMPLETED))
    await send(goteborg, stockholm, progress_report(case_id, on))
    before = await stored(stockholm)

    # The closed case at Stockholm does not take the report; Göteborg takes the closure.
    assert statuses(await deliver_outbox(goteborg, stockholm)) == ["invalid_transition"]
    assert statuses(await deliver_outbox(stockholm, goteborg)) == [ACCEPTED]

    assert await stored(stockholm) == before
    assert await state(stockholm, case_id) == CaseState.CLOSED
    assert await state(goteborg, case_id) == CaseState.CLOSED


async def test_message_about_a_case_from_a_third_city_is_refused(
    goteborg: Node, stockholm: Node, malmo: Node
) -> None:
    case_id = new_case_id()
    await open_case(stockholm, goteborg, case_id, accepted=False)
    before = await stored(goteborg)
    # Malmö, a member, speaks about Stockholm's case with Göteborg: a reply, then an inquiry
    # that would take the case id over.
    envelopes = [
        seal(malmo, RECEIVING, accept(case_id, UNITS[THIRD])),
        seal(malmo, RECEIVING, inquiry(case_id)),
    ]

    results = await inbox_processor(goteborg).handle_batch(THIRD, envelopes)

    assert statuses(results) == ["invalid_transition", "invalid_transition"]
    assert await stored(goteborg) == before
    record = await goteborg.cases.get(case_id)
    assert record is not None
    assert (record.peer, record.state) == (HOME, CaseState.AWAITING_REPLY)
    assert refusals(goteborg, THIRD, "invalid_transition") == 2


# --- overload -----------------------------------------------------------------------------------


async def test_full_replay_store_refuses_a_new_batch_with_503_and_keeps_nothing(
    fed: Federation, stockholm: Node
) -> None:
    limits = fed.configs[RECEIVING].limits
    goteborg = await fed.open(RECEIVING, limits=dataclasses.replace(limits, replay_capacity=1))
    first = seal(stockholm, RECEIVING, inquiry(new_case_id()))
    second = seal(stockholm, RECEIVING, inquiry(new_case_id()))
    async with federation_listener(goteborg) as listener:
        accepted = await listener.post(stockholm, [first])
        full = await stored(goteborg)

        refused = await listener.post(stockholm, [first, second])

        assert await stored(goteborg) == full
        assert (refused.status, refused.error) == (503, Overloaded.code)
        assert refused.retry_after is not None
        assert int(refused.retry_after) > 0
        # What was accepted stays answered: a duplicate alone is still receipted.
        again = await listener.post(stockholm, [first])
    assert statuses(DeliveryResult(s, r) for s, r in accepted.results) == [ACCEPTED]
    assert again.results == [(DUPLICATE, accepted.results[0][1])]
    assert refusals(goteborg, HOME, Overloaded.code) == 1
    with pytest.raises(Overloaded):
        await inbox_processor(goteborg).handle_batch(HOME, [second])
    assert await stored(goteborg) == full


# --- both backends ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_case_flow_and_replay_after_restart_on_each_backend(
    backend: str, tmp_path: Path
) -> None:
    async with fresh_federation(tmp_path / "fed", (HOME, RECEIVING), backend=backend) as fed:
        stockholm, goteborg = await fed.open(HOME), await fed.open(RECEIVING)
        case_id = new_case_id()
        await open_case(stockholm, goteborg, case_id, accepted=True)
        await send(stockholm, goteborg, referral_for(stockholm, case_id))
        [queued] = await stockholm.outbox.next_batch(RECEIVING, 10, stockholm.clock())
        [first] = await deliver_outbox(stockholm, goteborg)
        assert first.status == ACCEPTED
        held = await stored(goteborg)

        goteborg = await fed.restart(RECEIVING)
        [again] = await inbox_processor(goteborg).handle_batch(HOME, [queued.envelope])
        twin = seal(
            stockholm, RECEIVING, referral_for(stockholm, case_id), message_id=queued.message_id
        )
        [replayed] = await inbox_processor(goteborg).handle_batch(HOME, [twin])

        assert again == DeliveryResult(DUPLICATE, first.receipt)
        assert replayed == DeliveryResult("replayed", None)
        assert await stored(goteborg) == held
        assert await state(goteborg, case_id) == CaseState.REFERRED
        entry = await stockholm.outbox.entry(queued.message_id)
        assert entry is not None
        assert entry.state == DeliveryState.RECEIPTED
