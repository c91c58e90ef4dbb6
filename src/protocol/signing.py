"""Domain-separated Ed25519 signatures: the one way the protocol signs and verifies.

Every signature in citynode is Ed25519 over::

    b"citynode/v1 " || purpose || b"\\x00" || payload

where ``purpose`` is one of :class:`Purpose`. A signature made for one purpose can never be taken
for another (an envelope signature is not a receipt, a key bundle is not an agreement). Payloads
are the exact bytes that travel; nothing is re-encoded before verifying.

Ed25519 is deterministic, so signatures are reproducible in known-answer vectors.

Verification is libsodium's (``crypto_sign_open``), the strict reading of RFC 8032: besides the
group equation it refuses a non-canonical ``S`` (``S >= L``, as OpenSSL does) and, where OpenSSL
does not, a small-order ``R`` and a public key that is non-canonical or of small order. Under a
small-order key OpenSSL accepts signatures anyone can make, so such a key must never be trusted in
the first place: :func:`is_valid_public_key` (stricter still: a canonical point of the prime-order
subgroup, which every honestly generated key is) is the one test an identity key passes where it
enters (an agreement's members, a key bundle's signer, a succession's new key,
:func:`protocol.keys.identity_key`). Signing stays with ``cryptography``: for such keys both
libraries make and accept the same RFC 8032 signatures.

:func:`verify` answers yes or no (for counting signatures, as an agreement's threshold does);
:func:`check_signature` is the one way to refuse what a peer sent over a bad signature;
:func:`check_public_key` the one way to refuse an unusable identity key a peer sent.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.errors import ErrorCode, RemoteProtocolError

SIGNATURE_BYTES: Final = 64
_PUBLIC_KEY_BYTES: Final = 32
_PREFIX: Final = b"citynode/v1 "


class Purpose(StrEnum):
    """What a signature is for; part of the signed bytes."""

    ENVELOPE = "envelope"
    RECEIPT = "receipt"
    KEY_BUNDLE = "key-bundle"
    ENCRYPTION_KEY = "encryption-key"
    SUCCESSION_OLD = "succession-old"
    SUCCESSION_NEW = "succession-new"
    REVOCATION = "revocation"
    AGREEMENT = "agreement"
    KEYLOG_CHECKPOINT = "keylog-checkpoint"
    KEYLOG_COUNTERSIGN = "keylog-countersign"


def signing_input(purpose: Purpose, payload: bytes) -> bytes:
    """Return the exact bytes Ed25519 signs for ``purpose`` and ``payload``."""
    return _PREFIX + purpose.value.encode("ascii") + b"\x00" + payload


def sign(private_key: Ed25519PrivateKey, purpose: Purpose, payload: bytes) -> bytes:
    """Sign ``payload`` for ``purpose``.

    Args:
        private_key: the signer's Ed25519 key.
        purpose: what the signature is for.
        payload: the exact bytes to bind.

    Returns:
        The 64-byte signature.
    """
    return private_key.sign(signing_input(purpose, payload))


def verify(public_key: bytes, purpose: Purpose, payload: bytes, signature: bytes) -> bool:
    """Check a signature; never raises for a bad key, signature or payload.

    Args:
        public_key: the raw 32-byte Ed25519 public key.
        purpose: what the signature must be for.
        payload: the exact bytes received.
        signature: the 64-byte signature received.

    Returns:
        True only if the signature is valid for exactly these bytes and purpose.
    """
    # The length checks also guard libsodium, which reads exactly 32 key bytes.
    if len(signature) != SIGNATURE_BYTES or len(public_key) != _PUBLIC_KEY_BYTES:
        return False
    try:
        # crypto_sign_open is crypto_sign_verify_detached (which PyNaCl does not bind) over
        # signature || message. A libsodium key needs no object: nothing is worth caching per key.
        nacl.bindings.crypto_sign_open(
            bytes(signature) + signing_input(purpose, payload), bytes(public_key)
        )
    except nacl.exceptions.CryptoError:  # BadSignatureError, and its TypeError for odd input
        return False
    return True


def is_valid_public_key(public_key: bytes) -> bool:
    """Tell whether ``public_key`` is an Ed25519 public key a signature can be trusted under.

    True only for the canonical encoding of a point of the prime-order subgroup that is not the
    identity: every key made by Ed25519 key generation, and none of the small-order, mixed-order
    or non-canonical encodings that would let others sign for the key or make a signature
    malleable. Costs about one verification; call it where a key is first trusted, not per message.

    Args:
        public_key: the raw public key.

    Returns:
        True if the key may be trusted; never raises.
    """
    if not isinstance(public_key, bytes) or len(public_key) != _PUBLIC_KEY_BYTES:
        return False
    return nacl.bindings.crypto_core_ed25519_is_valid_point(public_key)


def check_public_key(
    public_key: bytes,
    *,
    what: str,
    code: ErrorCode,
    rejected: type[RemoteProtocolError] = RemoteProtocolError,
) -> None:
    """Refuse an identity public key that :func:`is_valid_public_key` refuses, as the peer's fault.

    Args:
        public_key: the raw Ed25519 public key received.
        what: the key's name for the error message ("key bundle's identity key").
        code: the code of the statement that carried it (``bad_key_bundle``, ``bad_succession``).
        rejected: the error class to raise.

    Raises:
        RemoteProtocolError: ``code`` (as ``rejected``).
    """
    if not is_valid_public_key(public_key):
        raise rejected(code, f"{what} is not a valid Ed25519 public key")


def check_signature(
    public_key: bytes,
    purpose: Purpose,
    payload: bytes,
    signature: bytes,
    *,
    what: str,
    rejected: type[RemoteProtocolError] = RemoteProtocolError,
) -> None:
    """Refuse a signature that does not verify, as the peer's fault.

    Args:
        public_key: the raw 32-byte Ed25519 public key that must have signed.
        purpose: what the signature must be for.
        payload: the exact bytes received.
        signature: the 64-byte signature received.
        what: the signed object's name for the error message ("key bundle", "checkpoint").
        rejected: the error class to raise (``EnvelopeRejected`` for envelopes and receipts).

    Raises:
        RemoteProtocolError: ``bad_signature`` (as ``rejected``).
    """
    if not verify(public_key, purpose, payload, signature):
        raise rejected(ErrorCode.BAD_SIGNATURE, f"{what} signature does not verify")
