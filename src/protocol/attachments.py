"""Attachments: large documents streamed as chunked AEAD under a per-attachment key.

Owns the attachment stream format (version 1), its key derivation, nonces and associated data,
and the incremental encryptor, decryptor, writer and reader that a node drives over a stream.
The sealed message carries the 32-byte attachment key and an ``AttachmentRef`` (id, BLAKE3-256
digest of the plaintext, chunk count); the stream itself travels separately. The construction is
the STREAM online AE of Hoang, Reyhanitabar, Rogaway and Vizár (as in ``age``): ChaCha20-Poly1305
with the chunk index and a final flag in the nonce.

Stream layout (every integer big-endian; ``docs/spec/40-attachments.md`` has every byte)::

    header  = "CNAS" || version (1) || attachment_id (16) || chunk_size (u32)        25 bytes
    frame   = flag (1: 0x00 more follow, 0x01 final) || length (u32) || ciphertext (length)
    stream  = header || frame_0 || ... || frame_{n-1}        frame_{n-1} and only it is final

    chunk_key = HKDF-SHA256(ikm=key, salt=none, info="citynode/v1 attachment-key" 0x00
                            || version || attachment_id, length=32)
    nonce_i   = i (11 bytes) || flag (1)
    aad_i     = header || i (8 bytes) || flag (1)

Invariants:

* Chunking is canonical: every non-final chunk holds exactly ``chunk_size`` plaintext bytes; the
  final chunk holds 1..chunk_size bytes, or 0 only when it is the only chunk (empty attachment).
  So ``chunk_count = max(1, ceil(size / chunk_size))`` and a (key, id, chunk size, plaintext)
  has exactly one stream.
* Reordering, duplicating or dropping a chunk, cutting the stream, appending after the final
  chunk, flipping any bit, changing the header, or splicing chunks from another attachment (even
  one under the same key with another id) is refused with :class:`AttachmentRejected`:
  ``attachment_truncated`` when the stream ends before its final chunk, ``oversized`` when it
  passes a limit, ``unsupported_version`` for an unknown version, ``attachment_corrupt`` for
  everything else. After a refusal the object refuses every further call.
* Memory is flat: a decryptor or reader holds at most one frame, whatever the attachment size.
  A chunk's plaintext is released once that chunk authenticates at its position; the attachment
  as a whole is authentic only when ``finish`` returns. Callers stage plaintext and discard it on
  any error (the ``*_into`` methods may leave unauthenticated bytes in the caller's buffer when
  they refuse).
* The content digest is BLAKE3-256 (unkeyed, 32 bytes) of the whole plaintext, computed by the
  encryptor or decryptor itself over exactly the bytes it sealed or opened. It is what makes the
  signed ``AttachmentRef`` commit to the document: the per-chunk AEAD alone does not, since the
  sender knows the key. BLAKE3 rather than SHA-256 for speed (about 0.2 against 0.6 ns per byte
  here): SHA-256 would cost more than the encryption itself.
* Pure: the key and id come in as arguments. A key must encrypt exactly one attachment (the node
  draws a fresh random key per attachment); reusing one for two plaintexts reuses nonces.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.errors import AttachmentRejected, ErrorCode, LocalProtocolError
from protocol.limits import DEFAULT_LIMITS, Limits

ATTACHMENT_KEY_BYTES: Final = 32
ATTACHMENT_ID_BYTES: Final = 16
STREAM_MAGIC: Final = b"CNAS"
STREAM_VERSION: Final = 1
HEADER_BYTES: Final = 25
FRAME_PREFIX_BYTES: Final = 5
TAG_BYTES: Final = 16
FLAG_MORE: Final = 0x00
FLAG_FINAL: Final = 0x01
DIGEST_BYTES: Final = 32
"""Length of the content digest, BLAKE3-256 of the plaintext."""
FRAME_OVERHEAD_BYTES: Final = FRAME_PREFIX_BYTES + TAG_BYTES
_KEY_INFO: Final = b"citynode/v1 attachment-key\x00"

Bytes = bytes | bytearray | memoryview
WritableBytes = bytearray | memoryview
"""A caller's output buffer for the ``*_into`` methods (a writable, byte-format buffer)."""


def content_digest(plaintext: Bytes) -> bytes:
    """Return the content digest of a whole plaintext held in memory: BLAKE3-256, 32 bytes."""
    return blake3(plaintext).digest()


