"""Key ids, identity and encryption key records, TLS pins, fingerprints, and which key counts when.

Owns what a key *is* to the protocol; the statements made about keys live beside it
(:mod:`protocol.key_bundle`: a node's signed key state; :mod:`protocol.succession`: identity
succession and revocation). Invariants:

* A key id is ``SHA-256(b"citynode/v1 key-id\\x00" || kind || public_key)[:16]``; it names a key
  everywhere (headers, bundles, logs). ``kind`` is one byte: ``0x01`` identity (Ed25519),
  ``0x02`` encryption (X25519).
* Keys are handled as raw 32-byte public keys in records; private keys never enter a record.
* An identity key is trusted only if :func:`protocol.signing.is_valid_public_key` accepts it (no
  small-order, mixed-order or non-canonical point): :func:`identity_key` refuses any other, and
  every statement that brings a peer's key in (agreement member, key bundle, succession) checks
  it with its own code before anything is verified under it.
* A peer's identity keys are known as :class:`VerifyKey` — a public key with the window in which
  its signatures count (``valid_from`` .. ``valid_until``) and, once revoked, the time from which
  they no longer count (``revoked_since``). Times are Unix seconds, passed in by the caller.
  :func:`key_at` (:func:`find_key` then :func:`check_key_at`) is the one rule that decides
  whether a key's signature counts at a time; envelopes, receipts and checkpoints all use it.
* Every signed statement about keys travels as ``[statement_bytes, signature...]``: signatures
  cover the exact statement bytes received (at most :data:`MAX_STATEMENT_BYTES`), which are
  decoded only after — never re-encoded to verify.

The wire formats and the fingerprint algorithm are in ``docs/spec/50-keys.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import IntEnum
from typing import Annotated, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.fields import MAX_I64, CityName, Timestamp
from protocol.signing import is_valid_public_key

KEY_ID_BYTES: Final = 16
PUBLIC_KEY_BYTES: Final = 32
TLS_PIN_BYTES: Final = 32
MAX_TLS_PINS: Final = 4
MAX_STATEMENT_BYTES: Final = 512
FINGERPRINT_VERSION: Final = 0
FINGERPRINT_ITERATIONS: Final = 5200
_KEY_ID_DOMAIN: Final = b"citynode/v1 key-id\x00"
_MAX_U32: Final = 2**32 - 1

KeyId = Annotated[bytes, msgspec.Meta(min_length=KEY_ID_BYTES, max_length=KEY_ID_BYTES)]
PublicKey = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
TlsPin = Annotated[bytes, msgspec.Meta(min_length=TLS_PIN_BYTES, max_length=TLS_PIN_BYTES)]
StatementBytes = Annotated[bytes, msgspec.Meta(max_length=MAX_STATEMENT_BYTES)]


class KeyKind(IntEnum):
    """The kind byte mixed into a key id, so one public key can never name two kinds."""

    IDENTITY = 1
    ENCRYPTION = 2


def key_id(kind: KeyKind, public_key: bytes) -> bytes:
    """Return the 16-byte id of a public key.

    Args:
        kind: identity or encryption.
        public_key: the raw 32-byte public key.

    Returns:
        The key id.
    """
    return hashlib.sha256(_KEY_ID_DOMAIN + bytes([kind]) + public_key).digest()[:KEY_ID_BYTES]


class VerifyKey(msgspec.Struct, frozen=True, array_like=True):
    """A peer's identity (Ed25519) public key as we trust it.

    Attributes:
        key_id: ``key_id(IDENTITY, public_key)``.
        public_key: raw Ed25519 public key.
        valid_from: first second at which signatures by this key count.
        valid_until: last second at which they count, or ``None`` while it is the current key.
        revoked_since: signatures made at or after this second are refused, or ``None``.
    """

    key_id: KeyId
    public_key: PublicKey
    valid_from: Timestamp
    valid_until: Timestamp | None = None
    revoked_since: Timestamp | None = None


class EncryptionKey(msgspec.Struct, frozen=True, array_like=True):
    """A node's X25519 encryption public key, as announced in its signed key bundle.

    Attributes:
        key_id: ``key_id(ENCRYPTION, public_key)``.
        public_key: raw X25519 public key.
        epoch: increases by one with every rotation.
        not_before: peers may seal to it from this second.
        not_after: peers must stop sealing to it after this second.
    """

    key_id: KeyId
    public_key: PublicKey
    epoch: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
    not_before: Timestamp
    not_after: Timestamp


# --- Making and naming keys -------------------------------------------------------------------


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key of an Ed25519 private key."""
    return private_key.public_key().public_bytes_raw()


def identity_key_id(private_key: Ed25519PrivateKey) -> bytes:
    """Return the key id of an identity private key's public key: what a signer names itself by."""
    return key_id(KeyKind.IDENTITY, public_bytes(private_key))


