"""Attachment files: a document survives the trip through a stream file, and nothing else does."""

from __future__ import annotations

import errno
import os
import stat
import tracemalloc
from pathlib import Path

import pytest

import node.attachment_files as attachment_files
from node.attachment_files import AttachmentFileError, decrypt_file, encrypt_file
from node.private_files import TEMP_PREFIX
from protocol.attachments import (
    FRAME_OVERHEAD_BYTES,
    HEADER_BYTES,
    AttachmentSummary,
    content_digest,
    decrypt_attachment,
    encrypt_attachment,
)
from protocol.errors import AttachmentRejected, ErrorCode
from protocol.messages import AttachmentRef

KEY = bytes.fromhex("5f" * 32)
ATTACHMENT_ID = bytes.fromhex("11" * 16)
CHUNK = 64 * 1024
# A fake threat assessment: no person, no personnummer; varied so that chunks differ.
LINE = b"Hotbildsbedomning (testdokument): fiktiv person, inga personuppgifter. "


def document(size: int) -> bytes:
    """``size`` bytes of fake document text, no chunk like another."""
    out = bytearray()
    n = 0
    while len(out) < size:
        out += LINE + str(n).encode() + b"\n"
        n += 1
    return bytes(out[:size])


def reference_for(summary: AttachmentSummary, **changes: object) -> AttachmentRef:
    fields: dict[str, object] = {
        "attachment_id": ATTACHMENT_ID,
        "filename": "hotbildsbedomning.pdf",
        "media_type": "application/pdf",
        "size": summary.size,
        "digest": summary.digest,
        "key": KEY,
        "chunk_count": summary.chunk_count,
    }
    fields.update(changes)
    return AttachmentRef(**fields)  # type: ignore[arg-type]


def seal_file(tmp_path: Path, plaintext: bytes) -> tuple[Path, AttachmentSummary]:
    source = tmp_path / "document.pdf"
    source.write_bytes(plaintext)
    stream = tmp_path / "stream.cnas"
    return stream, encrypt_file(source, stream, key=KEY, attachment_id=ATTACHMENT_ID)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX)]


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 4 * CHUNK, 4 * CHUNK + 1, 9 * CHUNK + 12_345]
)
def test_document_round_trips_through_a_stream_file_as_the_protocol_writes_it(
    tmp_path: Path, size: int
) -> None:
    plaintext = document(size)
    stream, sent = seal_file(tmp_path, plaintext)
    expected_stream, expected = encrypt_attachment(KEY, ATTACHMENT_ID, plaintext)
    assert stream.read_bytes() == expected_stream
    assert sent == expected
    assert sent.digest == content_digest(plaintext)
    received = tmp_path / "received.pdf"
    assert decrypt_file(stream, received, reference_for(sent)) == sent
    assert received.read_bytes() == plaintext
    for path in (stream, received):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


def test_stream_received_in_any_layout_is_read_back(tmp_path: Path) -> None:
    # A stream with small chunks: frames do not line up with the file reads.
    plaintext = document(300_000)
    data, sent = encrypt_attachment(KEY, ATTACHMENT_ID, plaintext, chunk_size=1000)
    stream = tmp_path / "small-chunks.cnas"
    stream.write_bytes(data)
    received = tmp_path / "received.pdf"
    assert decrypt_file(stream, received, reference_for(sent)) == sent
    assert received.read_bytes() == plaintext


def refused(tmp_path: Path, stream: Path, reference: AttachmentRef) -> ErrorCode:
    target = tmp_path / "received.pdf"
    with pytest.raises(AttachmentRejected) as caught:
        decrypt_file(stream, target, reference)
    assert not target.exists()
    assert leftovers(tmp_path) == []
    return caught.value.code


def test_tampered_stream_leaves_no_document_behind(tmp_path: Path) -> None:
    last = 2 * attachment_files.BLOCK_CHUNKS + 1  # two blocks go to the writer first
    stream, sent = seal_file(tmp_path, document(last * CHUNK + 7))
    data = bytearray(stream.read_bytes())
    data[HEADER_BYTES + last * (CHUNK + FRAME_OVERHEAD_BYTES) + 10] ^= 0x40  # in the last chunk
    stream.write_bytes(data)
    assert refused(tmp_path, stream, reference_for(sent)) is ErrorCode.ATTACHMENT_CORRUPT


