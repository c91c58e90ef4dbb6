"""HPKE (RFC 9180) base mode, single-shot, for exactly one suite.

Owns public-key encryption to a node's X25519 encryption key. The suite is fixed:

* KEM ``0x0020`` DHKEM(X25519, HKDF-SHA256), KDF ``0x0001`` HKDF-SHA256,
  AEAD ``0x0003`` ChaCha20-Poly1305; mode ``0x00`` (base); one encryption, sequence number 0.
* The sealed form is ``enc || ciphertext || tag``: the 32-byte encapsulated (ephemeral public) key,
  then the AEAD output. Our callers use an empty ``aad``; the header they bind goes in ``info``.

Invariants:

* Pure and deterministic: the ephemeral private key is an argument (the node draws it from the OS
  RNG), so the same inputs always give the same bytes and known-answer vectors are reproducible.
  ``seal`` is built from the ``cryptography`` primitives (X25519, ChaCha20-Poly1305) and the
  standard library's HMAC-SHA256; ``open`` uses ``cryptography``'s own HPKE implementation,
  which the tests hold to interoperate both ways with ``seal``.
* Library exceptions never escape: a bad argument is :class:`~protocol.errors.LocalProtocolError`
  (``invalid_field``), every failure to open is
  :class:`~protocol.errors.EnvelopeRejected` (``decrypt_failed``), one code for every reason so
  nothing is learnt from which check failed.
"""

from __future__ import annotations

import hmac
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke as _hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from protocol.errors import EnvelopeRejected, ErrorCode, LocalProtocolError

KEM_ID: Final = 0x0020
KDF_ID: Final = 0x0001
AEAD_ID: Final = 0x0003
MODE_BASE: Final = 0x00

ENC_BYTES: Final = 32
"""Size of ``enc``, the encapsulated key (an X25519 public key)."""
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
OVERHEAD_BYTES: Final = ENC_BYTES + TAG_BYTES
"""How much longer the sealed form is than the plaintext."""

_HASH: Final = "sha256"
_VERSION_LABEL: Final = b"HPKE-v1"
_KEM_SUITE_ID: Final = b"KEM" + KEM_ID.to_bytes(2, "big")
_HPKE_SUITE_ID: Final = (
    b"HPKE" + KEM_ID.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + AEAD_ID.to_bytes(2, "big")
)
_SUITE: Final = _hpke.Suite(_hpke.KEM.X25519, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.CHACHA20_POLY1305)


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    # HKDF-Extract is HMAC(salt, ikm). An empty salt and RFC 9180's "Nh zero bytes" are the same
    # HMAC key, since HMAC pads every key with zeros to the block size.
    return hmac.digest(salt, _VERSION_LABEL + suite_id + label + ikm, _HASH)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    # Every length used here is at most Nh = 32, so HKDF-Expand is its first block T(1).
    labeled_info = length.to_bytes(2, "big") + _VERSION_LABEL + suite_id + label + info
    return hmac.digest(prk, labeled_info + b"\x01", _HASH)[:length]


_PSK_ID_HASH: Final = _labeled_extract(_HPKE_SUITE_ID, b"", b"psk_id_hash", b"")
_EMPTY_PSK_SECRET_IKM: Final = b""


def _extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    eae_prk = _labeled_extract(_KEM_SUITE_ID, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE_ID, eae_prk, b"shared_secret", kem_context, 32)


def _public_key(recipient_public: bytes | X25519PublicKey) -> tuple[X25519PublicKey, bytes]:
    if isinstance(recipient_public, X25519PublicKey):
        return recipient_public, recipient_public.public_bytes_raw()
    if not isinstance(recipient_public, bytes) or len(recipient_public) != 32:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "recipient public key must be 32 bytes")
    return X25519PublicKey.from_public_bytes(recipient_public), recipient_public


def encapsulate(
    recipient_public: bytes | X25519PublicKey, ephemeral_private: bytes
) -> tuple[bytes, bytes]:
    """DHKEM(X25519, HKDF-SHA256) ``Encap`` with a given ephemeral key (RFC 9180 §4.1).

    Args:
        recipient_public: the recipient's X25519 public key, raw or as a key object.
        ephemeral_private: the 32-byte ephemeral private key (fresh randomness for every seal).

    Returns:
        ``(shared_secret, enc)``.

    Raises:
        LocalProtocolError: a key of the wrong size, or a recipient key of low order.
    """
    if not isinstance(ephemeral_private, bytes) or len(ephemeral_private) != 32:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "ephemeral private key must be 32 bytes")
    public_key, public_raw = _public_key(recipient_public)
    ephemeral = X25519PrivateKey.from_private_bytes(ephemeral_private)
    enc = ephemeral.public_key().public_bytes_raw()
    try:
        dh = ephemeral.exchange(public_key)
    except ValueError as e:  # all-zero shared secret: a low-order recipient key
        raise LocalProtocolError(
            ErrorCode.INVALID_FIELD, "recipient public key is not usable"
        ) from e
    return _extract_and_expand(dh, enc + public_raw), enc


