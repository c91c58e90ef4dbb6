"""``citynode backup`` / ``restore``: a node taken while it serves comes back whole on a new disk,
and every archive or target that does not fit is refused without changing anything."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import sqlite3
import stat
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from node_fixtures import (
    SECRET,
    Federation,
    copy_federation,
    fresh_federation,
    new_case_id,
    open_case,
    pg_url_or_skip,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from node.backup import (
    MARKER_FILE,
    RestoreBackendMismatch,
    RestoreSchemaUnknown,
    RestoreTargetInUse,
    RestoreWrongCity,
    clear_restore_marker,
    read_restore_marker,
    restore_backup,
    take_backup,
)
from node.backup_archive import (
    MANIFEST_NAME,
    BackupError,
    BackupExists,
    BackupTampered,
    BackupUnreadable,
    UnknownBackupFormat,
    UnsafeMember,
)
from node.backup_snapshot import (
    BackupToolMissing,
    PgTools,
    RestoreDatabaseNotEmpty,
    libpq_target,
)
from node.cli_backup import register_backup, resend_since
from node.config import DatabaseConfig, NodeConfig, load_config
from node.keystore import WrongSecret
from node.secrets_source import SECRET_ENV, OperatorSecret
from node.service import Node
from protocol.keys import KeyKind

CITY = "stockholm"
PEER = "goteborg"
STREAM = bytes(range(256)) * 300  # an opaque encrypted attachment stream, as far as backup knows


# --- helpers ------------------------------------------------------------------------------------


def restored_config(config: NodeConfig, data_dir: Path, url: str | None = None) -> NodeConfig:
    """The same node's configuration on a new disk (and, for PostgreSQL, a new database)."""
    database = DatabaseConfig(url or f"sqlite+aiosqlite:///{data_dir / 'citynode.sqlite3'}")
    return dataclasses.replace(config, data_dir=data_dir, database=database)


def sqlite_rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table of a SQLite database, sorted."""
    connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        tables = [
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        return {t: sorted(connection.execute(f'SELECT * FROM "{t}"'), key=repr) for t in tables}
    finally:
        connection.close()


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Each path under ``root`` with its mode and size: what a refusal must leave unchanged."""
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_size)
        for p in sorted(root.rglob("*"))
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def add_stream(node: Node, peer: str, attachment_id: bytes) -> None:
    upload = await node.attachments.open(peer, attachment_id)
    await upload.write(STREAM)
    await upload.commit()


def rewrite(source: Path, target: Path, change: Callable[[str, bytes], bytes | None]) -> None:
    """Copy an archive, passing each member's content through ``change`` (``None`` drops it)."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old:
            data = old.extractfile(member).read()  # type: ignore[union-attr]
            changed = change(member.name, data)
            if changed is not None:
                member.size = len(changed)
                new.addfile(member, io.BytesIO(changed))


def with_manifest(change: Callable[[dict[str, object]], None]) -> Callable[[str, bytes], bytes]:
    def apply(name: str, data: bytes) -> bytes:
        if name != MANIFEST_NAME:
            return data
        manifest = json.loads(data)
        change(manifest)
        return json.dumps(manifest).encode()

    return apply


# --- a backup of a node with data, taken once per module ----------------------------------------


@pytest.fixture(scope="module")
def backed_up(template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copied federation whose Stockholm node has cases, a rotated key and a stream, and its
    backup archive (taken with the node open). Returns (federation root, archive)."""
    root = tmp_path_factory.mktemp("backed-up") / "fed"
    federation = copy_federation(template, root)
    archive = root.parent / "stockholm.backup"

    async def run() -> None:
        try:
            home, receiving = await federation.open(CITY), await federation.open(PEER)
            await open_case(home, receiving, new_case_id(), accepted=True)
            await home.rotate_encryption()
            await add_stream(home, PEER, b"\x01" * 16)
            await take_backup(home.config, archive)
        finally:
            await federation.close()

    asyncio.run(run())
    return root, archive


