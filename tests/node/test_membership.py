"""Peers' packages: imported, shown with their fingerprint, and not trusted until verified.

Two fresh nodes (``create_node``, as ``citynode init``) exchange packages by the operators'
procedure of runbook sections 1-2: ``import_peer`` keeps a package untrusted, ``verify_peer``
trusts it only with the digits the other operator read out, a draft naming an unverified member
cannot be proposed, a tampered package is refused before anything is stored, and a package with
another identity key makes the city unverified again.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from node_fixtures import FAST_KDF, SECRET, TestClock, _placeholder_ports, write_config, write_draft

from node.config import load_config
from node.membership import (
    FingerprintMismatch,
    MembershipError,
    import_peer,
    list_peers,
    propose_agreement,
    verify_peer,
)
from node.provision import create_node
from node.service import Node
from protocol.errors import ProtocolError

CITIES = ("stockholm", "goteborg")


async def fresh_pair(root: Path, clock: TestClock) -> tuple[Node, Node, dict[str, str], Path]:
    ports = _placeholder_ports(CITIES)
    fingerprints, nodes = {}, []
    for city in CITIES:
        config = load_config(write_config(root, city, ports[city]))
        fingerprints[city] = await create_node(config, SECRET, kdf_params=FAST_KDF, clock=clock)
        nodes.append(await Node.open(config, SECRET, clock=clock))
    today = datetime.datetime.fromtimestamp(clock(), tz=datetime.UTC).date()
    return nodes[0], nodes[1], fingerprints, write_draft(root, CITIES, ports, today)


async def test_an_imported_package_is_trusted_only_after_the_right_fingerprint(
    tmp_path: Path,
) -> None:
    clock = TestClock()
    stockholm, goteborg, fingerprints, draft = await fresh_pair(tmp_path, clock)
    try:
        package = await import_peer(stockholm, goteborg.package())
        assert package.bundle.city == "goteborg"
        (view,) = await list_peers(stockholm, "goteborg")
        assert view.fingerprint == fingerprints["goteborg"]  # shown for the operators to compare
        assert not view.verified
        with pytest.raises(MembershipError, match="no verified key for goteborg"):
            await propose_agreement(stockholm, draft)

        wrong = fingerprints["stockholm"]  # digits of another key
        with pytest.raises(FingerprintMismatch) as caught:
            await verify_peer(stockholm, "goteborg", wrong)
        assert caught.value.code == "fingerprint_mismatch"
        assert not (await list_peers(stockholm, "goteborg"))[0].verified

        spaced = " ".join(fingerprints["goteborg"].split())  # as read out, spacing aside
        assert (await verify_peer(stockholm, "goteborg", spaced)).verified
        with pytest.raises(MembershipError, match="no verified key for stockholm"):
            await propose_agreement(goteborg, draft)  # Göteborg has not verified Stockholm yet
    finally:
        await stockholm.close()
        await goteborg.close()


async def test_a_tampered_package_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    clock = TestClock()
    stockholm, goteborg, _, _ = await fresh_pair(tmp_path, clock)
    try:
        data = bytearray(goteborg.package())
        data[len(data) // 2] ^= 0x01
        with pytest.raises(ProtocolError):
            await import_peer(stockholm, bytes(data))
        with pytest.raises(ProtocolError):
            await import_peer(stockholm, b"\xc1 not a package")
        assert await list_peers(stockholm) == []
        with pytest.raises(MembershipError):  # its own package is not a peer's
            await import_peer(stockholm, stockholm.package())
    finally:
        await stockholm.close()
        await goteborg.close()


async def test_a_package_with_another_identity_key_makes_the_city_unverified_again(
    tmp_path: Path,
) -> None:
    clock = TestClock()
    stockholm, goteborg, fingerprints, _ = await fresh_pair(tmp_path, clock)
    try:
        await import_peer(stockholm, goteborg.package())
        await verify_peer(stockholm, "goteborg", fingerprints["goteborg"])
        other_root = tmp_path / "impostor"
        other_root.mkdir()
        other_stockholm, impostor, impostor_digits, _ = await fresh_pair(other_root, clock)
        try:  # another "goteborg" with its own keys: the package verifies, the key is new
            await import_peer(stockholm, impostor.package())
            (view,) = await list_peers(stockholm, "goteborg")
            assert not view.verified
            assert view.fingerprint == impostor_digits["goteborg"]
            assert view.fingerprint != fingerprints["goteborg"]
        finally:
            await impostor.close()
            await other_stockholm.close()
    finally:
        await stockholm.close()
        await goteborg.close()