def test_truncated_stream_leaves_no_document_behind(tmp_path: Path) -> None:
    stream, sent = seal_file(tmp_path, document(3 * CHUNK + 7))
    with stream.open("r+b") as f:
        f.truncate(stream.stat().st_size - 1)
    assert refused(tmp_path, stream, reference_for(sent)) is ErrorCode.ATTACHMENT_TRUNCATED


def test_stream_of_another_document_than_referenced_is_refused(tmp_path: Path) -> None:
    stream, sent = seal_file(tmp_path, document(2 * CHUNK + 7))
    other = content_digest(b"another document")
    assert refused(tmp_path, stream, reference_for(sent, digest=other)) is (
        ErrorCode.ATTACHMENT_CORRUPT
    )
    assert refused(tmp_path, stream, reference_for(sent, chunk_count=2)) is (
        ErrorCode.ATTACHMENT_CORRUPT
    )
    # Chunk count and digest match, but the reference promised one byte more.
    assert refused(tmp_path, stream, reference_for(sent, size=sent.size + 1)) is (
        ErrorCode.ATTACHMENT_CORRUPT
    )


def test_existing_target_is_never_replaced(tmp_path: Path) -> None:
    stream, sent = seal_file(tmp_path, document(1000))
    target = tmp_path / "received.pdf"
    target.write_bytes(b"earlier document")
    with pytest.raises(FileExistsError):
        decrypt_file(stream, target, reference_for(sent))
    with pytest.raises(FileExistsError):
        encrypt_file(target, stream, key=KEY, attachment_id=ATTACHMENT_ID)
    assert target.read_bytes() == b"earlier document"
    assert decrypt_attachment(KEY, ATTACHMENT_ID, stream.read_bytes())[1] == sent
    assert leftovers(tmp_path) == []


def test_symbolic_link_or_folder_is_refused_as_a_source(tmp_path: Path) -> None:
    real = tmp_path / "document.pdf"
    real.write_bytes(document(100))
    link = tmp_path / "link.pdf"
    link.symlink_to(real)
    with pytest.raises(AttachmentFileError):
        encrypt_file(link, tmp_path / "a.cnas", key=KEY, attachment_id=ATTACHMENT_ID)
    with pytest.raises(AttachmentFileError):
        encrypt_file(tmp_path, tmp_path / "b.cnas", key=KEY, attachment_id=ATTACHMENT_ID)
    assert not (tmp_path / "a.cnas").exists()
    assert not (tmp_path / "b.cnas").exists()


def test_failed_write_is_raised_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "document.pdf"
    source.write_bytes(document(10 * CHUNK))
    calls = 0
    real_write_all = attachment_files._write_all

    def disk_full_on_second_write(fd: int, data: memoryview) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    monkeypatch.setattr(attachment_files, "_write_all", disk_full_on_second_write)
    target = tmp_path / "stream.cnas"
    with pytest.raises(OSError, match="reading or writing a file failed") as caught:
        encrypt_file(source, target, key=KEY, attachment_id=ATTACHMENT_ID)
    assert caught.value.errno == errno.ENOSPC
    assert not target.exists()
    assert leftovers(tmp_path) == []


def test_large_document_streams_through_in_flat_memory(tmp_path: Path) -> None:
    size = 24 * 1024 * 1024
    source = tmp_path / "document.bin"
    block = document(CHUNK)
    with source.open("wb") as f:
        for _ in range(size // CHUNK):
            f.write(block)
    stream, received = tmp_path / "stream.cnas", tmp_path / "received.bin"
    tracemalloc.start()
    try:
        sent = encrypt_file(source, stream, key=KEY, attachment_id=ATTACHMENT_ID)
        decrypt_file(stream, received, reference_for(sent))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent.size == received.stat().st_size == size
    assert peak < 5 * 1024 * 1024, f"peak {peak} bytes"  # the buffers: about 3.5 MiB
