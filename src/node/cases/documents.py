"""Case documents at rest: the ``case_documents`` rows, their sealed references, and the ledger.

Owns what a node records of the documents that travel with a referral. At the home node a case
worker's upload (:mod:`node.cases.document_service`) becomes an ``offered`` row and a stream in
``attachments/out/<peer>/<id>``; the referral carries every offered document's
:class:`~protocol.messages.AttachmentRef` in ``documents``. At the receiving node the referral's
arrival records each document as ``pending`` in the same transaction as the referral, and
:mod:`node.cases.document_fetch` fetches, verifies and marks it ``verified``. Invariants:

* A document's reference — file name, media type, size, digest and the **attachment key** — is
  stored only sealed under the case key (purpose ``case.document:<attachment id hex>``), as the
  identity is: a database dump reveals none of it, and shredding the case makes the stream on
  disk unreadable. The key leaves the node only inside the sealed referral.
* Documents are added only while the home case is ``accepted``; the row is written in a
  transaction that locks the case row and checks its state again, and the referral's sending
  transaction (:meth:`DocumentLedger.on_sent`) refuses a referral whose documents are not exactly
  the case's offered rows. So a document is either carried by the referral or refused, never
  silently left behind.
* A received referral that reuses an attachment id already received from that peer is refused
  (its stream would share a file with another document's).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from node.case_ledger import CaseLedger
from node.cases.journal import CaseJournal
from node.cases.rules import CaseRules
from node.storage.case_store import CaseNotFound, CaseStore, load_case_key
from node.storage.database import Database
from node.storage.schema import CaseDocumentRow, CaseRow
from node.storage.vault import CaseVault
from protocol import codec
from protocol.cases import CaseState, Direction
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import MAX_DOCUMENTS, AttachmentRef, Message, Referral

OFFERED: Final = "offered"
PENDING: Final = "pending"
VERIFIED: Final = "verified"
MAX_REF_BYTES: Final = 1024
"""The largest encoded ``AttachmentRef`` (bounded fields: about 400 bytes)."""


def document_purpose(attachment_id: bytes) -> str:
    """The vault purpose a document's reference is sealed under."""
    return f"case.document:{attachment_id.hex()}"


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document row with its reference opened (secret: holds the attachment key).

    Attributes:
        case_id: the case.
        reference: the opened ``AttachmentRef``.
        direction: ``sent`` (offered by this home node) or ``received``.
        peer: the other city.
        state: ``offered``, ``pending`` or ``verified``.
        attempts: fetch attempts so far (received documents).
        last_error: the code of the last failed attempt, or ``None``.
        created_at: when the row was written.
    """

    case_id: bytes
    reference: AttachmentRef
    direction: str
    peer: str
    state: str
    attempts: int
    last_error: str | None
    created_at: float


class DocumentRecords:
    """The ``case_documents`` rows, their references sealed under each case's key.

    Args:
        db: the database.
        vault: seals and opens under case keys.
        clock: Unix seconds now.
    """

    def __init__(self, db: Database, vault: CaseVault, clock: Callable[[], float]) -> None:
        self.db = db
        self._vault = vault
        self._clock = clock

    async def add_offered(self, case_id: bytes, peer: str, reference: AttachmentRef) -> None:
        """Record an uploaded document of a home case still ``accepted``.

        Raises:
            CaseNotFound: no such case. CaseShredded: the case was shredded.
            LocalProtocolError: ``invalid_transition`` (no longer accepted), ``invalid_field``
                (the case holds the most documents a referral carries).
        """
        now = self._clock()
        async with self.db.transaction() as s:
            state = await s.scalar(
                select(CaseRow.state).where(CaseRow.case_id == case_id).with_for_update()
            )
            if state is None:
                raise CaseNotFound("no case with this id is held by this node")
            if state != CaseState.ACCEPTED.value:
                raise LocalProtocolError(
                    ErrorCode.INVALID_TRANSITION, "documents are added to an accepted case only"
                )
            if len(await _ids(s, case_id, Direction.SENT)) >= MAX_DOCUMENTS:
                raise LocalProtocolError(
                    ErrorCode.INVALID_FIELD, f"a referral carries at most {MAX_DOCUMENTS} documents"
                )
            key = await load_case_key(s, self._vault, case_id)
            s.add(
                self._row(
                    case_id=case_id,
                    peer=peer,
                    reference=reference,
                    direction=Direction.SENT,
                    state=OFFERED,
                    case_key=key,
                    now=now,
                )
            )

    async def record_received(self, session: AsyncSession, sender: str, referral: Referral) -> None:
        """Record a received referral's documents as ``pending``, in its transaction.

        Raises:
            LocalProtocolError: ``invalid_field`` — an attachment id already received from
                ``sender``.
        """
        if not referral.documents:
            return
        ids = [document.attachment_id for document in referral.documents]
        taken = await session.scalar(
            select(CaseDocumentRow.attachment_id).where(
                CaseDocumentRow.peer == sender,
                CaseDocumentRow.direction == Direction.RECEIVED.value,
                CaseDocumentRow.attachment_id.in_(ids),
            )
        )
        if taken is not None:
            raise LocalProtocolError(
                ErrorCode.INVALID_FIELD, "referral documents reuse an attachment id"
            )
        key = await load_case_key(session, self._vault, referral.case_id)
        now = self._clock()
        for document in referral.documents:
            session.add(
                self._row(
                    case_id=referral.case_id,
                    peer=sender,
                    reference=document,
                    direction=Direction.RECEIVED,
                    state=PENDING,
                    case_key=key,
                    now=now,
                )
            )

    async def check_sent(self, session: AsyncSession, referral: Referral) -> None:
        """Refuse a referral whose documents are not exactly the case's offered ones.

        Raises:
            LocalProtocolError: ``invalid_transition`` — a document was added meanwhile.
        """
        offered = await _ids(session, referral.case_id, Direction.SENT)
        carried = {document.attachment_id for document in referral.documents}
        if offered != carried:
            raise LocalProtocolError(
                ErrorCode.INVALID_TRANSITION, "the case's documents changed while it was referred"
            )

    async def offered_references(self, case_id: bytes) -> tuple[AttachmentRef, ...]:
        """The references of a home case's offered documents, oldest first (for the referral).

        Raises:
            CaseShredded: the case was shredded.
        """
        documents = await self.documents(case_id)
        return tuple(d.reference for d in documents if d.direction == Direction.SENT.value)

    async def documents(self, case_id: bytes) -> Sequence[StoredDocument]:
        """Every document of a case, references opened, oldest first.

        Raises:
            CaseNotFound: no such case. CaseShredded: the case was shredded.
            VaultError: a sealed reference does not open.
        """
        async with self.db.reading() as s:
            rows = (
                await s.scalars(
                    select(CaseDocumentRow)
                    .where(CaseDocumentRow.case_id == case_id)
                    .order_by(CaseDocumentRow.created_at, CaseDocumentRow.attachment_id)
                )
            ).all()
            if not rows:
                return []
            key = await load_case_key(s, self._vault, case_id)
            return [self._stored(row, key) for row in rows]

    async def document(self, case_id: bytes, attachment_id: bytes) -> StoredDocument | None:
        """One document of a case, reference opened, or ``None``.

        Raises:
            CaseShredded: the case was shredded. VaultError: the reference does not open.
        """
        async with self.db.reading() as s:
            row = await s.get(CaseDocumentRow, (case_id, attachment_id))
            if row is None:
                return None
            return self._stored(row, await load_case_key(s, self._vault, case_id))

    async def due(self, now: float, limit: int) -> Sequence[tuple[bytes, bytes]]:
        """``(case_id, attachment_id)`` of received documents whose fetch is due, oldest first."""
        async with self.db.reading() as s:
            found = await s.execute(
                select(CaseDocumentRow.case_id, CaseDocumentRow.attachment_id)
                .where(CaseDocumentRow.state == PENDING, CaseDocumentRow.next_attempt_at <= now)
                .order_by(CaseDocumentRow.next_attempt_at)
                .limit(limit)
            )
            return [(row[0], row[1]) for row in found.all()]

    async def mark(
        self,
        case_id: bytes,
        attachment_id: bytes,
        *,
        state: str,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> None:
        """Record the outcome of a fetch or a check (an attempt counts when ``error`` is set)."""
        now = self._clock()
        async with self.db.transaction() as s:
            row = await s.get(CaseDocumentRow, (case_id, attachment_id))
            if row is None:
                return
            row.state = state
            row.last_error = error
            row.attempts += 1 if error is not None else 0
            row.next_attempt_at = now if retry_at is None else retry_at
            row.updated_at = now

    async def forget(self, case_id: bytes, attachment_id: bytes) -> None:
        """Delete a document's row (its case was shredded: the reference is unreadable)."""
        async with self.db.transaction() as s:
            row = await s.get(CaseDocumentRow, (case_id, attachment_id))
            if row is not None:
                await s.delete(row)

    def _row(
        self,
        *,
        case_id: bytes,
        peer: str,
        reference: AttachmentRef,
        direction: Direction,
        state: str,
        case_key: bytes,
        now: float,
    ) -> CaseDocumentRow:
        purpose = document_purpose(reference.attachment_id)
        return CaseDocumentRow(
            case_id=case_id,
            attachment_id=reference.attachment_id,
            direction=direction.value,
            peer=peer,
            state=state,
            sealed_ref=self._vault.seal(case_key, case_id, purpose, codec.encode(reference)),
            attempts=0,
            next_attempt_at=now,
            last_error=None,
            created_at=now,
            updated_at=now,
        )

    def _stored(self, row: CaseDocumentRow, case_key: bytes) -> StoredDocument:
        if row.sealed_ref is None:  # pragma: no cover - always written sealed
            raise CaseNotFound("the document's reference is gone")
        purpose = document_purpose(row.attachment_id)
        data = self._vault.open(case_key, row.case_id, purpose, row.sealed_ref)
        reference = codec.decode(data, AttachmentRef, max_bytes=MAX_REF_BYTES, what="document")
        return StoredDocument(
            case_id=row.case_id,
            reference=reference,
            direction=row.direction,
            peer=row.peer,
            state=row.state,
            attempts=row.attempts,
            last_error=row.last_error,
            created_at=row.created_at,
        )


