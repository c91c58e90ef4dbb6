"""Security review of backup/restore, ``outbox resend`` and ``keys recover``: one scenario per
problem found, each failing before its fix.

* A sparse tar member (GNU ``S`` or PAX ``GNU.sparse``) is "regular" to ``tarfile`` yet expands
  to any size from a few bytes of archive: a decompression bomb that fills the disk before the
  hash is checked. Restore refuses it like a link or a device.
* A case shredded between the resend's plan and its write must not go out again: its body was
  read before the key was destroyed.
* A peer's copy of our key log that is shorter than the restored log but diverges from it is a
  fork signed by our key (the equivocation alarm), not something to ignore.
* The archive is not signed: a database in it holding a trigger (here: one that empties the
  replay guard, so the restored node processes replays) would run inside the node. A node's
  schema holds no trigger, rule, view or function, so restore refuses a database with one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from node_fixtures import (
    SECRET,
    Federation,
    fresh_federation,
    new_case_id,
    open_case,
    pg_url_or_skip,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from test_backup import CITY, restored_config, rewrite
from test_backup import PEER as BACKUP_PEER
from test_key_transparency import GOTEBORG, STOCKHOLM
from test_resend import HOME, PEER

from node.audit import AuditTrail
from node.backup import read_restore_marker, restore_backup, take_backup
from node.backup_archive import BackupTampered, UnsafeMember, open_archive
from node.backup_snapshot import PgTools, libpq_target, run_tool
from node.cli_resend import resender_for
from node.federation.client import FederationClient
from node.key_recovery import RecoveryIncomplete, recover_keys
from node.resend import RESENT, ResendRaced
from protocol.checkpoint_exchange import encode_log_copy
from protocol.keylog import EntryKind, KeyLog, sign_checkpoint


def _gnu_tar() -> str:
    tar = shutil.which("tar")
    if tar is None:
        pytest.skip("no tar to build a sparse member with")
    version = subprocess.run([tar, "--version"], capture_output=True, text=True, check=False)
    if "GNU tar" not in version.stdout:
        pytest.skip("building a sparse member needs GNU tar")
    return tar


@pytest.mark.parametrize("tar_format", ["gnu", "posix"])
def test_a_sparse_member_that_expands_far_beyond_the_archive_is_refused(
    tmp_path: Path, tar_format: str
) -> None:
    tar = _gnu_tar()
    source = tmp_path / "source"
    (source / "database").mkdir(parents=True)
    with (source / "database" / "citynode.sqlite3").open("wb") as f:
        f.truncate(1 << 40)  # 1 TiB of holes: a few blocks in the archive
    (source / "manifest.json").write_bytes(b"{}")
    archive = tmp_path / "bomb.tar"
    members = ["database/citynode.sqlite3", "manifest.json"]
    options = ["--sparse", f"--format={tar_format}", "-C", str(source), "-cf", str(archive)]
    subprocess.run([tar, *options, *members], check=True)
    assert archive.stat().st_size < 1 << 20

    with pytest.raises(UnsafeMember) as caught, open_archive(archive):
        pass
    assert caught.value.code == "backup_unsafe_member"
    assert "database/citynode.sqlite3" in caught.value.message


async def test_a_case_shredded_between_plan_and_write_is_not_resent(fed: Federation) -> None:
    home, peer = await fed.open(HOME), await fed.open(PEER)
    since = fed.clock()
    case_id = new_case_id()
    await open_case(home, peer, case_id, accepted=False)
    resender = resender_for(home)
    plan = await resender.plan(PEER, since)
    assert len(plan.to_queue) == 1
    assert await home.cases.shred(case_id)  # retention or an erasure request, meanwhile
    rows = await home.outbox.queue_length(PEER)

    with pytest.raises(ResendRaced) as caught:
        await resender.queue(plan)

    assert caught.value.code == "resend_raced"
    assert await home.outbox.queue_length(PEER) == rows
    entries = await AuditTrail(home.db, home.clock).entries()
    assert not [e for e in entries if e.action == RESENT]
    replanned = await resender.plan(PEER, since)  # run again: the shredded case is left out
    assert (len(replanned.to_queue), replanned.shredded) == (0, 1)


async def test_a_shorter_peer_copy_that_diverges_from_the_restored_log_stops_the_recovery(
    fed: Federation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    goteborg = await fed.open(GOTEBORG)
    config = goteborg.config
    local = await goteborg.history.load()
    assert local.size >= 2
    archive = tmp_path / "goteborg.tar"
    await take_backup(config, archive, clock=fed.clock)
    # A fork of our log, one entry shorter than the backup's, vouched by our own identity key.
    stamp = local.entries[-1].timestamp
    forked = KeyLog(local.entries[: local.size - 2]).append(
        EntryKind.AGREEMENT_ADOPTED, b"another history", stamp
    )
    assert forked.size < local.size
    assert forked.head != local.head_at(forked.size)
    fork = encode_log_copy(sign_checkpoint(forked, GOTEBORG, stamp, goteborg.own.identity), forked)
    await fed.nodes.pop(GOTEBORG).close()
    shutil.rmtree(config.data_dir)
    await restore_backup(archive, config, SECRET, clock=fed.clock)

    async def copies(
        self: FederationClient, peer: str, path: str, body: bytes, *, cap: int | None = None
    ) -> bytes:
        return fork if peer == STOCKHOLM else encode_log_copy(None, KeyLog())

    monkeypatch.setattr(FederationClient, "post_exchange", copies)
    with pytest.raises(RecoveryIncomplete) as caught:
        await recover_keys(config, SECRET, clock=fed.clock)
    assert caught.value.code == "recovery_incomplete"
    assert STOCKHOLM in caught.value.message
    assert read_restore_marker(config.data_dir) is not None  # nothing changed


# --- a database that holds code -----------------------------------------------------------------

EMPTY_REPLAY_GUARD_SQLITE = (
    "CREATE TRIGGER forget AFTER INSERT ON replay_guard BEGIN DELETE FROM replay_guard; END"
)
EMPTY_REPLAY_GUARD_POSTGRES = (
    "CREATE FUNCTION forget() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN DELETE FROM replay_guard; RETURN NULL; END $$",
    "CREATE TRIGGER forget AFTER INSERT ON replay_guard EXECUTE FUNCTION forget()",
)


def replaced(archive: Path, forged: Path, member: str, data: bytes) -> None:
    """Copy ``archive`` with ``member`` replaced by ``data``, its manifest entry made to match."""

    def change(name: str, old: bytes) -> bytes:
        if name == member:
            return data
        if name != "manifest.json":
            return old
        manifest = json.loads(old)
        for entry in manifest["files"]:
            if entry["path"] == member:
                entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
        return json.dumps(manifest).encode()

    rewrite(archive, forged, change)


async def test_a_sqlite_database_holding_a_trigger_is_refused(
    fed: Federation, tmp_path: Path
) -> None:
    home = await fed.open(CITY)
    archive = tmp_path / "backup.tar"
    await take_backup(home.config, archive, clock=fed.clock)
    snapshot = tmp_path / "snapshot.sqlite3"
    with open_archive(archive) as checked:
        checked.extract_to("database/citynode.sqlite3", snapshot)
    with sqlite3.connect(snapshot) as connection:
        connection.execute(EMPTY_REPLAY_GUARD_SQLITE)
    connection.close()
    forged = tmp_path / "forged.tar"
    replaced(archive, forged, "database/citynode.sqlite3", snapshot.read_bytes())
    target = tmp_path / "new-disk" / CITY

    with pytest.raises(BackupTampered) as caught:
        await restore_backup(forged, restored_config(home.config, target), SECRET)

    assert caught.value.code == "backup_tampered"
    assert "trigger" in caught.value.message
    assert not target.exists()


async def _new_pg_database(admin_url: str) -> str:
    base = make_url(admin_url)
    name = f"citynode_review_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
async def pg_targets() -> AsyncIterator[tuple[str, str]]:
    """Two empty databases of our own on the test server (dropped afterwards)."""
    admin_url = pg_url_or_skip()
    urls = (await _new_pg_database(admin_url), await _new_pg_database(admin_url))
    try:
        yield urls
    finally:
        admin = create_async_engine(make_url(admin_url), isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as connection:
                for url in urls:
                    name = make_url(url).database
                    await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            await admin.dispose()


async def test_a_postgresql_dump_holding_a_trigger_is_refused(
    tmp_path: Path, pg_targets: tuple[str, str]
) -> None:
    scratch, target_url = pg_targets
    pg_dump = PgTools.find("pg_dump")
    async with fresh_federation(tmp_path / "fed", (CITY, BACKUP_PEER), backend="postgresql") as fed:
        home = await fed.open(CITY)
        archive = tmp_path / "pg.backup"
        await take_backup(home.config, archive)
        # The forger: the genuine dump, loaded, given a trigger, dumped again.
        await restore_backup(
            archive, restored_config(home.config, tmp_path / "d1", scratch), SECRET
        )
        engine = create_async_engine(scratch)
        try:
            async with engine.begin() as connection:
                for statement in EMPTY_REPLAY_GUARD_POSTGRES:
                    await connection.exec_driver_sql(statement)
        finally:
            await engine.dispose()
        dump = tmp_path / "forged.pgdump"
        libpq, env = libpq_target(scratch)
        await run_tool([pg_dump, "--format=custom", "--no-owner", f"--file={dump}", libpq], env)
        forged = tmp_path / "forged.tar"
        replaced(archive, forged, "database/citynode.pgdump", dump.read_bytes())
        target = tmp_path / "d2"

        with pytest.raises(BackupTampered) as caught:
            await restore_backup(forged, restored_config(home.config, target, target_url), SECRET)

        assert caught.value.code == "backup_tampered"
        assert "password" not in caught.value.message
        assert not target.exists()
