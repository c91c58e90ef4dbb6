"""One peer's sender loop: order, batching, one batch in flight, backoff and Retry-After.

All against in-memory fakes and a manual clock: nothing waits in real time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from outbox_fakes import (
    DAY,
    PEER,
    START_TIME,
    ManualClock,
    MemoryOutbox,
    ScriptedTransport,
    all_done,
    fail_times,
    failures_reach,
    hold,
    sample,
    settle,
    unavailable,
    until,
)

from node.delivery import DeliveryState
from node.metrics import NodeMetrics
from node.outbox import Backoff, PeerSender

SENT = DeliveryState.SENT
RECEIPTED = DeliveryState.RECEIPTED
MakeSender = Callable[..., PeerSender]


# -- order and batching -------------------------------------------------------------------------


async def test_messages_reach_the_peer_in_queue_order_per_case_across_batches(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    case_a, case_b = b"case-a".ljust(16, b"\0"), b"case-b".ljust(16, b"\0")
    queued = [
        outbox.enqueue(PEER, clock.now, case_id=case_a if i % 3 else case_b) for i in range(10)
    ]

    make_sender()
    await until(all_done(outbox))

    processed = transport.receivers[PEER].processed
    assert processed == [envelope.message_id for envelope in queued]
    for case in (case_a, case_b):
        in_case = [e.message_id for e in queued if e.case_id == case]
        assert [m for m in processed if m in in_case] == in_case
    assert transport.calls_to(PEER) == [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10,)]
    assert outbox.states(PEER) == [RECEIPTED] * 10
    assert outbox.rows[1].receipt == b"receipt:" + queued[0].message_id
    assert clock.now == START_TIME  # a full batch is followed at once, without waiting


async def test_a_batch_never_holds_more_than_batch_size_envelopes(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    for _ in range(7):
        outbox.enqueue(PEER, clock.now)
    make_sender()
    await until(all_done(outbox))
    assert [len(seqs) for seqs in transport.calls_to(PEER)] == [3, 3, 1]


async def test_messages_enqueued_while_a_batch_is_in_flight_wait_for_it_and_keep_their_order(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    gate = asyncio.Event()
    transport.then(PEER, hold(gate))
    outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await until(lambda: len(transport.calls) == 1)

    for _ in range(5):
        outbox.enqueue(PEER, clock.now)
        sender.wake()
        sender.peer_seen()
        await settle(5)
    assert len(transport.calls) == 1  # still the first batch alone

    gate.set()
    await until(all_done(outbox))
    assert transport.calls_to(PEER) == [(1,), (2, 3, 4), (5, 6)]
    assert transport.max_in_flight[PEER] == 1
    assert transport.receivers[PEER].processed == [i.to_bytes(16, "big") for i in range(1, 7)]


async def test_never_more_than_one_batch_in_flight_however_often_the_sender_is_woken(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    for _ in range(30):
        outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    for _ in range(2000):
        if all_done(outbox)():
            break
        sender.wake()
        sender.peer_seen()
        await asyncio.sleep(0)
    assert all_done(outbox)()
    assert transport.max_in_flight[PEER] == 1
    assert len(transport.calls) == 10


# -- backoff ------------------------------------------------------------------------------------


async def test_backoff_grows_exponentially_with_jitter_while_the_peer_is_down(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    make_sender: MakeSender,
) -> None:
    transport.set_down(PEER)
    outbox.enqueue(PEER, clock.now)
    twin = Backoff(base=1.0, cap=60.0, rng=random.Random(2026))  # same seed as the fixture
    sender = make_sender()

    waited = []
    for n in range(1, 10):
        await until(failures_reach(sender, n))
        retry_at = sender.status().retry_at
        assert retry_at is not None
        waited.append(retry_at - clock.now)
        assert 0.0 <= waited[-1] <= min(60.0, 2.0 ** (n - 1))
        clock.advance_to(retry_at)

    await until(failures_reach(sender, 10))
    assert waited == pytest.approx([twin.delay(n) for n in range(1, 10)])
    assert len(set(waited)) == len(waited)  # jittered, not a fixed ladder
    assert sample(metrics, "citynode_delivery_retries_total", peer=PEER) == 9
    assert sample(metrics, "citynode_peer_up", peer=PEER) == 0
    assert outbox.states(PEER) == [SENT]
    assert outbox.attempts(1) == 10


async def test_peer_seen_resets_the_backoff_and_retries_long_before_it_would_have_expired(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    make_sender: MakeSender,
) -> None:
    transport.set_down(PEER)
    outbox.enqueue(PEER, clock.now)
    sender = make_sender(backoff=Backoff(base=100.0, cap=1000.0, rng=random.Random(5)))
    await fail_times(sender, clock, 4)
    retry_at = sender.status().retry_at
    assert retry_at is not None
    pending = retry_at - clock.now
    assert pending > 1.0  # the backoff would have us wait (up to 800 s here)
    seen_at = clock.now

    transport.set_up(PEER)
    sender.peer_seen()
    await until(all_done(outbox))

    assert clock.now == seen_at  # no time passed: the retry did not wait for the backoff
    assert outbox.states(PEER) == [RECEIPTED]
    assert sender.status().failures == 0
    assert sample(metrics, "citynode_peer_up", peer=PEER) == 1

    # The reset is real: the next outage starts again from the base, not from 800 s.
    transport.set_down(PEER)
    outbox.enqueue(PEER, clock.now)
    sender.wake()
    await until(failures_reach(sender, 1))
    retry_at = sender.status().retry_at
    assert retry_at is not None
    assert retry_at - clock.now <= 100.0


async def test_peer_seen_while_its_inbox_still_fails_restarts_the_backoff_from_the_base(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    transport.set_down(PEER)  # a heartbeat came, but its inbox still answers 503
    outbox.enqueue(PEER, clock.now)
    sender = make_sender(backoff=Backoff(base=100.0, cap=1000.0, rng=random.Random(5)))
    await fail_times(sender, clock, 4)
    seen_at = clock.now

    sender.peer_seen()
    await until(lambda: len(transport.calls) == 5 and failures_reach(sender, 1)())

    assert clock.now == seen_at  # retried at once
    retry_at = sender.status().retry_at
    assert retry_at is not None
    assert retry_at - clock.now <= 100.0  # and backing off from the base again


async def test_a_message_enqueued_during_an_outage_does_not_cut_the_backoff_short(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    transport.set_down(PEER)
    outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await until(failures_reach(sender, 1))

    for _ in range(5):
        outbox.enqueue(PEER, clock.now)
        sender.wake()
    await settle()
    assert len(transport.calls) == 1
    assert sender.status().failures == 1


async def test_peer_seen_while_all_is_well_changes_nothing(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await until(all_done(outbox))
    for _ in range(10):
        sender.peer_seen()
    await settle()
    assert len(transport.calls) == 1


# -- Retry-After --------------------------------------------------------------------------------


async def test_retry_after_is_respected_even_when_the_peer_is_seen(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    transport.then(PEER, unavailable(retry_after=7.0))
    outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await until(failures_reach(sender, 1))
    assert sender.status().retry_at == START_TIME + 7.0

    sender.wake()
    sender.peer_seen()
    await settle()
    clock.advance(6.9)
    await settle()
    assert len(transport.calls) == 1

    clock.advance_to(START_TIME + 7.0)
    await until(all_done(outbox))
    assert len(transport.calls) == 2


async def test_a_retry_after_beyond_the_backoff_cap_is_cut_to_the_cap(
    clock: ManualClock, outbox: MemoryOutbox, transport: ScriptedTransport, make_sender: MakeSender
) -> None:
    transport.then(PEER, unavailable(retry_after=10 * DAY))
    outbox.enqueue(PEER, clock.now)
    sender = make_sender()
    await until(failures_reach(sender, 1))
    assert sender.status().retry_at == START_TIME + 60.0
    clock.advance(60.0)
    await until(all_done(outbox))
