"""The durable outbox: FIFO per peer, visible states, receipts kept, bounded, crash-safe."""

from __future__ import annotations

import pytest
from storage_fixtures import T0, Backend, FakeClock, case_id, message_id

from node.config import NodeLimits
from node.delivery import (
    ACCEPTED,
    BAD_RECEIPT,
    DUPLICATE,
    DeliveryResult,
    DeliveryState,
    OutgoingEnvelope,
    Overloaded,
)
from node.storage.case_store import CaseStore
from node.storage.database import Database, StorageConflict
from node.storage.outbox_store import NewEnvelope, OutboxFull, OutboxStore
from node.storage.vault import CaseVault
from protocol.cases import CaseState, Role

RECEIPT = b"signed receipt"


@pytest.fixture
def outbox(db: Database, clock: FakeClock) -> OutboxStore:
    return OutboxStore(db, clock)


async def _enqueue(
    outbox: OutboxStore, n: int, peer: str = "goteborg", *, at: float = T0, case: int = 1
) -> int:
    return await outbox.enqueue(
        None,
        peer=peer,
        case_id=case_id(case),
        message_id=message_id(n),
        message_type="inquiry",
        envelope=b"sealed envelope %d" % n,
        now=at,
    )


async def _batch(outbox: OutboxStore, peer: str = "goteborg", limit: int = 64) -> list[int]:
    return [envelope.seq for envelope in await outbox.next_batch(peer, limit, T0)]


async def test_each_peer_gets_its_own_envelopes_oldest_first(outbox: OutboxStore) -> None:
    seqs = {n: await _enqueue(outbox, n, "goteborg" if n % 2 else "malmo") for n in range(1, 9)}
    assert await _batch(outbox, "goteborg") == [seqs[1], seqs[3], seqs[5], seqs[7]]
    assert await _batch(outbox, "malmo", limit=3) == [seqs[2], seqs[4], seqs[6]]
    batch = await outbox.next_batch("goteborg", 1, T0)
    assert batch == [
        OutgoingEnvelope(
            seq=seqs[1],
            peer="goteborg",
            case_id=case_id(1),
            message_id=message_id(1),
            envelope=b"sealed envelope 1",
            created_at=T0,
            attempts=0,
        )
    ]


async def test_sent_envelopes_without_receipt_are_sent_again_in_queue_order(
    outbox: OutboxStore,
) -> None:
    seqs = [await _enqueue(outbox, n) for n in range(1, 6)]
    await outbox.mark_sent(seqs[1:3], T0 + 1)
    batch = await outbox.next_batch("goteborg", 64, T0 + 2)
    assert [e.seq for e in batch] == seqs  # sent and queued, merged by seq
    assert [e.attempts for e in batch] == [0, 1, 1, 0, 0]
    assert await outbox.state_of(message_id(2)) == DeliveryState.SENT
    assert await _batch(outbox, limit=2) == seqs[:2]


async def test_receipts_are_kept_and_permanent_refusals_fail_with_their_code(
    outbox: OutboxStore,
) -> None:
    for n in range(1, 6):
        await _enqueue(outbox, n)
    batch = await outbox.next_batch("goteborg", 64, T0)
    await outbox.mark_sent([e.seq for e in batch], T0 + 1)
    results = [
        DeliveryResult(ACCEPTED, RECEIPT + b"1"),
        DeliveryResult(DUPLICATE, RECEIPT + b"2"),
        DeliveryResult("bad_signature", None),
        DeliveryResult(ACCEPTED, None),  # no receipt: not delivered, not a refusal
        DeliveryResult(BAD_RECEIPT, None),
    ]
    await outbox.record_results(batch, results, T0 + 2)

    first = await outbox.entry(message_id(1))
    assert first is not None
    assert (first.state, first.receipt, first.receipted_at, first.attempts) == (
        DeliveryState.RECEIPTED,
        RECEIPT + b"1",
        T0 + 2,
        1,
    )
    assert await outbox.state_of(message_id(2)) == DeliveryState.RECEIPTED
    failed = await outbox.entry(message_id(3))
    assert failed is not None
    assert (failed.state, failed.last_error, failed.receipt) == (
        DeliveryState.FAILED,
        "bad_signature",
        None,
    )
    assert await outbox.state_of(message_id(4)) == DeliveryState.SENT
    assert await outbox.state_of(message_id(5)) == DeliveryState.SENT
    assert await _batch(outbox) == [batch[3].seq, batch[4].seq]


async def test_several_permanent_refusals_in_one_batch_all_fail_with_their_codes(
    outbox: OutboxStore,
) -> None:
    for n in range(1, 4):
        await _enqueue(outbox, n)
    batch = await outbox.next_batch("goteborg", 64, T0)
    await outbox.mark_sent([e.seq for e in batch], T0 + 1)
    results = [
        DeliveryResult("revoked_key", None),
        DeliveryResult(ACCEPTED, RECEIPT),
        DeliveryResult("bad_signature", None),
    ]
    await outbox.record_results(batch, results, T0 + 2)
    first, third = await outbox.entry(message_id(1)), await outbox.entry(message_id(3))
    assert first is not None
    assert third is not None
    assert (first.state, first.last_error) == (DeliveryState.FAILED, "revoked_key")
    assert (third.state, third.last_error) == (DeliveryState.FAILED, "bad_signature")
    assert await outbox.state_of(message_id(2)) == DeliveryState.RECEIPTED


