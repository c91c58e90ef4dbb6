"""Retention: a receiving city's closed cases are crypto-shredded when their period has run out.

Owns when a case's key is destroyed (MISSION.md: "Closure ... Retention rules then apply at each
node"; DESIGN.md: destroying the case key erases the case). Invariants:

* **Closure starts the clock.** A case is due when it has ended (``cases.closed_at``: closed, or
  declined) at least ``[retention] shred_case_key_after_days`` days ago (``config.Retention``).
  An open case is never due, whatever its age.
* **Only at the receiving city.** The receiving city works on the home city's commission; the
  home city keeps responsibility for the person and its own records, which its archive rules
  govern, so a home node never shreds a case here.
* **What is left is anonymous.** Shredding (``CaseStore.shred``) destroys the wrapped case key
  and the sealed identity: the identity, every journal body and every inbox payload of the case
  (all sealed under that key) can never be read again. The non-secret columns stay: cities,
  units, states, times and the quota year, from which ``node.balance`` counts relocations.
  The case's document streams on disk (sealed under keys kept under the case key, so already
  unreadable) are then deleted as well.
* **Each shredding is audited** (``case_shredded``, by the node's console account, in the same
  transaction as the shredding itself), so an auditor sees when each case was erased and why.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select

from node.attachment_store import AttachmentStore
from node.audit import AuditTrail
from node.storage.case_store import CaseStore
from node.storage.database import Database
from node.storage.schema import CaseDocumentRow, CaseRow
from node.users import CONSOLE
from protocol.cases import Direction, Role

logger = logging.getLogger(__name__)

DAY_S: Final = 86_400
SHREDDED: Final = "case_shredded"
PURPOSE: Final = "retention period after closure ended"
MAX_PER_PASS: Final = 500
"""The most cases shredded in one pass (the next pass, a minute later, goes on)."""


@dataclass(frozen=True, slots=True)
class RetainedCase:
    """A closed case this node will shred, and when.

    Attributes:
        case_id: the case.
        state: its final state (``closed`` or ``declined``).
        closed_at: when it ended (Unix seconds).
        shred_at: when its retention period ends (Unix seconds).
    """

    case_id: bytes
    state: str
    closed_at: float
    shred_at: float

    @property
    def shred_on(self) -> datetime.date:
        """The day (UTC) its retention period ends."""
        return datetime.datetime.fromtimestamp(self.shred_at, tz=datetime.UTC).date()


class CaseRetention:
    """Finds and shreds the receiving city's cases whose retention period has run out.

    Args:
        db: the database.
        cases: the case store (shreds).
        audit: the audit trail (one entry per case shredded).
        after_days: days after closure before a case is shredded.
        clock: Unix seconds now.
        attachments: the node's attachment streams, whose files of a shredded case are
            deleted (``None``: leave the files, e.g. for a report that only reads).
    """

    def __init__(
        self,
        *,
        db: Database,
        cases: CaseStore,
        audit: AuditTrail,
        after_days: int,
        clock: Callable[[], float],
        attachments: AttachmentStore | None = None,
    ) -> None:
        self._db = db
        self._cases = cases
        self._audit = audit
        self._period_s = after_days * DAY_S
        self._clock = clock
        self._attachments = attachments

    async def retained(self, *, limit: int = MAX_PER_PASS) -> list[RetainedCase]:
        """The ended cases not yet shredded that this node will shred, the soonest due first.

        Args:
            limit: the most to return.
        """
        async with self._db.reading() as s:
            rows = (
                await s.execute(
                    select(CaseRow.case_id, CaseRow.state, CaseRow.closed_at)
                    .where(
                        CaseRow.role == Role.RECEIVING.value,
                        CaseRow.closed_at.is_not(None),
                        CaseRow.wrapped_key.is_not(None),
                    )
                    .order_by(CaseRow.closed_at, CaseRow.case_id)
                    .limit(limit)
                )
            ).all()
        return [
            RetainedCase(
                case_id=bytes(case_id),
                state=str(state),
                closed_at=float(closed_at),
                shred_at=float(closed_at) + self._period_s,
            )
            for case_id, state, closed_at in rows
            if closed_at is not None  # excluded by the query
        ]

    async def due(self, *, limit: int = MAX_PER_PASS) -> list[RetainedCase]:
        """The retained cases whose period has ended."""
        now = self._clock()
        return [case for case in await self.retained(limit=limit) if case.shred_at <= now]

    async def shred_due(self, *, limit: int = MAX_PER_PASS) -> list[bytes]:
        """Shred every case due (at most ``limit``), each with its audit entry.

        Returns:
            The ids of the cases shredded.

        Raises:
            StorageError: the database failed (the case being shredded is left as it was).
        """
        shredded = []
        for case in await self.due(limit=limit):
            async with self._db.transaction() as session:
                if not await self._cases.shred(case.case_id, session):
                    continue  # shredded meanwhile
                await self._audit.record(  # last: the audit lock is held until the commit
                    session,
                    principal=CONSOLE,
                    action=SHREDDED,
                    case_id=case.case_id,
                    purpose=PURPOSE,
                    outcome="ok",
                )
            shredded.append(case.case_id)
            await self._discard_documents(case.case_id)
        if shredded:
            logger.info("retention: %d closed cases shredded", len(shredded))
        return shredded

    async def _discard_documents(self, case_id: bytes) -> None:
        """Delete the document streams of a shredded case (after the shredding committed)."""
        if self._attachments is None:
            return
        async with self._db.reading() as s:
            rows = (
                await s.execute(
                    select(
                        CaseDocumentRow.peer,
                        CaseDocumentRow.attachment_id,
                        CaseDocumentRow.direction,
                    ).where(CaseDocumentRow.case_id == case_id)
                )
            ).all()
        for peer, attachment_id, direction in rows:
            received = direction == Direction.RECEIVED.value
            self._attachments.discard(peer, bytes(attachment_id), received=received)