@dataclass(frozen=True, slots=True)
class AttachmentSummary:
    """What a complete stream proved: to be checked against the sealed ``AttachmentRef``.

    Attributes:
        size: plaintext bytes.
        chunk_count: chunks in the stream, the final one included.
        digest: BLAKE3-256 of the whole plaintext (:func:`content_digest`).
    """

    size: int
    chunk_count: int
    digest: bytes


def chunk_count_for(size: int, chunk_size: int) -> int:
    """Return the number of chunks of an attachment of ``size`` plaintext bytes (at least 1)."""
    return max(1, -(-size // chunk_size))


def stream_size_for(size: int, chunk_size: int) -> int:
    """Return the exact byte length of the stream of an attachment of ``size`` plaintext bytes."""
    return HEADER_BYTES + size + chunk_count_for(size, chunk_size) * FRAME_OVERHEAD_BYTES


def encode_header(attachment_id: bytes, chunk_size: int) -> bytes:
    """Return the 25-byte stream header (magic, version, attachment id, chunk size)."""
    return (
        STREAM_MAGIC
        + bytes([STREAM_VERSION])
        + bytes(attachment_id)
        + chunk_size.to_bytes(4, "big")
    )


def _nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _aad(header: bytes, index: int, final: bool) -> bytes:
    return header + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


def _prefix(final: bool, length: int) -> bytes:
    return (b"\x01" if final else b"\x00") + length.to_bytes(4, "big")


def _too_small() -> LocalProtocolError:
    return LocalProtocolError(ErrorCode.INVALID_FIELD, "output buffer is too small")


def _chunk_aead(key: bytes, attachment_id: bytes) -> ChaCha20Poly1305:
    info = _KEY_INFO + bytes([STREAM_VERSION]) + attachment_id
    chunk_key = HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(key)
    return ChaCha20Poly1305(chunk_key)


def _check_inputs(key: bytes, attachment_id: bytes, chunk_size: int, limits: Limits) -> None:
    if len(key) != ATTACHMENT_KEY_BYTES:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "attachment key must be 32 bytes")
    if len(attachment_id) != ATTACHMENT_ID_BYTES:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "attachment id must be 16 bytes")
    if not limits.min_attachment_chunk_bytes <= chunk_size <= limits.attachment_chunk_bytes:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "attachment chunk size is out of range")


def _check_expected(chunks: int | None, digest: bytes | None, limits: Limits) -> None:
    if chunks is not None and not 1 <= chunks <= limits.max_attachment_chunks:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "expected chunk count is out of range")
    if digest is not None and len(digest) != DIGEST_BYTES:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "expected digest must be 32 bytes")


class _ChunkSequence:
    """The position in one attachment's chunk sequence, shared by both directions."""

    def __init__(
        self, key: bytes, attachment_id: bytes, chunk_size: int | None, limits: Limits
    ) -> None:
        size = limits.attachment_chunk_bytes if chunk_size is None else chunk_size
        _check_inputs(key, attachment_id, size, limits)
        self.chunk_size: Final = size
        self.header: Final = encode_header(attachment_id, size)
        self._aead = _chunk_aead(bytes(key), bytes(attachment_id))
        self._max_chunks = limits.max_attachment_chunks
        self._hash = blake3()
        self._index = 0
        self._size = 0
        self._done = False

    def _room_for(self, final: bool) -> bool:
        """Whether this chunk, and a final one after it if it is not final, fit the limit."""
        return self._index + (1 if final else 2) <= self._max_chunks

    def _advance(self, plaintext: Bytes, final: bool) -> None:
        self._hash.update(plaintext)
        self._index += 1
        self._size += len(plaintext)
        self._done = final

    def _summary(self) -> AttachmentSummary:
        return AttachmentSummary(self._size, self._index, self._hash.digest())


