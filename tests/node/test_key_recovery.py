"""``citynode keys recover``: a node restored from a backup takes back the key-log entries it lost.

In-process nodes (``node_fixtures``). Göteborg is backed up (``node.backup``), rotates its
encryption key (two entries its peers fetch through the key-log route, here the witnesses'
in-process transport), then loses its data directory and is restored from the archive. Stockholm
and Malmö serve over real mutual TLS (``serving``) while :func:`recover_keys` asks them for their
copies of Göteborg's log.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from node_fixtures import SECRET, Federation, serving
from test_key_transparency import GOTEBORG, MALMO, STOCKHOLM, exchange
from test_keylog_fetch import logs_of

from node.backup import read_restore_marker, restore_backup, take_backup
from node.checkpoints import CheckpointWitness, witness_for
from node.key_history import RestorePending
from node.key_recovery import NotRestored, RecoveryIncomplete, recover_keys
from node.own_keys import announced_windows, current_and_next
from node.service import Node
from protocol.keylog import EntryKind, KeyLog
from protocol.keys import KeyKind


async def grown_after_backup(fed: Federation, archive: Path) -> KeyLog:
    """Back Göteborg up, rotate its encryption key, let both peers fetch its longer log, then
    lose its data directory and restore the archive. Returns the log it had at the end."""
    goteborg = await fed.open(GOTEBORG)
    await take_backup(goteborg.config, archive, clock=fed.clock)
    await goteborg.rotate_encryption()
    grown = await goteborg.history.load()
    ws: dict[str, CheckpointWitness] = {
        city: witness_for(await fed.open(city)) for city in (STOCKHOLM, GOTEBORG, MALMO)
    }
    for peer in (STOCKHOLM, MALMO):
        await exchange(ws, peer, GOTEBORG)
        kept = await ws[peer].fetch_log(GOTEBORG, logs_of(ws, peer))
        assert kept is not None
        assert kept.size == grown.size
    await fed.nodes.pop(GOTEBORG).close()
    config = goteborg.config
    shutil.rmtree(config.data_dir)  # the disk dies
    await restore_backup(archive, config, SECRET, clock=fed.clock)
    return grown


async def test_restored_node_takes_back_its_lost_entries_and_replaces_the_lost_key(
    fed: Federation, tmp_path: Path
) -> None:
    grown = await grown_after_backup(fed, tmp_path / "goteborg.tar")
    config = fed.configs[GOTEBORG]
    with pytest.raises(RestorePending):  # nothing opens it before keys recover
        await Node.open(config, SECRET, clock=fed.clock)
    restored = await Node.open(config, SECRET, clock=fed.clock, recovering=True)
    try:
        assert (await restored.history.load()).size < grown.size
        with pytest.raises(RestorePending):  # frozen: a key change now would fork the log
            await restored.rotate_encryption()
    finally:
        await restored.close()

    async with serving(await fed.open(STOCKHOLM), await fed.open(MALMO)):
        recovery = await recover_keys(config, SECRET, clock=fed.clock)

    assert recovery.size == grown.size
    assert recovery.taken_back == grown.size - recovery.restored_size
    assert recovery.sources == {STOCKHOLM: grown.size, MALMO: grown.size}
    assert recovery.encryption_replaced
    assert read_restore_marker(config.data_dir) is None
    node = await fed.open(GOTEBORG)
    log = await node.history.load()
    assert log.entries[: grown.size] == grown.entries  # taken back unchanged: no fork
    replaced = [e for e in log.entries[grown.size :] if e.kind == EntryKind.ENCRYPTION_KEY]
    assert replaced  # the new keys' windows are logged after what was taken back
    # The keys the node now announces as current and next are keys it holds.
    pair = current_and_next(
        node.own.encryption, node.config.keys, int(fed.clock()), announced_windows(log)
    )
    assert pair is not None
    held = {k.key_id for k in node.keystore.keys(KeyKind.ENCRYPTION)}
    assert {pair[0].key_id, pair[1].key_id} <= held


async def test_recovery_needs_every_peer_and_changes_nothing_without_one(
    fed: Federation, tmp_path: Path
) -> None:
    await grown_after_backup(fed, tmp_path / "goteborg.tar")
    config = fed.configs[GOTEBORG]
    restored = await Node.open(config, SECRET, clock=fed.clock, recovering=True)
    before = await restored.history.load()
    await restored.close()

    async with serving(await fed.open(STOCKHOLM)):  # Malmö is down
        with pytest.raises(RecoveryIncomplete) as caught:
            await recover_keys(config, SECRET, clock=fed.clock)
    assert caught.value.code == "recovery_incomplete"
    assert MALMO in caught.value.message
    assert read_restore_marker(config.data_dir) is not None  # can be run again
    restored = await Node.open(config, SECRET, clock=fed.clock, recovering=True)
    try:
        assert (await restored.history.load()).entries == before.entries
    finally:
        await restored.close()


async def test_recover_on_a_node_that_was_not_restored_is_refused(fed: Federation) -> None:
    node = await fed.open(GOTEBORG)
    before = await node.history.load()
    with pytest.raises(NotRestored) as caught:
        await recover_keys(node.config, SECRET, clock=fed.clock)
    assert caught.value.code == "not_restored"
    assert (await node.history.load()).entries == before.entries
