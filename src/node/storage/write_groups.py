"""Group commit on SQLite: several units of work of this process in one write transaction.

Owns :class:`WriteGroups`, the one way :meth:`node.storage.database.Database.transaction` runs a
unit of work that asked to be grouped (:func:`grouped`). SQLite has one writer, and with
``synchronous=FULL`` each ``COMMIT`` waits for the disk (an ``fsync`` of the WAL, milliseconds on
the machines we run on); units of work that arrive while a transaction is in progress therefore
queue behind it. A group lets them share one transaction and one ``COMMIT``. Invariants:

* **All or nothing per unit, in order.** The units of a group run one at a time in the group's
  session, in the order they joined, each inside a ``SAVEPOINT``. A unit that raises (in its
  block or at its last flush, as it ends) has its savepoint rolled back (nothing of it is kept)
  and its error raised to its caller at once, a database failure as ``StorageError`` as for any
  transaction; the others are not affected. Unless SQLite ended the whole transaction with that
  failure (it does after ``SQLITE_FULL`` or an I/O error, and a ``BEGIN IMMEDIATE`` that timed out
  opened none): then the group is broken, the units done in it get an error (nothing of them was
  kept) and those still waiting form the next group. Each unit sees what the units before it in
  the group wrote, exactly as if they had committed before it started: a hash chain appended by
  each unit (the audit trail) stays one chain, a count made by a unit includes the rows of the
  units before it.
* **No unit returns before its commit.** A unit whose work succeeded waits for the group's
  ``COMMIT``; if the ``COMMIT`` fails, every unit of the group gets the same
  :class:`~node.storage.database.StorageError` and nothing of any of them was kept. What a caller
  does after its ``async with`` block (waking a sender loop, answering the client) happens after
  its rows are durable.
* **When a group ends.** It commits as soon as no unit is running or waiting in it; it takes
  no new unit once :data:`MAX_UNITS` have joined or :data:`MAX_OPEN_S` have passed since it
  formed (the next ones form the next group), so neither the write lock nor a queued message's
  commit waits long. Under no load a unit is a transaction of its own, as before. The
  ``COMMIT`` runs in a task of its own, so a cancelled caller never leaves a half-finished group
  holding the write lock.
* **The write turn.** A group holds the process's SQLite write turn (the ``asyncio.Lock`` of
  :class:`~node.storage.database.Database`) from its first unit until its ``COMMIT`` ends, like
  any write transaction; ungrouped transactions take their turns between groups.
* **What a unit remembers in ``session.info``** (the case store's look-ups, ``node.storage.
  case_store``) is dropped when its savepoint rolls back, as the rows it knew may be gone.

Only work that holds no ORM object past its block should be grouped (objects are shared by the
group's session): the case service groups the sending of a case message (``Outgoing.send``).
:func:`grouped` applies to the task that entered it only: a task started inside the block (a
sender loop woken for a new peer) copies the context but runs its transactions ungrouped.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, AsyncSessionTransaction

logger = logging.getLogger(__name__)

MAX_UNITS: Final = 32
"""The most units of work in one group (one transaction)."""
MAX_OPEN_S: Final = 0.025
"""A group takes no new unit once it was formed this long ago: the write lock it holds, and what
its first units queued, wait for its ``COMMIT`` at most about this long besides their own work."""

# The task that asked, not a flag: a task started inside the block (a sender loop woken for a new
# peer) copies the context, and its write transactions must not be grouped.
_GROUPED: Final[contextvars.ContextVar[weakref.ref[asyncio.Task[Any]] | None]] = (
    contextvars.ContextVar("citynode_grouped_write", default=None)
)


@contextmanager
def grouped() -> Iterator[None]:
    """Within this block, this task's write transactions join a group (on SQLite); tasks it
    starts meanwhile are not grouped."""
    task = asyncio.current_task()
    token = _GROUPED.set(None if task is None else weakref.ref(task))
    try:
        yield
    finally:
        _GROUPED.reset(token)


def wants_group() -> bool:
    """Whether the current task asked for its write transactions to be grouped."""
    asked = _GROUPED.get()
    return asked is not None and asked() is asyncio.current_task()


_STILL_OPEN: Final = text("SELECT 1")  # a statement: it fails if the transaction was ended


class _Retry(Exception):
    """The group failed before this unit ran: the unit joins the next group."""


@dataclass(eq=False)
class _Group:
    """One write transaction shared by units of work (see the module docstring)."""

    formed: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)  # one unit at a time
    outcome: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    session: AsyncSession | None = None
    holds_write_turn: bool = False
    joined: int = 0  # units that joined, ever
    waiting: int = 0  # units waiting for their turn in the group
    closed: bool = False  # ending: takes no more units
    broken: bool = False  # its transaction failed: it rolls back


class WriteGroups:
    """Runs the grouped units of work of one SQLite database.

    Args:
        new_session: makes a write session (its transaction starts ``BEGIN IMMEDIATE``).
        take_write_turn: waits for the process's write turn (raises ``StorageError`` when it is
            not given within the busy timeout).
        give_write_turn: gives the write turn back.
        wrapped: turns library failures into ``StorageError`` (``Database._wrapped``).
        failed: the error of a unit whose group rolled back because of another unit.
    """

    def __init__(
        self,
        *,
        new_session: Callable[[], AsyncSession],
        take_write_turn: Callable[[], Awaitable[None]],
        give_write_turn: Callable[[], None],
        wrapped: Callable[[str], AbstractAsyncContextManager[None]],
        failed: Callable[[], Exception],
    ) -> None:
        self._new_session = new_session
        self._take_write_turn = take_write_turn
        self._give_write_turn = give_write_turn
        self._wrapped = wrapped
        self._failed = failed
        self._group: _Group | None = None
        self._endings: set[asyncio.Task[None]] = set()

    @asynccontextmanager
    async def unit(self) -> AsyncIterator[AsyncSession]:
        """Run one unit of work in the current group (module docstring).

        Yields:
            The group's session; the unit's work is inside its own savepoint.

        Raises:
            StorageError: the database failed, or the group's commit did (nothing of the unit
                was kept).
        """
        while True:
            group = self._join()
            try:
                session = await self._enter(group)
            except _Retry:
                continue
            break
        try:
            async with self._wrapped("transaction"):
                savepoint = await session.begin_nested()
        except BaseException:
            group.broken = True
            self._leave(group)
            raise
        try:
            async with self._wrapped("transaction"):  # the body's failures too, as ungrouped
                yield session
                await savepoint.commit()  # its last flush may fail: only this unit is undone
        except BaseException:
            await self._undo(group, session, savepoint)
            self._leave(group)
            raise
        self._leave(group)
        await asyncio.shield(group.outcome)

    def _join(self) -> _Group:
        group = self._group
        if (
            group is None
            or group.closed
            or group.broken
            or group.joined >= MAX_UNITS
            or asyncio.get_running_loop().time() - group.formed > MAX_OPEN_S
        ):
            group = self._group = _Group()
        group.joined += 1
        group.waiting += 1
        return group

    async def _enter(self, group: _Group) -> AsyncSession:
        """Wait for the unit's turn in ``group``; the first unit opens the transaction."""
        try:
            await group.turn.acquire()
        except BaseException:  # cancelled while waiting: end the group if it was left to us
            group.waiting -= 1
            if group.waiting == 0 and not group.turn.locked() and not group.closed:
                self._close(group)
            raise
        group.waiting -= 1
        if group.broken:
            self._leave(group)
            raise _Retry
        if group.session is None:
            try:
                await self._take_write_turn()
            except BaseException:
                group.broken = True
                self._leave(group)
                raise
            group.holds_write_turn = True
            group.session = self._new_session()
        return group.session

    async def _undo(
        self, group: _Group, session: AsyncSession, savepoint: AsyncSessionTransaction
    ) -> None:
        """Roll the failed unit's savepoint back; if even that fails, or the unit's failure ended
        the whole transaction, the group is broken."""
        try:
            async with self._wrapped("transaction"):
                await savepoint.rollback()
                # SQLite ended the whole transaction after some failures (module docstring):
                # then any statement fails (node.storage.sqlite_driver).
                await session.execute(_STILL_OPEN)
        except BaseException:  # noqa: BLE001 - the unit's own error is the one raised
            group.broken = True
            logger.warning("write group: a failed unit was not undone alone: the group rolls back")
        else:
            session.info.clear()  # what the unit looked up may be gone (module docstring)

    def _leave(self, group: _Group) -> None:
        """The unit holding the turn is done: pass the turn on, or end the group."""
        if group.waiting > 0:
            group.turn.release()
        else:
            self._close(group)

    def _close(self, group: _Group) -> None:
        group.closed = True
        if self._group is group:
            self._group = None
        ending = asyncio.get_running_loop().create_task(self._end(group))
        self._endings.add(ending)  # keep a reference until it is done
        ending.add_done_callback(self._endings.discard)

    async def _end(self, group: _Group) -> None:
        """Commit the group (roll it back if broken), then give the write turn back."""
        try:
            error = await self._finish(group)
        finally:
            if group.holds_write_turn:
                self._give_write_turn()
        if error is None:
            group.outcome.set_result(None)
        else:
            group.outcome.set_exception(error)
            group.outcome.exception()  # retrieved: every unit of the group may have left

    async def _finish(self, group: _Group) -> BaseException | None:
        """End the group's transaction; the error each unit of it gets, or ``None``."""
        session = group.session
        error: BaseException | None = self._failed() if group.broken else None
        if session is None:
            return error
        try:
            async with self._wrapped("transaction"):
                await (session.rollback() if group.broken else session.commit())
        except Exception as e:  # noqa: BLE001 - handed to every unit of the group
            error = e
        try:
            await session.close()
        except Exception:  # noqa: BLE001 - the outcome is decided; the pool discards it
            logger.warning("write group: the session did not close cleanly")
        return error


__all__ = ["MAX_UNITS", "WriteGroups", "grouped", "wants_group"]
