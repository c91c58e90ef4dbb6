"""Attachment streams: round trips, every way to tamper with one, flat memory, known answers."""

from __future__ import annotations

import importlib.util
import itertools
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.attachments import (
    FRAME_PREFIX_BYTES,
    HEADER_BYTES,
    AttachmentDecryptor,
    AttachmentEncryptor,
    AttachmentReader,
    AttachmentWriter,
    chunk_count_for,
    content_digest,
    decrypt_attachment,
    encode_header,
    encrypt_attachment,
    stream_size_for,
)
from protocol.errors import AttachmentRejected, ErrorCode, LocalProtocolError
from protocol.limits import DEFAULT_LIMITS, Limits

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "attachments.json").read_text(encoding="utf-8")
)

KEY = bytes.fromhex("5f" * 32)
OTHER_KEY = bytes.fromhex("a0" * 32)
ATTACHMENT_ID = bytes.fromhex("11" * 16)
OTHER_ID = bytes.fromhex("22" * 16)
CHUNK = 64
# A fake threat assessment: no person, no personnummer.
DOCUMENT = b"Hotbildsbedomning (testdokument): fiktiv person, inga personuppgifter.\n" * 3

CORRUPT = ErrorCode.ATTACHMENT_CORRUPT
TRUNCATED = ErrorCode.ATTACHMENT_TRUNCATED


def seal(plaintext: bytes, key: bytes = KEY, attachment_id: bytes = ATTACHMENT_ID) -> bytes:
    stream, _ = encrypt_attachment(key, attachment_id, plaintext, chunk_size=CHUNK)
    return stream


def frames_of(stream: bytes) -> tuple[bytes, list[bytes]]:
    """Split a well-formed stream into its header and frames, straight from the spec."""
    header, pos, frames = stream[:HEADER_BYTES], HEADER_BYTES, []
    while pos < len(stream):
        length = int.from_bytes(stream[pos + 1 : pos + FRAME_PREFIX_BYTES], "big")
        frames.append(stream[pos : pos + FRAME_PREFIX_BYTES + length])
        pos += FRAME_PREFIX_BYTES + length
    return header, frames


def refusal(
    stream: bytes, expected_chunks: int | None = None, expected_digest: bytes | None = None
) -> ErrorCode:
    """Read ``stream`` as the node would and return the code it was refused with."""
    with pytest.raises(AttachmentRejected) as caught:
        decrypt_attachment(
            KEY,
            ATTACHMENT_ID,
            stream,
            expected_chunks=expected_chunks,
            expected_digest=expected_digest,
        )
    return caught.value.code


