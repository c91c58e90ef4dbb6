"""Backing up a node while it serves, and restoring it onto an empty disk.

Owns ``citynode backup`` and ``citynode restore`` (the archive format is
:mod:`node.backup_archive`) and the restore marker ``<data_dir>/restored.json``. Invariants:

* The database is copied as a consistent snapshot, never as live files, and the manifest's
  schema revision and key-history log are read from that snapshot (:mod:`node.backup_snapshot`:
  SQLite ``VACUUM INTO``, PostgreSQL ``pg_dump`` of an exported snapshot).
* The snapshot is taken first, then the key files, then the attachment streams: files only ever
  get added, so the archive holds every key and stream the snapshot refers to (a key destroyed,
  or a stream shredded, in between is the one exception: it was past its use already).
* ``backup`` decrypts nothing and needs no operator secret: the key files go in sealed as they
  are; attachment streams are encrypted already.
* ``restore`` refuses, changing nothing, before it writes a byte: an archive with an unsafe or
  unlisted member or an unknown format, another city's archive, another backend's, a newer
  schema, a data directory that holds a node, a PostgreSQL database that is not empty. It then
  extracts into a ``0700`` staging folder inside the data directory, checking every hash, opens
  the keystore with the operator secret, loads the database (``pg_restore`` in one transaction),
  refuses it if it holds triggers, rules, views or functions (a node's never does: the archive
  is not signed, and such code would run inside the node), migrates it as ``serve`` would and
  checks its key-history log against the manifest; only then
  are the files moved into place — the marker first, the keys last, so a node can never start
  from a half-restored directory without the marker. A failure before the move removes the
  staging folder (and the data directory when the restore created it).
* The marker tells the node (on its next start) that it came back from a backup: what it sent
  and received after ``taken_at`` is lost, and its peers must send it again.
* Work files (the snapshot before it is archived, the staged restore) live in ``0700`` folders
  beside their destination and are removed on success and on failure.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Final

import msgspec
from sqlalchemy.engine import make_url

from node.backup_archive import FORMAT_NAME as ARCHIVE_FORMAT
from node.backup_archive import FORMAT_VERSION as ARCHIVE_VERSION
from node.backup_archive import (
    PGDUMP_MEMBER,
    SQLITE_MEMBER,
    ArchiveWriter,
    BackupError,
    BackupExists,
    BackupTampered,
    CheckedArchive,
    DatabaseInfo,
    KeyLogState,
    Manifest,
    is_member_name,
    open_archive,
    write_archive,
)
from node.backup_snapshot import (
    DEFAULT_PG_TOOLS,
    POSTGRES_BACKEND,
    SQLITE_BACKEND,
    PgTools,
    check_postgres_empty,
    check_postgres_holds_no_code,
    check_sqlite_holds_no_code,
    restore_postgres_dump,
    snapshot_postgres,
    snapshot_sqlite,
)
from node.config import NodeConfig
from node.key_history import KeyHistory
from node.keystore import KEYS_DIR, MAX_KEY_FILE_BYTES, Keystore, KeystoreNotFound
from node.keystore import MAGIC as KEY_FILE_MAGIC
from node.private_files import TEMP_PREFIX, check_private, fsync_dir, read_private, write_private
from node.secrets_source import OperatorSecret
from node.storage.database import Database, StorageError, known_revisions

logger = logging.getLogger(__name__)

MARKER_FILE: Final = "restored.json"
ATTACHMENTS_DIR: Final = "attachments"
MAX_MARKER_BYTES: Final = 64 * 1024
_DESTROY_WAIT_TRIES: Final = 20
_DESTROY_WAIT_S: Final = 0.05
_MARKER_VERSION: Final = 1


# --- errors -------------------------------------------------------------------------------------


class RestoreTargetInUse(BackupError):
    """The data directory (or the configured SQLite file) already holds a node."""

    code: ClassVar[str] = "restore_target_in_use"


class RestoreWrongCity(BackupError):
    """The archive is another city's."""

    code: ClassVar[str] = "restore_wrong_city"