class AttachmentEncryptor(_ChunkSequence):
    """Seals one attachment chunk by chunk; the caller says which chunk is the final one.

    ``header`` followed by the frames of :meth:`encrypt_chunk` is the stream. To feed pieces of
    any size, use :class:`AttachmentWriter`.
    """

    def __init__(
        self,
        key: bytes,
        attachment_id: bytes,
        *,
        chunk_size: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """Start an attachment.

        Args:
            key: the fresh 32-byte attachment key (carried in the sealed message).
            attachment_id: the 16-byte attachment id (named in the sealed ``AttachmentRef``).
            chunk_size: plaintext bytes per non-final chunk; ``limits.attachment_chunk_bytes``
                when omitted.
            limits: the protocol limits.

        Raises:
            LocalProtocolError: a key, id or chunk size out of range (``invalid_field``).
        """
        super().__init__(key, attachment_id, chunk_size, limits)

    def _next_index(self, n: int, final: bool) -> int:
        """Check that a chunk of ``n`` bytes may come next; return its index."""
        if self._done:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, "attachment already finished")
        if final:
            canonical = 0 < n <= self.chunk_size or (n == 0 and self._index == 0)
        else:
            canonical = n == self.chunk_size
        if not canonical:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, "attachment chunk has a bad length")
        if not self._room_for(final):
            raise LocalProtocolError(ErrorCode.OVERSIZED, "attachment has too many chunks")
        return self._index

    def seal_chunk(self, plaintext: Bytes, *, final: bool) -> tuple[bytes, bytes]:
        """Seal the next chunk; return its frame as (prefix, ciphertext), not joined.

        Args:
            plaintext: exactly ``chunk_size`` bytes for a non-final chunk; 1..chunk_size for the
                final one, or 0 when it is the only chunk.
            final: whether this is the last chunk.

        Returns:
            The 5-byte frame prefix (flag, length) and the ciphertext with its 16-byte tag.

        Raises:
            LocalProtocolError: a chunk after the final one or of a non-canonical length
                (``invalid_field``), or more than ``max_attachment_chunks`` (``oversized``).
        """
        index = self._next_index(len(plaintext), final)
        ciphertext = self._aead.encrypt(
            _nonce(index, final), plaintext, _aad(self.header, index, final)
        )
        self._advance(plaintext, final)
        return _prefix(final, len(ciphertext)), ciphertext

    def seal_chunk_into(self, plaintext: Bytes, out: WritableBytes, *, final: bool) -> int:
        """Seal the next chunk straight into ``out``: no copy of the plaintext or ciphertext.

        Args:
            plaintext: as for :meth:`seal_chunk`.
            out: where the whole frame (prefix, ciphertext, tag) is written, from its start; at
                least ``len(plaintext) + FRAME_OVERHEAD_BYTES`` bytes.
            final: whether this is the last chunk.

        Returns:
            The frame's length.

        Raises:
            LocalProtocolError: as :meth:`seal_chunk`; ``out`` too small (``invalid_field``).
        """
        n = len(plaintext)
        index = self._next_index(n, final)
        end = n + FRAME_OVERHEAD_BYTES
        view = memoryview(out)
        if len(view) < end:
            raise _too_small()
        self._aead.encrypt_into(
            _nonce(index, final),
            plaintext,
            _aad(self.header, index, final),
            view[FRAME_PREFIX_BYTES:end],
        )
        view[:FRAME_PREFIX_BYTES] = _prefix(final, n + TAG_BYTES)
        self._advance(plaintext, final)
        return end

    def encrypt_chunk(self, plaintext: Bytes, *, final: bool) -> bytes:
        """Seal the next chunk; return its whole frame. Arguments and errors as ``seal_chunk``."""
        prefix, ciphertext = self.seal_chunk(plaintext, final=final)
        return prefix + ciphertext

    def finish(self) -> AttachmentSummary:
        """Return the summary for the sealed ``AttachmentRef``.

        Raises:
            LocalProtocolError: the final chunk was not written yet (``invalid_field``).
        """
        if not self._done:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, "final chunk not written yet")
        return self._summary()


