"""SQLite under asyncio with one thread hop per statement: the node's adapter over aiosqlite.

Owns how SQLAlchemy's ``sqlite+aiosqlite`` dialect reaches the database. aiosqlite runs every
call on the connection's own thread; SQLAlchemy's stock adapter makes four calls per ``SELECT``
(create a cursor, execute, fetch all, close) and three per write, each a round trip between the
event loop and that thread — a wake-up of each side, and the GIL changing hands twice. On a
small machine a round trip costs tens to a hundred microseconds, more than most statements.

The cursor here does the whole statement in ONE call on the connection's thread: open a
``sqlite3`` cursor, execute (or executemany), read every row, note ``description``, ``rowcount``
and ``lastrowid``, close it. Nothing else changes: the same aiosqlite connection and thread, the
same SQL, the same transaction control (``BEGIN``/``BEGIN IMMEDIATE`` statements,
``commit``/``rollback`` calls), the same error translation by SQLAlchemy. Results are always
fetched whole, as SQLAlchemy's adapter does for a client-side cursor; server-side (streaming)
cursors keep aiosqlite's. Invariant: one statement at a time per connection (SQLAlchemy's
per-connection mutex, kept), so the ``sqlite3`` connection is only ever used from its thread.

**Control statements ride with the next statement.** ``BEGIN``, ``BEGIN IMMEDIATE``,
``SAVEPOINT x`` and ``RELEASE SAVEPOINT x`` return nothing and change nothing a later statement
could not see: they are kept on the connection and run on its thread, in order, just before the
next statement, in that statement's round trip. A ``COMMIT`` or ``ROLLBACK`` drops what is still
kept (it ends every savepoint; a ``BEGIN`` never sent opened nothing) and is itself skipped when
SQLite has no transaction open (``sqlite3.Connection.in_transaction``, read while no statement
runs). A transaction is therefore one round trip per statement plus one for its end, and a read
of one statement two; a ``BEGIN IMMEDIATE`` that cannot get the write lock fails with the first
statement, as the same ``OperationalError``.

**A transaction SQLite ended on its own stays ended.** A ``BEGIN`` that failed, or an error after
which SQLite rolled the whole transaction back (``SQLITE_FULL``, ``SQLITE_IOERR``...), leaves
SQLAlchemy believing a transaction (and its savepoints) open. Until its ``COMMIT`` or
``ROLLBACK``, every further statement then fails (none runs in autocommit mode, and a kept
``SAVEPOINT`` never opens a transaction of its own), a ``ROLLBACK TO``/``RELEASE`` of a savepoint
does nothing (nothing of it is left: the error that ended the transaction is the one raised), and
the ``COMMIT`` fails: work that shared the transaction (``node.storage.write_groups``) is never
reported kept. A ``COMMIT`` that fails and leaves the transaction open (SQLite does on
``SQLITE_BUSY``) is followed by a ``ROLLBACK``: no connection goes back to its pool in a
transaction.

It relies on two internals, checked by the storage tests on every run: aiosqlite's
``Connection._execute(fn, *args)`` (run ``fn`` on the connection's thread) and ``_conn`` (the
``sqlite3`` connection), and SQLAlchemy's ``AsyncAdapt_aiosqlite_*`` adapter classes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT, await_

_Outcome = tuple[Any, list[Any], int, int | None]
"""``description``, rows, ``rowcount``, ``lastrowid`` of one statement."""
_DEFERRED_PREFIXES: Final = ("SAVEPOINT ", "RELEASE SAVEPOINT ")
_DEFERRED_BEGINS: Final = frozenset({"BEGIN", "BEGIN IMMEDIATE"})
_SAVEPOINT_ENDS: Final = ("ROLLBACK TO SAVEPOINT ", "RELEASE SAVEPOINT ")
_ENDED: Final = "the transaction is no longer open: the database ended it after an earlier error"


def _deferrable(operation: str, parameters: Any, many: bool) -> bool:
    """Whether the statement is a control statement kept for the next one (module docstring)."""
    if many or parameters:
        return False
    return operation in _DEFERRED_BEGINS or operation.startswith(_DEFERRED_PREFIXES)


def _run_statement(
    connection: sqlite3.Connection,
    deferred: Sequence[str],
    operation: str,
    parameters: Any,
    many: bool,
    *,
    opened: bool,
) -> _Outcome:
    """Run the kept control statements, then one statement to the end, on the connection's
    thread (see the module docstring). ``opened``: a ``BEGIN`` was sent before this call."""
    if opened and not connection.in_transaction:  # SQLite ended it (module docstring)
        if operation.startswith(_SAVEPOINT_ENDS):
            return None, [], -1, None
        raise sqlite3.OperationalError(_ENDED)
    for control in deferred:
        connection.execute(control).close()
    cursor = connection.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        elif parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A DBAPI cursor whose every statement is one call on the connection's thread."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")
    _awaitable_cursor_close = False  # nothing stays open between statements

    def __init__(self, adapt_connection: Any) -> None:
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]  # no aiosqlite cursor is kept
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]  # DBAPI allows None

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        return await self._run(operation, parameters, many=False)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        return await self._run(operation, seq_of_parameters, many=True)

    async def _run(self, operation: str, parameters: Any, *, many: bool) -> None:
        adapt: OneHopConnection = self._adapt_connection  # type: ignore[assignment]
        if _deferrable(operation, parameters, many):
            adapt._deferred.append(operation)
            self._description, self._rowcount, self._lastrowid = None, -1, None
            self._rows = collections.deque()
            return
        async with adapt._execute_mutex:
            connection: aiosqlite.Connection = self._connection  # type: ignore[assignment]
            deferred, adapt._deferred = adapt._deferred, []  # sent now, whatever the outcome
            opened = adapt._opened
            adapt._opened = opened or any(c in _DEFERRED_BEGINS for c in deferred)
            run = functools.partial(_run_statement, opened=opened)
            outcome: _Outcome = await connection._execute(  # type: ignore[no-untyped-call]
                run, connection._conn, deferred, operation, parameters, many
            )
        self._description, rows, self._rowcount, self._lastrowid = outcome
        self._rows = collections.deque(rows)

    def close(self) -> None:
        self._rows.clear()

    def nextset(self) -> None:
        raise NotImplementedError("SQLite statements have one result set")

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None

    def fetchall(self) -> Sequence[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection adapter, with :class:`OneHopCursor` cursors and kept
    control statements (module docstring)."""

    __slots__ = ("_deferred", "_opened")
    _cursor_cls = OneHopCursor

    def __init__(self, dbapi: Any, connection: Any) -> None:
        super().__init__(dbapi, connection)
        self._deferred: list[str] = []
        self._opened = False  # a BEGIN was sent since the last COMMIT or ROLLBACK

    def commit(self) -> None:
        self._deferred = []  # COMMIT ends every savepoint; a BEGIN never sent opened nothing
        opened, self._opened = self._opened, False
        if self._open_transaction():
            try:
                super().commit()
            except Exception:
                # SQLite may keep the transaction open after a failed COMMIT (SQLITE_BUSY, FULL):
                # end it, so the connection goes back to its pool clean and nothing is kept.
                if self._open_transaction():
                    with contextlib.suppress(Exception):
                        super().rollback()
                raise
        elif opened:  # SQLite ended it after an error: nothing of it is kept (module docstring)
            raise sqlite3.OperationalError(_ENDED)

    def rollback(self) -> None:
        self._deferred = []
        self._opened = False
        if self._open_transaction():
            super().rollback()

    def _open_transaction(self) -> bool:
        """Whether SQLite has a transaction open (or the connection's state is unknown)."""
        raw: sqlite3.Connection | None = self._connection._connection
        return raw is None or raw.in_transaction


class OneHopDbapi(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module object given to ``create_async_engine(..., module=...)``."""

    def connect(self, *arg: Any, **kw: Any) -> OneHopConnection:
        creator = kw.pop("async_creator_fn", None)
        pending = creator(*arg, **kw) if creator else self.aiosqlite.connect(*arg, **kw)
        if not creator:
            pending._thread.daemon = True  # as SQLAlchemy's adapter does
        return OneHopConnection(self, await_(pending))


def one_hop_dbapi() -> OneHopDbapi:
    """The module object for ``create_async_engine(url, module=one_hop_dbapi())``."""
    return OneHopDbapi(aiosqlite, sqlite3)
