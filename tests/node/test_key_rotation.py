"""Key rotation at a node: encryption keys on demand and on schedule, pushed to peers, destroyed.

In-process nodes (``node_fixtures``): the windows a node announced never change when it rotates
or restarts, a rotation reaches the peers by push in well under two seconds while traffic flows
(every message delivered exactly once, none refused), and a key past its grace window is
destroyed — an envelope sealed to it no longer opens, while the node still reads its cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from node_fixtures import (
    CITIES,
    SECRET,
    Federation,
    case_state,
    deliver_outbox,
    fresh_federation,
    inquiry,
    new_case_id,
    open_case,
    refusals,
    seal,
    send,
    serving,
    statuses,
    wait_until,
)

from node.cli import main
from node.delivery import ACCEPTED, DeliveryState
from node.keystore import KeyNotFound
from node.own_keys import announced_windows, current_and_next, encryption_windows
from node.service import Node
from protocol.errors import ErrorCode, ProtocolError
from protocol.keylog import EntryKind
from protocol.keys import EncryptionKey, public_bytes
from protocol.sealing import open_envelope, verify_receipt

HOME, RECEIVING = CITIES[0], CITIES[1]
DAY_S = 86_400


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Federation]:
    """Stockholm and Göteborg on SQLite, on free loopback ports."""
    async with fresh_federation(tmp_path / "fed", (HOME, RECEIVING), listening=True) as fed:
        yield fed


async def windows_of(node: Node) -> dict[bytes, EncryptionKey]:
    return announced_windows(await node.history.load())


def pair_of(node: Node, announced: dict[bytes, EncryptionKey]) -> tuple[EncryptionKey, ...]:
    found = current_and_next(node.own.encryption, node.config.keys, int(node.clock()), announced)
    assert found is not None
    return found


class _NotSeen:
    def seen(self, sender: str, message_id: bytes) -> bool:
        return False


# --- windows -----------------------------------------------------------------------------------


async def test_initialised_node_logs_the_window_of_each_key_it_announces(pair: Federation) -> None:
    node = await pair.open(HOME)
    announced = await windows_of(node)
    stored = {key.key_id for key in node.own.encryption}
    assert set(announced) == stored
    assert encryption_windows(node.own.encryption, node.config.keys, announced) == tuple(
        announced[key.key_id] for key in node.own.encryption
    )


async def test_rotation_makes_the_next_key_current_now_without_moving_announced_ends(
    pair: Federation,
) -> None:
    node = await pair.open(HOME)
    before = await windows_of(node)
    current, following = pair_of(node, before)

    await node.rotate_encryption()

    after = await windows_of(node)
    now_current, now_next = pair_of(node, after)
    assert now_current.key_id == following.key_id
    assert now_current.not_before <= int(node.clock()) < following.not_before
    assert now_current.not_after == following.not_after  # its end never moves
    assert after[current.key_id] == current  # the old key's window is untouched
    assert now_next.epoch == following.epoch + 1
    assert now_next.not_before == now_current.not_before + node.config.keys.encryption_rotation_s


async def test_announced_windows_survive_a_restart(pair: Federation) -> None:
    node = await pair.open(HOME)
    await node.rotate_encryption()
    before = await windows_of(node)
    bundle_pair = pair_of(node, before)

    pair.clock.offset += 5  # a restart a little later must not shift any window
    node = await pair.restart(HOME)

    assert await windows_of(node) == before
    assert pair_of(node, await windows_of(node)) == bundle_pair


async def test_schedule_moves_to_the_next_key_and_announces_a_new_one(pair: Federation) -> None:
    node = await pair.open(HOME)
    _, following = pair_of(node, await windows_of(node))

    pair.clock.offset += following.not_before - int(node.clock()) + 1
    await node.rotation_tick()

    current, new_next = pair_of(node, await windows_of(node))
    assert current.key_id == following.key_id
    assert new_next.epoch == following.epoch + 1
    assert new_next.key_id in await windows_of(node)  # logged before it is served


# --- destruction -------------------------------------------------------------------------------


async def test_key_past_its_grace_is_destroyed_and_its_envelopes_no_longer_open(
    pair: Federation,
) -> None:
    home, receiving = await pair.open(HOME), await pair.open(RECEIVING)
    case_id = new_case_id()
    await open_case(home, receiving, case_id, accepted=True)
    sealed_at = int(home.clock())
    old_envelope = seal(home, RECEIVING, inquiry(new_case_id()))
    first = receiving.own.encryption[0]
    schedule = receiving.config.keys

    pair.clock.offset += 2 * (schedule.encryption_rotation_s + schedule.encryption_grace_s) + DAY_S
    await receiving.rotation_tick()

    held = {key.key_id for key in receiving.own.encryption}
    assert first.key_id not in held
    assert first.key_id not in receiving.decryption()
    with pytest.raises(KeyNotFound):
        receiving.keystore.load_encryption(first.key_id)
    log = await receiving.history.load()
    destroyed = [e.payload for e in log.entries if e.kind == EntryKind.ENCRYPTION_KEY_DESTROYED]
    assert first.key_id in destroyed
    with pytest.raises(ProtocolError) as refused:
        open_envelope(
            old_envelope,
            me=RECEIVING,
            my_keys=receiving.decryption(),
            sender_keys=receiving.trust().sender_keys,
            replay=_NotSeen(),
            now=sealed_at,
            limits=receiving.config.limits.protocol,
        )
    assert refused.value.code == ErrorCode.UNKNOWN_KEY
    # the cases stay readable: they are under the data key and the case keys
    assert await case_state(receiving, case_id) is not None
    assert len(await receiving.journal.entries(case_id)) == 2
    # and the node still serves a valid bundle with a current and a next key
    assert pair_of(receiving, await windows_of(receiving))[0].not_after > int(receiving.clock())


# --- push under traffic ------------------------------------------------------------------------


async def test_encryption_rotation_under_traffic_reaches_the_peer_by_push(
    pair: Federation,
) -> None:
    home, receiving = await pair.open(HOME), await pair.open(RECEIVING)
    sent: list[bytes] = []

    async def traffic(count: int) -> None:
        for _ in range(count):
            case_id = new_case_id()
            queued = await home.outgoing(home.wake_sender).send(RECEIVING, inquiry(case_id))
            sent.append(queued.message_id)
            await asyncio.sleep(0.02)

    async with serving(home, receiving):
        flowing = asyncio.create_task(traffic(60))
        await asyncio.sleep(0.3)
        started = asyncio.get_running_loop().time()
        await receiving.rotate_encryption()
        new_current = pair_of(receiving, await windows_of(receiving))[0]

        def home_seals_to_new_key() -> bool:
            key = home.trust().sealing_key(RECEIVING, int(home.clock()))
            return key.key_id == new_current.key_id

        await wait_until(home_seals_to_new_key, timeout_s=5)
        propagation_s = asyncio.get_running_loop().time() - started
        await flowing

        async def all_receipted() -> bool:
            states = [await home.outbox.state_of(m) for m in sent]
            return all(s == DeliveryState.RECEIPTED for s in states)

        await wait_until(all_receipted, timeout_s=15)

    assert propagation_s < 2.0
    assert await receiving.inbox.count() == len(sent)  # each exactly once
    for code in ("rejected", "unknown_key", "expired_key", "replayed"):
        assert refusals(receiving, HOME, code) == 0
    assert await home.outbox.state_of(sent[0]) == DeliveryState.RECEIPTED


async def test_key_update_from_a_peer_is_applied_when_delivered(pair: Federation) -> None:
    home, receiving = await pair.open(HOME), await pair.open(RECEIVING)
    await receiving.rotate_encryption()
    changed = await home.accept_bundle(RECEIVING, receiving.signed_bundle())
    assert changed is True
    assert await home.accept_bundle(RECEIVING, receiving.signed_bundle()) is False
    new_current = pair_of(receiving, await windows_of(receiving))[0]
    assert home.trust().sealing_key(RECEIVING, int(home.clock())).key_id == new_current.key_id
    # a message sealed to the new key is opened
    await send(home, receiving, inquiry(new_case_id()))
    assert statuses(await deliver_outbox(home, receiving)) == [ACCEPTED]


async def test_late_push_of_an_older_bundle_is_ignored_not_refused(pair: Federation) -> None:
    home, receiving = await pair.open(HOME), await pair.open(RECEIVING)
    await receiving.rotate_encryption()
    older = receiving.signed_bundle()
    await receiving.rotate_encryption()
    newer = receiving.signed_bundle()
    assert await home.accept_bundle(RECEIVING, newer) is True  # fetched first, say

    assert await home.accept_bundle(RECEIVING, older) is False  # the push arrives late

    held = home.trust().peer(RECEIVING).bundle
    assert held is not None
    assert held.signed_bytes == newer


# --- the operator's command --------------------------------------------------------------------


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET.value)
    path.chmod(0o600)
    return path


def citynode_json(node_config: Path, secret: Path, *args: str) -> dict[str, Any]:
    """Run ``citynode ARGS --json`` for one node (its own event loop) and parse what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*args, "--config", str(node_config), "--secret-file", str(secret), "--json"])
    assert code == 0
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


