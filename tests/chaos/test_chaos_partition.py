"""Network partitions between two nodes, each in its own network namespace (as root).

The nodes run ``citynode serve`` inside their namespaces (``ip netns exec``), joined by veth pairs
to a bridge in a hub namespace; their listeners and the agreement's endpoints are on those
addresses. Mid-stream the link is cut for a few seconds, in both directions (the receiver's bridge
port down) or in one only (everything the receiver sends is dropped: it still gets the batches
and stores them, but its answers and receipts never arrive, so the sender must send again). After
the link is restored, with no step taken on either node (same processes, never restarted): every
message delivered exactly once, in order per case, the outbox drained. Skipped without root or
``ip netns``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import pytest
from chaos_nodes import BATCH_SIZE, RECEIVER, SENDER, Nodes
from chaos_support import Settings, Topology

DRAIN_TIMEOUT_S = 120.0


def _faults(topology: Topology) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
    return {
        "both-ways": (lambda: topology.cut(RECEIVER), lambda: topology.join(RECEIVER)),
        "receiver-to-sender-only": (
            lambda: topology.drop_egress(RECEIVER),
            lambda: topology.allow_egress(RECEIVER),
        ),
        "sender-to-receiver-only": (
            lambda: topology.drop_egress(SENDER),
            lambda: topology.allow_egress(SENDER),
        ),
    }


@pytest.mark.parametrize(
    "fault", ["both-ways", "receiver-to-sender-only", "sender-to-receiver-only"]
)
async def test_partition_healed_delivers_every_message_exactly_once_in_order(
    sqlite_nodes: Nodes, namespaces: Topology, settings: Settings, fault: str
) -> None:
    rng = random.Random(f"{settings.seed}:{fault}")
    cut, restore = _faults(namespaces)[fault]
    nodes = sqlite_nodes
    case_ids = await nodes.case_ids()
    total = settings.messages
    point = int(total * rng.uniform(0.1, 0.5))
    hold_s = rng.uniform(settings.hold_s, 1.5 * settings.hold_s)
    nodes.start(RECEIVER, SENDER)
    pids = nodes.pids()
    while (await nodes.counts())[0] < point:
        await asyncio.sleep(0.02)
    cut()
    try:
        at_cut = await nodes.counts()
        await asyncio.sleep(hold_s)
        during = await nodes.counts()
    finally:
        restore()
    healed = time.monotonic()
    resumed_s = await nodes.resumed(healed, during[0], total, DRAIN_TIMEOUT_S)
    await nodes.drain(total, DRAIN_TIMEOUT_S)
    drain_s = time.monotonic() - healed
    assert nodes.pids() == pids, "a node restarted: the partition needed more than healing"
    sent = await nodes.check(case_ids)

    assert at_cut[0] < total, "the partition came after the stream had ended"
    # While cut, at most the batch in flight got through; the sender did not get ahead.
    assert during[0] - at_cut[0] <= 2 * BATCH_SIZE
    resent = sum(1 for row in sent if row.attempts > 1)
    print(
        f"\n{fault} (seed {settings.seed}): cut at {at_cut[0]}/{total} receipted for "
        f"{hold_s:.1f} s (receipted {during[0]}, stored {during[1]} meanwhile); "
        f"moving {resumed_s:.1f} s and drained {drain_s:.1f} s after healing, {resent} resent"
    )
