"""What the sender does with each answer: delivered, refused for good, transient, or a crash."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from outbox_fakes import (
    PEER,
    ManualClock,
    MemoryOutbox,
    ScriptedTransport,
    all_done,
    answer,
    crash,
    fail_times,
    failures_reach,
    sample,
    too_few_results,
    until,
)

from node.delivery import DeliveryState, PeerBacklog
from node.metrics import NodeMetrics
from node.outbox import TRANSIENT_CODES, Backoff, OutboxSettings, PeerSender
from node.outbox.verdicts import TRANSPORT_STATUSES

SENT = DeliveryState.SENT
RECEIPTED, FAILED = DeliveryState.RECEIPTED, DeliveryState.FAILED
MakeSender = Callable[..., PeerSender]


# -- per-envelope results -----------------------------------------------------------------------


async def test_a_permanent_refusal_fails_that_message_and_the_rest_are_delivered(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    make_sender: MakeSender,
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport.then(PEER, answer(None, "bad_signature", None))
    for _ in range(3):
        outbox.enqueue(PEER, clock.now)
    with caplog.at_level(logging.WARNING, logger="node.outbox"):
        sender = make_sender()
        await until(all_done(outbox))

    assert outbox.states(PEER) == [RECEIPTED, FAILED, RECEIPTED]
    assert outbox.rows[2].refusal == "bad_signature"
    assert len(transport.calls) == 1  # never sent again
    assert sender.status().failures == 0
    assert sample(metrics, "citynode_refusals_total", peer=PEER, code="bad_signature") == 1
    assert "TX [goteborg] 1 messages refused for good (bad_signature=1)" in caplog.messages


@pytest.mark.parametrize("code", sorted(TRANSIENT_CODES))
async def test_a_transient_refusal_is_sent_again_after_a_backoff_in_order(
    code: str,
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    make_sender: MakeSender,
) -> None:
    refreshed: list[str] = []

    async def refresh_keys(peer: str) -> None:
        refreshed.append(peer)

    transport.then(PEER, answer(None, code, code))
    for _ in range(3):
        outbox.enqueue(PEER, clock.now)
    sender = make_sender(on_unknown_key=refresh_keys)
    await until(failures_reach(sender, 1))
    assert outbox.states(PEER) == [RECEIPTED, SENT, SENT]

    retry_at = sender.status().retry_at
    assert retry_at is not None
    clock.advance_to(retry_at)
    await until(all_done(outbox))

    assert outbox.states(PEER) == [RECEIPTED] * 3
    assert transport.calls_to(PEER) == [(1, 2, 3), (2, 3)]
    assert transport.receivers[PEER].processed == [i.to_bytes(16, "big") for i in (1, 2, 3)]
    counted_here = 0 if code in TRANSPORT_STATUSES else 2  # else the transport counts them
    assert sample(metrics, "citynode_refusals_total", peer=PEER, code=code) == counted_here
    assert refreshed == ([PEER] if code == "unknown_key" else [])


async def test_a_receipt_that_fails_verification_is_retried_and_the_original_receipt_kept(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    make_sender: MakeSender,
) -> None:
    transport.then(PEER, answer("bad_receipt"), answer("accepted:no-receipt"))
    envelope = outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await fail_times(sender, clock, 2)
    retry_at = sender.status().retry_at
    assert retry_at is not None
    clock.advance_to(retry_at)
    await until(all_done(outbox))

    receiver = transport.receivers[PEER]
    assert receiver.processed == [envelope.message_id]  # stored once, sent three times
    assert receiver.deliveries == 3
    assert outbox.rows[1].receipt == b"receipt:" + envelope.message_id
    # Not a refusal by the peer: the transport logs and counts receipt problems, not the sender.
    assert b"citynode_refusals_total{" not in metrics.render()


async def test_an_unknown_status_from_a_peer_fails_the_message_under_a_bounded_label(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    make_sender: MakeSender,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hostile = "<script>" + "x" * 300
    transport.then(PEER, answer(hostile))
    outbox.enqueue(PEER, clock.now)
    with caplog.at_level(logging.DEBUG, logger="node.outbox"):
        make_sender()
        await until(all_done(outbox))
    assert outbox.states(PEER) == [FAILED]
    assert sample(metrics, "citynode_refusals_total", peer=PEER, code="other") == 1
    assert "<script>" not in caplog.text
    assert "<script>" not in metrics.render().decode()


async def test_unknown_key_without_a_refresh_hook_is_still_retried(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    transport.then(PEER, answer("unknown_key"))
    outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await until(failures_reach(sender, 1))
    retry_at = sender.status().retry_at
    assert retry_at is not None
    clock.advance_to(retry_at)
    await until(all_done(outbox))
    assert len(transport.calls) == 2


# -- failures of our own side -------------------------------------------------------------------


async def test_a_transport_crash_mid_batch_is_logged_and_the_loop_carries_on(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    make_sender: MakeSender,
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport.then(PEER, crash(), crash(ValueError("another bug")))
    outbox.enqueue(PEER, clock.now)
    with caplog.at_level(logging.ERROR, logger="node.outbox"):
        sender = make_sender()
        await fail_times(sender, clock, 2)
    assert outbox.states(PEER) == [SENT]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info is not None for r in errors)  # logged with the traceback
    assert errors[0].getMessage() == "TX [goteborg] sender loop error; backing off"

    retry_at = sender.status().retry_at
    assert retry_at is not None
    clock.advance_to(retry_at)
    await until(all_done(outbox))
    assert sender.status().running
    assert outbox.states(PEER) == [RECEIPTED]


async def test_a_result_count_that_does_not_match_the_batch_records_nothing(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    transport.then(PEER, too_few_results)
    outbox.enqueue(PEER, clock.now)
    outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await until(failures_reach(sender, 1))
    assert outbox.states(PEER) == [SENT, SENT]

    retry_at = sender.status().retry_at
    assert retry_at is not None
    clock.advance_to(retry_at)
    await until(all_done(outbox))
    assert transport.receivers[PEER].processed == [i.to_bytes(16, "big") for i in (1, 2)]


class FlakyOutbox(MemoryOutbox):
    """A queue whose storage fails on the first housekeeping round."""

    async def backlog(self, peer: str, overdue_before: float) -> PeerBacklog:
        if self.backlog_calls == 0:
            self.backlog_calls += 1
            raise OSError("database is locked")
        return await super().backlog(peer, overdue_before)


async def test_a_storage_error_is_survived_and_sending_resumes(
    clock: ManualClock,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    settings: OutboxSettings,
    backoff: Backoff,
) -> None:
    outbox = FlakyOutbox()
    outbox.enqueue(PEER, clock.now)
    sender = PeerSender(
        PEER, outbox, transport, settings=settings, backoff=backoff, metrics=metrics,
        clock=clock, wait=clock.wait,
    )  # fmt: skip
    sender.start()
    try:
        await until(failures_reach(sender, 1))
        retry_at = sender.status().retry_at
        assert retry_at is not None
        clock.advance_to(retry_at)
        await until(all_done(outbox))
    finally:
        await sender.stop()
