"""The documents of a case, for its case workers: upload at home, list, download at either end.

Owns the user actions on case documents (``POST|GET /api/v1/cases/{id}/attachments`` and
``GET /api/v1/cases/{id}/attachments/{attachment_id}``). Invariants:

* **Who**: uploading is a case action of the case's unit (``act_on_case``); listing is reading
  the case; downloading is an identity-class read — documents are personal data — so it needs a
  purpose and the right to read the case's identity (a protected identity: the assigned unit's
  case workers only). A case of another unit is answered as unknown (404, audited
  ``other_unit``). Every action and every refusal is audited; a download with its purpose.
* **Upload**: only at the home node, while the case is ``accepted`` (before the referral). The
  body is bounded before it is read (a declared length above ``max_document_bytes`` is 413 at
  once) and while it is read (413 as soon as it passes), and encrypted as it arrives under a
  fresh random key and id (:class:`~node.cases.document_streams.StreamSpool`): flat memory, no
  plaintext on disk. The reference is recorded sealed under the case key
  (:class:`~node.cases.documents.DocumentRecords`); the next referral carries it.
* **Download**: the stored stream is verified in full against the reference first (a tampered
  stream is refused before a byte is sent, and a received one is fetched again), then decrypted
  into the response piece by piece.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

import msgspec

from node.access import Action, Forbidden, Principal, UserRole, may, require
from node.attachment_store import AttachmentStore
from node.audit import AuditTrail, InvalidPurpose, check_purpose
from node.cases.document_streams import StreamSpool, decrypted_pieces, verify_stream
from node.cases.documents import PENDING, VERIFIED, DocumentRecords, StoredDocument
from node.cases.records import CaseSummary, load_summary
from node.errors import NodeError
from node.federation.server import AttachmentNotFound
from node.storage.case_store import CaseNotFound
from node.storage.database import StorageError
from protocol import codec
from protocol.attachments import ATTACHMENT_ID_BYTES, ATTACHMENT_KEY_BYTES, DIGEST_BYTES
from protocol.cases import CaseState, Direction, Role
from protocol.errors import AttachmentRejected, ErrorCode, LocalProtocolError, ProtocolError
from protocol.limits import Limits
from protocol.messages import AttachmentRef

logger = logging.getLogger(__name__)

OK: Final = "ok"
DEFAULT_MAX_DOCUMENT_BYTES: Final = 200 * 1024 * 1024
_ATTACHMENT_ID: Final = re.compile(
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)


class DocumentTooLarge(NodeError):
    """The document is larger than the node accepts (413)."""

    code: ClassVar[str] = "oversized"


class DocumentNotFound(NodeError):
    """No such document on this case (404)."""

    code: ClassVar[str] = "unknown_document"


class DocumentNotReady(NodeError):
    """A received document not fetched and verified yet (409, try again later)."""

    code: ClassVar[str] = "document_not_ready"


class DocumentUnreadable(NodeError):
    """The stored stream failed verification against its reference (409)."""

    code: ClassVar[str] = "attachment_corrupt"


class _HiddenCase(CaseNotFound):
    audit_reason: ClassVar[str] = "other_unit"


class DocumentView(msgspec.Struct, frozen=True, kw_only=True):
    """A document of a case, without its key.

    Attributes:
        id: the attachment id (32 hex digits).
        filename: the file name given at upload.
        media_type: its media type.
        size: its size in bytes.
        digest: BLAKE3-256 of its content (hex).
        direction: ``sent`` (uploaded here, carried by the referral) or ``received``.
        state: ``offered`` (home), ``pending`` (still to fetch and verify) or ``verified``.
        attempts: failed fetch attempts so far.
        last_error: the code of the last failure, if any.
        added_at: when this node recorded it (RFC 3339, UTC).
    """

    id: str
    filename: str
    media_type: str
    size: int
    digest: str
    direction: str
    state: str
    attempts: int = 0
    last_error: str | None = None
    added_at: str


class DocumentList(msgspec.Struct, frozen=True, kw_only=True):
    """The documents of a case, oldest first."""

    documents: list[DocumentView]


@dataclass(frozen=True, slots=True)
class Upload:
    """An upload as the API read it at the edge: metadata, declared length, body pieces."""

    filename: str
    media_type: str
    declared_bytes: int | None
    pieces: AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class Download:
    """A verified document, ready to stream."""

    view: DocumentView
    pieces: AsyncIterator[bytes]


def document_view(document: StoredDocument) -> DocumentView:
    """The view of a stored document (never its key)."""
    reference = document.reference
    added = datetime.datetime.fromtimestamp(document.created_at, tz=datetime.UTC)
    return DocumentView(
        id=reference.attachment_id.hex(),
        filename=reference.filename,
        media_type=reference.media_type,
        size=reference.size,
        digest=reference.digest.hex(),
        direction=document.direction,
        state=document.state,
        attempts=document.attempts,
        last_error=document.last_error,
        added_at=added.isoformat().replace("+00:00", "Z"),
    )


class DocumentService:
    """Document actions for the users of one node.

    Args:
        city: this node's city.
        records: the document rows.
        store: the attachment streams on disk.
        audit: the audit trail.
        limits: the protocol limits.
        max_document_bytes: the largest document accepted.
        random_bytes: the RNG for attachment keys and ids.
    """

    def __init__(
        self,
        *,
        city: str,
        records: DocumentRecords,
        store: AttachmentStore,
        audit: AuditTrail,
        limits: Limits,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._city = city
        self._records = records
        self._store = store
        self._audit = audit
        self._limits = limits
        self.max_document_bytes = max_document_bytes
        self._random_bytes = random_bytes

    async def attach(self, principal: Principal, case_id: bytes, upload: Upload) -> DocumentView:
        """Encrypt an uploaded document for the case's peer and record it for the referral.

        Raises:
            Forbidden, CaseNotFound: as for any case action.
            LocalProtocolError: ``invalid_field`` (file name, media type, too many documents),
                ``invalid_transition`` (not a home case in ``accepted``).
            DocumentTooLarge: above ``max_document_bytes``, declared or read.
        """
        try:
            _reference(upload.filename, upload.media_type, size=0, chunk_count=1)  # checks names
            case = await self._visible(principal, Action.ACT_ON_CASE, case_id)
            if case.role is not Role.HOME or case.state is not CaseState.ACCEPTED:
                raise LocalProtocolError(
                    ErrorCode.INVALID_TRANSITION, "documents are added to an accepted case only"
                )
            if upload.declared_bytes is not None:
                self._check_size(upload.declared_bytes)
            reference = await self._encrypt(case, upload)
            try:
                await self._records.add_offered(case_id, case.peer, reference)
            except BaseException:
                path = self._store.outgoing_path(case.peer, reference.attachment_id)
                path.unlink(missing_ok=True)
                raise
        except (NodeError, ProtocolError) as e:
            await self._refused(principal, "document_add", case_id, None, e)
            raise
        await self._audit.record(
            None,
            principal=principal,
            action="document_add",
            case_id=case_id,
            purpose=None,
            outcome=OK,
        )
        logger.info("case document added (%d bytes)", reference.size)
        stored = await self._records.document(case_id, reference.attachment_id)
        assert stored is not None  # written just above
        return document_view(stored)

    async def list_documents(self, principal: Principal, case_id: bytes) -> DocumentList:
        """The case's documents (metadata and state; never a key or content).

        Raises:
            Forbidden, CaseNotFound: as for reading the case.
        """
        try:
            await self._visible(principal, Action.READ_CASE, case_id)
            documents = await self._records.documents(case_id)
        except (NodeError, ProtocolError) as e:
            await self._refused(principal, "document_list", case_id, None, e)
            raise
        await self._audit.record(
            None,
            principal=principal,
            action="document_list",
            case_id=case_id,
            purpose=None,
            outcome=OK,
        )
        return DocumentList(documents=[document_view(d) for d in documents])

    async def download(
        self, principal: Principal, case_id: bytes, attachment_id: bytes, purpose: str | None
    ) -> Download:
        """Verify a document's stream and return its content to stream (an audited read).

        Raises:
            InvalidPurpose: no purpose, or not an acceptable one.
            Forbidden: the caller may not read this case's identity-class data.
            CaseNotFound, DocumentNotFound: no such case or document.
            DocumentNotReady: a received document not verified yet.
            DocumentUnreadable: the stored stream fails verification.
        """
        try:
            purpose = check_purpose(purpose)
            if purpose is None:
                raise InvalidPurpose("a purpose is required to read a document")
            case = await self._visible(principal, Action.READ_CASE, case_id)
            _require_identity_access(principal, case)
            document = await self._records.document(case_id, attachment_id)
            if document is None:
                raise DocumentNotFound("no such document on this case")
            path = await self._verified_path(document)
        except (NodeError, ProtocolError) as e:
            await self._refused(principal, "read_document", case_id, purpose, e)
            raise
        await self._audit.record(
            None,
            principal=principal,
            action="read_document",
            case_id=case_id,
            purpose=purpose,
            outcome=OK,
        )
        pieces = decrypted_pieces(path, document.reference, limits=self._limits)
        return Download(view=document_view(document), pieces=pieces)

    async def _encrypt(self, case: CaseSummary, upload: Upload) -> AttachmentRef:
        attachment_id = self._random_bytes(ATTACHMENT_ID_BYTES)
        key = self._random_bytes(ATTACHMENT_KEY_BYTES)
        target = self._store.outgoing_path(case.peer, attachment_id)
        spool = StreamSpool(target, key=key, attachment_id=attachment_id, limits=self._limits)
        try:
            async for piece in upload.pieces:
                self._check_size(spool.size + len(piece))
                spool.write(piece)
            summary = await spool.commit()
        except BaseException:
            spool.abort()
            raise
        return _reference(
            upload.filename,
            upload.media_type,
            size=summary.size,
            chunk_count=summary.chunk_count,
            digest=summary.digest,
            key=key,
            attachment_id=attachment_id,
        )

    def _check_size(self, size: int) -> None:
        if size > self.max_document_bytes:
            raise DocumentTooLarge(f"a document is at most {self.max_document_bytes} bytes")

    async def _verified_path(self, document: StoredDocument) -> Path:
        """The document's stream file, checked in full against its reference."""
        reference = document.reference
        received = document.direction == Direction.RECEIVED.value
        if received and document.state != VERIFIED:
            raise DocumentNotReady("the document has not been fetched and verified yet")
        try:
            if received:
                path = self._store.received(document.peer, reference.attachment_id)
            else:
                path = self._store.outgoing_path(document.peer, reference.attachment_id)
            await asyncio.to_thread(verify_stream, path, reference, limits=self._limits)
        except (AttachmentRejected, AttachmentNotFound, OSError) as e:
            code = e.code.value if isinstance(e, AttachmentRejected) else "attachment_missing"
            logger.warning("case document stream at rest fails verification: %s", code)
            if received:  # fetch it again from the home node
                path = self._store.received(document.peer, reference.attachment_id)
                path.unlink(missing_ok=True)
                await self._records.mark(
                    document.case_id, reference.attachment_id, state=PENDING, error=code
                )
            raise DocumentUnreadable("the stored document does not verify") from e
        return path

    async def _visible(self, principal: Principal, action: Action, case_id: bytes) -> CaseSummary:
        require(principal, action)
        async with self._records.db.reading() as s:
            case = await load_summary(s, case_id, self._city)
        if case is None:
            raise CaseNotFound("no case with this id is held by this node")
        if case.assigned and not may(principal, action, case.unit):
            raise _HiddenCase("no case with this id is held by this node")
        return case

    async def _refused(
        self,
        principal: Principal,
        action: str,
        case_id: bytes,
        purpose: str | None,
        error: NodeError | ProtocolError,
    ) -> None:
        if isinstance(error, StorageError):
            return
        reason = getattr(error, "audit_reason", None) or str(error.code)
        if isinstance(error, InvalidPurpose):
            purpose = None  # not acceptable, so not recorded
        await self._audit.record(
            None,
            principal=principal,
            action=action,
            case_id=case_id,
            purpose=purpose,
            outcome=reason,
        )
        logger.info("case document action %s refused: %s", action, reason)


