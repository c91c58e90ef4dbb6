"""Attachment files: a document file encrypted into an attachment stream file, and back.

Owns the node's file-to-file pipeline around ``protocol.attachments``: :func:`encrypt_file` turns
a document file into an attachment stream file, and :func:`decrypt_file` turns a stream back into
the document its sealed ``AttachmentRef`` describes. The case API does not write plaintext
documents to disk at all: it streams uploads and downloads through the same protocol writer and
reader in ``node.cases.document_streams``; this pipeline is what ``bench/bench_protocol.py``
measures against GnuPG (file to file, as GnuPG works). Invariants:

* All the cryptography and the content digest are done by the protocol's ``AttachmentWriter`` and
  ``AttachmentReader`` (their buffer-filling ``*_into`` methods); this module only moves bytes
  between the files and them.
* Nothing appears under the target's name unless it is complete and, for a decryption, fully
  authenticated and matching the reference (chunk count, BLAKE3-256 digest, size): output goes to
  a ``0600`` temporary file in the target's folder, is fsynced, and is hard-linked to the target
  name (never over an existing file) only then. On any error the temporary file is removed.
* Memory is flat: a fixed pool of input and output buffers, about 3.5 MiB in all, whatever the
  file size.
* The calling thread runs the writer or reader; one helper thread does all the file I/O, in
  order: it reads the next blocks and writes the finished ones while the calling thread
  encrypts or decrypts, so that the I/O overlaps the cryptography on a second core. The call
  blocks: from asyncio, run it with ``asyncio.to_thread``. Sources are opened without
  following a symbolic link and must be regular files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final

from node.errors import NodeError
from node.private_files import TEMP_PREFIX, fsync_dir
from protocol.attachments import (
    FRAME_OVERHEAD_BYTES,
    HEADER_BYTES,
    AttachmentReader,
    AttachmentSummary,
    AttachmentWriter,
)
from protocol.errors import AttachmentRejected, ErrorCode
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import AttachmentRef

BLOCK_CHUNKS: Final = 8
"""Chunks per read, 512 KiB: measured faster than 256 KiB (half the thread hand-offs) and as
fast as 1 MiB, for less memory."""
INPUT_BUFFERS: Final = 3
"""Blocks read ahead by the I/O thread."""
OUTPUT_BUFFERS: Final = 3
"""Output buffers in flight between the calling thread and the I/O thread."""


class AttachmentFileError(NodeError):
    """A document or stream file cannot be used: not a regular file, or a symbolic link."""

    code: ClassVar[str] = "attachment_file"


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


_Job = tuple[memoryview, int] | None
"""A read (length -1: fill the buffer from the source) or a write (of that many bytes)."""


class _FileIO:
    """All the file reads and writes of one pipeline, done in order by one helper thread.

    The calling thread queues reads into its input buffers ahead of time (:meth:`read`) and takes
    them back filled, in order (:meth:`filled`); it takes free output buffers (:meth:`output`),
    fills them and queues them for writing (:meth:`write`). So the helper reads the next blocks
    and writes the previous ones while the caller encrypts or decrypts: the file I/O, which
    releases the GIL, runs on the second core. The first I/O error stops all further I/O and is
    raised to the caller by its next call, or on exit.
    """

    def __init__(self, in_fd: int, out_fd: int, output_bytes: int) -> None:
        self._in_fd, self._out_fd = in_fd, out_fd
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._filled: queue.SimpleQueue[tuple[memoryview, int]] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._error: OSError | None = None
        for _ in range(OUTPUT_BUFFERS):
            self._free.put(memoryview(bytearray(output_bytes)))
        self._thread = threading.Thread(target=self._run, name="attachment-file-io", daemon=True)

    def __enter__(self) -> _FileIO:
        self._thread.start()
        return self

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            buffer, length = job
            try:
                if self._error is not None:
                    pass
                elif length < 0:
                    self._filled.put((buffer, os.readv(self._in_fd, [buffer])))
                    continue
                else:
                    _write_all(self._out_fd, buffer[:length])
            except OSError as e:
                self._error = e
            if length < 0:
                self._filled.put((buffer, 0))  # after an error: the caller raises it
            else:
                self._free.put(buffer)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise OSError(self._error.errno, "reading or writing a file failed") from self._error

    def read(self, buffer: memoryview) -> None:
        """Queue a read filling ``buffer`` (as far as the source goes) from where reads are."""
        self._jobs.put((buffer, -1))

    def filled(self) -> tuple[memoryview, int]:
        """Return the next queued read's buffer and how many bytes it holds (0: the end).

        Raises:
            OSError: a read or write failed.
        """
        buffer, length = self._filled.get()
        self._raise_error()
        return buffer, length

    def output(self) -> memoryview:
        """Return a free output buffer, waiting until one is written out.

        Raises:
            OSError: a read or write failed.
        """
        buffer = self._free.get()
        self._raise_error()
        return buffer

    def write(self, buffer: memoryview, length: int) -> None:
        """Queue the first ``length`` bytes of an output buffer for writing; the buffer comes back
        to :meth:`output` once written."""
        self._jobs.put((buffer, length))

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._jobs.put(None)
        self._thread.join()
        if kind is None:
            self._raise_error()


@contextlib.contextmanager
def _source(path: Path) -> Iterator[int]:
    """Open a regular file for reading, without following a symbolic link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AttachmentFileError(f"{path} is a symbolic link") from e
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise AttachmentFileError(f"{path} is not a regular file")
        with contextlib.suppress(OSError):  # a hint only
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _staged(target: Path) -> Iterator[int]:
    """A ``0600`` temporary file beside ``target``, linked to it when the block completes.

    Raises:
        FileExistsError: ``target`` exists (it is never replaced); nothing is left behind.
    """
    if target.exists() or target.is_symlink():  # refused early; the link below is the real check
        raise FileExistsError(errno.EEXIST, "the target file exists", str(target))
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX)  # mkstemp creates 0600
    try:
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(temp, target)  # atomic, and fails if the name exists
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_dir(target.parent)