def decapsulate(enc: bytes, recipient_private: X25519PrivateKey) -> bytes:
    """DHKEM(X25519, HKDF-SHA256) ``Decap`` (RFC 9180 §4.1).

    Args:
        enc: the 32-byte encapsulated key received.
        recipient_private: the recipient's X25519 private key.

    Returns:
        The 32-byte shared secret.

    Raises:
        EnvelopeRejected: ``decrypt_failed`` for an ``enc`` of the wrong size or of low order.
    """
    if len(enc) != ENC_BYTES:
        raise EnvelopeRejected(ErrorCode.DECRYPT_FAILED, "sealed data could not be decrypted")
    try:
        dh = recipient_private.exchange(X25519PublicKey.from_public_bytes(enc))
    except ValueError as e:
        raise EnvelopeRejected(
            ErrorCode.DECRYPT_FAILED, "sealed data could not be decrypted"
        ) from e
    public_raw = recipient_private.public_key().public_bytes_raw()
    return _extract_and_expand(dh, enc + public_raw)


def key_schedule(shared_secret: bytes, info: bytes) -> tuple[bytes, bytes]:
    """The base-mode key schedule (RFC 9180 §5.1) with no PSK.

    Args:
        shared_secret: the KEM shared secret.
        info: the application's ``info``.

    Returns:
        ``(key, base_nonce)`` for ChaCha20-Poly1305.
    """
    info_hash = _labeled_extract(_HPKE_SUITE_ID, b"", b"info_hash", info)
    context = bytes([MODE_BASE]) + _PSK_ID_HASH + info_hash
    secret = _labeled_extract(_HPKE_SUITE_ID, shared_secret, b"secret", _EMPTY_PSK_SECRET_IKM)
    key = _labeled_expand(_HPKE_SUITE_ID, secret, b"key", context, KEY_BYTES)
    base_nonce = _labeled_expand(_HPKE_SUITE_ID, secret, b"base_nonce", context, NONCE_BYTES)
    return key, base_nonce


def seal(
    recipient_public: bytes | X25519PublicKey,
    info: bytes,
    plaintext: bytes,
    ephemeral_private: bytes,
    *,
    aad: bytes = b"",
) -> bytes:
    """Encrypt ``plaintext`` to ``recipient_public``: single-shot base-mode HPKE, sequence 0.

    Args:
        recipient_public: the recipient's X25519 public key, raw (32 bytes) or as a key object
            (pass the object when sealing to the same key many times).
        info: the application context bound into the key schedule.
        plaintext: the bytes to encrypt.
        ephemeral_private: 32 bytes of fresh randomness, never reused; the node draws them.
        aad: additional authenticated data; citynode always uses the empty default (the RFC's
            known-answer vectors need it).

    Returns:
        ``enc || ciphertext || tag``, ``len(plaintext) + 48`` bytes.

    Raises:
        LocalProtocolError: a key of the wrong size, or a recipient key of low order.
    """
    shared_secret, enc = encapsulate(recipient_public, ephemeral_private)
    key, base_nonce = key_schedule(shared_secret, info)
    return enc + ChaCha20Poly1305(key).encrypt(base_nonce, plaintext, aad or None)


def open(recipient_private: X25519PrivateKey, info: bytes, sealed: bytes) -> bytes:
    """Decrypt what :func:`seal` produced (empty ``aad``).

    Args:
        recipient_private: the recipient's X25519 private key.
        info: the same ``info`` the sender used.
        sealed: ``enc || ciphertext || tag``.

    Returns:
        The plaintext.

    Raises:
        EnvelopeRejected: ``decrypt_failed`` — wrong key, wrong ``info``, tampered or truncated
            input, or an ``enc`` of low order; deliberately one code for all.
    """
    if len(sealed) < OVERHEAD_BYTES:
        raise EnvelopeRejected(ErrorCode.DECRYPT_FAILED, "sealed data could not be decrypted")
    try:
        return _SUITE.decrypt(sealed, recipient_private, info=info)
    except (InvalidTag, ValueError) as e:
        raise EnvelopeRejected(
            ErrorCode.DECRYPT_FAILED, "sealed data could not be decrypted"
        ) from e
