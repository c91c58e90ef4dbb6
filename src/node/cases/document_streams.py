"""Document streams: an uploaded body encrypted as it arrives, and a stored stream read back.

Owns the byte pipeline of a case document between the case API and the ``attachments/`` folder
(:class:`~node.attachment_store.AttachmentStore`), around ``protocol.attachments``' writer and
reader. Invariants:

* **No plaintext at rest.** An upload is encrypted piece by piece as the request body arrives
  (:class:`StreamSpool`); a download is decrypted piece by piece into the response
  (:func:`decrypted_pieces`). The document itself never touches the disk, unlike
  :mod:`node.attachment_files`, whose file-to-file pipeline needs the plaintext as a file (so it
  is used for documents that already are files, not for these).
* **Flat memory**: one body piece, one output buffer and one read block at a time, whatever the
  document's size.
* A stream appears under its name only complete: it is written to a ``0600`` temporary file in
  the target's folder, fsynced, and hard-linked to the name (never over an existing file) on
  :meth:`StreamSpool.commit`; an aborted spool leaves nothing.
* A stored stream is used only after a full pass authenticated every chunk and matched the
  reference (:func:`verify_stream`: chunk count, BLAKE3-256 digest, size); the streaming pass
  that follows authenticates each chunk again, so a file changed in between fails mid-way
  instead of passing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from node.private_files import TEMP_PREFIX, fsync_dir
from protocol.attachments import AttachmentReader, AttachmentSummary, AttachmentWriter
from protocol.errors import AttachmentRejected, ErrorCode
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import AttachmentRef

READ_BLOCK_BYTES: Final = 256 * 1024


class StreamSpool:
    """One upload being encrypted into the stream file ``target``.

    Args:
        target: the stream's final name (``AttachmentStore.outgoing_path``); must not exist.
        key: the fresh 32-byte attachment key.
        attachment_id: the fresh 16-byte attachment id.
        limits: the protocol limits (chunk size).

    Raises:
        FileExistsError: a spool for this target is open already.
    """

    def __init__(
        self, target: Path, *, key: bytes, attachment_id: bytes, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self._target = target
        self._temp = target.parent / f"{TEMP_PREFIX}{target.name}"
        self._writer = AttachmentWriter(key, attachment_id, limits=limits)
        self._fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._out = bytearray(self._writer.output_room(READ_BLOCK_BYTES))
        self.size = 0

    def write(self, piece: bytes) -> None:
        """Encrypt the next piece of the document and write the stream bytes it completes.

        Raises:
            OSError: writing failed.
        """
        self.size += len(piece)
        room = self._writer.output_room(len(piece))
        if room > len(self._out):
            self._out = bytearray(room)
        self._write_out(self._writer.write_into(piece, self._out))

    async def commit(self) -> AttachmentSummary:
        """Seal the final chunk, make the file durable and give it its name.

        Returns:
            The summary (size, chunk count, digest) for the ``AttachmentRef``.

        Raises:
            FileExistsError: the target exists (nothing is replaced; the spool is removed).
            OSError: writing failed.
        """
        self._write_out(self._writer.close_into(self._out))

        def durable() -> None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            try:
                os.link(self._temp, self._target)
            finally:
                self._temp.unlink(missing_ok=True)
            fsync_dir(self._target.parent)

        await asyncio.to_thread(durable)
        return self._writer.summary

    def abort(self) -> None:
        """Drop the spool: nothing is left behind."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        self._temp.unlink(missing_ok=True)

    def _write_out(self, length: int) -> None:
        view = memoryview(self._out)[:length]
        while view:
            view = view[os.write(self._fd, view) :]


def _reader(reference: AttachmentRef, limits: Limits) -> AttachmentReader:
    return AttachmentReader(
        reference.key,
        reference.attachment_id,
        expected_chunks=reference.chunk_count,
        expected_digest=reference.digest,
        limits=limits,
    )


def _finish(reader: AttachmentReader, reference: AttachmentRef) -> AttachmentSummary:
    summary = reader.finish()
    if summary.size != reference.size:
        raise AttachmentRejected(ErrorCode.ATTACHMENT_CORRUPT, "attachment size differs")
    return summary


def _open_stream(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


def verify_stream(
    path: Path, reference: AttachmentRef, *, limits: Limits = DEFAULT_LIMITS
) -> AttachmentSummary:
    """Decrypt a stored stream completely, discarding the plaintext, and check it (blocking).

    Args:
        path: the stream file.
        reference: the document's ``AttachmentRef`` (key, id, chunk count, digest, size).
        limits: the protocol limits.

    Returns:
        The authenticated summary.

    Raises:
        AttachmentRejected: the stream is corrupt, truncated or not the referenced document.
        OSError: the file cannot be read (or is a symbolic link).
    """
    reader = _reader(reference, limits)
    out = bytearray(reader.output_room(READ_BLOCK_BYTES))
    fd = _open_stream(path)
    try:
        while block := os.read(fd, READ_BLOCK_BYTES):
            reader.feed_into(block, out)
    finally:
        os.close(fd)
    return _finish(reader, reference)


async def decrypted_pieces(
    path: Path, reference: AttachmentRef, *, limits: Limits = DEFAULT_LIMITS
) -> AsyncIterator[bytes]:
    """The document's plaintext, piece by piece, each authenticated at its position.

    Call :func:`verify_stream` first: the pieces are released before the stream's end is seen.

    Raises:
        AttachmentRejected: a chunk fails (the file changed since it was verified).
        OSError: the file cannot be read.
    """
    reader = _reader(reference, limits)
    fd = _open_stream(path)
    try:
        while block := await asyncio.to_thread(os.read, fd, READ_BLOCK_BYTES):
            for piece in reader.feed(block):
                yield piece
    finally:
        os.close(fd)
    _finish(reader, reference)


__all__ = ["READ_BLOCK_BYTES", "StreamSpool", "decrypted_pieces", "verify_stream"]
