"""The peers table: endpoints, key bundles (never rolled back), verification and liveness."""

from __future__ import annotations

import pytest
from storage_fixtures import T0, Backend

from node.storage.database import Database
from node.storage.peer_store import PeerRecord, PeerStore, StaleBundle, UnknownPeer

CERT = b"-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n"


@pytest.fixture
def peers(db: Database) -> PeerStore:
    return PeerStore(db)


async def test_a_new_peer_has_only_its_endpoint(peers: PeerStore) -> None:
    await peers.upsert_peer("malmo", "https://malmo.example:8443")
    assert await peers.get("malmo") == PeerRecord(
        city="malmo",
        endpoint="https://malmo.example:8443",
        bundle=None,
        bundle_sequence=None,
        tls_certificates=(),
        fingerprint_verified_at=None,
        last_seen_at=None,
    )
    assert await peers.get("goteborg") is None


async def test_changing_the_endpoint_keeps_everything_else(peers: PeerStore) -> None:
    await peers.upsert_peer("malmo", "https://old.example")
    await peers.store_bundle("malmo", b"bundle 1", 1, [CERT])
    await peers.mark_verified("malmo", T0)
    await peers.upsert_peer("malmo", "https://new.example")
    record = await peers.get("malmo")
    assert record is not None
    assert (record.endpoint, record.bundle, record.tls_certificates) == (
        "https://new.example",
        b"bundle 1",
        (CERT,),
    )
    assert record.fingerprint_verified_at == T0


async def test_a_newer_bundle_replaces_and_an_older_one_is_refused(peers: PeerStore) -> None:
    await peers.upsert_peer("malmo", "https://malmo.example")
    await peers.store_bundle("malmo", b"bundle 2", 2, [CERT, b"\x30\x82der"])
    await peers.store_bundle("malmo", b"bundle 2", 2, [CERT, b"\x30\x82der"])  # idempotent
    with pytest.raises(StaleBundle) as caught:
        await peers.store_bundle("malmo", b"bundle 1", 1, [])
    assert caught.value.code == "stale_key_bundle"
    await peers.store_bundle("malmo", b"bundle 3", 3, [])
    record = await peers.get("malmo")
    assert record is not None
    assert (record.bundle, record.bundle_sequence, record.tls_certificates) == (b"bundle 3", 3, ())


async def test_last_seen_never_moves_backwards(peers: PeerStore) -> None:
    await peers.upsert_peer("malmo", "https://malmo.example")
    await peers.mark_seen("malmo", T0 + 10)
    await peers.mark_seen("malmo", T0 + 5)  # a late, concurrent request
    record = await peers.get("malmo")
    assert record is not None
    assert record.last_seen_at == T0 + 10


async def test_an_unknown_peer_is_reported(peers: PeerStore) -> None:
    with pytest.raises(UnknownPeer):
        await peers.store_bundle("uppsala", b"bundle", 1, [])
    with pytest.raises(UnknownPeer):
        await peers.mark_seen("uppsala", T0)
    with pytest.raises(UnknownPeer):
        await peers.mark_verified("uppsala", T0)


async def test_too_many_certificates_are_refused(peers: PeerStore) -> None:
    await peers.upsert_peer("malmo", "https://malmo.example")
    with pytest.raises(ValueError, match="certificates"):
        await peers.store_bundle("malmo", b"bundle", 1, [CERT] * 17)


async def test_peers_are_listed_by_city_and_survive_a_restart(
    backend: Backend, db: Database
) -> None:
    peers = PeerStore(db)
    for city in ("stockholm", "goteborg", "malmo"):
        await peers.upsert_peer(city, f"https://{city}.example")
    await peers.store_bundle("malmo", b"bundle", 4, [CERT])
    await db.close()
    backend.opened.remove(db)

    reopened = PeerStore(await backend.open())
    listed = await reopened.all()
    assert [p.city for p in listed] == ["goteborg", "malmo", "stockholm"]
    assert (listed[1].bundle, listed[1].bundle_sequence, listed[1].tls_certificates) == (
        b"bundle",
        4,
        (CERT,),
    )
