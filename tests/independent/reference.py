"""An independent, minimal second implementation of the citynode protocol, for tests only.

This module is deliberately separate from ``src/protocol``: it imports nothing from ``protocol``
and was written from the specification (``docs/spec/*.md``, merged into ``docs/protocol.md``)
and the known-answer files in ``tests/vectors/`` alone, with only the standard library, the
``cryptography`` primitives (X25519, Ed25519, ChaCha20-Poly1305; HMAC, HKDF and SHA-2 come from
``hmac`` and ``hashlib``), ``blake3`` for the attachment content digest and ``msgpack`` for raw
MessagePack decoding. Its purpose is to prove that the spec is complete: every object is parsed
by position from the field tables, every check runs in the order the spec gives, and the HPKE key
schedule is built by hand from RFC 9180.
Wherever the text was not enough, the spec was fixed (see ``README.md`` beside this file).

This module holds the encoding rules, signatures and key ids (§2), HPKE, envelopes and receipts
(§4) and attachment streams (§5); ``reference_messages`` holds the message tables (§3) and
``reference_trust`` keys, the agreement and the key-history log (§6-§8). It is not hardened and
not fast; it never runs in a node. Every refusal is a ``Refused`` with the spec's error code.
Section numbers (§) are those of ``docs/protocol.md``.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Any

import msgpack
from blake3 import blake3
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

U32_MAX = 2**32 - 1
U63_MAX = 2**63 - 1
NAME = re.compile(r"[a-z][a-z0-9-]*")
DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class Refused(Exception):
    """A check of the spec failed; ``code`` is the spec's error code."""

    def __init__(self, code: str, what: str = "") -> None:
        super().__init__(f"{code}: {what}")
        self.code = code


# ---------------------------------------------------------------- §2 encoding and signatures