async def test_keys_rotate_command_next_to_a_running_node_reaches_the_peer(
    pair: Federation, tmp_path: Path
) -> None:
    home, receiving = await pair.open(HOME), await pair.open(RECEIVING)
    secret = secret_file(tmp_path)
    config = receiving.config.source
    shown = await asyncio.to_thread(citynode_json, config, secret, "keys", "show")
    uses = [k["use"] for k in shown["encryption_keys"]]
    assert uses == ["current", "next"]

    async with serving(home, receiving):
        started = asyncio.get_running_loop().time()
        doc = await asyncio.to_thread(
            citynode_json, config, secret, "keys", "rotate", "--kind", "encryption"
        )
        now_current = next(k for k in doc["after"]["encryption_keys"] if k["use"] == "current")
        assert now_current["key_id"] == shown["encryption_keys"][1]["key_id"]

        def home_seals_to_it() -> bool:
            key = home.trust().sealing_key(RECEIVING, int(home.clock()))
            return bool(key.key_id.hex() == now_current["key_id"])

        await wait_until(home_seals_to_it, timeout_s=8)
        assert asyncio.get_running_loop().time() - started < 5.0  # a tick (2 s) and a push
        # the running node indexed the key the command made: it opens what is sealed to it
        assert (
            bytes.fromhex(doc["after"]["encryption_keys"][-1]["key_id"]) in receiving.decryption()
        )


