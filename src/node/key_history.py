"""This node's key-history log, persisted: every key change appended, the chain re-checked on load.

Owns the ``key_log`` table's contents. Invariants: entries are only ever appended, each stored
as the exact encoding of its ``protocol.keylog.KeyLogEntry``; loading re-verifies the whole hash
chain (``KeyLog.from_entries``), so an edited, deleted or reordered row stops the node instead of
being served to peers. Payloads are public statements (public keys, signed announcements, pins):
nothing secret or personal is ever logged here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from sqlalchemy import select

from node.errors import NodeError
from node.storage.database import Database
from node.storage.schema import KeyLogRow
from protocol import codec
from protocol.keylog import EntryKind, KeyLog, KeyLogEntry
from protocol.limits import Limits


class KeyHistory:
    """The persisted key-history log.

    Args:
        db: the database.
        limits: the protocol limits (log size bounds).
        frozen: nothing may be appended (a node restored from a backup, until ``keys recover``
            took back the entries it lost: appending first would fork the log).
    """

    def __init__(self, db: Database, limits: Limits, *, frozen: bool = False) -> None:
        self._db = db
        self._limits = limits
        self.frozen = frozen

    async def load(self) -> KeyLog:
        """Read and verify the whole log.

        Raises:
            KeyLogBroken: the stored chain does not verify (names the first bad entry).
        """
        async with self._db.reading() as s:
            rows = (await s.scalars(select(KeyLogRow).order_by(KeyLogRow.index))).all()
        entries = [
            codec.decode(row.entry, KeyLogEntry, max_bytes=len(row.entry), what="key log entry")
            for row in rows
        ]
        return KeyLog.from_entries(entries, limits=self._limits)

    async def append(self, changes: list[tuple[EntryKind, bytes]], at: int) -> KeyLog:
        """Append key changes (kind, exact public statement bytes) in one transaction.

        Returns:
            The log after the changes.

        Raises:
            RestorePending: the log is frozen.
        """
        if self.frozen:
            raise RestorePending(
                "this node was restored from a backup: run `citynode keys recover` before any "
                "key change"
            )
        log = await self.load()
        first = log.size
        for kind, payload in changes:
            log = log.append(kind, payload, at, limits=self._limits)
        async with self._db.transaction() as s:
            for entry in log.entries[first:]:
                s.add(
                    KeyLogRow(index=entry.index, entry=codec.encode(entry), appended_at=float(at))
                )
        return log

    async def take_back(self, entries: Sequence[KeyLogEntry], at: int) -> KeyLog:
        """Append entries exactly as they were (a restored node's entries lost with its disk,
        from a verified copy that extends this log).

        Raises:
            KeyLogBroken: the entries do not continue this log's chain.
        """
        log = await self.load()
        extended = KeyLog.from_entries((*log.entries, *entries), limits=self._limits)
        async with self._db.transaction() as s:
            for entry in extended.entries[log.size :]:
                s.add(
                    KeyLogRow(index=entry.index, entry=codec.encode(entry), appended_at=float(at))
                )
        return extended


class RestorePending(NodeError):
    """A node restored from a backup, before ``keys recover``: its keys must not change."""

    code: ClassVar[str] = "restore_pending"
