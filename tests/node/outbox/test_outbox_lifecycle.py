"""Housekeeping (expiry, backlog metrics, the operator alert), latency, and stopping a sender."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable

import pytest
from outbox_fakes import (
    DAY,
    HOUR,
    PEER,
    START_TIME,
    ManualClock,
    MemoryOutbox,
    ScriptedTransport,
    all_done,
    failures_reach,
    hold,
    sample,
    settle,
    unavailable,
    until,
)

from node.delivery import DeliveryState
from node.metrics import NodeMetrics
from node.outbox import Backoff, OutboxSettings, PeerSender, wait_for_event

QUEUED, SENT = DeliveryState.QUEUED, DeliveryState.SENT
RECEIPTED, EXPIRED = DeliveryState.RECEIPTED, DeliveryState.EXPIRED
MakeSender = Callable[..., PeerSender]


# -- metrics, expiry and the operator alert -----------------------------------------------------


async def test_delivery_latency_is_observed_from_queueing_to_receipt(
    clock: ManualClock,
    outbox: MemoryOutbox,
    metrics: NodeMetrics,
    make_sender: MakeSender,
) -> None:
    outbox.enqueue(PEER, clock.now - 2.5)
    outbox.enqueue(PEER, clock.now - 0.5)
    make_sender()
    await until(all_done(outbox))
    assert sample(metrics, "citynode_delivery_latency_seconds_count", peer=PEER) == 2
    assert sample(metrics, "citynode_delivery_latency_seconds_sum", peer=PEER) == 3.0
    assert sample(metrics, "citynode_peer_up", peer=PEER) == 1


async def test_messages_past_the_retry_limit_are_expired_not_sent_and_logged(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    make_sender: MakeSender,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox.enqueue(PEER, clock.now - 7 * DAY)
    outbox.enqueue(PEER, clock.now)
    with caplog.at_level(logging.WARNING, logger="node.outbox"):
        make_sender()
        await until(all_done(outbox))
    assert outbox.states(PEER) == [EXPIRED, RECEIPTED]
    assert transport.calls_to(PEER) == [(2,)]
    assert (
        "TX [goteborg] 1 messages expired undelivered after 518400 s: kept, no longer retried"
        in caplog.messages
    )
    assert sample(metrics, "citynode_outbox_queue_depth", peer=PEER, state="expired") == 1


async def test_overdue_messages_raise_an_operator_alert_without_personal_data(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    settings: OutboxSettings,
    make_sender: MakeSender,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, personnummer = "Testperson Testsson", "19121212-1212"  # a Skatteverket test number
    case_id = b"case-0001".ljust(16, b"\0")
    transport.set_down(PEER)
    old = outbox.enqueue(
        PEER, clock.now - HOUR - 60, case_id=case_id, envelope=f"{name} {personnummer}".encode()
    )
    outbox.enqueue(PEER, clock.now - 2 * HOUR, case_id=case_id)
    outbox.enqueue(PEER, clock.now)  # recent: not overdue
    quick = dataclasses.replace(settings, housekeeping_interval_s=600.0)

    def alerts() -> list[str]:
        return [m for m in caplog.messages if "older than" in m]

    with caplog.at_level(logging.DEBUG, logger="node.outbox"):
        sender = make_sender(settings=quick)
        await until(lambda: outbox.backlog_calls == 1)
        assert alerts() == ["TX [goteborg] 2 messages older than 3600 s are still undelivered"]
        assert sample(metrics, "citynode_outbox_overdue", peer=PEER) == 2
        assert sample(metrics, "citynode_outbox_queue_depth", peer=PEER, state="queued") == 3

        clock.advance(600.0)  # the next round, well inside alert_repeat_s: no repeat
        await until(lambda: outbox.backlog_calls == 2)
        assert len(alerts()) == 1

        clock.advance_to(START_TIME + 4 * HOUR)  # alert_repeat_s later: said again
        await until(lambda: outbox.backlog_calls >= 3)
        await until(lambda: len(alerts()) == 2)

        transport.set_up(PEER)
        sender.peer_seen()
        await until(all_done(outbox))
        calls = outbox.backlog_calls
        clock.advance(600.0)
        await until(lambda: outbox.backlog_calls > calls)
        assert sample(metrics, "citynode_outbox_overdue", peer=PEER) == 0
        assert "TX [goteborg] no overdue messages remain" in caplog.messages

    for secret in (name, personnummer, old.message_id.hex(), case_id.hex(), "case-0001"):
        assert secret not in caplog.text
    assert all(r.levelno < logging.ERROR for r in caplog.records)


# -- stopping -----------------------------------------------------------------------------------


async def test_stop_lets_the_batch_in_flight_finish_and_sends_no_other(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    settings: OutboxSettings,
    make_sender: MakeSender,
) -> None:
    gate = asyncio.Event()
    transport.then(PEER, hold(gate))
    for _ in range(4):
        outbox.enqueue(PEER, clock.now)
    sender = make_sender(settings=dataclasses.replace(settings, stop_grace_s=5.0))
    await until(lambda: len(transport.calls) == 1)

    stopping = asyncio.ensure_future(sender.stop())
    await settle()
    assert not stopping.done()  # waiting for the batch, not abandoning it
    gate.set()
    await asyncio.wait_for(stopping, 1.0)

    assert outbox.states(PEER) == [RECEIPTED, RECEIPTED, RECEIPTED, QUEUED]
    assert len(transport.calls) == 1
    assert not sender.status().running


async def test_stop_cancels_a_batch_that_hangs_and_the_next_run_resends_it_safely(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    never = asyncio.Event()
    transport.then(PEER, hold(never, process_first=True))  # stored, but the answer never comes
    for _ in range(2):
        outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await until(lambda: len(transport.calls) == 1)

    await asyncio.wait_for(sender.stop(), 1.0)  # grace 0.05 s, then cancelled
    assert not sender.status().running
    assert outbox.states(PEER) == [SENT, SENT]

    make_sender()  # the node restarts
    await until(all_done(outbox))
    receiver = transport.receivers[PEER]
    assert receiver.processed == [i.to_bytes(16, "big") for i in (1, 2)]  # processed once
    assert receiver.deliveries == 4
    assert outbox.states(PEER) == [RECEIPTED, RECEIPTED]


async def test_stop_during_a_backoff_returns_at_once(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    transport.set_down(PEER)
    outbox.enqueue(PEER, clock.now)
    sender = make_sender(backoff=Backoff(base=1000.0, cap=1000.0, rng=random.Random(1)))
    await until(failures_reach(sender, 1))
    await asyncio.wait_for(sender.stop(), 0.5)
    assert not sender.status().running


async def test_a_new_overdue_backlog_after_a_cleared_one_is_alerted_at_once(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    settings: OutboxSettings,
    make_sender: MakeSender,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outbox.enqueue(PEER, clock.now - 2 * HOUR)
    quick = dataclasses.replace(settings, housekeeping_interval_s=600.0, alert_repeat_s=DAY)
    with caplog.at_level(logging.WARNING, logger="node.outbox"):
        sender = make_sender(settings=quick)
        await until(all_done(outbox))  # alerted once (before the send), then delivered
        clock.advance(600.0)
        await until(lambda: outbox.backlog_calls == 2)  # cleared

        transport.set_down(PEER)
        outbox.enqueue(PEER, clock.now - 2 * HOUR)
        sender.wake()
        clock.advance(600.0)
        await until(lambda: outbox.backlog_calls == 3)
    alerts = [m for m in caplog.messages if "older than" in m]
    assert alerts == ["TX [goteborg] 1 messages older than 3600 s are still undelivered"] * 2


async def test_a_message_enqueued_after_the_backlog_expired_is_sent_at_once(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    settings: OutboxSettings,
    make_sender: MakeSender,
) -> None:
    transport.set_down(PEER)
    outbox.enqueue(PEER, clock.now - 6 * DAY + 30)  # expires half a minute from now
    sender = make_sender(settings=dataclasses.replace(settings, housekeeping_interval_s=60.0))
    await until(failures_reach(sender, 1))
    clock.advance(61.0)  # housekeeping expires it; the due retry finds nothing left
    await until(lambda: outbox.states(PEER) == [EXPIRED] and sender.status().retry_at is None)

    transport.set_up(PEER)
    outbox.enqueue(PEER, clock.now)
    sender.wake()  # nothing to back off from any more: goes at once
    await until(all_done(outbox))
    assert outbox.states(PEER) == [EXPIRED, RECEIPTED]


# -- the production defaults: real clock, real waits ----------------------------------------------


async def test_wait_for_event_returns_on_the_event_or_after_the_timeout() -> None:
    event = asyncio.Event()
    assert await wait_for_event(event, 0.002) is False
    assert await wait_for_event(event, 0) is False
    asyncio.get_running_loop().call_later(0.001, event.set)
    assert await wait_for_event(event, 5.0) is True
    assert await wait_for_event(event, 0) is True


async def test_with_the_real_clock_a_short_outage_is_retried_and_delivered(
    outbox: MemoryOutbox, transport: ScriptedTransport, metrics: NodeMetrics
) -> None:
    transport.then(PEER, unavailable(), unavailable())
    for _ in range(4):
        outbox.enqueue(PEER, time.time())
    sender = PeerSender(
        PEER,
        outbox,
        transport,
        settings=OutboxSettings(batch_size=3, alert_age_s=HOUR, max_retry_age_s=DAY),
        backoff=Backoff(base=0.001, cap=0.004, rng=random.Random(1)),
        metrics=metrics,
    )
    sender.start()
    try:
        await until(all_done(outbox), timeout=2.0)
    finally:
        await sender.stop()
    assert transport.calls_to(PEER) == [(1, 2, 3), (1, 2, 3), (1, 2, 3), (4,)]
    assert sample(metrics, "citynode_outbox_queue_depth", peer=PEER, state="queued") == 4
