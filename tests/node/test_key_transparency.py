"""Key transparency between nodes: checkpoints exchanged, countersigned, kept, and a node that
shows different key-history logs to different peers caught by both of them.

Three in-process nodes (``node_fixtures``) exchange offers through an in-process transport that
calls the answering node's :meth:`CheckpointWitness.answer` exactly as the federation route does;
one test goes through the real federation listener (mutual TLS) and one through ``serve``. The
equivocating node is a test double of :class:`CheckpointWitness` that signs, with Stockholm's
real identity key, a log for Malmö other than the one it shows Göteborg.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from node_fixtures import (
    SECRET,
    Federation,
    error_code,
    fresh_federation,
    serving,
    tls_session,
    wait_until,
)

from node.checkpoints import CHECKPOINTS_PATH, CheckpointWitness, Post, witness_for
from node.cli import main
from node.federation import wire
from node.federation.server import create_federation_app
from node.federation.tls import server_context
from node.service import Node
from node.storage.checkpoint_store import CheckpointStore
from protocol import codec
from protocol.checkpoint_exchange import CheckpointOffer, encode_offer
from protocol.equivocation import decode_equivocation_proof, verify_equivocation_proof
from protocol.errors import ErrorCode, RemoteProtocolError
from protocol.keylog import EntryKind, KeyLog

STOCKHOLM, GOTEBORG, MALMO = "stockholm", "goteborg", "malmo"


@dataclass
class EquivocatingWitness(CheckpointWitness):
    """A node that shows ``fork_for`` a log other than the one it shows everyone else: the same
    size, another last entry, signed with its real identity key."""

    fork_for: str = MALMO

    async def log_for(self, peer: str) -> KeyLog:
        log = await self.history.load()
        last = log.entries[-1].timestamp
        payload = b"test: pin shown to " + (b"one peer" if peer == self.fork_for else b"others")
        return log.append(EntryKind.TLS_PIN, payload, last)


def in_process(witnesses: Mapping[str, CheckpointWitness], me: str) -> Post:
    """The transport of ``me``: the peer's witness answers as its federation route would."""

    async def post(peer: str, body: bytes) -> bytes:
        return await witnesses[peer].answer(me, body)

    return post


async def witnesses(
    fed: Federation, equivocating: str | None = None
) -> dict[str, CheckpointWitness]:
    result: dict[str, CheckpointWitness] = {}
    for city in (STOCKHOLM, GOTEBORG, MALMO):
        honest = witness_for(await fed.open(city))
        if city == equivocating:
            honest = EquivocatingWitness(**{f: getattr(honest, f) for f in _FIELDS})
        result[city] = honest
    return result


_FIELDS = ("city", "history", "store", "metrics", "identity", "keyring", "clock", "limits")


async def exchange(ws: Mapping[str, CheckpointWitness], client: str, server: str) -> None:
    await ws[client].exchange(server, in_process(ws, client))


def store_of(node: Node) -> CheckpointStore:
    return CheckpointStore(node.db, node.clock)


# --- honest nodes --------------------------------------------------------------------------------


async def test_exchange_gives_each_side_the_others_countersignature_and_checkpoint(
    fed: Federation,
) -> None:
    ws = await witnesses(fed)
    stockholm, goteborg = await fed.open(STOCKHOLM), await fed.open(GOTEBORG)
    await exchange(ws, GOTEBORG, STOCKHOLM)  # Göteborg gets Stockholm's countersignature back
    assert await store_of(stockholm).witnesses_of(STOCKHOLM) == []
    await exchange(ws, GOTEBORG, STOCKHOLM)  # and relays its own to Stockholm in the next offer

    for node, peer in ((stockholm, GOTEBORG), (goteborg, STOCKHOLM)):
        own_log = await node.history.load()
        witnessed = await store_of(node).witnesses_of(node.config.city)
        assert [(w.witness, w.size, w.head) for w in witnessed] == [
            (peer, own_log.size, own_log.head)
        ]
        peer_log = await (await fed.open(peer)).history.load()
        assert (await store_of(node).latest_checkpoints())[peer] == (peer_log.size, peer_log.head)
        assert (await store_of(node).alarms()) == []


async def test_a_peers_view_of_a_third_city_is_relayed_and_kept(fed: Federation) -> None:
    ws = await witnesses(fed)
    await exchange(ws, GOTEBORG, STOCKHOLM)
    await exchange(ws, MALMO, GOTEBORG)  # Göteborg relays what it saw of Stockholm

    malmo = await fed.open(MALMO)
    stockholm_log = await (await fed.open(STOCKHOLM)).history.load()
    latest = await store_of(malmo).latest_checkpoints()
    assert latest[STOCKHOLM] == (stockholm_log.size, stockholm_log.head)
    relayed = await store_of(malmo).witnesses_of(STOCKHOLM)
    assert [(w.witness, w.size) for w in relayed] == [(GOTEBORG, stockholm_log.size)]
    assert await store_of(malmo).alarms() == []


