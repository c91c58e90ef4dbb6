"""Key transparency at rest (node.storage.checkpoint_store), on SQLite and PostgreSQL: each
distinct checkpoint kept once, a second head for one size stored as a proof once, the number of
heads per size bounded, and the countersignatures to relay chosen per city."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from storage_fixtures import FakeClock

from node.storage.checkpoint_store import HEADS_KEPT, CheckpointStore
from node.storage.database import Database
from node.storage.schema import KeylogCheckpointRow
from protocol.equivocation import decode_equivocation_proof, verify_equivocation_proof
from protocol.keylog import (
    EntryKind,
    KeyLog,
    VerifiedCheckpoint,
    countersign,
    decode_countersignature,
    sign_checkpoint,
    verify_checkpoint,
    verify_countersignature,
)
from protocol.keys import identity_key

T0 = 1_767_225_600


def _key(city: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"test key " + city.encode()).digest()
    )


KEYRING = {
    city: [identity_key(_key(city).public_key().public_bytes_raw())]
    for city in ("stockholm", "goteborg", "malmo")
}


def _checkpoint(label: str, size: int = 3, city: str = "stockholm") -> VerifiedCheckpoint:
    log = KeyLog()
    for i in range(size):
        log = log.append(EntryKind.TLS_PIN, f"test: {label} {i}".encode(), T0 + i)
    return verify_checkpoint(sign_checkpoint(log, city, T0 + 100, _key(city)), KEYRING)


async def test_second_head_for_one_size_is_stored_as_a_proof_once(
    db: Database, clock: FakeClock
) -> None:
    store = CheckpointStore(db, clock)
    honest, forked = _checkpoint("shown to goteborg"), _checkpoint("shown to malmo")
    assert await store.record_checkpoint(honest, "stockholm") is None
    assert await store.record_checkpoint(honest, "goteborg") is None  # the same: nothing new
    proof = await store.record_checkpoint(forked, "malmo")
    assert proof is not None
    assert await store.record_checkpoint(forked, "goteborg") is None  # already proven
    alarms = await store.alarms()
    assert [(a.city, a.size, a.reported_by) for a in alarms] == [("stockholm", 3, "malmo")]
    assert verify_equivocation_proof(decode_equivocation_proof(alarms[0].proof), KEYRING)
    assert (await store.latest_checkpoints())["stockholm"][0] == 3


async def test_heads_kept_per_size_are_bounded(db: Database, clock: FakeClock) -> None:
    store = CheckpointStore(db, clock)
    for n in range(HEADS_KEPT + 3):
        await store.record_checkpoint(_checkpoint(f"head {n}"), "stockholm")
    async with db.reading() as s:
        count = await s.scalar(select(func.count()).select_from(KeylogCheckpointRow))
    assert count == HEADS_KEPT
    assert len(await store.alarms()) == 1


async def test_relayed_countersignature_is_the_latest_of_each_citys_largest_checkpoint(
    db: Database, clock: FakeClock
) -> None:
    store = CheckpointStore(db, clock)
    small, large = _checkpoint("a", 2), _checkpoint("a", 4)
    malmo = _checkpoint("m", 2, city="malmo")
    for seen, checkpoint in ((T0 + 200, small), (T0 + 300, large), (T0 + 400, malmo)):
        made = countersign(checkpoint, "goteborg", seen, _key("goteborg"))
        await store.record_countersignature(verify_countersignature(made, KEYRING))
    relayed = [
        verify_countersignature(decode_countersignature(data), KEYRING)
        for data in await store.latest_by_witness("goteborg", exclude="goteborg")
    ]
    assert [(r.checkpoint.city, r.checkpoint.size) for r in relayed] == [
        ("malmo", 2),
        ("stockholm", 4),
    ]
    assert await store.latest_by_witness("malmo", exclude="malmo") == []
    witnessed = await store.witnesses_of("stockholm")
    assert [(w.witness, w.size) for w in witnessed] == [("goteborg", 4), ("goteborg", 2)]