class RestoreBackendMismatch(BackupError):
    """The archive's database backend is not the configured one (SQLite vs PostgreSQL)."""

    code: ClassVar[str] = "restore_backend_mismatch"


class RestoreSchemaUnknown(BackupError):
    """The archive's schema revision was made by a newer citynode."""

    code: ClassVar[str] = "restore_schema_unknown"


class RestoreMarkerCorrupt(BackupError):
    """``restored.json`` is damaged."""

    code: ClassVar[str] = "restore_marker_corrupt"


# --- records ------------------------------------------------------------------------------------


def iso_utc(unix_s: int) -> str:
    """``2026-11-27T19:00:00Z``: Unix seconds as ISO 8601 in UTC."""
    return datetime.datetime.fromtimestamp(unix_s, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class BackupSummary:
    """What ``backup`` wrote: the archive, its size and its manifest."""

    path: Path
    size_bytes: int
    manifest: Manifest


@dataclass(frozen=True)
class RestoreSummary:
    """What ``restore`` did: the manifest restored, when, and the schema revision now."""

    data_dir: Path
    manifest: Manifest
    restored_at: int
    schema_revision: str


@dataclass(frozen=True, slots=True)
class RestoreMarker:
    """``restored.json``: the node came back from a backup and lost what followed ``taken_at``.

    Attributes:
        city: the node's city.
        taken_at: when the backup was taken (Unix seconds).
        key_log_size: the key-history log's size in the backup.
        key_log_head: its head hash.
        restored_at: when it was restored (Unix seconds).
    """

    city: str
    taken_at: int
    key_log_size: int
    key_log_head: bytes
    restored_at: int

    @property
    def taken_at_iso(self) -> str:
        """``taken_at`` as ISO 8601 UTC."""
        return iso_utc(self.taken_at)


_Unix = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
_Head = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]


class _MarkerFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: int
    city: str
    taken_at: _Unix
    taken_at_iso: str
    key_log_size: _Unix
    key_log_head: _Head
    restored_at: _Unix
    restored_at_iso: str


# --- backup -------------------------------------------------------------------------------------


async def take_backup(
    config: NodeConfig,
    out: Path,
    *,
    clock: Callable[[], float] = time.time,
    tools: PgTools = DEFAULT_PG_TOOLS,
) -> BackupSummary:
    """Write one archive of the node: database snapshot, key files, attachments, manifest.

    Args:
        config: the node's configuration (it may be serving).
        out: the archive to create; must not exist.
        clock: Unix seconds now (``taken_at``, read just before the snapshot).
        tools: the PostgreSQL client programs.

    Returns:
        The archive's path, size and manifest.

    Raises:
        KeystoreNotFound: no node in the data directory.
        BackupExists: ``out`` exists.
        BackupToolMissing, BackupToolFailed: ``pg_dump`` is missing or failed.
        StorageError: the database could not be read.
        InsecurePermissions: a key file is open to other users or a link.
    """
    if not Keystore.exists(config.data_dir):
        raise KeystoreNotFound(f"no node in {config.data_dir}: nothing to back up")
    out = out.absolute()
    if out.exists() or out.is_symlink():
        raise BackupExists(f"{out} exists; a backup never overwrites a file")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} is not a directory: create it first")
    limits = config.limits.protocol
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=TEMP_PREFIX) as work:
        taken_at = int(clock())
        if config.database.is_sqlite:
            snapshot = snapshot_sqlite(_sqlite_path(config), Path(work), limits)
        else:
            snapshot = await snapshot_postgres(config.database.url, Path(work), limits, tools)
        with write_archive(out, taken_at) as archive:
            archive.add_file(snapshot.member, snapshot.path)
            _add_keys(archive, config.data_dir)
            _add_attachments(archive, config.data_dir)
            backend = SQLITE_BACKEND if config.database.is_sqlite else POSTGRES_BACKEND
            manifest = Manifest(
                format=ARCHIVE_FORMAT,
                version=ARCHIVE_VERSION,
                city=config.city,
                taken_at=taken_at,
                taken_at_iso=iso_utc(taken_at),
                database=DatabaseInfo(backend, snapshot.revision, snapshot.member),
                key_log=KeyLogState(snapshot.key_log.size, snapshot.key_log.head.hex()),
                files=tuple(archive.entries),
            )
            archive.add_manifest(manifest)
    logger.info("backup of %s written to %s", config.city, out)
    return BackupSummary(out, out.stat().st_size, manifest)


