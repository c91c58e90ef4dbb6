"""The dispatcher: one independent sender per peer, made lazily, signals routed by peer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from outbox_fakes import (
    PEER,
    START_TIME,
    ManualClock,
    MemoryOutbox,
    ScriptedTransport,
    hold,
    until,
)

from node.delivery import DeliveryState
from node.metrics import NodeMetrics
from node.outbox import Backoff, OutboxDispatcher, OutboxSettings

QUEUED, SENT = DeliveryState.QUEUED, DeliveryState.SENT
RECEIPTED = DeliveryState.RECEIPTED


@pytest.fixture
async def dispatcher(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    settings: OutboxSettings,
    backoff: Backoff,
) -> AsyncIterator[OutboxDispatcher]:
    made = OutboxDispatcher(
        outbox,
        transport,
        settings=settings,
        backoff=backoff,
        metrics=metrics,
        clock=clock,
        wait=clock.wait,
    )
    yield made
    await made.stop()


def delivered(outbox: MemoryOutbox, peer: str) -> Callable[[], bool]:
    return lambda: outbox.states(peer) != [] and set(outbox.states(peer)) == {RECEIPTED}


async def test_one_peer_down_or_hanging_does_not_slow_another(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    dispatcher: OutboxDispatcher,
) -> None:
    transport.then("malmo", hold(asyncio.Event()))  # a batch that never comes back
    transport.set_down("stockholm")
    for _ in range(20):
        for peer in ("goteborg", "malmo", "stockholm"):
            outbox.enqueue(peer, clock.now)

    dispatcher.start(["goteborg", "malmo", "stockholm"])
    await until(delivered(outbox, "goteborg"))

    assert clock.now == START_TIME  # no backoff or timeout stood in the way
    assert len(transport.calls_to("goteborg")) == 7  # 20 messages in batches of 3
    assert transport.calls_to("malmo") == [(2, 5, 8)]  # still in flight
    assert outbox.states("stockholm")[:4] == [SENT, SENT, SENT, QUEUED]  # backing off
    status = {s.peer: s for s in dispatcher.status()}
    assert status["malmo"].in_flight
    assert status["stockholm"].failures == 1
    assert status["goteborg"].failures == 0


async def test_notify_makes_a_sender_lazily_and_the_message_goes_at_once(
    clock: ManualClock, outbox: MemoryOutbox, dispatcher: OutboxDispatcher
) -> None:
    dispatcher.start([])
    assert dispatcher.status() == ()

    outbox.enqueue("malmo", clock.now)
    dispatcher.notify("malmo")
    await until(delivered(outbox, "malmo"))
    assert [s.peer for s in dispatcher.status()] == ["malmo"]


async def test_a_backlog_left_from_before_a_restart_drains_on_start(
    clock: ManualClock, outbox: MemoryOutbox, dispatcher: OutboxDispatcher
) -> None:
    for _ in range(5):
        outbox.enqueue(PEER, clock.now - 60)
    dispatcher.start([PEER])
    await until(delivered(outbox, PEER))


async def test_signals_before_start_are_kept_until_the_dispatcher_runs(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    dispatcher: OutboxDispatcher,
) -> None:
    outbox.enqueue(PEER, clock.now)
    dispatcher.notify(PEER)
    await asyncio.sleep(0.001)
    assert transport.calls == []
    dispatcher.start([])
    await until(delivered(outbox, PEER))


async def test_peer_seen_resets_only_that_peers_backoff(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    dispatcher: OutboxDispatcher,
) -> None:
    for peer in ("malmo", "stockholm"):
        transport.set_down(peer)
        outbox.enqueue(peer, clock.now)
    dispatcher.start(["malmo", "stockholm"])
    await until(lambda: all(s.failures == 1 for s in dispatcher.status()))

    for peer in ("malmo", "stockholm"):
        transport.set_up(peer)
    dispatcher.peer_seen("stockholm")  # wired to the federation listener's on_peer_seen
    await until(delivered(outbox, "stockholm"))

    assert clock.now == START_TIME
    assert outbox.states("malmo") == [SENT]  # still waiting out its own backoff
    assert len(transport.calls_to("malmo")) == 1


async def test_stop_ends_every_sender(
    clock: ManualClock, outbox: MemoryOutbox, dispatcher: OutboxDispatcher
) -> None:
    outbox.enqueue("malmo", clock.now)
    dispatcher.start(["goteborg", "malmo", "stockholm"])
    await until(delivered(outbox, "malmo"))
    await asyncio.wait_for(dispatcher.stop(), 1.0)
    assert [s.running for s in dispatcher.status()] == [False, False, False]