class AttachmentDecryptor(_ChunkSequence):
    """Opens one attachment frame by frame, in order, refusing anything out of place.

    The caller has parsed (or knows) the header; :class:`AttachmentReader` does that from bytes.
    """

    def __init__(
        self,
        key: bytes,
        attachment_id: bytes,
        *,
        chunk_size: int | None = None,
        expected_chunks: int | None = None,
        expected_digest: bytes | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """Start opening an attachment.

        Args:
            key: the 32-byte attachment key from the verified sealed message.
            attachment_id: the 16-byte id from the verified ``AttachmentRef``.
            chunk_size: the stream's chunk size (from its header); the default limit if omitted.
            expected_chunks: the ``AttachmentRef``'s chunk count, checked as frames arrive.
            expected_digest: the ``AttachmentRef``'s digest, checked by :meth:`finish`.
            limits: the protocol limits.

        Raises:
            LocalProtocolError: a key, id, chunk size or expectation out of range
                (``invalid_field``).
        """
        super().__init__(key, attachment_id, chunk_size, limits)
        _check_expected(expected_chunks, expected_digest, limits)
        self._expected_chunks = expected_chunks
        self._expected_digest = expected_digest
        self._failed = False

    @property
    def done(self) -> bool:
        """Whether the final chunk has been opened."""
        return self._done

    def _fail(self, code: ErrorCode, message: str) -> AttachmentRejected:
        self._failed = True
        return AttachmentRejected(code, message)

    def _read_prefix(self, prefix: Bytes) -> tuple[bool, int]:
        """Check a frame prefix against the next position; return (final, ciphertext length)."""
        if self._failed:
            raise AttachmentRejected(ErrorCode.ATTACHMENT_CORRUPT, "attachment already refused")
        if self._done:
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment continues after its end")
        flag, length = prefix[0], int.from_bytes(prefix[1:5], "big")
        if flag not in (FLAG_MORE, FLAG_FINAL):
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment frame has a bad flag")
        final = flag == FLAG_FINAL
        if not self._room_for(final):
            raise self._fail(ErrorCode.OVERSIZED, "attachment has too many chunks")
        expected = self._expected_chunks
        if expected is not None and (self._index + 1 >= expected) != final:
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment chunk count differs")
        full = self.chunk_size + TAG_BYTES
        smallest = TAG_BYTES if self._index == 0 else TAG_BYTES + 1
        if not (smallest <= length <= full if final else length == full):
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment frame has a bad length")
        return final, length

    def _open(self, final: bool, ciphertext: Bytes) -> bytes:
        """Authenticate and decrypt the next chunk whose prefix :meth:`_read_prefix` accepted."""
        index = self._index
        try:
            plaintext = self._aead.decrypt(
                _nonce(index, final), ciphertext, _aad(self.header, index, final)
            )
        except InvalidTag as e:
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment chunk failed") from e
        self._advance(plaintext, final)
        return plaintext

    def _open_into(self, final: bool, ciphertext: Bytes, out: memoryview) -> int:
        """As :meth:`_open`, writing the plaintext to the start of ``out`` (room checked by the
        caller); return its length. On refusal ``out`` holds unauthenticated bytes."""
        index = self._index
        target = out[: len(ciphertext) - TAG_BYTES]
        try:
            self._aead.decrypt_into(
                _nonce(index, final), ciphertext, _aad(self.header, index, final), target
            )
        except InvalidTag as e:
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment chunk failed") from e
        self._advance(target, final)
        return len(target)

    def decrypt_chunk(self, frame: Bytes) -> bytes:
        """Open the next frame (flag, length, ciphertext) and return its plaintext.

        Args:
            frame: one whole frame as :meth:`AttachmentEncryptor.encrypt_chunk` returns it.

        Returns:
            The chunk's plaintext, authentic at its position in this attachment.

        Raises:
            AttachmentRejected: ``attachment_corrupt`` (bad frame, failed authentication, wrong
                position, a chunk after the final one, a chunk count other than expected) or
                ``oversized`` (more chunks than the limit).
        """
        view = memoryview(frame)
        if len(view) < FRAME_PREFIX_BYTES:
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment frame is too short")
        final, length = self._read_prefix(view[:FRAME_PREFIX_BYTES])
        if len(view) != FRAME_PREFIX_BYTES + length:
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment frame has a bad length")
        return self._open(final, view[FRAME_PREFIX_BYTES:])

    def finish(self) -> AttachmentSummary:
        """Confirm the attachment is complete and matches what the sealed message promised.

        Returns:
            The summary (size, chunk count, BLAKE3-256 digest of the plaintext).

        Raises:
            AttachmentRejected: ``attachment_truncated`` if the final chunk was not seen,
                ``attachment_corrupt`` if the digest differs from ``expected_digest`` or the
                stream was refused before.
        """
        if self._failed:
            raise AttachmentRejected(ErrorCode.ATTACHMENT_CORRUPT, "attachment already refused")
        if not self._done:
            raise self._fail(ErrorCode.ATTACHMENT_TRUNCATED, "attachment ended before its end")
        summary = self._summary()
        expected = self._expected_digest
        if expected is not None and not hmac.compare_digest(summary.digest, expected):
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment digest differs")
        return summary


class AttachmentWriter:
    """Turns plaintext pieces of any size into stream bytes, holding at most one chunk.

    The header comes out with the first returned pieces. A full chunk is held back until more
    data or :meth:`close` shows whether it is the final one.
    """

    def __init__(
        self,
        key: bytes,
        attachment_id: bytes,
        *,
        chunk_size: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """Start an attachment; arguments as for :class:`AttachmentEncryptor`.

        Raises:
            LocalProtocolError: a key, id or chunk size of the wrong size (``invalid_field``).
        """
        self._encryptor = AttachmentEncryptor(
            key, attachment_id, chunk_size=chunk_size, limits=limits
        )
        self._pending = bytearray()
        self._header_sent = False
        self._summary: AttachmentSummary | None = None

    def output_room(self, size: int) -> int:
        """Return how many bytes of ``out`` :meth:`write_into` of ``size`` plaintext bytes (or
        :meth:`close_into`, ``size`` 0) may need: at most one frame more than the data fills."""
        total = len(self._pending) + size
        frames = total // self._encryptor.chunk_size + 1
        header = 0 if self._header_sent else HEADER_BYTES
        return header + total + frames * FRAME_OVERHEAD_BYTES

    def _start_into(self, out: memoryview) -> int:
        if self._header_sent:
            return 0
        self._header_sent = True
        out[:HEADER_BYTES] = self._encryptor.header
        return HEADER_BYTES

    def write_into(self, data: Bytes, out: WritableBytes) -> int:
        """Add plaintext; write the stream bytes now ready to the start of ``out``.

        The plaintext is encrypted straight into ``out``, except a trailing full chunk, which is
        held back (copied) until more data or :meth:`close_into` shows whether it is the final
        one. ``data`` may be reused as soon as this returns.

        Args:
            data: plaintext, any length.
            out: at least :meth:`output_room` ``(len(data))`` bytes.

        Returns:
            How many bytes of ``out`` now hold stream bytes, to be written in order.

        Raises:
            LocalProtocolError: the writer was closed, ``out`` is too small (``invalid_field``),
                or the attachment grew past ``max_attachment_chunks`` (``oversized``).
        """
        if self._summary is not None:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, "attachment already finished")
        view = memoryview(data).cast("B")
        target = memoryview(out)
        if len(target) < self.output_room(len(view)):
            raise _too_small()
        written = self._start_into(target)
        seal, size = self._encryptor.seal_chunk_into, self._encryptor.chunk_size
        pos, end = 0, len(view)
        while pos < end:
            if len(self._pending) == size:
                written += seal(self._pending, target[written:], final=False)
                self._pending = bytearray()
            if not self._pending and end - pos > size:
                # More data follows this full chunk, so it is not final: seal it in place.
                written += seal(view[pos : pos + size], target[written:], final=False)
                pos += size
                continue
            take = min(size - len(self._pending), end - pos)
            self._pending += view[pos : pos + take]
            pos += take
        return written

    def close_into(self, out: WritableBytes) -> int:
        """Seal the final chunk into ``out`` (:meth:`output_room` ``(0)`` bytes); return how many
        bytes it holds. ``summary`` is then set.

        Raises:
            LocalProtocolError: the writer was closed already, or ``out`` is too small.
        """
        target = memoryview(out)
        if len(target) < self.output_room(0):
            raise _too_small()
        written = self._start_into(target)
        written += self._encryptor.seal_chunk_into(self._pending, target[written:], final=True)
        self._pending = bytearray()
        self._summary = self._encryptor.finish()
        return written

    def write(self, data: Bytes) -> list[bytes]:
        """Add plaintext; return the stream bytes now ready, as pieces to write in order.

        Raises:
            LocalProtocolError: as :meth:`write_into`.
        """
        view = memoryview(data).cast("B")
        buffer = bytearray(self.output_room(len(view)))
        written = self.write_into(view, buffer)
        return [bytes(memoryview(buffer)[:written])] if written else []

    def close(self) -> list[bytes]:
        """Seal the final chunk; return the remaining stream bytes. ``summary`` is then set."""
        buffer = bytearray(self.output_room(0))
        written = self.close_into(buffer)
        return [bytes(memoryview(buffer)[:written])]

    @property
    def summary(self) -> AttachmentSummary:
        """The summary for the sealed ``AttachmentRef``, once :meth:`close` has run.

        Raises:
            LocalProtocolError: the writer is not closed yet.
        """
        if self._summary is None:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, "attachment not closed yet")
        return self._summary


