"""Attachment streams at rest: received from peers, or waiting to be fetched by one.

Owns the ``attachments/`` folder of the data directory. What is stored is always the encrypted
stream of ``protocol.attachments`` exactly as it travels (the key is inside the sealed referral,
which the node keeps under the case key), so a copy of this folder reveals no document. Invariants:

* ``attachments/in/<peer>/<id>`` holds streams a peer uploaded; ``attachments/out/<peer>/<id>``
  streams this node offers to that peer only. Ids are 16 bytes, written as 32 hex digits.
* A stream is written to a ``0600`` temporary file in the same folder, fsynced, and renamed into
  place only on commit: a half-received upload is never visible, and an aborted one leaves nothing.
* An id is never overwritten (``AttachmentExists``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from node.federation.server import AttachmentExists, AttachmentNotFound
from node.private_files import TEMP_PREFIX, fsync_dir

READ_CHUNK_BYTES: Final = 64 * 1024
_DIR_MODE: Final = 0o700


def _folder(root: Path, direction: str, peer: str) -> Path:
    folder = root / direction / peer
    folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    return folder


class _Upload:
    """One stream being written: a temporary file renamed into place on commit."""

    def __init__(self, final: Path) -> None:
        self._final = final
        self._temp = final.parent / f"{TEMP_PREFIX}{final.name}"
        fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._file = os.fdopen(fd, "wb")

    async def write(self, chunk: bytes) -> None:
        self._file.write(chunk)

    async def commit(self) -> None:
        def durable() -> None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if self._final.exists():
                self._temp.unlink()
                raise AttachmentExists("this attachment was already received")
            self._temp.rename(self._final)
            fsync_dir(self._final.parent)

        await asyncio.to_thread(durable)

    async def abort(self) -> None:
        self._file.close()
        self._temp.unlink(missing_ok=True)


class AttachmentStore:
    """The node's attachment streams (an ``AttachmentSink`` and an ``AttachmentSource``).

    Args:
        root: the ``attachments`` folder in the data directory (created ``0700``).
    """

    def __init__(self, root: Path) -> None:
        root.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self._root = root

    async def open(self, peer: str, attachment_id: bytes) -> _Upload:
        """Start receiving a stream from ``peer`` (the federation listener's sink).

        Raises:
            AttachmentExists: this id was already received from ``peer``, or is being received.
        """
        final = _folder(self._root, "in", peer) / attachment_id.hex()
        if final.exists():
            raise AttachmentExists("this attachment was already received")
        try:
            return _Upload(final)
        except FileExistsError as e:
            raise AttachmentExists("this attachment is being received") from e

    def received(self, peer: str, attachment_id: bytes) -> Path:
        """The file of a stream received from ``peer``.

        Raises:
            AttachmentNotFound: not received (yet).
        """
        path = self._root / "in" / peer / attachment_id.hex()
        if not path.is_file():
            raise AttachmentNotFound("no such attachment")
        return path

    def outgoing_path(self, peer: str, attachment_id: bytes) -> Path:
        """Where to write a stream that ``peer`` may fetch (write it there atomically)."""
        return _folder(self._root, "out", peer) / attachment_id.hex()

    def discard(self, peer: str, attachment_id: bytes, *, received: bool) -> bool:
        """Delete a stream (received from ``peer``, or offered to it), e.g. once its case is
        shredded: its key is gone, and an unreadable file is still no file to keep.

        Returns:
            Whether there was a file.
        """
        path = self._root / ("in" if received else "out") / peer / attachment_id.hex()
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def source(self) -> OfferedAttachments:
        """The federation listener's source: streams offered to each peer."""
        return OfferedAttachments(self._root)


class OfferedAttachments:
    """Streams this node offers, each to one peer only."""

    def __init__(self, root: Path) -> None:
        self._root = root

    async def open(self, peer: str, attachment_id: bytes) -> AsyncIterator[bytes]:
        """Return the chunks of a stream offered to ``peer``.

        Raises:
            AttachmentNotFound: no such stream for this peer (whether it exists for another
                peer is not told).
        """
        path = self._root / "out" / peer / attachment_id.hex()
        if not path.is_file():
            raise AttachmentNotFound("no such attachment")
        return _chunks(path)


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK_BYTES):
            yield chunk
