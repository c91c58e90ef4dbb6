"""Peers' key-history logs fetched and kept: checkpoints of different sizes compared through them,
and the copies served back (what a node restored from a backup takes its lost entries from).

In-process nodes (``node_fixtures``) as in ``test_key_transparency``: offers and log requests go
to the answering node's :class:`CheckpointWitness` exactly as the federation routes call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
import pytest
from node_fixtures import Federation
from test_key_transparency import _FIELDS, GOTEBORG, MALMO, STOCKHOLM, exchange, store_of

from node.checkpoints import CheckpointWitness, Post, witness_for
from protocol import codec
from protocol.checkpoint_exchange import (
    LogCopy,
    encode_log_request,
    verify_log_copy,
)
from protocol.equivocation import decode_equivocation_proof, verify_equivocation_proof
from protocol.errors import DecodeError, KeyLogBroken
from protocol.keylog import EntryKind, KeyLog


@dataclass
class RewritingWitness(CheckpointWitness):
    """A node that, once ``rewrite`` is set, shows a longer log that does not pass through the
    one it showed before (its last entry replaced, then one more): a fork of another size."""

    rewrite: bool = False

    async def log_for(self, peer: str) -> KeyLog:
        log = await self.history.load()
        if not self.rewrite:
            return log
        last = log.entries[-1].timestamp
        fork = KeyLog(log.entries[:-1]).append(EntryKind.TLS_PIN, b"test: rewritten", last)
        return fork.append(EntryKind.TLS_PIN, b"test: and one more", last)


def logs_of(ws: Mapping[str, CheckpointWitness], me: str) -> Post:
    """``me``'s transport to the peers' log route."""

    async def post(peer: str, body: bytes) -> bytes:
        return await ws[peer].serve_log(me, body)

    return post


async def three(fed: Federation, rewriting: str | None = None) -> dict[str, CheckpointWitness]:
    result: dict[str, CheckpointWitness] = {}
    for city in (STOCKHOLM, GOTEBORG, MALMO):
        witness = witness_for(await fed.open(city))
        if city == rewriting:
            witness = RewritingWitness(**{f: getattr(witness, f) for f in _FIELDS})
        result[city] = witness
    return result


async def test_peer_log_is_fetched_when_its_checkpoint_grows_and_served_back_verifiable(
    fed: Federation,
) -> None:
    ws = await three(fed)
    stockholm = await fed.open(STOCKHOLM)
    await exchange(ws, GOTEBORG, STOCKHOLM)
    fetched = await ws[GOTEBORG].fetch_log(STOCKHOLM, logs_of(ws, GOTEBORG))
    own = await stockholm.history.load()
    assert fetched is not None
    assert fetched.entries == own.entries
    assert await ws[GOTEBORG].fetch_log(STOCKHOLM, logs_of(ws, GOTEBORG)) is None  # not grown

    # Malmö asks Göteborg for Stockholm's log: the copy verifies under Stockholm's key only.
    copy = await ws[GOTEBORG].serve_log(MALMO, encode_log_request(STOCKHOLM))
    keyring = {STOCKHOLM: (await fed.open(MALMO)).trust().peer(STOCKHOLM).identity}
    found = verify_log_copy(copy, STOCKHOLM, keyring)
    assert found is not None
    assert found[1].entries == own.entries
    # A city nobody holds a log of: an empty copy, not an error.
    assert (
        verify_log_copy(
            await ws[GOTEBORG].serve_log(MALMO, encode_log_request("uppsala")), "uppsala", keyring
        )
        is None
    )
    assert await store_of(await fed.open(GOTEBORG)).alarms() == []


async def test_longer_log_not_passing_through_an_older_checkpoint_raises_the_alarm(
    fed: Federation,
) -> None:
    ws = await three(fed, rewriting=STOCKHOLM)
    goteborg = await fed.open(GOTEBORG)
    await exchange(ws, GOTEBORG, STOCKHOLM)  # Göteborg countersigns the honest log, size n
    rewriting = ws[STOCKHOLM]
    assert isinstance(rewriting, RewritingWitness)
    rewriting.rewrite = True
    await exchange(ws, GOTEBORG, STOCKHOLM)  # now a checkpoint of size n + 1, another history
    assert await store_of(goteborg).alarms() == []  # different sizes: only the log can tell

    await ws[GOTEBORG].fetch_log(STOCKHOLM, logs_of(ws, GOTEBORG))

    alarms = await store_of(goteborg).alarms()
    assert [(a.city, a.reported_by) for a in alarms] == [(STOCKHOLM, STOCKHOLM)]
    proof = decode_equivocation_proof(alarms[0].proof)
    assert proof.extension  # the entries linking the larger head back to the smaller size
    assert verify_equivocation_proof(proof, {STOCKHOLM: goteborg.trust().peer(STOCKHOLM).identity})
    rendered = goteborg.metrics.render().decode()
    assert f'citynode_keylog_equivocations{{city="{STOCKHOLM}"}} 1.0' in rendered


async def test_copy_that_is_not_its_checkpoints_log_is_refused_and_nothing_kept(
    fed: Federation,
) -> None:
    ws = await three(fed)
    goteborg = await fed.open(GOTEBORG)
    await exchange(ws, GOTEBORG, STOCKHOLM)

    async def tampered(peer: str, body: bytes) -> bytes:
        data = await ws[peer].serve_log(GOTEBORG, body)
        copy = codec.decode(data, LogCopy, max_bytes=len(data), what="copy")
        last = copy.entries[-1]
        altered = msgspec.structs.replace(last, payload=last.payload + b"x")
        return codec.encode(msgspec.structs.replace(copy, entries=(*copy.entries[:-1], altered)))

    with pytest.raises(KeyLogBroken):
        await ws[GOTEBORG].fetch_log(STOCKHOLM, tampered)
    assert await store_of(goteborg).held_log_size(STOCKHOLM) == 0

    async def garbage(peer: str, body: bytes) -> bytes:
        return b"\xc1not msgpack"

    with pytest.raises(DecodeError):
        await ws[GOTEBORG].fetch_log(STOCKHOLM, garbage)
    with pytest.raises(DecodeError):  # a request that is not a city name
        await ws[GOTEBORG].serve_log(MALMO, codec.encode(["../etc"]))
    assert await store_of(goteborg).held_log_size(STOCKHOLM) == 0