def unpack(data: bytes) -> Any:
    """One MessagePack object, no trailing bytes (`malformed`), strings UTF-8 (`invalid_utf8`)."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except UnicodeDecodeError as e:
        raise Refused("invalid_utf8") from e
    except TypeError as e:  # a map with an unhashable key: maps are refused anyway
        raise Refused("bad_type") from e
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise Refused("malformed") from e


def pack(obj: Any) -> bytes:
    """Shortest-form MessagePack, `bin` for bytes (what every encoder of §2 produces)."""
    return bytes(msgpack.packb(obj, use_bin_type=True))


def array(v: Any, n: int, what: str) -> list[Any]:
    """An array of exactly ``n`` elements: fewer `invalid_field`, more `oversized` (§2)."""
    if not isinstance(v, list):
        raise Refused("bad_type", what)
    if len(v) < n:
        raise Refused("invalid_field", what)
    if len(v) > n:
        raise Refused("oversized", what)
    return v


def seq(v: Any, what: str, lo: int, hi: int) -> list[Any]:
    """An array of ``lo`` to ``hi`` elements (longer `oversized`, shorter `invalid_field`)."""
    if not isinstance(v, list):
        raise Refused("bad_type", what)
    if len(v) > hi:
        raise Refused("oversized", what)
    if len(v) < lo:
        raise Refused("invalid_field", what)
    return v


def bin_(v: Any, what: str, lo: int = 0, hi: int | None = None) -> bytes:
    if not isinstance(v, bytes):
        raise Refused("bad_type", what)
    if hi is not None and len(v) > hi:
        raise Refused("oversized", what)
    if len(v) < lo:
        raise Refused("invalid_field", what)
    return v


def str_(v: Any, what: str, lo: int = 0, hi: int | None = None) -> str:
    if not isinstance(v, str):
        raise Refused("bad_type", what)
    if hi is not None and len(v) > hi:
        raise Refused("oversized", what)
    if len(v) < lo:
        raise Refused("invalid_field", what)
    return v


def uint(v: Any, what: str, lo: int = 0, hi: int = U63_MAX) -> int:
    if type(v) is not int:  # a bool is not an integer (§2)
        raise Refused("bad_type", what)
    if not lo <= v <= hi:
        raise Refused("invalid_field", what)
    return v


def name(v: Any, what: str) -> str:
    s = str_(v, what, 1, 64)
    if not NAME.fullmatch(s):
        raise Refused("invalid_field", what)
    return s


def date(v: Any, what: str, *, out_of_range: str = "invalid_field") -> str:
    """§3.2 Date: ``YYYY-MM-DD``, a real date from 2000-01-01 to 2100-12-31.

    A real date outside the range is ``out_of_range`` (`agreement_invalid` in an agreement, §7.1).
    """
    s = str_(v, what)
    try:
        d = datetime.date.fromisoformat(s) if DATE.fullmatch(s) else None
    except ValueError:
        d = None
    if d is None:
        raise Refused("invalid_field", what)
    if not datetime.date(2000, 1, 1) <= d <= datetime.date(2100, 12, 31):
        raise Refused(out_of_range, what)
    return s


def signing_input(purpose: str, payload: bytes) -> bytes:
    """§2.1: ``"citynode/v1 " || purpose || 0x00 || payload``."""
    return b"citynode/v1 " + purpose.encode("ascii") + b"\x00" + payload


def verify(public: bytes, purpose: str, payload: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature, signing_input(purpose, payload)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


IDENTITY, ENCRYPTION = 0x01, 0x02


def key_id(kind: int, public: bytes) -> bytes:
    """§2.2: the first 16 bytes of SHA-256("citynode/v1 key-id" || 0x00 || kind || key)."""
    return hashlib.sha256(b"citynode/v1 key-id\x00" + bytes([kind]) + public).digest()[:16]


@dataclass(frozen=True)
class IdentityKey:
    """One identity key of a city with its window (§6.3): what a signature at time t needs."""

    public: bytes
    valid_from: int = 0
    valid_until: int | None = None
    revoked_since: int | None = None

    @property
    def key_id(self) -> bytes:
        return key_id(IDENTITY, self.public)


def key_at(keys: list[IdentityKey], kid: bytes, t: int) -> IdentityKey:
    """§6.3: the key ``kid`` names, counting at time ``t``."""
    for k in keys:
        if k.key_id == kid:
            if k.revoked_since is not None and t >= k.revoked_since:
                raise Refused("revoked_key")
            if t < k.valid_from or (k.valid_until is not None and t > k.valid_until):
                raise Refused("expired_key")
            return k
    raise Refused("unknown_key")


# ---------------------------------------------------------------- §4.4 HPKE, by hand


KEM_SUITE = b"KEM\x00\x20"
HPKE_SUITE = b"HPKE\x00\x20\x00\x01\x00\x03"


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def labeled_extract(suite: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, length)


@dataclass(frozen=True)
class HpkeContext:
    shared_secret: bytes
    key: bytes
    base_nonce: bytes


def hpke_context(dh: bytes, enc: bytes, pk_r: bytes, info: bytes) -> HpkeContext:
    """RFC 9180 base mode: Encap/Decap's shared secret, then KeySchedule (§4.4)."""
    if dh == bytes(32):
        raise Refused("decrypt_failed", "all-zero X25519 output")
    eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    shared = labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", enc + pk_r, 32)
    context = (
        b"\x00"
        + labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
        + labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    )
    secret = labeled_extract(HPKE_SUITE, shared, b"secret", b"")
    return HpkeContext(
        shared,
        labeled_expand(HPKE_SUITE, secret, b"key", context, 32),
        labeled_expand(HPKE_SUITE, secret, b"base_nonce", context, 12),
    )