# --- identity key --------------------------------------------------------------------------------


async def receipts_verify(sender: Node, peer: str, message_ids: list[bytes]) -> bool:
    """Every message's stored receipt still verifies with the keys the sender trusts now."""
    keys = sender.trust().sender_keys(peer)
    assert keys is not None
    for message_id in message_ids:
        entry = await sender.outbox.entry(message_id)
        assert entry is not None
        assert entry.receipt is not None
        verify_receipt(
            entry.receipt, signer=peer, verify_keys=keys, limits=sender.config.limits.protocol
        )
    return True


async def test_identity_rotation_under_traffic_keeps_every_message_and_old_receipts(
    pair: Federation,
) -> None:
    home, receiving = await pair.open(HOME), await pair.open(RECEIVING)
    old_key = receiving.own.identity_stored.public_key
    sent: list[bytes] = []

    async def traffic(count: int) -> None:
        for _ in range(count):
            queued = await home.outgoing(home.wake_sender).send(RECEIVING, inquiry(new_case_id()))
            sent.append(queued.message_id)
            await asyncio.sleep(0.05)

    async with serving(home, receiving):
        flowing = asyncio.create_task(traffic(90))
        await asyncio.sleep(0.5)
        effective_from = await receiving.rotate_identity(switch_after_s=2)
        new_key = receiving.own.identity_stored.public_key
        assert new_key != old_key

        def home_follows_the_chain() -> bool:
            chain = home.trust().peer(RECEIVING).identity
            return [k.public_key for k in chain] == [old_key, new_key]

        await wait_until(home_follows_the_chain, timeout_s=5)
        await flowing
        assert int(home.clock()) > effective_from  # traffic ran on both sides of the switch

        async def all_receipted() -> bool:
            states = [await home.outbox.state_of(m) for m in sent]
            return all(s == DeliveryState.RECEIPTED for s in states)

        await wait_until(all_receipted, timeout_s=15)

    assert await receiving.inbox.count() == len(sent)
    for code in ("rejected", "unknown_key", "expired_key", "replayed"):
        assert refusals(receiving, HOME, code) == 0
    chain = home.trust().peer(RECEIVING).identity
    assert chain[0].valid_until == effective_from - 1  # the old key counts up to the switch
    assert await receipts_verify(home, RECEIVING, sent)  # old and new receipts alike

    home = await pair.restart(HOME)  # the chain is kept across a restart
    assert [k.public_key for k in home.trust().peer(RECEIVING).identity] == [old_key, new_key]
    assert await receipts_verify(home, RECEIVING, sent)
    log = await receiving.history.load()
    assert [e.kind for e in log.entries].count(EntryKind.SUCCESSION) == 1