class _ReadState(Enum):
    HEADER = auto()
    PREFIX = auto()
    BODY = auto()
    DONE = auto()


class AttachmentReader:
    """Parses stream bytes fed in pieces of any size and returns the authenticated plaintext.

    Holds at most one frame: an oversized length is refused from its 5-byte prefix, before any of
    its body is buffered. States, in order: header, then (prefix, body) per frame, then done;
    a byte after the final frame is refused.
    """

    def __init__(
        self,
        key: bytes,
        attachment_id: bytes,
        *,
        expected_chunks: int | None = None,
        expected_digest: bytes | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        """Start reading a stream.

        Args:
            key: the 32-byte attachment key from the verified sealed message.
            attachment_id: the 16-byte id the stream's header must name.
            expected_chunks: the chunk count from the ``AttachmentRef``, if known.
            expected_digest: the plaintext digest from the ``AttachmentRef``, if known.
            limits: the protocol limits (chunk size bounds, chunk count).

        Raises:
            LocalProtocolError: a key, id or expectation out of range (``invalid_field``).
        """
        _check_inputs(key, attachment_id, limits.attachment_chunk_bytes, limits)
        _check_expected(expected_chunks, expected_digest, limits)
        self._key = bytes(key)
        self._attachment_id = bytes(attachment_id)
        self._expected_chunks = expected_chunks
        self._expected_digest = expected_digest
        self._limits = limits
        self._decryptor: AttachmentDecryptor | None = None
        self._state = _ReadState.HEADER
        self._want = HEADER_BYTES
        self._final = False
        self._pending = bytearray()
        self._failed = False

    def _fail(self, code: ErrorCode, message: str) -> AttachmentRejected:
        self._failed = True
        return AttachmentRejected(code, message)

    def _read_header(self, header: Bytes) -> None:
        if bytes(header[:4]) != STREAM_MAGIC:
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "not an attachment stream")
        if header[4] != STREAM_VERSION:
            raise self._fail(ErrorCode.UNSUPPORTED_VERSION, "attachment stream version unknown")
        if not hmac.compare_digest(bytes(header[5:21]), self._attachment_id):
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment stream names another id")
        chunk_size = int.from_bytes(header[21:25], "big")
        if chunk_size > self._limits.attachment_chunk_bytes:
            raise self._fail(ErrorCode.OVERSIZED, "attachment chunk size is above the limit")
        if chunk_size < self._limits.min_attachment_chunk_bytes:
            raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment chunk size is too small")
        self._decryptor = AttachmentDecryptor(
            self._key,
            self._attachment_id,
            chunk_size=chunk_size,
            expected_chunks=self._expected_chunks,
            expected_digest=self._expected_digest,
            limits=self._limits,
        )

    def _consume(self, unit: Bytes, out: memoryview) -> int:
        """Handle one complete unit (header, frame prefix or frame body) and set the next.

        Returns the plaintext bytes written to the start of ``out`` (a frame body's)."""
        state = self._state
        if state is _ReadState.HEADER:
            self._read_header(unit)
            self._state, self._want = _ReadState.PREFIX, FRAME_PREFIX_BYTES
            return 0
        decryptor = self._decryptor
        assert decryptor is not None  # set by the header state, which always comes first
        if state is _ReadState.PREFIX:
            self._final, self._want = decryptor._read_prefix(unit)
            self._state = _ReadState.BODY
            return 0
        written = decryptor._open_into(self._final, unit, out)
        if self._final:
            self._state, self._want = _ReadState.DONE, 0
        else:
            self._state, self._want = _ReadState.PREFIX, FRAME_PREFIX_BYTES
        return written

    def output_room(self, size: int) -> int:
        """Return how many bytes of ``out`` :meth:`feed_into` of ``size`` stream bytes may need
        (the plaintext never exceeds the stream bytes held and fed)."""
        return len(self._pending) + size

    def feed_into(self, data: Bytes, out: WritableBytes) -> int:
        """Take the next stream bytes; decrypt every chunk they complete straight into ``out``.

        Args:
            data: any number of stream bytes, split anywhere. Whole frames that ``data`` holds
                are opened in place; only a frame cut by the end of ``data`` is copied.
            out: at least :meth:`output_room` ``(len(data))`` bytes.

        Returns:
            How many bytes at the start of ``out`` hold plaintext, each authentic at its
            position; the attachment is complete only when :meth:`finish` returns. On a refusal
            ``out`` may hold unauthenticated bytes: discard it.

        Raises:
            AttachmentRejected: see the module docstring; the reader then refuses every call.
            LocalProtocolError: ``out`` is too small (``invalid_field``); nothing was read.
        """
        if self._failed:
            raise AttachmentRejected(ErrorCode.ATTACHMENT_CORRUPT, "attachment already refused")
        view = memoryview(data).cast("B")
        target = memoryview(out)
        if len(target) < self.output_room(len(view)):
            raise _too_small()
        pos, end, written = 0, len(view), 0
        try:
            while pos < end:
                if self._state is _ReadState.DONE:
                    raise self._fail(ErrorCode.ATTACHMENT_CORRUPT, "attachment continues after end")
                if not self._pending and end - pos >= self._want:
                    unit: Bytes = view[pos : pos + self._want]
                    pos += self._want
                else:
                    take = min(self._want - len(self._pending), end - pos)
                    self._pending += view[pos : pos + take]
                    pos += take
                    if len(self._pending) < self._want:
                        break
                    unit, self._pending = self._pending, bytearray()
                written += self._consume(unit, target[written:])
        except AttachmentRejected:
            self._failed = True
            raise
        return written

    def feed(self, data: Bytes) -> list[bytes]:
        """Take the next stream bytes; return the plaintext of every chunk they complete.

        Args:
            data: any number of stream bytes, split anywhere.

        Returns:
            Plaintext pieces in order (possibly none). Each is authentic at its position; the
            attachment is complete only when :meth:`finish` returns.

        Raises:
            AttachmentRejected: see the module docstring; the reader then refuses every call.
        """
        view = memoryview(data).cast("B")
        buffer = bytearray(self.output_room(len(view)))
        written = self.feed_into(view, buffer)
        return [bytes(memoryview(buffer)[:written])] if written else []

    def finish(self) -> AttachmentSummary:
        """Confirm the stream ended exactly after its final chunk and matches the reference.

        Returns:
            The summary (size, chunk count, BLAKE3-256 digest of the plaintext).

        Raises:
            AttachmentRejected: ``attachment_truncated`` if the stream stopped before its final
                chunk (or inside a frame), ``attachment_corrupt`` if the digest differs or the
                stream was refused before.
        """
        if self._failed:
            raise AttachmentRejected(ErrorCode.ATTACHMENT_CORRUPT, "attachment already refused")
        if self._state is not _ReadState.DONE or self._decryptor is None:
            raise self._fail(ErrorCode.ATTACHMENT_TRUNCATED, "attachment ended before its end")
        try:
            return self._decryptor.finish()
        except AttachmentRejected:
            self._failed = True
            raise


def encrypt_attachment(
    key: bytes,
    attachment_id: bytes,
    plaintext: Bytes,
    *,
    chunk_size: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[bytes, AttachmentSummary]:
    """Encrypt a whole attachment held in memory (small documents, tests, vectors).

    Arguments and errors as :class:`AttachmentWriter`. Returns the stream and its summary.
    """
    writer = AttachmentWriter(key, attachment_id, chunk_size=chunk_size, limits=limits)
    pieces = writer.write(plaintext)
    pieces.extend(writer.close())
    return b"".join(pieces), writer.summary


def decrypt_attachment(
    key: bytes,
    attachment_id: bytes,
    stream: Bytes,
    *,
    expected_chunks: int | None = None,
    expected_digest: bytes | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[bytes, AttachmentSummary]:
    """Decrypt a whole attachment stream held in memory (small documents, tests, vectors).

    Arguments and errors as :class:`AttachmentReader`. Returns the plaintext and its summary.
    """
    reader = AttachmentReader(
        key,
        attachment_id,
        expected_chunks=expected_chunks,
        expected_digest=expected_digest,
        limits=limits,
    )
    pieces = reader.feed(stream)
    summary = reader.finish()
    return b"".join(pieces), summary