def x25519(private: bytes, public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def hpke_seal(sk_e: bytes, pk_r: bytes, info: bytes, aad: bytes, pt: bytes) -> bytes:
    """SealBase with a given ephemeral key: ``enc || ct``."""
    enc = x25519_public(sk_e)
    ctx = hpke_context(x25519(sk_e, pk_r), enc, pk_r, info)
    return enc + ChaCha20Poly1305(ctx.key).encrypt(ctx.base_nonce, pt, aad)


def hpke_open(sk_r: bytes, sealed: bytes, info: bytes, aad: bytes) -> bytes:
    """OpenBase of ``enc || ct``; any failure is `decrypt_failed`."""
    if len(sealed) < 32 + 16:
        raise Refused("decrypt_failed")
    enc, ct = sealed[:32], sealed[32:]
    try:
        ctx = hpke_context(x25519(sk_r, enc), enc, x25519_public(sk_r), info)
        return ChaCha20Poly1305(ctx.key).decrypt(ctx.base_nonce, ct, aad)
    except (InvalidTag, ValueError) as e:
        raise Refused("decrypt_failed") from e


# ---------------------------------------------------------------- §4 envelopes and receipts


@dataclass(frozen=True)
class Header:
    version: int
    suite: int
    sender: str
    recipient: str
    sender_key_id: bytes
    recipient_key_id: bytes
    recipient_key_epoch: int
    agreement_version: int
    message_id: bytes
    timestamp: int


def parse_header(header_bytes: bytes) -> Header:
    """§4.2, by position; version and suite are checked first even if the rest is bad."""
    try:
        h = array(unpack(header_bytes), 10, "header")
        return Header(
            uint(h[0], "version", 0, 255),
            uint(h[1], "suite", 0, 65535),
            name(h[2], "sender"),
            name(h[3], "recipient"),
            bin_(h[4], "sender_key_id", 16, 16),
            bin_(h[5], "recipient_key_id", 16, 16),
            uint(h[6], "recipient_key_epoch", 0, U32_MAX),
            uint(h[7], "agreement_version", 0, U32_MAX),
            bin_(h[8], "message_id", 16, 16),
            uint(h[9], "timestamp"),
        )
    except Refused:
        # Another version's header: if it is an array whose first two elements are integers
        # (of any value), those are checked before the decoding error is reported.
        raw = unpack(header_bytes)
        if isinstance(raw, list) and len(raw) >= 2 and all(type(x) is int for x in raw[:2]):
            if raw[0] != 1:
                raise Refused("unsupported_version") from None
            if raw[1] != 1:
                raise Refused("unsupported_suite") from None
        raise


@dataclass(frozen=True)
class OwnEncryptionKey:
    private: bytes
    key_id: bytes
    epoch: int


@dataclass(frozen=True)
class Receiver:
    """What opening needs (§4.4.1): who we are, when, the keys and the ids already accepted."""

    me: str
    now: int
    identities: dict[str, list[IdentityKey]]
    own_keys: list[OwnEncryptionKey]
    seen: frozenset[tuple[str, bytes]] = frozenset()
    max_envelope_bytes: int = 262144
    max_body_bytes: int = 204800
    max_message_age_s: int = 604800
    max_clock_skew_s: int = 300


def envelope_payload(header_bytes: bytes, body_bytes: bytes) -> bytes:
    """§4.3: ``u32(len(header)) || header || u32(len(body)) || body``."""
    return (
        len(header_bytes).to_bytes(4, "big")
        + header_bytes
        + len(body_bytes).to_bytes(4, "big")
        + body_bytes
    )


def hpke_info(header_bytes: bytes) -> bytes:
    return b"citynode/v1 envelope-hpke\x00" + header_bytes


def open_envelope(envelope: bytes, rx: Receiver) -> tuple[Header, bytes]:
    """§4.4.1, steps 1-18 in order, and the size of step 19: the header and the body bytes.

    Step 19 proper, decoding the body, is ``reference_messages.decode_message``.
    """
    if len(envelope) > rx.max_envelope_bytes:
        raise Refused("oversized", "envelope")
    outer = array(unpack(envelope), 2, "envelope")
    header_bytes = bin_(outer[0], "header", 0, 1024)
    sealed = bin_(outer[1], "sealed")
    h = parse_header(header_bytes)
    if h.version != 1:
        raise Refused("unsupported_version")
    if h.suite != 1:
        raise Refused("unsupported_suite")
    if h.sender == rx.me:
        raise Refused("reflected")
    if h.recipient != rx.me:
        raise Refused("wrong_recipient")
    if h.sender not in rx.identities:
        raise Refused("unknown_sender")
    if h.timestamp < rx.now - rx.max_message_age_s:
        raise Refused("stale")
    if h.timestamp > rx.now + rx.max_clock_skew_s:
        raise Refused("from_future")
    if (h.sender, h.message_id) in rx.seen:
        raise Refused("replayed")
    own = [k for k in rx.own_keys if k.key_id == h.recipient_key_id]
    if not own or own[0].epoch != h.recipient_key_epoch:
        raise Refused("unknown_key", "recipient key")
    inner = array(unpack(hpke_open(own[0].private, sealed, hpke_info(header_bytes), b"")), 2, "pt")
    body_bytes = bin_(inner[0], "body")
    signature = bin_(inner[1], "signature", 64, 64)
    sender_key = key_at(rx.identities[h.sender], h.sender_key_id, h.timestamp)
    payload = envelope_payload(header_bytes, body_bytes)
    if not verify(sender_key.public, "envelope", payload, signature):
        raise Refused("bad_signature")
    if len(body_bytes) > rx.max_body_bytes:
        raise Refused("oversized", "body")
    return h, body_bytes


ERROR_CODES = frozenset(
    [
        "malformed",
        "oversized",
        "too_deep",
        "bad_type",
        "invalid_utf8",
        "unknown_message_type",
        "unsupported_version",
        "unsupported_suite",
        "invalid_field",
        "invalid_personnummer",
        "wrong_recipient",
        "reflected",
        "unknown_sender",
        "unknown_key",
        "expired_key",
        "revoked_key",
        "stale",
        "from_future",
        "replayed",
        "decrypt_failed",
        "bad_signature",
        "attachment_corrupt",
        "attachment_truncated",
        "agreement_invalid",
        "agreement_rollback",
        "agreement_skipped_version",
        "agreement_fork",
        "agreement_threshold",
        "agreement_expired",
        "not_a_member",
        "unknown_unit",
        "outside_period",
        "not_eligible",
        "quota_exceeded",
        "bad_key_bundle",
        "bad_succession",
        "keylog_broken",
        "equivocation",
        "invalid_transition",
        "replay_store_full",
    ]
)
"""The error codes of §10: with `accepted`, the statuses a receipt may carry."""


def verify_receipt(
    signed: bytes, signer: str, identities: dict[str, list[IdentityKey]]
) -> dict[str, Any]:
    """§4.5, in the verifier's order."""
    if len(signed) > 1024:
        raise Refused("oversized")
    outer = array(unpack(signed), 3, "signed receipt")
    receipt_bytes = bin_(outer[0], "receipt")
    kid = bin_(outer[1], "signer_key_id", 16, 16)
    signature = bin_(outer[2], "signature", 64, 64)
    keys = [k for k in identities.get(signer, []) if k.key_id == kid]
    if not keys:
        raise Refused("unknown_key")
    if not verify(keys[0].public, "receipt", receipt_bytes, signature):
        raise Refused("bad_signature")
    r = array(unpack(receipt_bytes), 6, "receipt")
    fields: dict[str, Any] = {
        "envelope_hash": bin_(r[0], "envelope_hash", 32, 32).hex(),
        "message_id": bin_(r[1], "message_id", 16, 16).hex(),
        "sender": name(r[2], "sender"),
        "recipient": name(r[3], "recipient"),
        "received_at": uint(r[4], "received_at"),
        "status": str_(r[5], "status", 1, 64),
    }
    if fields["status"] != "accepted" and fields["status"] not in ERROR_CODES:
        raise Refused("invalid_field", "status")
    key_at(identities[signer], kid, fields["received_at"])
    if fields["recipient"] != signer:
        raise Refused("invalid_field", "recipient")
    return fields


# ---------------------------------------------------------------- §5 attachments


def chunk_key(attachment_key: bytes, attachment_id: bytes) -> bytes:
    """§5.3: HKDF-SHA256, no salt, info "citynode/v1 attachment-key" 0x00 version id."""
    prk = hkdf_extract(bytes(32), attachment_key)
    return hkdf_expand(prk, b"citynode/v1 attachment-key\x00\x01" + attachment_id, 32)


def chunk_nonce_aad(header: bytes, i: int, final: bool) -> tuple[bytes, bytes]:
    flag = b"\x01" if final else b"\x00"
    return i.to_bytes(11, "big") + flag, header + i.to_bytes(8, "big") + flag


def open_stream(
    stream: bytes,
    key: bytes,
    attachment_id: bytes,
    chunk_count: int | None = None,
    digest: bytes | None = None,
    min_chunk: int = 64,
    max_chunk: int = 65536,
    max_chunks: int = U32_MAX,
) -> bytes:
    """§5.4 over a whole stream, checks in the order a streaming reader makes them."""
    if len(stream) < 25:
        raise Refused("attachment_truncated", "header")
    header = stream[:25]
    if header[:4] != b"CNAS":
        raise Refused("attachment_corrupt", "magic")
    if header[4] != 1:
        raise Refused("unsupported_version")
    if header[5:21] != attachment_id:
        raise Refused("attachment_corrupt", "id")
    size = int.from_bytes(header[21:25], "big")
    if size > max_chunk:
        raise Refused("oversized", "chunk size")
    if size < min_chunk:
        raise Refused("attachment_corrupt", "chunk size")
    aead, pos, i, plain = ChaCha20Poly1305(chunk_key(key, attachment_id)), 25, 0, b""
    while True:
        if len(stream) < pos + 5:
            raise Refused("attachment_truncated", "frame prefix")
        flag, length = stream[pos], int.from_bytes(stream[pos + 1 : pos + 5], "big")
        if flag not in (0, 1):
            raise Refused("attachment_corrupt", "flag")
        final = flag == 1
        if (i + 1 if final else i + 2) > max_chunks:
            raise Refused("oversized", "chunks")
        if chunk_count is not None and final != (i + 1 == chunk_count):
            raise Refused("attachment_corrupt", "chunk count")
        low = 16 if i == 0 else 17
        if (not final and length != size + 16) or (final and not low <= length <= size + 16):
            raise Refused("attachment_corrupt", "length")
        if len(stream) < pos + 5 + length:
            raise Refused("attachment_truncated", "frame body")
        nonce, aad = chunk_nonce_aad(header, i, final)
        try:
            plain += aead.decrypt(nonce, stream[pos + 5 : pos + 5 + length], aad)
        except InvalidTag as e:
            raise Refused("attachment_corrupt", "tag") from e
        pos, i = pos + 5 + length, i + 1
        if final:
            break
    if pos != len(stream):
        raise Refused("attachment_corrupt", "after final")
    if digest is not None and not hmac.compare_digest(blake3(plain).digest(), digest):
        raise Refused("attachment_corrupt", "digest")
    return plain


def seal_stream(plaintext: bytes, key: bytes, attachment_id: bytes, size: int) -> bytes:
    """§5.2 canonical chunking: the one stream of (key, id, chunk size, plaintext)."""
    header = b"CNAS\x01" + attachment_id + size.to_bytes(4, "big")
    n = max(1, -(-len(plaintext) // size))
    aead, out = ChaCha20Poly1305(chunk_key(key, attachment_id)), header
    for i in range(n):
        nonce, aad = chunk_nonce_aad(header, i, i == n - 1)
        ct = aead.encrypt(nonce, plaintext[i * size : (i + 1) * size], aad)
        out += (b"\x01" if i == n - 1 else b"\x00") + len(ct).to_bytes(4, "big") + ct
    return out