async def test_a_stored_receipt_is_final(outbox: OutboxStore) -> None:
    await _enqueue(outbox, 1)
    batch = await outbox.next_batch("goteborg", 1, T0)
    await outbox.record_results(batch, [DeliveryResult(ACCEPTED, RECEIPT)], T0 + 1)
    await outbox.record_results(batch, [DeliveryResult("bad_signature", None)], T0 + 2)
    await outbox.record_results(batch, [DeliveryResult(DUPLICATE, b"another receipt")], T0 + 3)
    await outbox.mark_sent([batch[0].seq], T0 + 4)
    await outbox.expire_older_than("goteborg", T0 + 10)
    entry = await outbox.entry(message_id(1))
    assert entry is not None
    assert (entry.state, entry.receipt, entry.receipted_at, entry.attempts) == (
        DeliveryState.RECEIPTED,
        RECEIPT,
        T0 + 1,
        0,
    )


async def test_a_receipt_arriving_after_expiry_is_still_stored(outbox: OutboxStore) -> None:
    await _enqueue(outbox, 1)
    batch = await outbox.next_batch("goteborg", 1, T0)
    assert await outbox.expire_older_than("goteborg", T0 + 1) == 1
    await outbox.record_results(batch, [DeliveryResult("stale", None)], T0 + 2)
    assert await outbox.state_of(message_id(1)) == DeliveryState.EXPIRED  # refusal: no change
    await outbox.record_results(batch, [DeliveryResult(ACCEPTED, RECEIPT)], T0 + 3)
    assert await outbox.state_of(message_id(1)) == DeliveryState.RECEIPTED


async def test_results_that_do_not_answer_the_batch_are_refused(outbox: OutboxStore) -> None:
    await _enqueue(outbox, 1)
    batch = await outbox.next_batch("goteborg", 1, T0)
    with pytest.raises(ValueError, match="one to one"):
        await outbox.record_results(batch, [], T0)


async def test_enqueue_in_a_rolled_back_transaction_leaves_nothing(
    db: Database, outbox: OutboxStore, vault: CaseVault, clock: FakeClock
) -> None:
    cases = CaseStore(db, vault, clock)

    async def open_case_and_fail() -> None:
        async with db.transaction() as s:
            await cases.create(
                case_id(1),
                role=Role.HOME,
                peer="goteborg",
                unit="jarva",
                state=CaseState.NEW,
                session=s,
            )
            await outbox.enqueue(
                s,
                peer="goteborg",
                case_id=case_id(1),
                message_id=message_id(1),
                message_type="inquiry",
                envelope=b"sealed",
            )
            raise RuntimeError("the case service failed after queueing")

    with pytest.raises(RuntimeError):
        await open_case_and_fail()
    assert await outbox.queue_length() == 0
    assert await outbox.state_of(message_id(1)) is None
    assert await cases.get(case_id(1)) is None


async def test_enqueue_in_a_committed_transaction_commits_with_the_case_change(
    db: Database, outbox: OutboxStore, vault: CaseVault, clock: FakeClock
) -> None:
    cases = CaseStore(db, vault, clock)
    async with db.transaction() as s:
        await cases.create(
            case_id(1),
            role=Role.HOME,
            peer="goteborg",
            unit="jarva",
            state=CaseState.NEW,
            session=s,
        )
        await cases.set_state(case_id(1), CaseState.AWAITING_REPLY, session=s)
        seq = await outbox.enqueue(
            s,
            peer="goteborg",
            case_id=case_id(1),
            message_id=message_id(1),
            message_type="inquiry",
            envelope=b"sealed",
        )
    record = await cases.get(case_id(1))
    assert record is not None
    assert record.state == CaseState.AWAITING_REPLY
    assert await _batch(outbox) == [seq]
    entry = await outbox.entry(message_id(1))
    assert entry is not None
    assert entry.created_at == T0  # the clock, when no time is given


async def test_the_same_message_id_cannot_be_queued_twice(outbox: OutboxStore) -> None:
    await _enqueue(outbox, 1)
    with pytest.raises(StorageConflict):
        await _enqueue(outbox, 1, "malmo")


async def test_a_full_outbox_refuses_new_envelopes_for_that_peer_only(
    db: Database, clock: FakeClock
) -> None:
    outbox = OutboxStore(db, clock, limits=NodeLimits(max_queue_length=3))
    for n in range(1, 4):
        await _enqueue(outbox, n)
    with pytest.raises(OutboxFull) as caught:
        await _enqueue(outbox, 4)
    assert isinstance(caught.value, Overloaded)  # answered 503 like any overload
    assert caught.value.code == "outbox_full"
    assert await outbox.queue_length("goteborg") == 3
    await _enqueue(outbox, 5, "malmo")  # another peer's queue is its own

    batch = await outbox.next_batch("goteborg", 1, T0)
    await outbox.record_results(batch, [DeliveryResult(ACCEPTED, RECEIPT)], T0)
    await _enqueue(outbox, 6)  # a receipted envelope no longer counts
    assert await outbox.queue_length() == 4