def encrypt_file(
    source: Path,
    target: Path,
    *,
    key: bytes,
    attachment_id: bytes,
    limits: Limits = DEFAULT_LIMITS,
) -> AttachmentSummary:
    """Encrypt the document ``source`` into the attachment stream file ``target``.

    Args:
        source: the document (a regular file, not a symbolic link).
        target: where the stream goes; must not exist. Written atomically, mode ``0600``.
        key: the fresh random 32-byte attachment key (never reused).
        attachment_id: the fresh random 16-byte attachment id.
        limits: the protocol limits (chunk size, chunk count).

    Returns:
        The summary (size, chunk count, digest) for the sealed ``AttachmentRef``.

    Raises:
        AttachmentFileError: ``source`` is a symbolic link or not a regular file.
        FileExistsError: ``target`` exists.
        LocalProtocolError: a bad key or id, or a document above the chunk-count limit.
        OSError: reading or writing failed.
    """
    writer = AttachmentWriter(key, attachment_id, limits=limits)
    chunk = limits.attachment_chunk_bytes
    blocks = [memoryview(bytearray(BLOCK_CHUNKS * chunk)) for _ in range(INPUT_BUFFERS)]
    # Room for a block and a held-back chunk, the header and every frame's overhead.
    room = writer.output_room(BLOCK_CHUNKS * chunk + chunk)
    with _source(source) as in_fd, _staged(target) as out_fd, _FileIO(in_fd, out_fd, room) as io:
        for block in blocks:
            io.read(block)
        block, n = io.filled()
        while n:
            out = io.output()
            io.write(out, writer.write_into(block[:n], out))
            io.read(block)
            block, n = io.filled()
        out = io.output()
        io.write(out, writer.close_into(out))
    return writer.summary


def decrypt_file(
    source: Path,
    target: Path,
    reference: AttachmentRef,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> AttachmentSummary:
    """Decrypt the attachment stream file ``source`` into the document ``target``.

    The document appears under ``target`` only once every chunk authenticated, the stream ended
    exactly after its final chunk, and its chunk count, digest and size are the reference's.

    Args:
        source: the received stream (a regular file, not a symbolic link).
        target: where the document goes; must not exist. Written atomically, mode ``0600``.
        reference: the ``AttachmentRef`` from the verified sealed message (key, id, chunk
            count, digest, size).
        limits: the protocol limits.

    Returns:
        The summary of the authenticated document (equal to the reference's figures).

    Raises:
        AttachmentRejected: the stream is corrupt, truncated, oversized or not the referenced
            document (``attachment_corrupt``, ``attachment_truncated``, ``oversized``,
            ``unsupported_version``); nothing is left under ``target``.
        AttachmentFileError: ``source`` is a symbolic link or not a regular file.
        FileExistsError: ``target`` exists.
        OSError: reading or writing failed.
    """
    reader = AttachmentReader(
        reference.key,
        reference.attachment_id,
        expected_chunks=reference.chunk_count,
        expected_digest=reference.digest,
        limits=limits,
    )
    frame = limits.attachment_chunk_bytes + FRAME_OVERHEAD_BYTES
    # The header is read apart, so that the blocks after it hold whole frames.
    header = memoryview(bytearray(HEADER_BYTES))
    blocks = [memoryview(bytearray(BLOCK_CHUNKS * frame)) for _ in range(INPUT_BUFFERS)]
    room = BLOCK_CHUNKS * frame + frame  # a block and a frame held over from the previous one
    with _source(source) as in_fd, _staged(target) as out_fd:
        with _FileIO(in_fd, out_fd, room) as io:
            io.read(header)
            for block in blocks:
                io.read(block)
            block, n = io.filled()
            while n:
                out = io.output()
                io.write(out, reader.feed_into(block[:n], out))
                if block is not header:
                    io.read(block)
                block, n = io.filled()
        summary = reader.finish()
        if summary.size != reference.size:
            raise AttachmentRejected(ErrorCode.ATTACHMENT_CORRUPT, "attachment size differs")
    return summary