async def test_offer_that_does_not_verify_is_refused_with_its_code_and_changes_nothing(
    fed: Federation,
) -> None:
    ws = await witnesses(fed)
    goteborg = await fed.open(GOTEBORG)
    _, data = await ws[STOCKHOLM].offer(GOTEBORG)
    offer = codec.decode(data, CheckpointOffer, max_bytes=len(data), what="offer")
    forged = msgspec.structs.replace(offer.checkpoint, signature=bytes(64))
    with pytest.raises(RemoteProtocolError) as caught:
        await ws[GOTEBORG].answer(STOCKHOLM, encode_offer(forged, offer.witnessed))
    assert caught.value.code == ErrorCode.BAD_SIGNATURE
    with pytest.raises(RemoteProtocolError) as caught:  # Malmö cannot pass off Stockholm's
        await ws[GOTEBORG].answer(MALMO, data)
    assert caught.value.code == ErrorCode.INVALID_FIELD
    assert await store_of(goteborg).latest_checkpoints() == {}
    assert await store_of(goteborg).witnesses_of(GOTEBORG) == []


# --- the equivocating node ---------------------------------------------------------------------


async def test_node_showing_two_logs_is_caught_by_both_other_nodes_with_a_proof(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await witnesses(fed, equivocating=STOCKHOLM)
    await exchange(ws, GOTEBORG, STOCKHOLM)  # Göteborg is shown one log
    await exchange(ws, MALMO, STOCKHOLM)  # Malmö another, of the same size
    goteborg, malmo = await fed.open(GOTEBORG), await fed.open(MALMO)
    assert await store_of(goteborg).alarms() == []  # neither can tell on its own
    assert await store_of(malmo).alarms() == []

    with caplog.at_level(logging.WARNING, logger="node.checkpoints"):
        await exchange(ws, GOTEBORG, MALMO)  # the two compare what they countersigned

    stockholm_keys = {STOCKHOLM: goteborg.trust().peer(STOCKHOLM).identity}
    for node in (goteborg, malmo):
        alarms = await store_of(node).alarms()
        assert [(a.city, a.size) for a in alarms] == [(STOCKHOLM, alarms[0].size)]
        proof = decode_equivocation_proof(alarms[0].proof)
        assert verify_equivocation_proof(proof, stockholm_keys)  # checkable by anyone, offline
        assert proof.first.checkpoint_bytes != proof.second.checkpoint_bytes
        rendered = node.metrics.render().decode()
        assert f'citynode_keylog_equivocations{{city="{STOCKHOLM}"}} 1.0' in rendered
    warnings = [r.getMessage() for r in caplog.records if "EQUIVOCATION" in r.getMessage()]
    assert len(warnings) == 2
    assert all(STOCKHOLM in w for w in warnings)

    # The honest logs were never in conflict: no alarm against Göteborg or Malmö anywhere.
    for node in (goteborg, malmo):
        assert {a.city for a in await store_of(node).alarms()} == {STOCKHOLM}


async def test_alarm_survives_a_restart_and_shows_in_keys_show_json(
    fed: Federation, tmp_path: Path
) -> None:
    ws = await witnesses(fed, equivocating=STOCKHOLM)
    await exchange(ws, GOTEBORG, STOCKHOLM)
    await exchange(ws, MALMO, STOCKHOLM)
    await exchange(ws, MALMO, GOTEBORG)
    await fed.close()

    secret = tmp_path / "secret"
    secret.write_bytes(SECRET.value)
    secret.chmod(0o600)
    for city in (GOTEBORG, MALMO):
        doc = await asyncio.to_thread(_keys_show, fed.configs[city].source, secret)
        status = doc["key_transparency"]
        assert status["status"] == "equivocation"
        assert [a["city"] for a in status["alarms"]] == [STOCKHOLM]
        proof = decode_equivocation_proof(bytes.fromhex(status["alarms"][0]["proof"]))
        assert proof.first.checkpoint_bytes != proof.second.checkpoint_bytes
    doc = await asyncio.to_thread(_keys_show, fed.configs[STOCKHOLM].source, secret)
    assert doc["key_transparency"]["status"] == "ok"  # it holds no conflict of anyone else's


def _keys_show(config: Path, secret: Path) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            ["keys", "show", "--config", str(config), "--secret-file", str(secret), "--json"]
        )
    assert code == 0
    doc: dict[str, Any] = json.loads(out.getvalue())
    return doc