def split_at(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    edges = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    for start, end in itertools.pairwise(edges):
        yield data[start:end]


# --- round trips -----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    size=st.one_of(st.sampled_from([0, 1, 63, 64, 65, 128, 129, 640]), st.integers(0, 3000)),
    chunk_size=st.sampled_from([64, 65, 100, 256]),
)
def test_attachment_of_any_size_round_trips_with_its_summary(size: int, chunk_size: int) -> None:
    plaintext = bytes((i * 7 + size) % 251 for i in range(size))
    stream, sent = encrypt_attachment(KEY, ATTACHMENT_ID, plaintext, chunk_size=chunk_size)
    received, summary = decrypt_attachment(
        KEY, ATTACHMENT_ID, stream, expected_chunks=sent.chunk_count, expected_digest=sent.digest
    )
    assert received == plaintext
    assert summary == sent
    assert summary.digest == blake3(plaintext).digest()
    assert (
        summary.chunk_count == chunk_count_for(size, chunk_size) == max(1, -(-size // chunk_size))
    )
    assert len(stream) == stream_size_for(size, chunk_size)


def test_empty_attachment_is_one_final_empty_chunk() -> None:
    stream = seal(b"")
    _header, frames = frames_of(stream)
    assert len(stream) == 25 + 5 + 16
    assert len(frames) == 1
    assert frames[0][:5] == b"\x01\x00\x00\x00\x10"
    assert decrypt_attachment(KEY, ATTACHMENT_ID, stream)[0] == b""


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=12), size=st.integers(0, 700))
def test_feeding_stream_split_anywhere_gives_the_same_plaintext(cuts: list[int], size: int) -> None:
    plaintext = (DOCUMENT * 4)[:size]
    stream = seal(plaintext)
    reader = AttachmentReader(KEY, ATTACHMENT_ID)
    pieces = [p for piece in split_at(stream, cuts) for p in reader.feed(piece)]
    assert b"".join(pieces) == plaintext
    assert reader.finish().size == size


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=12), size=st.integers(0, 700))
def test_writing_plaintext_split_anywhere_gives_the_same_stream(cuts: list[int], size: int) -> None:
    plaintext = (DOCUMENT * 4)[:size]
    writer = AttachmentWriter(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    out = [w for piece in split_at(plaintext, cuts) for w in writer.write(piece)]
    out.extend(writer.close())
    assert b"".join(out) == seal(plaintext)
    assert writer.summary.digest == blake3(plaintext).digest()


def test_writer_and_reader_keep_no_hold_on_a_reused_buffer() -> None:
    plaintext = (DOCUMENT * 4)[:600]
    buffer = bytearray(100)
    writer = AttachmentWriter(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    wire: list[bytes] = []
    for start in range(0, len(plaintext), len(buffer)):
        piece = plaintext[start : start + len(buffer)]
        buffer[: len(piece)] = piece
        wire.extend(writer.write(memoryview(buffer)[: len(piece)]))
        buffer[:] = bytes(len(buffer))  # the caller reuses its buffer at once
    wire.extend(writer.close())
    stream = b"".join(wire)
    assert stream == seal(plaintext)
    reader, received = AttachmentReader(KEY, ATTACHMENT_ID), b""
    for start in range(0, len(stream), len(buffer)):
        piece = stream[start : start + len(buffer)]
        buffer[: len(piece)] = piece
        received += b"".join(reader.feed(memoryview(buffer)[: len(piece)]))
        buffer[:] = bytes(len(buffer))
    assert received == plaintext
    assert reader.finish().size == len(plaintext)


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=12), size=st.integers(0, 700))
def test_buffer_filling_writer_and_reader_match_the_allocating_ones(
    cuts: list[int], size: int
) -> None:
    plaintext = (DOCUMENT * 4)[:size]
    writer = AttachmentWriter(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    stream = bytearray()
    for piece in split_at(plaintext, cuts):
        out = bytearray(writer.output_room(len(piece)))
        stream += out[: writer.write_into(piece, out)]
    out = bytearray(writer.output_room(0))
    stream += out[: writer.close_into(out)]
    assert bytes(stream) == seal(plaintext)
    assert writer.summary.digest == blake3(plaintext).digest()
    reader, received = (
        AttachmentReader(KEY, ATTACHMENT_ID, expected_digest=content_digest(plaintext)),
        bytearray(),
    )
    for piece in split_at(bytes(stream), cuts):
        out = bytearray(reader.output_room(len(piece)))
        received += out[: reader.feed_into(piece, out)]
    assert bytes(received) == plaintext
    assert reader.finish() == writer.summary


def test_buffer_filling_calls_refuse_a_buffer_too_small_and_read_nothing() -> None:
    writer = AttachmentWriter(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    with pytest.raises(LocalProtocolError) as caught:
        writer.write_into(THREE, bytearray(writer.output_room(len(THREE)) - 1))
    assert caught.value.code is ErrorCode.INVALID_FIELD
    stream = seal(THREE)
    reader = AttachmentReader(KEY, ATTACHMENT_ID)
    with pytest.raises(LocalProtocolError):
        reader.feed_into(stream, bytearray(len(stream) - 1))
    out = bytearray(len(stream))  # nothing was consumed: the same reader still reads it all
    assert out[: reader.feed_into(stream, out)] == THREE
    encryptor = AttachmentEncryptor(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    with pytest.raises(LocalProtocolError):
        encryptor.seal_chunk_into(THREE[:64], bytearray(64 + 20), final=False)


def test_sealing_a_chunk_into_a_buffer_gives_the_same_frame() -> None:
    into = AttachmentEncryptor(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    allocating = AttachmentEncryptor(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    out = bytearray(200)
    for chunk, final in ((THREE[:64], False), (THREE[64:128], False), (THREE[128:], True)):
        length = into.seal_chunk_into(chunk, memoryview(out)[3:], final=final)
        assert bytes(out[3 : 3 + length]) == allocating.encrypt_chunk(chunk, final=final)
    assert into.finish() == allocating.finish()


def test_refused_chunk_decrypted_into_a_buffer_stops_the_reader() -> None:
    stream = bytearray(seal(THREE))
    stream[-1] ^= 1
    reader = AttachmentReader(KEY, ATTACHMENT_ID)
    out = bytearray(reader.output_room(len(stream)))
    with pytest.raises(AttachmentRejected) as caught:
        reader.feed_into(stream, out)
    assert caught.value.code is CORRUPT
    with pytest.raises(AttachmentRejected):
        reader.feed_into(b"", out)


def test_chunk_level_encryptor_and_decryptor_round_trip_frame_by_frame() -> None:
    encryptor = AttachmentEncryptor(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    chunks = [DOCUMENT[:64], DOCUMENT[64:128], DOCUMENT[128:150]]
    frames = [encryptor.encrypt_chunk(c, final=i == 2) for i, c in enumerate(chunks)]
    assert encryptor.header + b"".join(frames) == seal(DOCUMENT[:150])
    decryptor = AttachmentDecryptor(KEY, ATTACHMENT_ID, chunk_size=CHUNK, expected_chunks=3)
    assert [decryptor.decrypt_chunk(f) for f in frames] == chunks
    assert decryptor.done
    assert decryptor.finish() == encryptor.finish()


# --- tampering -------------------------------------------------------------------------------


THREE = DOCUMENT[:150]  # 64 + 64 + 22 bytes: three chunks


def test_reordered_chunks_are_refused_as_corrupt() -> None:
    header, (f0, f1, f2) = frames_of(seal(THREE))
    assert refusal(header + f1 + f0 + f2) is CORRUPT


def test_duplicated_chunk_is_refused_as_corrupt() -> None:
    header, (f0, f1, f2) = frames_of(seal(THREE))
    assert refusal(header + f0 + f0 + f1 + f2) is CORRUPT
    assert refusal(header + f0 + f1 + f1 + f2) is CORRUPT


def test_stream_without_its_final_chunk_is_refused_as_truncated() -> None:
    header, (f0, f1, _f2) = frames_of(seal(THREE))
    assert refusal(header + f0 + f1) is TRUNCATED
    assert refusal(header + f0) is TRUNCATED
    assert refusal(header) is TRUNCATED
    assert refusal(b"") is TRUNCATED


def test_dropped_middle_chunk_is_refused_as_corrupt() -> None:
    header, (f0, _f1, f2) = frames_of(seal(THREE))
    assert refusal(header + f0 + f2) is CORRUPT


def test_stream_cut_at_every_byte_is_refused_as_truncated() -> None:
    stream = seal(THREE)
    for cut in range(len(stream)):
        assert refusal(stream[:cut]) is TRUNCATED, cut


def test_bytes_cut_out_of_a_chunk_are_refused_as_corrupt() -> None:
    stream = seal(THREE)
    inside_first_chunk = HEADER_BYTES + FRAME_PREFIX_BYTES + 10
    assert refusal(stream[:inside_first_chunk] + stream[inside_first_chunk + 3 :]) is CORRUPT


def test_anything_after_the_final_chunk_is_refused_as_corrupt() -> None:
    stream = seal(THREE)
    _, frames = frames_of(stream)
    assert refusal(stream + frames[-1]) is CORRUPT
    assert refusal(stream + frames[0]) is CORRUPT
    assert refusal(stream + b"\x00") is CORRUPT
    assert refusal(seal(b"") + b"\x01") is CORRUPT


def test_chunk_spliced_from_another_attachment_under_the_same_key_is_refused() -> None:
    header, (f0, _f1, f2) = frames_of(seal(THREE))
    _, (g0, g1, g2) = frames_of(seal(THREE, attachment_id=OTHER_ID))
    assert refusal(header + f0 + g1 + f2) is CORRUPT
    assert refusal(header + g0 + g1 + g2) is CORRUPT
    assert refusal(seal(THREE, attachment_id=OTHER_ID)) is CORRUPT


def test_chunk_spliced_from_another_key_is_refused() -> None:
    header, (_f0, f1, f2) = frames_of(seal(THREE))
    _, (h0, _h1, _h2) = frames_of(seal(THREE, key=OTHER_KEY))
    assert refusal(header + h0 + f1 + f2) is CORRUPT


def test_stream_under_a_wrong_key_is_refused_as_corrupt() -> None:
    assert refusal(seal(THREE, key=OTHER_KEY)) is CORRUPT
    assert refusal(seal(b"", key=OTHER_KEY)) is CORRUPT


def test_middle_chunk_marked_final_is_refused() -> None:
    header, (f0, f1, _f2) = frames_of(seal(THREE))
    assert refusal(header + f0 + b"\x01" + f1[1:]) is CORRUPT


def _expected_code_for_flip(stream: bytes, position: int, flipped: bytes) -> ErrorCode:
    """The code the spec gives a stream with one bit flipped at ``position``."""
    if 0 <= position < 4 or 5 <= position < 21:
        return CORRUPT  # magic, attachment id
    if position == 4:
        return ErrorCode.UNSUPPORTED_VERSION
    if position < HEADER_BYTES:
        chunk_size = int.from_bytes(flipped[21:25], "big")
        return (
            ErrorCode.OVERSIZED if chunk_size > DEFAULT_LIMITS.attachment_chunk_bytes else CORRUPT
        )
    _header, frames = frames_of(stream)
    start = HEADER_BYTES
    for index, frame in enumerate(frames):
        if start + 1 <= position < start + FRAME_PREFIX_BYTES:
            final = index == len(frames) - 1
            new_length = int.from_bytes(flipped[start + 1 : start + 5], "big")
            # A final frame that now claims more bytes than follow, within the bounds, waits for
            # them and the stream ends first; every other length is refused outright or fails.
            grows_in_bounds = len(frame) - 5 < new_length <= CHUNK + 16
            return TRUNCATED if final and grows_in_bounds else CORRUPT
        start += len(frame)
    return CORRUPT  # a flag, ciphertext or tag


def test_every_flipped_bit_is_refused_with_its_code() -> None:
    stream = seal(THREE)
    for position in range(len(stream)):
        for bit in range(8):
            flipped = bytearray(stream)
            flipped[position] ^= 1 << bit
            expected = _expected_code_for_flip(stream, position, bytes(flipped))
            assert refusal(bytes(flipped)) is expected, (position, bit)


def test_frame_length_above_the_chunk_size_is_refused_before_its_body_arrives() -> None:
    header = encode_header(ATTACHMENT_ID, CHUNK)
    reader = AttachmentReader(KEY, ATTACHMENT_ID)
    with pytest.raises(AttachmentRejected) as caught:
        reader.feed(header + b"\x01\xff\xff\xff\xff")
    assert caught.value.code is CORRUPT


def test_reader_refuses_everything_after_a_refusal() -> None:
    header, (f0, f1, f2) = frames_of(seal(THREE))
    reader = AttachmentReader(KEY, ATTACHMENT_ID)
    with pytest.raises(AttachmentRejected):
        reader.feed(header + f1)
    for call in (lambda: reader.feed(f0 + f1 + f2), reader.finish):
        with pytest.raises(AttachmentRejected) as caught:
            call()
        assert caught.value.code is CORRUPT


def test_stream_naming_a_chunk_size_above_the_limit_is_refused_as_oversized() -> None:
    stream = encode_header(ATTACHMENT_ID, DEFAULT_LIMITS.attachment_chunk_bytes + 1)
    assert refusal(stream) is ErrorCode.OVERSIZED
    assert refusal(encode_header(ATTACHMENT_ID, 63)) is CORRUPT


def test_stream_with_more_chunks_than_the_limit_is_refused_as_oversized() -> None:
    limits = Limits(max_attachment_chunks=2)
    with pytest.raises(AttachmentRejected) as caught:
        decrypt_attachment(KEY, ATTACHMENT_ID, seal(THREE), limits=limits)
    assert caught.value.code is ErrorCode.OVERSIZED
    assert decrypt_attachment(KEY, ATTACHMENT_ID, seal(DOCUMENT[:128]), limits=limits)[0]
    with pytest.raises(LocalProtocolError) as local:
        encrypt_attachment(KEY, ATTACHMENT_ID, THREE, chunk_size=CHUNK, limits=limits)
    assert local.value.code is ErrorCode.OVERSIZED


def test_chunk_count_other_than_the_sealed_reference_is_refused() -> None:
    stream = seal(THREE)
    assert refusal(stream, expected_chunks=2) is CORRUPT
    assert refusal(stream, expected_chunks=4) is CORRUPT
    assert decrypt_attachment(KEY, ATTACHMENT_ID, stream, expected_chunks=3)[0] == THREE


def test_digest_other_than_the_sealed_reference_is_refused() -> None:
    stream = seal(THREE)
    assert refusal(stream, expected_digest=blake3(THREE + b"x").digest()) is CORRUPT
    digest = blake3(THREE).digest()
    assert decrypt_attachment(KEY, ATTACHMENT_ID, stream, expected_digest=digest)[0] == THREE


def test_decryptor_refuses_a_frame_shorter_than_its_length() -> None:
    _, (f0, _f1, _f2) = frames_of(seal(THREE))
    decryptor = AttachmentDecryptor(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    with pytest.raises(AttachmentRejected) as caught:
        decryptor.decrypt_chunk(f0[:-1])
    assert caught.value.code is CORRUPT
    with pytest.raises(AttachmentRejected) as truncated:
        AttachmentDecryptor(KEY, ATTACHMENT_ID, chunk_size=CHUNK).finish()
    assert truncated.value.code is TRUNCATED


# --- our own misuse --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "attachment_id", "chunk_size"),
    [(KEY[:31], ATTACHMENT_ID, CHUNK), (KEY, ATTACHMENT_ID + b"\x00", CHUNK), (KEY, OTHER_ID, 63)],
)
def test_encryptor_refuses_bad_key_id_or_chunk_size(
    key: bytes, attachment_id: bytes, chunk_size: int
) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        AttachmentEncryptor(key, attachment_id, chunk_size=chunk_size)
    assert caught.value.code is ErrorCode.INVALID_FIELD


def test_encryptor_refuses_non_canonical_chunks() -> None:
    encryptor = AttachmentEncryptor(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    with pytest.raises(LocalProtocolError):
        encryptor.encrypt_chunk(b"short", final=False)
    with pytest.raises(LocalProtocolError):
        encryptor.finish()
    encryptor.encrypt_chunk(DOCUMENT[:64], final=False)
    with pytest.raises(LocalProtocolError):
        encryptor.encrypt_chunk(b"", final=True)  # empty final only for an empty attachment
    encryptor.encrypt_chunk(b"end", final=True)
    with pytest.raises(LocalProtocolError):
        encryptor.encrypt_chunk(b"more", final=True)


def test_closed_writer_refuses_more_data_and_open_writer_has_no_summary() -> None:
    writer = AttachmentWriter(KEY, ATTACHMENT_ID, chunk_size=CHUNK)
    with pytest.raises(LocalProtocolError):
        _ = writer.summary
    writer.close()
    with pytest.raises(LocalProtocolError):
        writer.write(b"late")


# --- memory ----------------------------------------------------------------------------------


def test_64_mib_attachment_streams_through_in_flat_memory() -> None:
    block = bytes(range(256)) * 256  # 64 KiB
    total = 64 * 1024 * 1024
    sent_hash, received_hash = blake3(), blake3()
    tracemalloc.start()
    try:
        writer = AttachmentWriter(KEY, ATTACHMENT_ID)
        reader = AttachmentReader(KEY, ATTACHMENT_ID)
        for n in range(total // len(block)):
            piece = block[n % 256 :] + block[: n % 256]  # differs per chunk
            sent_hash.update(piece)
            for wire in writer.write(piece):
                for plain in reader.feed(wire):
                    received_hash.update(plain)
        for wire in writer.close():
            for plain in reader.feed(wire):
                received_hash.update(plain)
        summary = reader.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary.size == total
    assert summary.digest == sent_hash.digest() == received_hash.digest()
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"


# --- known answers ---------------------------------------------------------------------------


def _spec_decrypt(key: bytes, stream: bytes) -> tuple[bytes, list[dict[str, str]]]:
    """An independent reader written from docs/spec/40-attachments.md, for the vectors."""
    header, frames = frames_of(stream)
    info = b"citynode/v1 attachment-key\x00" + header[4:5] + header[5:21]
    chunk_key = HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(key)
    assert chunk_key.hex() == VECTORS["chunk_key"]
    aead, plaintext, seen = ChaCha20Poly1305(chunk_key), b"", []
    for index, frame in enumerate(frames):
        nonce = index.to_bytes(11, "big") + frame[:1]
        aad = header + index.to_bytes(8, "big") + frame[:1]
        plaintext += aead.decrypt(nonce, frame[5:], aad)
        seen.append({"nonce": nonce.hex(), "aad": aad.hex()})
    return plaintext, seen


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_known_answer_stream_is_reproduced_and_opened(vector: dict[str, object]) -> None:
    key = bytes.fromhex(VECTORS["key"])
    attachment_id = bytes.fromhex(VECTORS["attachment_id"])
    plaintext = bytes.fromhex(str(vector["plaintext"]))
    stream = bytes.fromhex(str(vector["stream"]))
    produced, summary = encrypt_attachment(
        key, attachment_id, plaintext, chunk_size=VECTORS["chunk_size"]
    )
    assert produced == stream
    opened, received = decrypt_attachment(key, attachment_id, stream)
    assert opened == plaintext
    assert received == summary
    assert (received.digest.hex(), received.size) == (vector["digest"], vector["size"])
    assert received.chunk_count == vector["chunk_count"]
    assert _spec_decrypt(key, stream) == (plaintext, vector["frames"])


def test_vector_file_is_what_the_generator_writes() -> None:
    path = Path(__file__).parents[1] / "vectors" / "generate_attachments.py"
    spec = importlib.util.spec_from_file_location("generate_attachments", path)
    assert spec is not None
    assert spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert generator.render() == path.with_name("attachments.json").read_text(encoding="utf-8")


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_known_bad_stream_is_refused_with_its_code(vector: dict[str, str]) -> None:
    key = bytes.fromhex(VECTORS["key"])
    attachment_id = bytes.fromhex(VECTORS["attachment_id"])
    with pytest.raises(AttachmentRejected) as caught:
        decrypt_attachment(key, attachment_id, bytes.fromhex(vector["stream"]))
    assert caught.value.code == vector["error"]
