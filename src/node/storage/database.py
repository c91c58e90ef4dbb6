"""The node's database: the async engine, transactions, migrations and the health check.

Owns the connection to the one database of a node (nothing is shared between cities): SQLite
(aiosqlite) in the data directory by default, PostgreSQL (asyncpg) by URL. Invariants:

* SQLite runs in WAL mode with ``synchronous=FULL`` (a committed transaction survives ``kill -9``
  and power loss), ``foreign_keys=ON`` and a busy timeout. Write transactions start with
  ``BEGIN IMMEDIATE``: they take the write lock first, so two writers queue on the busy timeout
  instead of failing when one of them upgrades a read lock; read-only transactions start with a
  plain ``BEGIN`` and never block a writer; a look-up of one statement
  (:meth:`Database.first_row`) runs without ``BEGIN``, in SQLite's autocommit mode, which reads
  one consistent snapshot. A new database file is created ``0600``.
* SQLite has one writer at a time; within the node's process, write transactions also take
  turns on an ``asyncio.Lock`` before ``BEGIN IMMEDIATE``, so a writer waiting for another one of
  this process is woken the moment it commits, instead of sleeping in SQLite's busy handler
  (which backs off up to 100 ms a try). Other processes still wait on the busy timeout; a turn
  not given within that timeout fails as the busy timeout would.
* PostgreSQL may be confined to one schema (``search_path``), so several nodes, or several test
  runs, can share a server without sharing a table.
* **Group commit** (SQLite): a write transaction opened by a task inside
  :func:`~node.storage.write_groups.grouped` joins the transaction of other such units of work of
  this process, each in a savepoint, with one ``COMMIT`` for all (:mod:`node.storage.
  write_groups` states what holds). Other write transactions are not grouped. On PostgreSQL,
  where writers do not take turns, ``grouped`` changes nothing.
* SQLite statements go through :mod:`node.storage.sqlite_driver` (one round trip to the
  connection's thread per statement, instead of three or four).
* Every library or driver failure leaves this module as :class:`StorageError` (code
  ``storage_unavailable``), or :class:`StorageConflict` for a unique-constraint race, with a
  message that names the database by its redacted URL and never carries a password, a bound
  parameter or a row's value (the engine runs with ``hide_parameters``).
* :meth:`Database.migrate` is the only way the schema changes: Alembic, in code (no
  ``alembic.ini``), from the migrations shipped inside this package, in one transaction.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, ClassVar, Final

from sqlalchemy import Executable, event, inspect, text
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from node.errors import NodeError
from node.storage.sqlite_driver import one_hop_dbapi
from node.storage.write_groups import WriteGroups, wants_group

logger = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
SQLITE_DRIVER: Final = "sqlite+aiosqlite"
POSTGRES_DRIVER: Final = "postgresql+asyncpg"
SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
CHECK_TIMEOUT_S: Final = 2.0
_READ_ONLY: Final = "citynode_read_only"  # execution option marking read-only transactions
_ONE_READ: Final = "citynode_one_read"  # execution option: one read statement, no BEGIN (SQLite)
_SCHEMA_NAME: Final = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_REASON_CHARS: Final = 200


class StorageError(NodeError):
    """The database could not do what was asked: unreachable, locked, full or misconfigured."""

    code: ClassVar[str] = "storage_unavailable"


class StorageConflict(StorageError):
    """A write collided with a row that already exists (a unique constraint): nothing was kept."""

    code: ClassVar[str] = "storage_conflict"


class Database:
    """One node's database: an async engine and its sessions.

    Build one with :meth:`connect`; bring the schema up to date with :meth:`migrate`; run work in
    :meth:`transaction` (writes) or :meth:`reading` (reads); end with :meth:`close`.
    """

    def __init__(self, engine: AsyncEngine, redacted_url: str, schema: str | None) -> None:
        self._engine = engine
        # SQLite: one write transaction of this process at a time (see the module docstring).
        self._write_turn = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._writer = async_sessionmaker(engine, expire_on_commit=False)
        self._read_engine = engine.execution_options(**{_READ_ONLY: True})
        self._one_read_engine = engine.execution_options(**{_READ_ONLY: True, _ONE_READ: True})
        self._reader = async_sessionmaker(self._read_engine, expire_on_commit=False)
        self.redacted_url = redacted_url
        self.schema = schema
        self._groups = (
            None
            if self._write_turn is None
            else WriteGroups(
                new_session=self._writer,
                take_write_turn=self._take_turn,
                give_write_turn=self._write_turn.release,
                wrapped=self._wrapped,
                failed=lambda: StorageError(
                    f"database {redacted_url}: transaction failed: another part of it failed"
                ),
            )
        )

    @classmethod
    async def connect(cls, url: str, *, schema: str | None = None) -> Database:
        """Create the engine and check that the database answers.

        Args:
            url: ``sqlite+aiosqlite:////abs/path.sqlite3`` or ``postgresql+asyncpg://...``.
            schema: PostgreSQL only: the schema to work in (created by :meth:`migrate`).

        Returns:
            The connected database.

        Raises:
            StorageError: an unsupported URL or schema name, or the database does not answer.
        """
        try:
            parsed = make_url(url)
        except ArgumentError as e:
            raise StorageError("the database URL does not parse") from e
        redacted = parsed.render_as_string(hide_password=True)
        if parsed.drivername == SQLITE_DRIVER:
            if schema is not None:
                raise StorageError("a schema can only be given for PostgreSQL")
            engine = _sqlite_engine(url, parsed.database)
        elif parsed.drivername == POSTGRES_DRIVER:
            engine = _postgres_engine(url, schema)
        else:
            raise StorageError(
                f"unsupported database driver {parsed.drivername!r}: "
                f"use {SQLITE_DRIVER} or {POSTGRES_DRIVER}"
            )
        database = cls(engine, redacted, schema)
        try:
            await database.check()
        except StorageError:
            await engine.dispose()
            raise
        return database

    @property
    def engine(self) -> AsyncEngine:
        """The async engine (for tools and tests that need a raw connection)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    @asynccontextmanager
    async def transaction(self, session: AsyncSession | None = None) -> AsyncIterator[AsyncSession]:
        """Run a unit of work that writes: committed at the end, rolled back on any error.

        Args:
            session: a session of a transaction already open (from this method); the work then
                joins it and commits with it. ``None`` opens a new transaction, or on SQLite
                joins a group commit when the task asked for it
                (:func:`node.storage.write_groups.grouped`).

        Yields:
            The session to work in.

        Raises:
            StorageConflict: a unique constraint refused a row (the transaction rolled back).
            StorageError: any other database failure (the transaction rolled back).
        """
        if session is not None:
            yield session
            return
        if self._groups is not None and wants_group():
            async with self._groups.unit() as grouped_session:
                yield grouped_session
            return
        async with self._turn(), self._wrapped("transaction"), self._writer() as new, new.begin():
            yield new

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """Run a read-only unit of work (it never waits for, or blocks, a writer on SQLite).

        Yields:
            The session to read in.

        Raises:
            StorageError: a database failure.
        """
        async with self._wrapped("read"), self._reader() as new, new.begin():
            yield new

    async def first_row(
        self, statement: Executable, parameters: Mapping[str, Any]
    ) -> Row[*tuple[Any, ...]] | None:
        """Run one read statement on its own, without an ORM session (the cheapest read: for a
        look-up made on every request). On SQLite it runs without ``BEGIN`` (one statement is a
        consistent read by itself): one round trip to the database's thread in all.

        Returns:
            Its first row, or ``None``.

        Raises:
            StorageError: a database failure.
        """
        async with self._wrapped("read"), self._one_read_engine.connect() as connection:
            return (await connection.execute(statement, parameters)).first()

    async def migrate(self) -> tuple[str | None, str]:
        """Bring the schema to the newest revision shipped with the code (Alembic ``head``).

        Creates the PostgreSQL schema first when one was given. Runs in one transaction.

        Returns:
            The revision before (``None`` for an empty database) and the revision now.

        Raises:
            StorageError: the migration failed, or the schema is at a revision this code does
                not know (made by a newer version); nothing of it was kept.
        """
        async with self._wrapped("migration"), self._engine.begin() as connection:
            if self.schema is not None:
                await _ensure_schema(connection, self.schema)
            before = await connection.run_sync(_current_revision)
            if before == head_revision():  # the usual case: nothing to do, Alembic not loaded
                return before, before
            if before is not None and before not in known_revisions():
                # Alembic would fail with its own error (not a SQLAlchemyError) and a traceback.
                raise StorageError(
                    f"database {self.redacted_url}: its schema was made by a newer citynode "
                    f"(this one knows revisions up to {head_revision()}): run that version or "
                    "a newer one"
                )
            await connection.run_sync(_upgrade_to_head)
            after = await connection.run_sync(_current_revision)
        if before != after:
            logger.info("database schema upgraded from %s to %s", before or "empty", after)
        if after is None:  # pragma: no cover - the package always ships a revision
            raise StorageError("the migrations produced no revision")
        return before, after

    async def current_revision(self) -> str | None:
        """Return the schema's Alembic revision, or ``None`` for an empty database.

        Raises:
            StorageError: the database could not be read.
        """
        async with self._wrapped("revision check"), self._engine.connect() as connection:
            return await connection.run_sync(_current_revision)

    async def check(self, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        """Check that the database answers a ``SELECT 1`` within ``timeout_s`` (for /healthz).

        Raises:
            StorageError: it did not answer, or answered with an error.
        """
        try:
            async with (
                asyncio.timeout(timeout_s),
                self._wrapped("health check"),
                self._one_read_engine.connect() as connection,  # no BEGIN: waits for no writer
            ):
                await connection.execute(text("SELECT 1"))
        except TimeoutError as e:
            raise StorageError(
                f"database {self.redacted_url} did not answer within {timeout_s:g} s"
            ) from e

    async def close(self) -> None:
        """Close every pooled connection. The object must not be used afterwards."""
        await self._engine.dispose()

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """Wait for this process's other SQLite write transaction to end (no-op on PostgreSQL)."""
        turn = self._write_turn
        if turn is None:
            yield
            return
        await self._take_turn()
        try:
            yield
        finally:
            turn.release()

    async def _take_turn(self) -> None:
        """Wait for the SQLite write turn, as long as the busy timeout at most."""
        assert self._write_turn is not None  # SQLite only
        try:
            async with asyncio.timeout(SQLITE_BUSY_TIMEOUT_MS / 1000):
                await self._write_turn.acquire()
        except TimeoutError as e:
            raise StorageError(
                f"database {self.redacted_url}: transaction failed: the database is locked"
            ) from e

    @asynccontextmanager
    async def _wrapped(self, what: str) -> AsyncIterator[None]:
        """Turn library and driver failures into :class:`StorageError` (no values, no password)."""
        try:
            yield
        except IntegrityError as e:
            raise StorageConflict(
                f"database {self.redacted_url}: {what} refused by a unique or check constraint"
            ) from e
        except (SQLAlchemyError, OSError) as e:
            raise StorageError(f"database {self.redacted_url}: {what} failed: {_reason(e)}") from e


def head_revision() -> str:
    """Return the newest revision shipped with the code (what :meth:`Database.migrate` reaches)."""
    return _shipped()[1]


def known_revisions() -> frozenset[str]:
    """Return every revision shipped with the code."""
    return _shipped()[0]


_REVISION_LINE: Final = re.compile(
    r'^(down_revision|revision): str(?: \| None)? = "?(\w+)"?$', re.M
)


@functools.cache
def _shipped() -> tuple[frozenset[str], str]:
    """The shipped revisions and the head, read from the migration files without loading Alembic
    (its import costs every ``citynode`` command a noticeable part of its start-up); a test
    checks both against Alembic's own reading of the same files."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("r*.py"):
        source = path.read_text()
        found = {match[1]: match[2] for match in _REVISION_LINE.finditer(source)}
        revisions.add(found["revision"])
        if found.get("down_revision", "None") != "None":
            parents.add(found["down_revision"])
    heads = revisions - parents
    if len(heads) != 1:  # pragma: no cover - the package ships one linear chain
        raise StorageError(f"the shipped migrations have {len(heads)} heads")
    return frozenset(revisions), heads.pop()


def _reason(error: BaseException) -> str:
    """Say why, without a value: only connection-level driver messages are quoted, first line.

    Driver messages about data (a bad value, a violated constraint) can quote the value; messages
    about reaching the database (refused, authentication failed, locked, unable to open) do not.
    """
    name = type(error).__name__
    if isinstance(error, DBAPIError):
        original = error.orig
        name = type(original).__name__
        if error.connection_invalidated or isinstance(error, OperationalError | InterfaceError):
            first_line = str(original).strip().splitlines()[0] if str(original).strip() else ""
            return f"{name}: {first_line[:_REASON_CHARS]}" if first_line else name
        return name
    if isinstance(error, OSError) and error.strerror:
        return f"{name}: {error.strerror}"
    return name


def alembic_config(connection: Connection | None) -> Any:
    """Return the Alembic configuration, built in code (there is no ``alembic.ini``).

    Args:
        connection: the open connection the migrations run on (``None`` to only read scripts).

    Returns:
        A configuration whose ``script_location`` is the migrations shipped in this package.
    """
    from alembic.config import Config  # noqa: PLC0415 (only when migrating: see _shipped)

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def _upgrade_to_head(connection: Connection) -> None:
    from alembic import command  # noqa: PLC0415 (only when migrating: see _shipped)

    command.upgrade(alembic_config(connection), "head")


def _current_revision(connection: Connection) -> str | None:
    """The schema's revision, read as Alembic keeps it (its ``alembic_version`` table)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:  # pragma: no cover - one linear chain, one row
        raise StorageError("the database has more than one schema revision")
    return str(rows[0]) if rows else None


async def _ensure_schema(connection: AsyncConnection, schema: str) -> None:
    """Create the PostgreSQL schema unless it exists (creating needs a privilege using it does
    not: a schema made by the database administrator is used as it is)."""
    exists = await connection.scalar(
        text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
    )
    if exists is None:
        await connection.execute(text(f'CREATE SCHEMA "{schema}"'))


def _sqlite_engine(url: str, path: str | None) -> AsyncEngine:
    if path and path != ":memory:" and not path.startswith("file:"):
        _create_private_file(Path(path))
    engine = create_async_engine(url, hide_parameters=True, module=one_hop_dbapi())

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver (it would BEGIN lazily, DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get(_ONE_READ, False):
            return  # one statement in SQLite's autocommit mode (Database.first_row)
        connection.exec_driver_sql("BEGIN" if options.get(_READ_ONLY, False) else "BEGIN IMMEDIATE")

    return engine


def _create_private_file(path: Path) -> None:
    """Create an empty database file readable by the node's user only (a no-op if it exists).

    SQLite gives its ``-wal`` and ``-shm`` files the mode of the database file.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise StorageError(f"cannot create the database file {path}: {e.strerror}") from e
    os.close(fd)


def _postgres_engine(url: str, schema: str | None) -> AsyncEngine:
    connect_args: dict[str, Any] = {}
    if schema is not None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise StorageError(f"schema name must match {_SCHEMA_NAME.pattern}")
        connect_args["server_settings"] = {"search_path": schema}
    return create_async_engine(
        url, hide_parameters=True, pool_pre_ping=True, connect_args=connect_args
    )