# --- over the federation listener --------------------------------------------------------------


@contextlib.asynccontextmanager
async def checkpoint_listener(node: Node) -> AsyncIterator[str]:
    """The node's federation app with its checkpoint route, on a loopback port; yields its URL."""

    async def key_state() -> bytes:
        return node.package()

    witness = witness_for(node)
    app = create_federation_app(
        handler=_NoInbox(),
        key_state=key_state,
        pins=lambda: node.trust().pin_table(),
        limits=node.config.limits,
        metrics=node.metrics,
        on_peer_seen=lambda city: None,
        attachments=None,
        exchanges={CHECKPOINTS_PATH: witness.answer},
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            "127.0.0.1",
            0,
            ssl_context=server_context(node.tls, node.trust().all_peer_certificates()),
        )
        await site.start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class _NoInbox:
    async def handle_batch(self, peer: str, envelopes: object) -> list[object]:
        raise AssertionError("no inbox traffic in these tests")


async def test_checkpoint_route_answers_a_peer_over_mutual_tls_and_refuses_a_tampered_offer(
    fed: Federation,
) -> None:
    stockholm, goteborg = await fed.open(STOCKHOLM), await fed.open(GOTEBORG)
    client = witness_for(goteborg)
    async with checkpoint_listener(stockholm) as url, tls_session(goteborg, stockholm) as session:

        async def post(peer: str, body: bytes) -> bytes:
            async with session.post(
                url + CHECKPOINTS_PATH, data=body, headers={"Content-Type": wire.MSGPACK}
            ) as response:
                assert response.status == 200
                return await response.read()

        await client.exchange(STOCKHOLM, post)
        await client.exchange(STOCKHOLM, post)  # the second offer carries our countersignature
        _, data = await client.offer(STOCKHOLM)
        async with session.post(
            url + CHECKPOINTS_PATH, data=data[:-3], headers={"Content-Type": wire.MSGPACK}
        ) as response:
            assert response.status == 400
            assert error_code(await response.read()) == ErrorCode.MALFORMED
    stockholm_log = await stockholm.history.load()
    witnessed = await store_of(stockholm).witnesses_of(STOCKHOLM)
    assert [(w.witness, w.size) for w in witnessed] == [(GOTEBORG, stockholm_log.size)]
    goteborg_log = await goteborg.history.load()
    assert (await store_of(stockholm).latest_checkpoints())[GOTEBORG] == (
        goteborg_log.size,
        goteborg_log.head,
    )


async def test_serving_nodes_exchange_checkpoints_by_themselves(tmp_path: Path) -> None:
    async with fresh_federation(tmp_path / "fed", (STOCKHOLM, GOTEBORG), listening=True) as pair:
        stockholm, goteborg = await pair.open(STOCKHOLM), await pair.open(GOTEBORG)
        async with serving(stockholm, goteborg):

            async def both_countersigned() -> bool:
                for node, peer in ((stockholm, GOTEBORG), (goteborg, STOCKHOLM)):
                    seen = await store_of(node).witnesses_of(node.config.city)
                    if peer not in {w.witness for w in seen}:
                        return False
                return True

            await wait_until(both_countersigned, timeout_s=15)


async def test_node_learns_from_a_peer_that_its_own_key_signed_a_log_it_never_had(
    fed: Federation,
) -> None:
    thief = await witnesses(fed, equivocating=STOCKHOLM)  # shows Göteborg a forged log
    thief[STOCKHOLM] = EquivocatingWitness(
        **{f: getattr(thief[STOCKHOLM], f) for f in _FIELDS}, fork_for=GOTEBORG
    )
    await exchange(thief, GOTEBORG, STOCKHOLM)  # Göteborg countersigns the thief's checkpoint
    stockholm = await fed.open(STOCKHOLM)
    honest = {**thief, STOCKHOLM: witness_for(stockholm)}
    # The forged log is one entry longer than the real one: let the real log reach that size.
    log = await stockholm.history.load()
    await stockholm.history.append(
        [(EntryKind.TLS_PIN, b"test: real pin")], log.entries[-1].timestamp
    )

    await exchange(honest, GOTEBORG, STOCKHOLM)  # Göteborg's offer relays what it saw of us

    alarms = await store_of(stockholm).alarms()
    assert [(a.city, a.reported_by) for a in alarms] == [(STOCKHOLM, GOTEBORG)]
    proof = decode_equivocation_proof(alarms[0].proof)
    assert verify_equivocation_proof(proof, {STOCKHOLM: honest[STOCKHOLM].keyring()[STOCKHOLM]})