def _sqlite_path(config: NodeConfig) -> Path:
    database = make_url(config.database.url).database
    if not database:  # pragma: no cover - config refuses a SQLite URL without a path
        raise StorageError("the SQLite URL names no file")
    return Path(database)


def _add_keys(archive: ArchiveWriter, data_dir: Path) -> None:
    """Add every key file, as sealed on disk (read with the keystore's own rules)."""
    directory = data_dir / KEYS_DIR
    check_private(data_dir, is_dir=True)
    check_private(directory, is_dir=True)
    for entry in sorted(directory.iterdir()):
        name = f"{KEYS_DIR}/{entry.name}"
        if entry.name.startswith(TEMP_PREFIX):
            continue  # a write in progress or a crash's leftover, never a key
        if not is_member_name(name):
            logger.warning("backup: ignoring unexpected file %s in the keystore", entry.name)
            continue
        data = _read_key_file(entry)
        if data is not None:
            archive.add_bytes(name, data)


def _read_key_file(path: Path) -> bytes | None:
    """A key file's bytes, or ``None`` when the running node destroyed it meanwhile.

    ``Keystore.destroy`` overwrites a file with random bytes before unlinking it: a read in
    between would put noise in the archive that no restore can open. A sealed key file starts
    with the keystore's magic; one that does not is waited on until it is gone.
    """
    for _ in range(_DESTROY_WAIT_TRIES):
        try:
            data = read_private(path, max_bytes=MAX_KEY_FILE_BYTES)
        except FileNotFoundError:
            return None  # destroyed since it was listed
        except ValueError as e:
            raise BackupError(f"{path} is larger than any key file") from e
        if not path.name.endswith(".key") or data.startswith(KEY_FILE_MAGIC):
            return data
        time.sleep(_DESTROY_WAIT_S)
    raise BackupError(f"{path} is not a sealed key file: the keystore is damaged")


def _add_attachments(archive: ArchiveWriter, data_dir: Path) -> None:
    """Add every complete attachment stream (``attachments/(in|out)/<peer>/<id>``)."""
    root = data_dir / ATTACHMENTS_DIR
    for direction in ("in", "out"):
        base = root / direction
        if not base.is_dir() or base.is_symlink():
            continue
        for peer in sorted(base.iterdir()):
            for entry in sorted(peer.iterdir()) if peer.is_dir() and not peer.is_symlink() else ():
                name = f"{ATTACHMENTS_DIR}/{direction}/{peer.name}/{entry.name}"
                if entry.name.startswith(TEMP_PREFIX):
                    continue  # an upload in progress: not received yet
                if not is_member_name(name) or entry.is_symlink() or not entry.is_file():
                    logger.warning("backup: ignoring unexpected entry %s", name)
                    continue
                with contextlib.suppress(FileNotFoundError):  # shredded since it was listed
                    archive.add_file(name, entry)


# --- restore ------------------------------------------------------------------------------------


