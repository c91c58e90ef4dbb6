"""This node's key-history log, persisted: every key change appended, the chain re-checked on load.

Owns the ``key_log`` table's contents. Invariants: entries are only ever appended, each stored
as the exact encoding of its ``protocol.keylog.KeyLogEntry``; loading re-verifies the whole hash
chain (``KeyLog.from_entries``), so an edited, deleted or reordered row stops the node instead of
being served to peers. Payloads are public statements (public keys, signed announcements, pins):
nothing secret or personal is ever logged here.
"""

from __future__ import annotations

from sqlalchemy import select

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
    """

    def __init__(self, db: Database, limits: Limits) -> None:
        self._db = db
        self._limits = limits

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
        """
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
