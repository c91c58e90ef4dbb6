"""Domain-separated Ed25519 signatures: the one way the protocol signs and verifies.

Every signature in citynode is Ed25519 over::

    b"citynode/v1 " || purpose || b"\\x00" || payload

where ``purpose`` is one of :class:`Purpose`. A signature made for one purpose can never be taken
for another (an envelope signature is not a receipt, a key bundle is not an agreement). Payloads
are the exact bytes that travel; nothing is re-encoded before verifying.

Ed25519 is deterministic, so signatures are reproducible in known-answer vectors.

:func:`verify` answers yes or no (for counting signatures, as an agreement's threshold does);
:func:`check_signature` is the one way to refuse what a peer sent over a bad signature.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.errors import ErrorCode, RemoteProtocolError

SIGNATURE_BYTES: Final = 64
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
    if len(signature) != SIGNATURE_BYTES or len(public_key) != 32:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            signature, signing_input(purpose, payload)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


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