async def test_old_undelivered_envelopes_expire_and_stay_visible(outbox: OutboxStore) -> None:
    await _enqueue(outbox, 1, at=T0)
    await _enqueue(outbox, 2, at=T0 + 50)
    await _enqueue(outbox, 3, at=T0)
    await _enqueue(outbox, 4, "malmo", at=T0)
    failed = await outbox.next_batch("goteborg", 1, T0)
    await outbox.record_results(failed, [DeliveryResult("wrong_recipient", None)], T0)

    assert await outbox.expire_older_than("goteborg", T0 + 10) == 1  # only no. 3
    assert [await outbox.state_of(message_id(n)) for n in range(1, 5)] == [
        DeliveryState.FAILED,
        DeliveryState.QUEUED,
        DeliveryState.EXPIRED,
        DeliveryState.QUEUED,
    ]
    assert await _batch(outbox) == [(await outbox.next_batch("goteborg", 1, T0))[0].seq]
    assert await outbox.pending_peers() == ["goteborg", "malmo"]


async def test_status_counts_every_state_per_peer_with_the_oldest_and_overdue(
    outbox: OutboxStore,
) -> None:
    for n, at in enumerate((T0, T0 + 100, T0 + 200, T0 + 300), start=1):
        await _enqueue(outbox, n, at=at)
    await _enqueue(outbox, 9, "malmo", at=T0 + 400)
    batch = await outbox.next_batch("goteborg", 2, T0)
    await outbox.mark_sent([e.seq for e in batch], T0 + 500)
    await outbox.record_results(batch[:1], [DeliveryResult(ACCEPTED, RECEIPT)], T0 + 500)

    status = await outbox.status(T0 + 1000, alert_age_s=750)
    assert [s.peer for s in status] == ["goteborg", "malmo"]
    goteborg, malmo = status
    assert goteborg.counts == {
        DeliveryState.QUEUED: 2,
        DeliveryState.SENT: 1,
        DeliveryState.RECEIPTED: 1,
        DeliveryState.FAILED: 0,
        DeliveryState.EXPIRED: 0,
    }
    assert goteborg.undelivered == 3
    assert goteborg.oldest_undelivered_age_s == 900  # no. 2, queued at T0 + 100
    assert goteborg.overdue == 2  # nos. 2 and 3 are older than 750 s; no. 4 is not
    assert (malmo.undelivered, malmo.oldest_undelivered_age_s, malmo.overdue) == (1, 600, 0)

    backlog = await outbox.backlog("goteborg", overdue_before=T0 + 250)
    assert (backlog.queued, backlog.sent, backlog.failed, backlog.expired, backlog.overdue) == (
        2,
        1,
        0,
        0,
        2,
    )


async def test_an_empty_outbox_reports_nothing_pending(outbox: OutboxStore) -> None:
    assert await outbox.status(T0) == []
    assert await outbox.pending_peers() == []
    assert await outbox.queue_length() == 0
    assert await outbox.next_batch("goteborg", 10, T0) == []
    assert await outbox.state_of(message_id(1)) is None
    await outbox.mark_sent([], T0)
    await outbox.record_results([], [], T0)


async def test_sent_envelopes_are_sent_again_after_a_restart(
    backend: Backend, db: Database, clock: FakeClock
) -> None:
    outbox = OutboxStore(db, clock)
    seqs = [await _enqueue(outbox, n) for n in range(1, 4)]
    await outbox.mark_sent(seqs[:2], T0 + 1)
    await db.close()
    backend.opened.remove(db)

    reopened = OutboxStore(await backend.open(), clock)  # as after kill -9 and a restart
    batch = await reopened.next_batch("goteborg", 64, T0 + 2)
    assert [e.seq for e in batch] == seqs
    assert [e.attempts for e in batch] == [1, 1, 0]
    assert await reopened.pending_peers() == ["goteborg"]
    assert await _enqueue(reopened, 4) > seqs[-1]  # the order continues


async def test_many_envelopes_queue_together_in_order_or_not_at_all(
    db: Database, clock: FakeClock
) -> None:
    outbox = OutboxStore(db, clock, limits=NodeLimits(max_queue_length=3))
    items = [
        NewEnvelope("goteborg" if n != 2 else "malmo", None, message_id(n), "key_update", b"e")
        for n in range(1, 5)
    ]
    seqs = await outbox.enqueue_many(None, items[:3], now=T0)
    assert seqs == sorted(seqs)
    assert await _batch(outbox, "goteborg") == [seqs[0], seqs[2]]
    with pytest.raises(OutboxFull):  # goteborg holds 2 and would get 2 more
        await outbox.enqueue_many(
            None, [items[3], NewEnvelope("goteborg", None, message_id(5), "key_update", b"e")]
        )
    assert await outbox.state_of(message_id(4)) is None
    assert await outbox.enqueue_many(None, []) == []