def stockholm(root: Path) -> NodeConfig:
    return load_config(root / f"{CITY}.toml")


# --- SQLite round trip --------------------------------------------------------------------------


async def test_backup_while_serving_restores_same_rows_keys_and_streams(
    fed: Federation, tmp_path: Path
) -> None:
    home, receiving = await fed.open(CITY), await fed.open(PEER)
    await open_case(home, receiving, new_case_id(), accepted=True)
    await home.rotate_encryption()
    await add_stream(home, PEER, b"\x02" * 16)
    live_log = await home.history.load()
    archive = tmp_path / "backup.tar"
    # A writer holds an uncommitted transaction while the backup runs: it is not in the snapshot.
    writer = sqlite3.connect(home.config.data_dir / "citynode.sqlite3", isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("DELETE FROM key_log")
        summary = await take_backup(home.config, archive, clock=lambda: 1_790_000_000)
        writer.execute("ROLLBACK")
    finally:
        writer.close()
    manifest = summary.manifest
    assert (manifest.city, manifest.taken_at) == (CITY, 1_790_000_000)
    assert manifest.taken_at_iso == "2026-09-21T14:13:20Z"
    assert (manifest.key_log.size, manifest.key_log.head) == (live_log.size, live_log.head.hex())
    assert manifest.database.backend == "sqlite"
    assert mode(archive) == 0o600
    assert summary.size_bytes == archive.stat().st_size
    names = {e.path for e in manifest.files}
    assert "database/citynode.sqlite3" in names
    assert "keys/keystore.json" in names
    assert f"attachments/in/{PEER}/{'02' * 16}" in names

    target = tmp_path / "new-disk" / CITY
    config = restored_config(home.config, target)
    restored = await restore_backup(archive, config, SECRET, clock=lambda: 1_790_000_500)
    assert restored.restored_at == 1_790_000_500
    assert sqlite_rows(target / "citynode.sqlite3") == sqlite_rows(
        home.config.data_dir / "citynode.sqlite3"
    )
    stream = target / "attachments" / "in" / PEER / ("02" * 16)
    assert stream.read_bytes() == STREAM
    assert mode(target) == mode(target / "keys") == mode(stream.parent) == 0o700
    assert {mode(p) for p in (target / "keys").iterdir()} == {0o600}
    assert mode(target / "citynode.sqlite3") == mode(target / MARKER_FILE) == 0o600
    assert not [p for p in target.iterdir() if p.name.startswith(".tmp-")]

    marker = read_restore_marker(target)
    assert marker is not None
    assert (marker.city, marker.taken_at, marker.restored_at) == (
        CITY,
        1_790_000_000,
        1_790_000_500,
    )
    assert (marker.key_log_size, marker.key_log_head) == (live_log.size, live_log.head)
    assert marker.taken_at_iso == manifest.taken_at_iso

    clear_restore_marker(target)  # what the node's recovery does once it has run
    assert read_restore_marker(target) is None
    clear_restore_marker(target)  # a no-op the second time
    node = await Node.open(config, SECRET, clock=fed.clock)
    try:
        assert node.own.identity_stored == home.own.identity_stored
        assert node.keystore.keys(KeyKind.ENCRYPTION) == home.keystore.keys(KeyKind.ENCRYPTION)
        assert node.keystore.load_data_key() == home.keystore.load_data_key()
    finally:
        await node.close()


def test_cli_backup_and_restore_print_json_and_the_peers_instruction(
    backed_up: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root, _ = backed_up
    parser = argparse.ArgumentParser(prog="citynode")
    register_backup(parser.add_subparsers(dest="command", required=True))
    config_file = str(root / f"{CITY}.toml")
    archive = tmp_path / "cli.backup"

    args = parser.parse_args(["backup", "--config", config_file, "--out", str(archive), "--json"])
    assert args.handler(args) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["path"] == str(archive)
    assert written["bytes"] == archive.stat().st_size
    assert written["city"] == CITY
    assert written["key_log"]["size"] > 0

    monkeypatch.setenv(SECRET_ENV, SECRET.value.decode())
    target = tmp_path / "new-disk"
    argv = ["restore", str(archive), "--config", config_file, "--data-dir", str(target)]
    args = parser.parse_args(argv)
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    since = resend_since(written["taken_at"])  # a minute before the backup
    assert since < written["taken_at_iso"]
    assert (
        f'peers: run "citynode outbox resend --peer {CITY} --since {since} --yes" on each peer'
        in out
    )
    assert "citynode keys recover" in out
    assert written["taken_at_iso"] in out.splitlines()[0]
    assert (target / "keys" / "keystore.json").is_file()


# --- refusals: the archive ----------------------------------------------------------------------


def restore(archive: Path, config: NodeConfig, secret: OperatorSecret = SECRET) -> None:
    asyncio.run(restore_backup(archive, config, secret))


@pytest.fixture
def empty_target(backed_up: tuple[Path, Path], tmp_path: Path) -> Iterator[NodeConfig]:
    """Stockholm's configuration on a new disk; after the test, the disk must still be empty."""
    target = tmp_path / "new-disk" / CITY
    yield restored_config(stockholm(backed_up[0]), target)
    assert not target.exists(), "a refused restore left files behind"


def test_restore_of_a_file_that_is_no_tar_is_refused(
    empty_target: NodeConfig, tmp_path: Path
) -> None:
    bogus = tmp_path / "bogus.backup"
    bogus.write_bytes(os.urandom(4096))
    with pytest.raises(BackupUnreadable):
        restore(bogus, empty_target)


def test_restore_of_a_tampered_key_file_is_refused(
    backed_up: tuple[Path, Path], empty_target: NodeConfig, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered.backup"
    flip = lambda name, data: data[:-1] + bytes([data[-1] ^ 1]) if name == "keys/data.key" else data  # noqa: E731
    rewrite(backed_up[1], tampered, flip)
    with pytest.raises(BackupTampered, match=r"keys/data\.key"):
        restore(tampered, empty_target)


def test_restore_of_a_tampered_database_size_is_refused(
    backed_up: tuple[Path, Path], empty_target: NodeConfig, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered.backup"
    grow = lambda name, data: data + b"\0" if name.startswith("database/") else data  # noqa: E731
    rewrite(backed_up[1], tampered, grow)
    with pytest.raises(BackupTampered, match="bytes"):
        restore(tampered, empty_target)


def test_restore_with_a_file_missing_from_the_archive_is_refused(
    backed_up: tuple[Path, Path], empty_target: NodeConfig, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered.backup"
    rewrite(backed_up[1], tampered, lambda n, d: None if n == "keys/tls.key" else d)
    with pytest.raises(BackupTampered, match="missing"):
        restore(tampered, empty_target)


def _member(
    name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE
) -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.REGTYPE:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        else:
            info.linkname = "/etc/passwd"
            tar.addfile(info)

    return add


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../escaped", tarfile.REGTYPE),
        ("keys/../../escaped", tarfile.REGTYPE),
        ("/tmp/citynode-backup-test-absolute", tarfile.REGTYPE),
        ("keys/escaped-link", tarfile.SYMTYPE),
        ("keys/hard-link", tarfile.LNKTYPE),
        ("attachments/in", tarfile.DIRTYPE),
        ("keys/device", tarfile.CHRTYPE),
    ],
)
def test_restore_of_an_archive_with_an_unsafe_member_is_refused(
    backed_up: tuple[Path, Path], empty_target: NodeConfig, tmp_path: Path, name: str, kind: bytes
) -> None:
    evil = tmp_path / "evil.backup"
    rewrite(backed_up[1], evil, lambda n, d: d)
    with tarfile.open(evil, "a") as tar:
        _member(name, kind=kind)(tar)
    with pytest.raises(UnsafeMember):
        restore(evil, empty_target)
    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/citynode-backup-test-absolute").exists()


def test_restore_of_an_unlisted_path_in_the_manifest_is_refused(
    backed_up: tuple[Path, Path], empty_target: NodeConfig, tmp_path: Path
) -> None:
    evil = tmp_path / "evil.backup"

    def traverse(manifest: dict[str, object]) -> None:
        files = manifest["files"]
        assert isinstance(files, list)
        files[0]["path"] = "../../escaped"

    rewrite(backed_up[1], evil, with_manifest(traverse))
    with pytest.raises(UnsafeMember):
        restore(evil, empty_target)


@pytest.mark.parametrize(("field", "value"), [("version", 2), ("format", "other-backup")])
def test_restore_of_an_unknown_format_version_is_refused(
    backed_up: tuple[Path, Path],
    empty_target: NodeConfig,
    tmp_path: Path,
    field: str,
    value: object,
) -> None:
    newer = tmp_path / "newer.backup"
    rewrite(backed_up[1], newer, with_manifest(lambda m: m.__setitem__(field, value)))
    with pytest.raises(UnknownBackupFormat):
        restore(newer, empty_target)


def test_restore_of_a_newer_schema_revision_is_refused(
    backed_up: tuple[Path, Path], empty_target: NodeConfig, tmp_path: Path
) -> None:
    newer = tmp_path / "newer.backup"

    def bump(manifest: dict[str, object]) -> None:
        database = manifest["database"]
        assert isinstance(database, dict)
        database["schema_revision"] = "r9999_from_the_future"

    rewrite(backed_up[1], newer, with_manifest(bump))
    with pytest.raises(RestoreSchemaUnknown):
        restore(newer, empty_target)


# --- refusals: the target -----------------------------------------------------------------------


def test_restore_onto_a_data_dir_holding_a_node_is_refused(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    root = tmp_path / "fed"
    copy_federation(backed_up[0], root)
    config = stockholm(root)
    before = tree(config.data_dir)
    with pytest.raises(RestoreTargetInUse):
        restore(backed_up[1], config)
    assert tree(config.data_dir) == before


def test_restore_onto_a_data_dir_with_only_a_database_is_refused(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    target = tmp_path / "disk"
    target.mkdir(mode=0o700)
    (target / "citynode.sqlite3").write_bytes(b"")
    with pytest.raises(RestoreTargetInUse):
        restore(backed_up[1], restored_config(stockholm(backed_up[0]), target))
    assert [p.name for p in target.iterdir()] == ["citynode.sqlite3"]


def test_restore_into_an_existing_empty_data_dir_keeps_it(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    target = tmp_path / "mounted-disk"
    target.mkdir(mode=0o700)
    restore(backed_up[1], restored_config(stockholm(backed_up[0]), target))
    assert {p.name for p in target.iterdir()} == {
        "keys", "attachments", "citynode.sqlite3", MARKER_FILE
    }  # fmt: skip


def test_restore_of_another_citys_backup_is_refused(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    target = tmp_path / "disk"
    config = restored_config(load_config(backed_up[0] / f"{PEER}.toml"), target)
    with pytest.raises(RestoreWrongCity):
        restore(backed_up[1], config)
    assert not target.exists()


def test_restore_of_a_sqlite_backup_into_postgresql_is_refused(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    target = tmp_path / "disk"
    config = restored_config(stockholm(backed_up[0]), target, "postgresql+asyncpg://u@h/db")
    with pytest.raises(RestoreBackendMismatch):
        restore(backed_up[1], config)
    assert not target.exists()


def test_restore_with_the_wrong_secret_is_refused_and_leaves_nothing(
    backed_up: tuple[Path, Path], empty_target: NodeConfig
) -> None:
    with pytest.raises(WrongSecret):
        restore(backed_up[1], empty_target, OperatorSecret(b"not the operator secret at all"))


# --- refusals: backup ---------------------------------------------------------------------------


def test_backup_never_overwrites_an_existing_file(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "precious"
    out.write_bytes(b"do not touch")
    with pytest.raises(BackupExists):
        asyncio.run(take_backup(stockholm(backed_up[0]), out))
    assert out.read_bytes() == b"do not touch"
    assert [p.name for p in tmp_path.iterdir()] == ["precious"]


def test_backup_of_a_key_file_that_is_not_sealed_is_refused(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    root = tmp_path / "fed"
    copy_federation(backed_up[0], root)
    config = stockholm(root)
    noise = next((config.data_dir / "keys").glob("encryption-*.key"))
    noise.write_bytes(os.urandom(76))  # what a destroy leaves for a moment, had it stopped there
    with pytest.raises(BackupError, match="not a sealed key file"):
        asyncio.run(take_backup(config, tmp_path / "out.backup"))
    assert not (tmp_path / "out.backup").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["fed"]


def test_backup_of_postgresql_without_pg_dump_is_refused(
    backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    config = stockholm(backed_up[0])
    config = dataclasses.replace(config, database=DatabaseConfig("postgresql+asyncpg://u@h/db"))
    missing = PgTools(pg_dump="citynode-test-no-such-pg_dump")
    with pytest.raises(BackupToolMissing, match="not installed"):
        asyncio.run(take_backup(config, tmp_path / "out.backup", tools=missing))
    assert not (tmp_path / "out.backup").exists()


def test_libpq_target_keeps_the_password_off_the_command_line() -> None:
    url, env = libpq_target("postgresql+asyncpg://node:s3cret@db.example:5433/city?ssl=require")
    assert url == "postgresql://node@db.example:5433/city?sslmode=require"
    assert env["PGPASSWORD"] == "s3cret"


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture
async def pg_target() -> AsyncIterator[str]:
    """An empty database of our own on the test server (dropped afterwards); its URL."""
    base = make_url(pg_url_or_skip())
    name = f"citynode_backup_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def pg_rows(url: str) -> dict[str, list[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            tables = (
                await connection.scalars(
                    text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
                )
            ).all()
            return {
                t: sorted(
                    repr(tuple(r)) for r in await connection.execute(text(f'SELECT * FROM "{t}"'))
                )
                for t in tables
            }
    finally:
        await engine.dispose()


async def test_postgresql_backup_while_serving_restores_into_an_empty_database(
    tmp_path: Path, pg_target: str
) -> None:
    async with fresh_federation(tmp_path / "fed", (CITY, PEER), backend="postgresql") as fed:
        home, receiving = await fed.open(CITY), await fed.open(PEER)
        await open_case(home, receiving, new_case_id(), accepted=True)
        await home.rotate_encryption()
        archive = tmp_path / "pg.backup"
        summary = await take_backup(home.config, archive)
        live_log = await home.history.load()
        assert summary.manifest.database.backend == "postgresql"
        assert summary.manifest.key_log.size == live_log.size
        assert "database/citynode.pgdump" in {e.path for e in summary.manifest.files}

        target = tmp_path / "new-disk"
        config = restored_config(home.config, target, pg_target)
        await restore_backup(archive, config, SECRET)
        assert await pg_rows(pg_target) == await pg_rows(home.config.database.url)
        marker = read_restore_marker(target)
        assert marker is not None
        assert marker.key_log_head == live_log.head
        clear_restore_marker(target)
        node = await Node.open(config, SECRET, clock=fed.clock)
        try:
            assert node.own.identity_stored == home.own.identity_stored
            assert node.keystore.load_data_key() == home.keystore.load_data_key()
        finally:
            await node.close()

        # The same database again (now holding the node): refused, nothing changed.
        again = restored_config(home.config, tmp_path / "another-disk", pg_target)
        with pytest.raises(RestoreDatabaseNotEmpty):
            await restore_backup(archive, again, SECRET)
        assert not (tmp_path / "another-disk").exists()