async def _ids(session: AsyncSession, case_id: bytes, direction: Direction) -> set[bytes]:
    found = await session.scalars(
        select(CaseDocumentRow.attachment_id).where(
            CaseDocumentRow.case_id == case_id, CaseDocumentRow.direction == direction.value
        )
    )
    return set(found.all())


class DocumentLedger(CaseLedger):
    """The case ledger, plus the documents of referrals, in the same transactions.

    Args:
        city: this node's city.
        cases: the case store.
        journal: the case journal.
        rules: the agreement's rules that need the node's records.
        documents: the document rows.
    """

    def __init__(
        self,
        *,
        city: str,
        cases: CaseStore,
        journal: CaseJournal,
        rules: CaseRules,
        documents: DocumentRecords,
    ) -> None:
        super().__init__(city=city, cases=cases, journal=journal, rules=rules)
        self._documents = documents

    async def on_sent(
        self,
        session: AsyncSession,
        peer: str,
        message: Message,
        *,
        message_id: bytes,
        at: float,
    ) -> None:
        """As :meth:`CaseLedger.on_sent`; a referral must carry exactly the offered documents."""
        await super().on_sent(session, peer, message, message_id=message_id, at=at)
        if isinstance(message, Referral):
            await self._documents.check_sent(session, message)

    async def on_received(
        self,
        session: AsyncSession,
        sender: str,
        message: Message,
        *,
        message_id: bytes,
        at: float,
    ) -> None:
        """As :meth:`CaseLedger.on_received`; a referral's documents become ``pending``."""
        await super().on_received(session, sender, message, message_id=message_id, at=at)
        if isinstance(message, Referral):
            try:
                await self._documents.record_received(session, sender, message)
            except LocalProtocolError as e:
                raise e.as_remote() from e


__all__ = [
    "OFFERED",
    "PENDING",
    "VERIFIED",
    "DocumentLedger",
    "DocumentRecords",
    "StoredDocument",
    "document_purpose",
]