async def restore_backup(
    archive_path: Path,
    config: NodeConfig,
    secret: OperatorSecret,
    *,
    clock: Callable[[], float] = time.time,
    tools: PgTools = DEFAULT_PG_TOOLS,
) -> RestoreSummary:
    """Restore a node from an archive into its configured, empty, data directory (and database).

    Args:
        archive_path: the archive ``backup`` wrote.
        config: the node's configuration (city, data directory, database).
        secret: the operator secret that opens the archive's keystore.
        clock: Unix seconds now (``restored_at``).
        tools: the PostgreSQL client programs.

    Returns:
        The manifest restored, when, and the schema revision after migrating.

    Raises:
        BackupUnreadable, UnknownBackupFormat, UnsafeMember, BackupTampered: the archive.
        RestoreWrongCity, RestoreBackendMismatch, RestoreSchemaUnknown: it does not fit.
        RestoreTargetInUse, RestoreDatabaseNotEmpty: the target holds a node or data.
        WrongSecret, KeystoreError: the keystore does not open with ``secret``.
        BackupToolMissing, BackupToolFailed: ``pg_restore`` is missing or failed.
    """
    with open_archive(archive_path) as archive:
        manifest = archive.manifest
        _check_fits(manifest, config)
        sqlite_path = _sqlite_path(config) if config.database.is_sqlite else None
        _check_target_free(config.data_dir, sqlite_path)
        pg_restore = None
        if sqlite_path is None:
            pg_restore = tools.find(tools.pg_restore)
            await check_postgres_empty(config.database.url)
        created = not config.data_dir.exists()
        config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=config.data_dir, prefix=f"{TEMP_PREFIX}restore-"))
        try:
            _extract(archive, staging)
            Keystore.open(staging, secret)  # a wrong secret or a damaged key stops here
            revision = await _load_database(config, manifest, staging, pg_restore)
            restored_at = int(clock())
            _place(config, manifest, staging, sqlite_path, restored_at)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                shutil.rmtree(config.data_dir, ignore_errors=True)
            raise
    logger.info("restored %s from the backup taken at %s", config.city, manifest.taken_at_iso)
    return RestoreSummary(config.data_dir, manifest, restored_at, revision)


def _check_fits(manifest: Manifest, config: NodeConfig) -> None:
    if manifest.city != config.city:
        raise RestoreWrongCity(
            f"the archive is a backup of {manifest.city}; this configuration is {config.city}'s"
        )
    backend = SQLITE_BACKEND if config.database.is_sqlite else POSTGRES_BACKEND
    member = SQLITE_MEMBER if manifest.database.backend == SQLITE_BACKEND else PGDUMP_MEMBER
    if manifest.database.backend != backend:
        raise RestoreBackendMismatch(
            f"the archive holds a {manifest.database.backend} database; this node is configured "
            f"for {backend}"
        )
    databases = {e.path for e in manifest.files if e.path.startswith("database/")}
    if manifest.database.member != member or databases != {member}:
        raise BackupTampered(f"the archive's manifest does not name its database as {member}")
    if manifest.database.schema_revision not in known_revisions():
        raise RestoreSchemaUnknown(
            f"the archive's database is at schema revision {manifest.database.schema_revision!r}, "
            "made by a newer citynode: restore with that version or a newer one"
        )


def _check_target_free(data_dir: Path, sqlite_path: Path | None) -> None:
    """Refuse a data directory (or SQLite file) that holds a node, or that others can reach."""
    taken = [data_dir / name for name in (KEYS_DIR, ATTACHMENTS_DIR, MARKER_FILE)]
    if sqlite_path is not None:
        taken += [sqlite_path, sqlite_path.with_name(sqlite_path.name + "-wal")]
    found = [path for path in taken if path.exists() or path.is_symlink()]
    if found:
        raise RestoreTargetInUse(
            f"{found[0]} exists: the target already holds a node. Restore into an empty data "
            "directory (move the old one aside first)"
        )
    if data_dir.exists() or data_dir.is_symlink():
        check_private(data_dir, is_dir=True)


def _extract(archive: CheckedArchive, staging: Path) -> None:
    """Write every member under ``staging`` (directories ``0700``, files ``0600``).

    Member names passed the archive's whitelist, so each part is a plain name; the database
    goes to the top of ``staging``.
    """
    for entry in archive.manifest.files:
        parts = entry.path.split("/")
        folder = staging
        if parts[0] != "database":
            for part in parts[:-1]:
                folder = folder / part
                folder.mkdir(mode=0o700, exist_ok=True)
        archive.extract_to(entry.path, folder / parts[-1])