async def test_keys_rotate_identity_command_publishes_a_chain_peers_follow(
    pair: Federation, tmp_path: Path
) -> None:
    home = await pair.open(HOME)
    config = pair.configs[RECEIVING].source
    doc = await asyncio.to_thread(
        citynode_json, config, secret_file(tmp_path), "keys", "rotate", "--kind", "identity"
    )
    assert doc["after"]["identity_key_id"] != doc["before"]["identity_key_id"]
    receiving = await pair.open(RECEIVING)

    assert await home.accept_package(RECEIVING, receiving.package())

    chain = home.trust().peer(RECEIVING).identity
    assert [k.key_id.hex() for k in chain] == [
        doc["before"]["identity_key_id"],
        doc["after"]["identity_key_id"],
    ]
    assert chain[1].valid_from == doc["effective_from"]
    signer = receiving.identity_at
    assert public_bytes(signer(doc["effective_from"] - 1)) == chain[0].public_key
    assert public_bytes(signer(doc["effective_from"])) == chain[1].public_key


# --- revocation --------------------------------------------------------------------------------


async def test_self_revoked_identity_key_is_refused_from_its_compromise_time(
    pair: Federation, tmp_path: Path
) -> None:
    home = await pair.open(HOME)
    receiving = await pair.open(RECEIVING)
    since = int(receiving.clock()) - 60
    before = seal(receiving, HOME, inquiry(new_case_id()), timestamp=since - 30)
    after = seal(receiving, HOME, inquiry(new_case_id()), timestamp=since + 30)
    await receiving.close()
    pair.nodes.pop(RECEIVING)
    doc = await asyncio.to_thread(
        citynode_json,
        pair.configs[RECEIVING].source,
        secret_file(tmp_path),
        "keys",
        "revoke",
        "--since",
        str(since),
        "--yes",
    )
    assert doc["since"] == since
    receiving = await pair.open(RECEIVING)

    assert await home.accept_package(RECEIVING, receiving.package())

    revoked = home.trust().peer(RECEIVING).identity[-1]
    assert revoked.revoked_since == since
    for envelope, expected in ((after, ErrorCode.REVOKED_KEY), (before, None)):
        try:
            open_envelope(
                envelope,
                me=HOME,
                my_keys=home.decryption(),
                sender_keys=home.trust().sender_keys,
                replay=_NotSeen(),
                now=int(home.clock()),
                limits=home.config.limits.protocol,
            )
            code = None
        except ProtocolError as e:
            code = e.code
        assert code == expected
    home = await pair.restart(HOME)  # the revocation is kept across a restart
    assert home.trust().peer(RECEIVING).identity[-1].revoked_since == since
    log = await receiving.history.load()
    assert [e.kind for e in log.entries].count(EntryKind.REVOCATION) == 1


def test_keys_revoke_refuses_without_yes(tmp_path: Path) -> None:
    code = main(["keys", "revoke", "--since", "2026-01-01T00:00:00", "--config", "x.toml"])
    assert code == 1
