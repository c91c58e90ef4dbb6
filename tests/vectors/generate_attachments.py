"""Regenerate ``tests/vectors/attachments.json``: known answers for the attachment stream.

Run from the project root: ``.venv/bin/python tests/vectors/generate_attachments.py``.

The construction is deterministic (no randomness: the key and id are fixed here), so the vectors
only change when the format does; ``tests/protocol/test_attachments.py`` checks them both ways.
Each valid vector lists the nonce and associated data of every frame, and the derived chunk key,
so a second implementation can find where it diverges. The invalid vectors are streams derived
from a valid one, each with the error code a reader must refuse it with.
"""

from __future__ import annotations

import json
from pathlib import Path

from blake3 import blake3
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.attachments import (
    FRAME_PREFIX_BYTES,
    HEADER_BYTES,
    STREAM_VERSION,
    encode_header,
    encrypt_attachment,
)

OUT = Path(__file__).with_name("attachments.json")

KEY = bytes(range(0x00, 0x20))
ATTACHMENT_ID = bytes.fromhex("a77ac4ed0000400080000000000000a1")
OTHER_ATTACHMENT_ID = bytes.fromhex("a77ac4ed0000400080000000000000a2")
OTHER_KEY = bytes(range(0x20, 0x40))
CHUNK_SIZE = 64

DOCUMENT = b"Hotbildsbedomning (exempel, pafunnen): inga personuppgifter i detta prov.\n" * 3

PLAINTEXTS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("one_byte", b"A"),
    ("one_full_chunk", bytes(range(64))),
    ("one_chunk_plus_one", bytes(range(65))),
    ("two_full_chunks", bytes(range(128))),
    ("three_chunks_document", DOCUMENT[:150]),
]


def chunk_key(key: bytes, attachment_id: bytes) -> bytes:
    info = b"citynode/v1 attachment-key\x00" + bytes([STREAM_VERSION]) + attachment_id
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=info).derive(key)


def split_frames(stream: bytes) -> tuple[bytes, list[bytes]]:
    header, pos, frames = stream[:HEADER_BYTES], HEADER_BYTES, []
    while pos < len(stream):
        length = int.from_bytes(stream[pos + 1 : pos + FRAME_PREFIX_BYTES], "big")
        end = pos + FRAME_PREFIX_BYTES + length
        frames.append(stream[pos:end])
        pos = end
    return header, frames


def frame_intermediates(header: bytes, frames: list[bytes]) -> list[dict[str, str]]:
    rows = []
    for index, frame in enumerate(frames):
        flag = frame[:1]
        rows.append(
            {
                "nonce": (index.to_bytes(11, "big") + flag).hex(),
                "aad": (header + index.to_bytes(8, "big") + flag).hex(),
            }
        )
    return rows


def valid_vectors() -> list[dict[str, object]]:
    vectors = []
    for name, plaintext in PLAINTEXTS:
        stream, summary = encrypt_attachment(KEY, ATTACHMENT_ID, plaintext, chunk_size=CHUNK_SIZE)
        header, frames = split_frames(stream)
        assert summary.digest == blake3(plaintext).digest()
        vectors.append(
            {
                "name": name,
                "plaintext": plaintext.hex(),
                "digest": summary.digest.hex(),
                "size": summary.size,
                "chunk_count": summary.chunk_count,
                "frames": frame_intermediates(header, frames),
                "stream": stream.hex(),
            }
        )
    return vectors


def invalid_vectors() -> list[dict[str, str]]:
    document = DOCUMENT[:150]
    stream, _ = encrypt_attachment(KEY, ATTACHMENT_ID, document, chunk_size=CHUNK_SIZE)
    header, (f0, f1, f2) = split_frames(stream)
    other, _ = encrypt_attachment(KEY, OTHER_ATTACHMENT_ID, document, chunk_size=CHUNK_SIZE)
    _, (g0, g1, g2) = split_frames(other)
    other_key, _ = encrypt_attachment(OTHER_KEY, ATTACHMENT_ID, document, chunk_size=CHUNK_SIZE)
    _, (h0, _h1, _h2) = split_frames(other_key)
    flipped_tag = bytearray(stream)
    flipped_tag[-1] ^= 0x01
    version_2 = bytearray(stream)
    version_2[4] = 2
    final_first = bytes([1]) + f0[1:]
    big_chunks = encode_header(ATTACHMENT_ID, 65 * 1024) + f0
    cases = [
        ("empty_stream", b"", "attachment_truncated"),
        ("header_only", header, "attachment_truncated"),
        ("final_chunk_dropped", header + f0 + f1, "attachment_truncated"),
        ("cut_inside_final_chunk", stream[:-5], "attachment_truncated"),
        ("middle_chunk_dropped", header + f0 + f2, "attachment_corrupt"),
        ("chunks_reordered", header + f1 + f0 + f2, "attachment_corrupt"),
        ("chunk_duplicated", header + f0 + f0 + f1 + f2, "attachment_corrupt"),
        ("frame_after_final", stream + f2, "attachment_corrupt"),
        ("byte_after_final", stream + b"\x00", "attachment_corrupt"),
        ("spliced_from_same_key_other_id", header + f0 + g1 + f2, "attachment_corrupt"),
        ("spliced_from_other_key_same_id", header + h0 + f1 + f2, "attachment_corrupt"),
        ("other_ids_stream", other, "attachment_corrupt"),
        ("other_ids_frames_under_our_header", header + g0 + g1 + g2, "attachment_corrupt"),
        ("first_chunk_marked_final", header + final_first, "attachment_corrupt"),
        ("tag_bit_flipped", bytes(flipped_tag), "attachment_corrupt"),
        ("unknown_version", bytes(version_2), "unsupported_version"),
        ("chunk_size_above_limit", big_chunks, "oversized"),
    ]
    return [{"name": n, "stream": s.hex(), "error": e} for n, s, e in cases]


def build() -> dict[str, object]:
    """Return the vector document (deterministic)."""
    return {
        "description": (
            "citynode attachment stream v1 known answers (docs/spec/40-attachments.md). Valid "
            "vectors: encrypting plaintext with key, attachment_id and chunk_size gives stream "
            "exactly; decrypting stream gives plaintext, digest (BLAKE3-256 of plaintext), size "
            "and chunk_count. Invalid vectors: a reader expecting attachment_id under key, with "
            "the default limits (chunk sizes 64..65536), refuses stream with error."
        ),
        "key": KEY.hex(),
        "attachment_id": ATTACHMENT_ID.hex(),
        "chunk_key": chunk_key(KEY, ATTACHMENT_ID).hex(),
        "other_attachment_id": OTHER_ATTACHMENT_ID.hex(),
        "other_key": OTHER_KEY.hex(),
        "chunk_size": CHUNK_SIZE,
        "valid": valid_vectors(),
        "invalid": invalid_vectors(),
    }


def render() -> str:
    """Return the exact text of ``attachments.json``."""
    return json.dumps(build(), indent=2) + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
