"""A PostgreSQL database that disappears mid-stream and comes back.

Both nodes keep their databases on a throwaway cluster of our own (``initdb`` in a temporary
directory, its own port; the shared server is never touched). Mid-stream the cluster is stopped
with ``pg_ctl stop -m immediate`` (a crash: open connections die, nothing is flushed politely),
held down a few seconds and started again. Meanwhile each node must say so (``/healthz`` 503 with
its database not ``ok``) and the receiver's inbox must answer 503, so that the sender keeps the
batch and retries. Once the cluster is back the same processes, with no step taken on them, must
recover and drain the stream: 0 lost, 0 twice, in order per case. Skipped without the binaries.
"""

from __future__ import annotations

import asyncio
import random
import time

from chaos_nodes import RECEIVER, SENDER, Nodes
from chaos_support import PgCluster, Settings
from e2e_support import POLL_S, open_node, read

from node.delivery import OutgoingEnvelope, PeerUnavailable
from node.federation.client import FederationClient, PeerEndpoint
from node.metrics import NodeMetrics
from node.service import Node

DRAIN_TIMEOUT_S = 120.0
HEALTH_TIMEOUT_S = 60.0


async def _health_until(nodes: Nodes, city: str, status: int) -> dict[str, object]:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while True:
        got, doc = await asyncio.to_thread(nodes.health, city)
        if got == status:
            return doc
        assert time.monotonic() < deadline, f"{city} /healthz still {got}, not {status}: {doc}"
        await asyncio.sleep(POLL_S)


async def _replay_probe(nodes: Nodes) -> tuple[Node, FederationClient, OutgoingEnvelope]:
    """The sender's TLS identity (opened before the nodes run) and its first queued envelope."""
    sender = await open_node(nodes.federation, SENDER)
    peer = sender.trust().peers[RECEIVER]
    client = FederationClient(
        own=sender.tls,
        peers=lambda city: PeerEndpoint(url=peer.endpoint, certificates=peer.certificates),
        verify_receipt=sender.receipt_checker(),
        limits=sender.config.limits,
        metrics=NodeMetrics(),
        clock=time.time,
    )
    tables = await read(nodes.federation, SENDER)
    try:
        first = (await tables.outbox(RECEIVER))[0]
    finally:
        await tables.close()
    envelope = OutgoingEnvelope(
        seq=first.seq,
        peer=RECEIVER,
        case_id=first.case_id,
        message_id=first.message_id,
        envelope=first.envelope,
        created_at=first.created_at,
        attempts=first.attempts,
    )
    return sender, client, envelope


async def test_database_stopped_and_started_midstream_recovers_without_a_step(
    pg_nodes: Nodes, pg_cluster: PgCluster, settings: Settings
) -> None:
    rng = random.Random(f"{settings.seed}:database")
    nodes = pg_nodes
    total = settings.messages
    case_ids = await nodes.case_ids()
    sender, client, envelope = await _replay_probe(nodes)
    try:
        nodes.start(RECEIVER, SENDER)
        pids = nodes.pids()
        point = int(total * rng.uniform(0.1, 0.6))
        while (await nodes.counts())[0] < point:
            await asyncio.sleep(POLL_S)
        at_stop = await nodes.counts()
        pg_cluster.stop_immediately()
        down = {city: await _health_until(nodes, city, 503) for city in (RECEIVER, SENDER)}
        try:
            await client.deliver(RECEIVER, [envelope])
            answered = "an answer"
        except PeerUnavailable as e:
            answered = str(e)
        await asyncio.sleep(rng.uniform(settings.hold_s, 1.5 * settings.hold_s))
        back = time.monotonic()
        pg_cluster.start()
        at_start = (await nodes.counts())[0]
        for city in (RECEIVER, SENDER):
            await _health_until(nodes, city, 200)
        healthy_s = time.monotonic() - back
        resumed_s = await nodes.resumed(back, at_start, total, DRAIN_TIMEOUT_S)
        await nodes.drain(total, DRAIN_TIMEOUT_S)
        drained_s = time.monotonic() - back
    finally:
        await client.close()
        await sender.close()
    assert nodes.pids() == pids, "a node restarted: it did not recover by itself"
    await nodes.check(case_ids)

    assert at_stop[0] < total, "the database went away after the stream had ended"
    assert all(doc["database"] != "ok" and doc["status"] == "degraded" for doc in down.values())
    assert f"{RECEIVER} answered 503" in answered, f"the inbox answered: {answered}"
    for city in (RECEIVER, SENDER):  # no request failed unhandled (a 500): each got its 503
        assert nodes.log_lines(city, "Error handling request") == 0, nodes.federation.log_tail(city)
    traces = {city: nodes.log_lines(city, "Traceback") for city in (RECEIVER, SENDER)}
    print(
        f"\ndatabase stopped at {at_stop[0]}/{total} receipted (seed {settings.seed}); "
        f"both healthy {healthy_s:.1f} s after pg_ctl start began, the stream moving after "
        f"{resumed_s:.1f} s, drained after {drained_s:.1f} s; tracebacks logged "
        f"by background loops: {traces}"
    )