def identity_key(public_key: bytes, valid_from: int = 0) -> VerifyKey:
    """Return the :class:`VerifyKey` of an identity public key, with its key id filled in.

    Args:
        public_key: the raw Ed25519 public key.
        valid_from: the first second its signatures count.

    Returns:
        The record (current: no ``valid_until``, not revoked).

    Raises:
        LocalProtocolError: ``invalid_field`` for a key that is not a valid Ed25519 public key
            (:func:`protocol.signing.is_valid_public_key`): nothing would verify under it.
    """
    if not is_valid_public_key(public_key):
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "identity key is not a valid Ed25519 key")
    return VerifyKey(key_id(KeyKind.IDENTITY, public_key), public_key, valid_from)


def encryption_key(
    public_key: bytes, *, epoch: int, not_before: int, not_after: int
) -> EncryptionKey:
    """Return the :class:`EncryptionKey` record of an X25519 public key, with its key id filled in.

    Raises:
        LocalProtocolError: ``invalid_field`` when the window is empty or the epoch out of range.
    """
    if len(public_key) != PUBLIC_KEY_BYTES or not 0 <= epoch <= _MAX_U32:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "encryption key or epoch is not valid")
    if not 0 <= not_before < not_after <= MAX_I64:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "encryption key window is empty")
    return EncryptionKey(
        key_id(KeyKind.ENCRYPTION, public_key), public_key, epoch, not_before, not_after
    )


def tls_pin(spki_der: bytes) -> bytes:
    """Return the TLS pin of a certificate: SHA-256 of its SubjectPublicKeyInfo (DER).

    Args:
        spki_der: the DER encoding of the certificate's SubjectPublicKeyInfo.

    Returns:
        The 32-byte pin.

    Raises:
        LocalProtocolError: ``invalid_field`` for empty input.
    """
    if not spki_der:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "spki_der is empty")
    return hashlib.sha256(spki_der).digest()


def fingerprint(city: str, identity_public: bytes) -> str:
    """Return the operators' numeric fingerprint of a city's identity key (safety-number style).

    ``h = version (u16, 0) || key || utf8(city)``, then 5200 times ``h = SHA-512(h || key)``; the
    first 30 bytes of ``h`` as six big-endian 5-byte integers, each mod 100000, printed as six
    zero-padded groups of five digits separated by single spaces.

    Args:
        city: the city name as in the agreement (``stockholm``).
        identity_public: the raw 32-byte Ed25519 identity public key.

    Returns:
        ``"ddddd ddddd ddddd ddddd ddddd ddddd"``.

    Raises:
        LocalProtocolError: ``invalid_field`` for a bad city name or key length.
    """
    if len(identity_public) != PUBLIC_KEY_BYTES:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "identity_public must be 32 bytes")
    try:
        msgspec.convert(city, CityName)
    except msgspec.ValidationError as e:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "city is not a city name") from e
    digest = FINGERPRINT_VERSION.to_bytes(2, "big") + identity_public + city.encode("utf-8")
    for _ in range(FINGERPRINT_ITERATIONS):
        digest = hashlib.sha512(digest + identity_public).digest()
    groups = (int.from_bytes(digest[i : i + 5], "big") % 100000 for i in range(0, 30, 5))
    return " ".join(f"{group:05d}" for group in groups)


# --- Which key counts when ---------------------------------------------------------------------


def find_key(keys: Sequence[VerifyKey], wanted: bytes) -> VerifyKey:
    """Return the identity key with id ``wanted``, whatever its window.

    Use :func:`key_at` to also check that its signatures count at a time; this alone is for a
    signature whose time is only known after it verified (a receipt's ``received_at``).

    Raises:
        RemoteProtocolError: ``unknown_key``.
    """
    for key in keys:
        if key.key_id == wanted:
            return key
    raise RemoteProtocolError(ErrorCode.UNKNOWN_KEY, "signing key is not a known key of the peer")


def check_key_at(key: VerifyKey, at: int) -> None:
    """Check that signatures by ``key`` count at time ``at``.

    Raises:
        RemoteProtocolError: ``revoked_key`` at or after its ``revoked_since``; ``expired_key``
            outside its validity window.
    """
    if key.revoked_since is not None and at >= key.revoked_since:
        raise RemoteProtocolError(ErrorCode.REVOKED_KEY, "signing key is revoked for that time")
    if at < key.valid_from or (key.valid_until is not None and at > key.valid_until):
        raise RemoteProtocolError(ErrorCode.EXPIRED_KEY, "signing key is not valid for that time")


def key_at(keys: Sequence[VerifyKey], wanted: bytes, at: int) -> VerifyKey:
    """Return the identity key with id ``wanted`` if its signatures count at time ``at``.

    Args:
        keys: a city's verified identity keys.
        wanted: the key id named by what is being verified.
        at: the time the signature claims (an envelope's timestamp, a checkpoint's time).

    Returns:
        The key, for :func:`protocol.signing.verify`.

    Raises:
        RemoteProtocolError: ``unknown_key``; ``revoked_key`` at or after its ``revoked_since``;
            ``expired_key`` outside its validity window.
    """
    key = find_key(keys, wanted)
    check_key_at(key, at)
    return key