async def _load_database(
    config: NodeConfig, manifest: Manifest, staging: Path, pg_restore: str | None
) -> str:
    """Load the snapshot, migrate it as ``serve`` does, and check its key log; the revision."""
    if pg_restore is None:
        url = f"sqlite+aiosqlite:///{staging / Path(SQLITE_MEMBER).name}"
        check_sqlite_holds_no_code(staging / Path(SQLITE_MEMBER).name)
    else:
        url = config.database.url
        dump = staging / Path(PGDUMP_MEMBER).name
        await restore_postgres_dump(pg_restore, url, dump)
        dump.unlink()
        await check_postgres_holds_no_code(url)
    db = await Database.connect(url)
    try:
        _, revision = await db.migrate()
        log = await KeyHistory(db, config.limits.protocol).load()
    finally:
        await db.close()
    if (log.size, log.head.hex()) != (manifest.key_log.size, manifest.key_log.head):
        raise BackupTampered(
            f"the restored key-history log (size {log.size}) is not the one the manifest names "
            f"(size {manifest.key_log.size})"
        )
    return revision


def _place(
    config: NodeConfig,
    manifest: Manifest,
    staging: Path,
    sqlite_path: Path | None,
    restored_at: int,
) -> None:
    """Move the staged node into the data directory: marker first, database, streams, keys last."""
    data_dir = config.data_dir
    marker = _MarkerFile(
        version=_MARKER_VERSION,
        city=manifest.city,
        taken_at=manifest.taken_at,
        taken_at_iso=iso_utc(manifest.taken_at),
        key_log_size=manifest.key_log.size,
        key_log_head=manifest.key_log.head,
        restored_at=restored_at,
        restored_at_iso=iso_utc(restored_at),
    )
    write_private(data_dir / MARKER_FILE, msgspec.json.encode(marker), replace=False)
    if sqlite_path is not None:
        staged = staging / Path(SQLITE_MEMBER).name
        Path(f"{staged}-shm").unlink(missing_ok=True)  # rebuilt by the next connection
        for suffix in ("", "-wal"):
            source = Path(f"{staged}{suffix}")
            if source.exists():
                shutil.move(source, f"{sqlite_path}{suffix}")
    for name in (ATTACHMENTS_DIR, KEYS_DIR):
        if (staging / name).exists():
            (staging / name).rename(data_dir / name)
    shutil.rmtree(staging)  # empty by now; nothing in it is kept
    fsync_dir(data_dir)


# --- the marker ---------------------------------------------------------------------------------


def read_restore_marker(data_dir: Path) -> RestoreMarker | None:
    """Return the restore marker of ``data_dir``, or ``None`` when the node was not restored
    (or the marker was cleared).

    Raises:
        RestoreMarkerCorrupt: the marker is damaged.
        InsecurePermissions: it is open to other users, a link, or not ours.
    """
    path = Path(data_dir) / MARKER_FILE
    try:
        data = read_private(path, max_bytes=MAX_MARKER_BYTES)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise RestoreMarkerCorrupt(f"{path} is larger than any restore marker") from e
    try:
        marker = msgspec.json.decode(data, type=_MarkerFile)
    except msgspec.DecodeError as e:
        raise RestoreMarkerCorrupt(f"{path} is damaged: {e}") from e
    if marker.version != _MARKER_VERSION:
        raise RestoreMarkerCorrupt(f"{path} is of an unknown version {marker.version}")
    return RestoreMarker(
        city=marker.city,
        taken_at=marker.taken_at,
        key_log_size=marker.key_log_size,
        key_log_head=bytes.fromhex(marker.key_log_head),
        restored_at=marker.restored_at,
    )


def clear_restore_marker(data_dir: Path) -> None:
    """Remove the restore marker (a no-op without one), durably."""
    path = Path(data_dir) / MARKER_FILE
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
