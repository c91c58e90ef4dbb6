"""kill -9 of the receiver, the sender and both, at random points of a stream, round after round.

Each round takes a fresh copy of the template (the whole stream queued at stockholm, none sent),
starts both nodes and kills, at three random points of the stream (seeded: the seed is in the
report header and in every failure), the receiver, the sender and both, in a random order. A
killed node is only started again, as a supervisor would; nothing else is done to it. After the
last restart the stream must drain by itself, and then: 0 lost, 0 processed twice, every case's
messages in the order sent (the receiver refuses a closure before its inquiry, so a reordering
would show as a refusal), the outbox drained. ``make chaos`` runs 10 rounds of 5,000 messages.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass

from chaos_nodes import RECEIVER, SENDER, Nodes
from chaos_support import Settings
from e2e_support import POLL_S

from node.localnet import LocalFederation

DRAIN_TIMEOUT_S = 180.0
VICTIMS = {"receiver": (RECEIVER,), "sender": (SENDER,), "both": (SENDER, RECEIVER)}


@dataclass(frozen=True)
class Kill:
    """One fault: who was killed, how far the stream was (receipted, stored) then, and the
    seconds from the kill until the sender held a new receipt (restart included)."""

    kind: str
    receipted: int
    stored: int
    resumed_s: float


async def _wait_for(nodes: Nodes, receipted: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (await nodes.counts())[0] < receipted:
        assert time.monotonic() < deadline, f"the stream stalled below {receipted} receipts"
        await asyncio.sleep(POLL_S)


async def _round(nodes: Nodes, rng: random.Random, total: int) -> tuple[list[Kill], float]:
    """Start, kill three times at random points, restart; return the kills and the drain time."""
    kinds = rng.sample(sorted(VICTIMS), len(VICTIMS))
    points = sorted(int(total * rng.uniform(0.05, 0.75)) for _ in kinds)
    nodes.start(RECEIVER, SENDER)
    kills = []
    for kind, point in zip(kinds, points, strict=True):
        await _wait_for(nodes, point, DRAIN_TIMEOUT_S)
        await asyncio.sleep(rng.uniform(0.0, 0.05))  # anywhere inside a batch, not at its edge
        killed = time.monotonic()
        nodes.kill(*VICTIMS[kind])
        receipted, stored = await nodes.counts()
        nodes.start(*rng.sample(VICTIMS[kind], len(VICTIMS[kind])))
        await _wait_for(nodes, min(total, receipted + 1), DRAIN_TIMEOUT_S)
        kills.append(Kill(kind, receipted, stored, time.monotonic() - killed))
    restarted = time.monotonic()
    await nodes.drain(total, DRAIN_TIMEOUT_S)
    return kills, time.monotonic() - restarted


async def test_kill9_of_receiver_sender_and_both_at_random_points_loses_and_repeats_nothing(
    sqlite_template: LocalFederation, sqlite_nodes: Nodes, settings: Settings
) -> None:
    total = settings.messages
    case_ids = await sqlite_nodes.case_ids()
    assert len(case_ids) == settings.cases
    mid_stream = resent = 0
    resumed: dict[str, list[float]] = {kind: [] for kind in VICTIMS}
    for number in range(settings.rounds):
        nodes = sqlite_nodes
        if number:  # round 0 uses the fixture's copy, the others a fresh one each
            copy = sqlite_template.clone(sqlite_nodes.federation.root.with_name(f"round{number}"))
            nodes = Nodes(copy, sqlite_nodes.topology)
        try:
            rng = random.Random(f"{settings.seed}:{number}")
            kills, drain_s = await _round(nodes, rng, total)
            sent = await nodes.check(case_ids)
        except BaseException as e:
            e.add_note(f"chaos seed {settings.seed}, round {number}")
            raise
        finally:
            if number:
                nodes.federation.destroy()
        resent += sum(1 for row in sent if row.attempts > 1)
        mid_stream += sum(1 for k in kills if k.receipted < total)
        for k in kills:
            resumed[k.kind].append(k.resumed_s)
        shown = ", ".join(f"{k.kind}@{k.receipted}/{k.stored} +{k.resumed_s:.1f} s" for k in kills)
        print(f"\nround {number} (seed {settings.seed}): killed {shown}; drained {drain_s:.1f} s")
    # The faults hit the stream, not its end: most kills landed while messages were in flight.
    assert mid_stream >= 2 * settings.rounds, "the kills came after the stream had ended"
    spans = ", ".join(
        f"{kind} median {statistics.median(v):.1f} s, max {max(v):.1f} s"
        for kind, v in resumed.items()
    )
    print(
        f"{settings.rounds} rounds x {total} messages: {3 * settings.rounds} kills, {resent} "
        f"resent; kill to next receipt: {spans}"
    )
