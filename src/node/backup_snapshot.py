"""The database part of a backup: a consistent snapshot out, and back in on restore.

Owns how each backend's database leaves and re-enters a node (:mod:`node.backup` owns the rest
of ``backup`` and ``restore``). Invariants:

* SQLite is copied by ``VACUUM INTO`` from a read-only connection: one read transaction, so it
  neither blocks the node's writers nor sees half a transaction; the live files are never copied.
* PostgreSQL is copied by ``pg_dump --format=custom --no-owner`` importing a snapshot exported
  by a read-only ``REPEATABLE READ`` transaction, in which the schema revision and the key log
  are read too: the manifest describes exactly the dumped state. ``pg_restore`` loads a dump in
  one transaction (``--single-transaction --exit-on-error``): all of it or nothing.
* A restored database holding code (SQLite triggers or views; PostgreSQL triggers, rules, views,
  functions other than an extension's, event triggers, row policies) is refused: a node's schema
  has none, and the archive is not signed. This cannot undo what a forged dump's SQL did while
  ``pg_restore`` ran it with the node's database rights: restore only archives kept where only
  operators can write.
* The key-history log of a snapshot is decoded and its hash chain verified before it is named
  in a manifest: a broken log is not backed up as if it were sound.
* Database passwords never reach a command line, a log or an error: the client programs get a
  libpq URL without it and the password in ``PGPASSWORD``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from node.backup_archive import PGDUMP_MEMBER, SQLITE_MEMBER, BackupError, BackupTampered
from node.storage.database import Database, StorageError
from protocol import codec
from protocol.keylog import KeyLog, KeyLogEntry
from protocol.limits import Limits

SQLITE_BACKEND: Final = "sqlite"
POSTGRES_BACKEND: Final = "postgresql"
_REVISION_SQL: Final = "SELECT version_num FROM alembic_version"
_KEY_LOG_SQL: Final = 'SELECT entry FROM key_log ORDER BY "index"'
_USER_RELATIONS_SQL: Final = (
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)
# Code a node's schema never holds: a restored database carrying some would run it in the node.
_SQLITE_CODE_SQL: Final = "SELECT count(*) FROM sqlite_master WHERE type IN ('trigger', 'view')"
_POSTGRES_CODE_SQL: Final = (
    "SELECT (SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal)"
    " + (SELECT count(*) FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))"
    " + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT EXISTS (SELECT 1"
    " FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid"
    " AND d.deptype = 'e'))"
    " + (SELECT count(*) FROM pg_event_trigger) + (SELECT count(*) FROM pg_policy)"
)
_PLANTED: Final = (
    "the archive's database holds triggers, rules, views or functions, which a node's never "
    "does: it was not written by citynode backup"
)
_TOOL_MESSAGE_CHARS: Final = 300
_LIBPQ_PARAMETERS: Final = frozenset(
    {
        "host",
        "port",
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "connect_timeout",
        "application_name",
        "target_session_attrs",
        "options",
    }
)


# --- errors -------------------------------------------------------------------------------------


class BackupToolMissing(BackupError):
    """``pg_dump`` or ``pg_restore`` is not installed (or not on ``PATH``)."""

    code: ClassVar[str] = "backup_tool_missing"


class BackupToolFailed(BackupError):
    """``pg_dump`` or ``pg_restore`` ended with an error."""

    code: ClassVar[str] = "backup_tool_failed"


class RestoreDatabaseNotEmpty(BackupError):
    """The configured PostgreSQL database holds tables already."""

    code: ClassVar[str] = "restore_database_not_empty"


# --- snapshots ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PgTools:
    """The PostgreSQL client programs, by name or path (tests name missing ones)."""

    pg_dump: str = "pg_dump"
    pg_restore: str = "pg_restore"

    @staticmethod
    def find(name: str) -> str:
        """Return the program's path.

        Raises:
            BackupToolMissing: it is not installed.
        """
        found = shutil.which(name)
        if found is None:
            raise BackupToolMissing(
                f"{name} is not installed (or not on PATH): install the PostgreSQL client "
                "programs of the server's major version or newer"
            )
        return found


DEFAULT_PG_TOOLS: Final = PgTools()
"""``pg_dump`` and ``pg_restore`` as found on ``PATH``."""


@dataclass(frozen=True)
class Snapshot:
    """A database snapshot in a work folder: its archive member name, file, revision, key log."""

    member: str
    path: Path
    revision: str
    key_log: KeyLog


def snapshot_sqlite(db_path: Path, work: Path, limits: Limits) -> Snapshot:
    """``VACUUM INTO`` a file in ``work`` from a read-only connection, then read it back.

    Raises:
        StorageError: no database file, or SQLite failed (locked past the timeout, damaged).
        ProtocolError: the snapshot's key-history log does not verify.
    """
    if not db_path.is_file():
        raise StorageError(f"no database file at {db_path}")
    target = work / "citynode.sqlite3"
    try:
        live = sqlite3.connect(f"{db_path.as_uri()}?mode=ro", uri=True, timeout=10.0)
        with contextlib.closing(live):
            live.execute("VACUUM INTO ?", (str(target),))
        snap = sqlite3.connect(f"{target.as_uri()}?mode=ro&immutable=1", uri=True)
        with contextlib.closing(snap):
            revision = one_revision([row[0] for row in snap.execute(_REVISION_SQL)])
            rows = [bytes(row[0]) for row in snap.execute(_KEY_LOG_SQL)]
    except sqlite3.Error as e:  # messages name the failure (locked, no such table), no values
        raise StorageError(f"database {db_path}: snapshot failed: {e}") from e
    return Snapshot(SQLITE_MEMBER, target, revision, key_log_of(rows, limits))


def one_revision(revisions: Sequence[object]) -> str:
    """The one Alembic revision a node's database holds.

    Raises:
        StorageError: none (not a node's database), or more than one.
    """
    if len(revisions) != 1:
        raise StorageError("the database has no schema revision: is it a node's database?")
    return str(revisions[0])


def key_log_of(rows: Sequence[bytes], limits: Limits) -> KeyLog:
    """Decode and verify the key-history log of a snapshot (a broken chain is not backed up)."""
    entries = [codec.decode(r, KeyLogEntry, max_bytes=len(r), what="key log entry") for r in rows]
    return KeyLog.from_entries(entries, limits=limits)


async def snapshot_postgres(url: str, work: Path, limits: Limits, tools: PgTools) -> Snapshot:
    """``pg_dump`` the snapshot of a transaction that reads the manifest's facts meanwhile.

    Raises:
        BackupToolMissing, BackupToolFailed: ``pg_dump`` is missing or failed.
        StorageError: the database cannot be reached or read.
        ProtocolError: the snapshot's key-history log does not verify.
    """
    pg_dump = tools.find(tools.pg_dump)
    target = work / "citynode.pgdump"
    libpq, env = libpq_target(url)
    db = await Database.connect(url)
    try:
        engine = db.engine.execution_options(isolation_level="REPEATABLE READ")
        async with engine.connect() as connection, connection.begin():
            await connection.execute(text("SET TRANSACTION READ ONLY"))
            snapshot_id = await connection.scalar(text("SELECT pg_export_snapshot()"))
            revision = one_revision((await connection.scalars(text(_REVISION_SQL))).all())
            rows = [bytes(r) for r in (await connection.scalars(text(_KEY_LOG_SQL))).all()]
            # The exported snapshot lives as long as this transaction: dump before it ends.
            await run_tool(
                [
                    pg_dump,
                    "--format=custom",
                    "--no-owner",
                    f"--snapshot={snapshot_id}",
                    f"--file={target}",
                    f"--dbname={libpq}",
                ],
                env,
            )
    except SQLAlchemyError as e:
        raise StorageError(
            f"database {db.redacted_url}: snapshot failed: {type(e).__name__}"
        ) from e
    finally:
        await db.close()
    return Snapshot(PGDUMP_MEMBER, target, revision, key_log_of(rows, limits))


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """Turn the node's SQLAlchemy URL into a libpq URL without its password, and an environment
    carrying the password (``PGPASSWORD``) for ``pg_dump`` and ``pg_restore``.

    asyncpg's ``ssl`` parameter becomes libpq's ``sslmode``; parameters libpq does not know
    are left out.
    """
    parsed = make_url(url)
    query: dict[str, str] = {}
    for key, value in parsed.query.items():
        first = value if isinstance(value, str) else value[0]
        if key == "ssl":
            query["sslmode"] = {"true": "require"}.get(first.lower(), first)
        elif key in _LIBPQ_PARAMETERS:
            query[key] = first
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    # URL.set(password=None) would keep the password: build the URL anew without it.
    bare = URL.create(
        "postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=query,
    )
    return bare.render_as_string(hide_password=False), env


async def run_tool(argv: list[str], env: dict[str, str]) -> None:
    """Run a PostgreSQL client program; its last line of stderr explains a failure."""
    name = Path(argv[0]).name
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await process.communicate()
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        why = lines[-1][:_TOOL_MESSAGE_CHARS] if lines else "no message"
        raise BackupToolFailed(f"{name} failed (exit {process.returncode}): {why}")


async def check_postgres_empty(url: str) -> None:
    """Refuse a PostgreSQL database that holds any table, view or sequence outside the system
    schemas.

    Raises:
        RestoreDatabaseNotEmpty: it holds some.
        StorageError: it cannot be reached.
    """
    relations, redacted = await _count(url, _USER_RELATIONS_SQL)
    if relations:
        raise RestoreDatabaseNotEmpty(
            f"database {redacted} holds {relations} table(s) or other relation(s): "
            "restore into an empty database (create a new one)"
        )


async def restore_postgres_dump(pg_restore: str, url: str, dump: Path) -> None:
    """Load a ``pg_dump`` archive into the (empty) database of ``url``, in one transaction.

    Raises:
        BackupToolFailed: ``pg_restore`` failed; the database is as it was.
    """
    libpq, env = libpq_target(url)
    await run_tool(
        [
            pg_restore,
            "--no-owner",
            "--no-acl",
            "--single-transaction",
            "--exit-on-error",
            f"--dbname={libpq}",
            str(dump),
        ],
        env,
    )


def check_sqlite_holds_no_code(path: Path) -> None:
    """Refuse a restored SQLite database holding triggers or views (a node's never does).

    Raises:
        BackupTampered: it holds some, or it is not a SQLite database.
    """
    try:
        snap = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        with contextlib.closing(snap):
            found = snap.execute(_SQLITE_CODE_SQL).fetchone()[0]
    except sqlite3.Error as e:
        raise BackupTampered(f"the archive's database is not a SQLite database: {e}") from e
    if found:
        raise BackupTampered(_PLANTED)


async def check_postgres_holds_no_code(url: str) -> None:
    """Refuse a restored PostgreSQL database holding triggers, rules, views, functions (other
    than an extension's), event triggers or row policies: a node's never does, and the node
    would run them with its rights. What ``pg_restore`` itself ran is done by then.

    Raises:
        BackupTampered: it holds some (drop the database and create it anew).
        StorageError: it cannot be reached.
    """
    found, redacted = await _count(url, _POSTGRES_CODE_SQL)
    if found:
        raise BackupTampered(
            f"{_PLANTED}; database {redacted} now holds it: drop it and create it anew"
        )


async def _count(url: str, sql: str) -> tuple[int, str]:
    """Run one counting query on the database at ``url``; the count and the URL as shown.

    Raises:
        StorageError: it cannot be reached.
    """
    db = await Database.connect(url)
    try:
        async with db.reading() as session:
            return int(await session.scalar(text(sql)) or 0), db.redacted_url
    finally:
        await db.close()