def _require_identity_access(principal: Principal, case: CaseSummary) -> None:
    """Documents are read like the identity: the role's right, and a protected identity only
    by the assigned unit's case workers."""
    if case.shredded:
        raise CaseNotFound("no case with this id is held by this node")
    if not may(principal, Action.READ_IDENTITY, case.unit):
        raise Forbidden("this role may not read documents of this case")
    assigned = principal.role is UserRole.CASEWORKER and principal.unit == case.unit
    if case.protected_identity and not assigned:
        raise Forbidden("documents of a protected identity are for the assigned unit only")


def _reference(
    filename: str,
    media_type: str,
    *,
    size: int,
    chunk_count: int,
    digest: bytes = bytes(DIGEST_BYTES),
    key: bytes = bytes(ATTACHMENT_KEY_BYTES),
    attachment_id: bytes = bytes(ATTACHMENT_ID_BYTES),
) -> AttachmentRef:
    """Build (and so check) an ``AttachmentRef``; bad names are ``invalid_field``."""
    reference = AttachmentRef(
        attachment_id=attachment_id,
        filename=filename,
        media_type=media_type,
        size=size,
        digest=digest,
        key=key,
        chunk_count=chunk_count,
    )
    try:
        return codec.check(reference, what="document")
    except LocalProtocolError as e:  # a name too long is a field error here, not a large body
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "filename or media_type") from e


def attachment_id_of(text: str) -> bytes:
    """An attachment id from the path (32 hex digits, or a UUID form).

    Raises:
        DocumentNotFound: not an id.
    """
    if not _ATTACHMENT_ID.fullmatch(text):
        raise DocumentNotFound("no such document on this case")
    return bytes.fromhex(text.replace("-", ""))


__all__: Sequence[str] = [
    "DEFAULT_MAX_DOCUMENT_BYTES",
    "DocumentList",
    "DocumentNotFound",
    "DocumentNotReady",
    "DocumentService",
    "DocumentTooLarge",
    "DocumentUnreadable",
    "DocumentView",
    "Download",
    "Upload",
    "attachment_id_of",
]
