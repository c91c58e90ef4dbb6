"""Exactly-once, in-order delivery between real node processes, through crashes and restarts.

Each test runs ``citynode serve`` processes over mutual TLS on loopback, provisioned by the
operator procedure (see ``conftest.py``), and checks what the nodes stored: the sender's outbox
(every message receipted) against the receiver's inbox (each message once, each case's messages
in the order sent) and the receiver's case states.
"""

from __future__ import annotations

import time

import pytest
from e2e_support import (
    Loaded,
    Tables,
    assert_stream_delivered,
    open_node,
    queue_cases,
    read,
    wait_drained,
    wait_until,
)

from node.delivery import DUPLICATE, OutgoingEnvelope
from node.federation.client import FederationClient, PeerEndpoint
from node.localnet import LocalFederation
from node.metrics import NodeMetrics

DRAIN_TIMEOUT_S = 60.0
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql"),
]
CRASH_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("loaded", BACKENDS, indirect=True)
async def test_three_nodes_deliver_every_case_stream_exactly_once_in_order(
    loaded: Loaded,
) -> None:
    federation = loaded.federation
    started = time.monotonic()
    federation.start_all()
    for (sender, recipient), case_ids in loaded.streams.items():
        await wait_drained(federation, sender, recipient, 2 * len(case_ids), DRAIN_TIMEOUT_S)
    elapsed = time.monotonic() - started
    assert federation.stop_all() == dict.fromkeys(federation.nodes, 0)

    for (sender, recipient), case_ids in loaded.streams.items():
        await assert_stream_delivered(federation, sender, recipient, case_ids)
    total = sum(2 * len(c) for c in loaded.streams.values())
    print(f"\n{total} messages over 3 streams delivered in {elapsed:.1f} s incl. start")


INBOX = "SELECT count(*) FROM inbox WHERE sender = 'stockholm'"
RECEIPTED = "SELECT count(*) FROM outbox WHERE peer = 'goteborg' AND state = 'receipted'"
WINDOW_S = 2.0


async def _third_of(tables: Tables, query: str, total: int) -> int:
    return await wait_until(
        lambda: tables.scalar(query),
        lambda n: n >= total // 3,
        timeout_s=DRAIN_TIMEOUT_S,
        what="a third of the stream",
    )


@pytest.mark.parametrize("loaded", CRASH_BACKENDS, indirect=True)
async def test_receiver_killed_midstream_processes_every_message_exactly_once(
    loaded: Loaded,
) -> None:
    federation = loaded.federation
    case_ids = loaded.streams["stockholm", "goteborg"]
    total = 2 * len(case_ids)
    federation.start("goteborg")
    federation.start("stockholm")
    receiver = await read(federation, "goteborg")
    try:
        at_kill = await _third_of(receiver, INBOX, total)
        federation.kill("goteborg")
    finally:
        await receiver.close()
    assert at_kill < total, "the receiver was killed after the stream had ended"

    federation.start("goteborg")  # the sender backs off; goteborg's heartbeat ends that
    await wait_drained(federation, "stockholm", "goteborg", total, DRAIN_TIMEOUT_S)
    federation.stop_all()

    sent = await assert_stream_delivered(federation, "stockholm", "goteborg", case_ids)
    resent = sum(1 for row in sent if row.attempts > 1)
    assert resent > 0, "the sender never had to retry: the crash did not hit the stream"
    print(f"\nreceiver killed at {at_kill}/{total} stored; {resent} messages resent")


@pytest.mark.parametrize("loaded", CRASH_BACKENDS, indirect=True)
async def test_sender_killed_midstream_resumes_and_delivers_every_message_exactly_once(
    loaded: Loaded,
) -> None:
    federation = loaded.federation
    case_ids = loaded.streams["stockholm", "goteborg"]
    total = 2 * len(case_ids)
    federation.start("goteborg")
    federation.start("stockholm")
    sender = await read(federation, "stockholm")
    receiver = await read(federation, "goteborg")
    try:
        await _third_of(sender, RECEIPTED, total)
        # Aim for the worst moment: the receiver has stored a batch whose receipts the sender
        # has not recorded yet, so the restarted sender must send it again (a duplicate).
        deadline = time.monotonic() + WINDOW_S
        stored = receipted = 0
        while stored <= receipted and time.monotonic() < deadline:
            stored = await receiver.scalar(INBOX)
            receipted = await sender.scalar(RECEIPTED)
        federation.kill("stockholm")
    finally:
        await sender.close()
        await receiver.close()
    assert receipted < total, "the sender was killed after the stream had ended"

    federation.start("stockholm")
    await wait_drained(federation, "stockholm", "goteborg", total, DRAIN_TIMEOUT_S)
    federation.stop_all()

    sent = await assert_stream_delivered(federation, "stockholm", "goteborg", case_ids)
    resent = sum(1 for row in sent if row.attempts > 1)
    print(
        f"\nsender killed at {receipted}/{total} receipted, {stored} stored at the receiver; "
        f"{resent} messages resent"
    )


async def test_envelope_replayed_after_receiver_restart_gets_its_original_receipt(
    federation: LocalFederation,
) -> None:
    case_ids = await queue_cases(federation, "stockholm", "goteborg", 2)
    federation.start("goteborg")
    federation.start("stockholm")
    federation.wait_healthy("goteborg")
    await wait_drained(federation, "stockholm", "goteborg", 4, DRAIN_TIMEOUT_S)
    assert federation.stop("stockholm") == 0
    federation.kill("goteborg")
    federation.start("goteborg")
    federation.wait_healthy("goteborg")

    sender = await open_node(federation, "stockholm")
    peer = sender.trust().peers["goteborg"]
    client = FederationClient(
        own=sender.tls,
        peers=lambda city: PeerEndpoint(url=peer.endpoint, certificates=peer.certificates),
        verify_receipt=sender.receipt_checker(),
        limits=sender.config.limits,
        metrics=NodeMetrics(),
        clock=time.time,
    )
    try:
        tables = await read(federation, "stockholm")
        try:
            first = (await tables.outbox("goteborg"))[0]
        finally:
            await tables.close()
        replay = OutgoingEnvelope(
            seq=first.seq,
            peer="goteborg",
            case_id=first.case_id,
            message_id=first.message_id,
            envelope=first.envelope,
            created_at=first.created_at,
            attempts=first.attempts,
        )
        (result,) = await client.deliver("goteborg", [replay])
    finally:
        await client.close()
        await sender.close()

    assert result.status == DUPLICATE
    assert result.receipt == first.receipt, "the receipt is not the original one"
    federation.stop_all()
    await assert_stream_delivered(federation, "stockholm", "goteborg", case_ids)
