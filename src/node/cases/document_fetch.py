"""Fetching a received referral's documents from the home node, in the background.

Owns the transfer of document streams between the nodes. The choice: the **receiving node
pulls**. The home node only offers each stream to its case's peer
(``attachments/out/<peer>/<id>``, served by ``GET /federation/v1/attachments/{id}`` to that peer
alone, over mutual TLS); the receiving node, once the referral is stored, fetches every document
of it (:meth:`FederationClient.download_attachment`, streamed into
``attachments/in/<peer>/<id>``), then verifies it against the sealed reference. Pulling keeps
the home node's sending path unchanged (the referral is one queued message), lets the receiving
node fetch at its own pace and bound what it takes (the exact stream length follows from the
reference), and needs no upload state at the home node. Invariants:

* **What is pending is in the database**: the referral's transaction records each document as
  ``pending`` (:class:`~node.cases.documents.DocumentLedger`); this loop works from those rows
  only, so a restart resumes where it stopped. A half-fetched stream is never visible (the
  store renames it into place on commit); a stale temporary file from a crash is removed.
* A document is ``verified`` only after its whole stream authenticated, ended after its final
  chunk and matched the reference's chunk count, digest and size. A stream that fails is
  deleted and fetched again; every failure is logged by code (never content) and retried with
  exponential backoff up to a cap. Nothing here ever stops the loop or the node.
* A document of a shredded case is forgotten (its reference no longer opens).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final, Protocol

from node.attachment_store import AttachmentStore
from node.cases.document_streams import verify_stream
from node.cases.documents import PENDING, VERIFIED, DocumentRecords, StoredDocument
from node.errors import NodeError
from node.federation.server import AttachmentExists, AttachmentNotFound
from node.private_files import TEMP_PREFIX
from node.storage.vault import CaseShredded
from protocol.attachments import stream_size_for
from protocol.errors import AttachmentRejected, ProtocolError
from protocol.limits import Limits

logger = logging.getLogger(__name__)

POLL_S: Final = 1.0
BATCH: Final = 8
RETRY_BASE_S: Final = 2.0
RETRY_CAP_S: Final = 300.0


class Downloader(Protocol):
    """What fetches a stream from a peer (``FederationClient.download_attachment``)."""

    def __call__(
        self, peer: str, attachment_id: bytes, *, max_bytes: int
    ) -> AsyncIterator[bytes]: ...


class DocumentFetcher:
    """Fetches and verifies received documents until stopped.

    Args:
        records: the document rows.
        store: the attachment streams on disk.
        root: the store's folder (where a crash may have left a temporary file).
        download: streams one attachment from a peer.
        clock: Unix seconds now.
        limits: the protocol limits.
        poll_s: how often to look for due documents.
        retry_base_s: the first retry delay (doubling per failed attempt, with jitter).
        retry_cap_s: the longest retry delay.
    """

    def __init__(
        self,
        *,
        records: DocumentRecords,
        store: AttachmentStore,
        root: Path,
        download: Downloader,
        clock: Callable[[], float],
        limits: Limits,
        poll_s: float = POLL_S,
        retry_base_s: float = RETRY_BASE_S,
        retry_cap_s: float = RETRY_CAP_S,
    ) -> None:
        self._records = records
        self._store = store
        self._root = root
        self._download = download
        self._clock = clock
        self._limits = limits
        self._poll_s = poll_s
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s

    async def run(self) -> None:
        """Fetch due documents forever (cancel the task to stop)."""
        while True:
            done = 0
            try:
                done = await self.run_once()
            except NodeError as e:  # e.g. the database is away: said once per poll, no traceback
                logger.warning("documents: fetch round failed: %s", e.code)
            except Exception:  # the loop must not die; the reason is logged
                logger.exception("documents: fetch round failed")
            if done == 0:
                await asyncio.sleep(self._poll_s)

    async def run_once(self) -> int:
        """Try every due document once.

        Returns:
            How many were tried.
        """
        due = await self._records.due(self._clock(), BATCH)
        for case_id, attachment_id in due:
            await self._fetch_one(case_id, attachment_id)
        return len(due)

    async def _fetch_one(self, case_id: bytes, attachment_id: bytes) -> None:
        try:
            document = await self._records.document(case_id, attachment_id)
        except CaseShredded:
            await self._records.forget(case_id, attachment_id)
            return
        if document is None or document.state != PENDING:
            return
        peer = document.peer
        try:
            path = await self._fetched(document)
            await asyncio.to_thread(verify_stream, path, document.reference, limits=self._limits)
        except AttachmentRejected as e:
            self._discard(document)
            await self._failed(document, e.code.value)
            logger.warning("RX [%s] document stream refused: %s", peer, e.code.value)
            return
        except (NodeError, ProtocolError, OSError) as e:
            code = _code(e)
            await self._failed(document, code)
            logger.info("RX [%s] document fetch failed, will retry: %s", peer, code)
            return
        await self._records.mark(case_id, attachment_id, state=VERIFIED)
        logger.info("RX [%s] document fetched and verified", peer)

    async def _fetched(self, document: StoredDocument) -> Path:
        """The received stream file, downloading it first unless it is there."""
        peer, reference = document.peer, document.reference
        with contextlib.suppress(AttachmentNotFound):
            return self._store.received(peer, reference.attachment_id)
        chunk = self._limits.attachment_chunk_bytes
        expected = stream_size_for(reference.size, chunk)
        try:
            upload = await self._store.open(peer, reference.attachment_id)
        except AttachmentExists:  # a temporary file left by a crash: this loop is the only writer
            self._stale_temp(peer, reference.attachment_id).unlink(missing_ok=True)
            upload = await self._store.open(peer, reference.attachment_id)
        try:
            async for piece in self._download(peer, reference.attachment_id, max_bytes=expected):
                await upload.write(piece)
            await upload.commit()
        except BaseException:
            await upload.abort()
            raise
        return self._store.received(peer, reference.attachment_id)

    def _stale_temp(self, peer: str, attachment_id: bytes) -> Path:
        return self._root / "in" / peer / f"{TEMP_PREFIX}{attachment_id.hex()}"

    def _discard(self, document: StoredDocument) -> None:
        with contextlib.suppress(AttachmentNotFound, OSError):
            self._store.received(document.peer, document.reference.attachment_id).unlink()

    async def _failed(self, document: StoredDocument, code: str) -> None:
        delay = min(self._retry_cap_s, self._retry_base_s * 2 ** min(document.attempts, 20))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
        await self._records.mark(
            document.case_id,
            document.reference.attachment_id,
            state=PENDING,
            error=code[:64],
            retry_at=self._clock() + delay,
        )


def _code(error: Exception) -> str:
    """The stable code of a failure (an ``OSError`` has none: ``io_error``)."""
    if isinstance(error, ProtocolError):
        return error.code.value
    if isinstance(error, NodeError):
        return error.code
    return "io_error"


__all__ = ["DocumentFetcher", "Downloader"]
