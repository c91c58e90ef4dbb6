"""Key bundles: a node's signed public key state, and its encryption key announcements.

Owns the key bundle a node serves (``GET /federation/v1/keys``, and in a ``key_update`` message):
its identity key, its current and next encryption keys (each announced and signed by the identity
key), its TLS pins, the head of its key-history log, and how a peer verifies a bundle and accepts
a newer one. Invariants:

* Unverified bundles never leave this module: :func:`verify_bundle` returns a
  :class:`VerifiedKeyBundle`, a different type from the wire :class:`KeyBundle`.
* Signatures cover the exact bundle and key-record bytes received; they are decoded only after
  the bundle's own signature verified — never re-encoded to verify.
* Encryption keys of a bundle are successive (``next.epoch == current.epoch + 1``) and overlap
  (``next`` starts before ``current`` ends), so a peer always knows the key that comes next.
* A node cannot sign a bundle its peers would refuse: :func:`sign_bundle` checks it as they will.

The wire formats and signing inputs are in ``docs/spec/50-keys.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import codec
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.fields import MAX_I64, CityName, Signature, Timestamp
from protocol.keylog import KeyLogHead
from protocol.keys import (
    MAX_STATEMENT_BYTES,
    MAX_TLS_PINS,
    EncryptionKey,
    KeyId,
    KeyKind,
    PublicKey,
    StatementBytes,
    TlsPin,
    key_id,
    public_bytes,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.signing import Purpose, check_public_key, check_signature, sign

MAX_BUNDLE_BYTES: Final = 16 * 1024


# --- Wire records ------------------------------------------------------------------------------


class SignedEncryptionKey(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """An encryption key announcement: ``[key_bytes, signature]``.

    Attributes:
        key: the exact MessagePack bytes of a :class:`~protocol.keys.EncryptionKey`.
        signature: the identity key's signature, purpose ``encryption-key``, over ``key``.
    """

    key: StatementBytes
    signature: Signature


class KeyBundle(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A node's public key state, as it signs it (unverified until :func:`verify_bundle`).

    Attributes:
        city: the node's city name (``stockholm``).
        identity_key: the node's current Ed25519 identity public key.
        identity_key_id: ``key_id(IDENTITY, identity_key)``.
        current: the encryption key peers seal to now.
        next: the following encryption key, announced before its use.
        tls_pins: SHA-256 of the SubjectPublicKeyInfo of each accepted TLS certificate (1..4).
        key_log: the head of the node's key-history log.
        issued_at: when the bundle was made (Unix seconds).
        sequence: increases with every bundle the node publishes.
    """

    city: CityName
    identity_key: PublicKey
    identity_key_id: KeyId
    current: SignedEncryptionKey
    next: SignedEncryptionKey
    tls_pins: Annotated[tuple[TlsPin, ...], msgspec.Meta(min_length=1, max_length=MAX_TLS_PINS)]
    key_log: KeyLogHead
    issued_at: Timestamp
    sequence: Annotated[int, msgspec.Meta(ge=0, le=MAX_I64)]


class SignedKeyBundle(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[bundle_bytes, signature]``: the identity key signs the bundle (``key-bundle``)."""

    bundle: Annotated[bytes, msgspec.Meta(max_length=MAX_BUNDLE_BYTES)]
    signature: Signature


@dataclass(frozen=True, slots=True)
class VerifiedKeyBundle:
    """A key bundle whose signatures and windows were checked by :func:`verify_bundle`.

    Attributes:
        city: the node's city name.
        identity_key: the Ed25519 identity public key that signed the bundle.
        identity_key_id: its key id.
        current: the current encryption key.
        next: the next encryption key (``epoch == current.epoch + 1``).
        tls_pins: the accepted TLS pins.
        key_log: the head of the node's key-history log.
        issued_at: when the bundle was made.
        sequence: the bundle's sequence number.
        signed_bytes: the exact bytes verified, to store and forward.
    """

    city: str
    identity_key: bytes
    identity_key_id: bytes
    current: EncryptionKey
    next: EncryptionKey
    tls_pins: tuple[bytes, ...]
    key_log: KeyLogHead
    issued_at: int
    sequence: int
    signed_bytes: bytes

    def sealing_key(self, now: int) -> EncryptionKey:
        """Return the key to seal to at ``now``: the newest whose window contains it.

        Raises:
            RemoteProtocolError: ``expired_key`` when neither key is valid at ``now``.
        """
        for key in (self.next, self.current):
            if key.not_before <= now <= key.not_after:
                return key
        raise RemoteProtocolError(ErrorCode.EXPIRED_KEY, "no encryption key of the bundle is valid")

    def encryption_key(self, wanted: bytes) -> EncryptionKey | None:
        """Return the bundle's encryption key with id ``wanted``, or ``None``."""
        for key in (self.current, self.next):
            if key.key_id == wanted:
                return key
        return None


# --- Announcing, signing and verifying ---------------------------------------------------------


def announce_encryption_key(
    identity_private: Ed25519PrivateKey, key: EncryptionKey
) -> SignedEncryptionKey:
    """Sign an encryption key with the identity key (purpose ``encryption-key``).

    Args:
        identity_private: the node's identity key.
        key: the record, made with :func:`protocol.keys.encryption_key`.

    Returns:
        The announcement, to put in a bundle or send on its own.
    """
    key_bytes = codec.encode(key)
    return SignedEncryptionKey(key_bytes, sign(identity_private, Purpose.ENCRYPTION_KEY, key_bytes))


def verify_encryption_key(signed: SignedEncryptionKey, identity_public: bytes) -> EncryptionKey:
    """Check an encryption key announcement against the identity key that must have signed it.

    Args:
        signed: the announcement received.
        identity_public: the signer's raw Ed25519 public key.

    Returns:
        The announced key.

    Raises:
        RemoteProtocolError: ``bad_signature``; ``bad_key_bundle`` for a wrong key id or an empty
            window; a decoding code for malformed key bytes.
    """
    check_signature(
        identity_public, Purpose.ENCRYPTION_KEY, signed.key, signed.signature, what="encryption key"
    )
    key = codec.decode(
        signed.key, EncryptionKey, max_bytes=MAX_STATEMENT_BYTES, what="encryption key"
    )
    if key.key_id != key_id(KeyKind.ENCRYPTION, key.public_key):
        raise RemoteProtocolError(
            ErrorCode.BAD_KEY_BUNDLE, "encryption key id does not match its key"
        )
    if key.not_before >= key.not_after:
        raise RemoteProtocolError(ErrorCode.BAD_KEY_BUNDLE, "encryption key window is empty")
    return key


def sign_bundle(
    identity_private: Ed25519PrivateKey,
    *,
    city: str,
    current: SignedEncryptionKey,
    next_key: SignedEncryptionKey,
    tls_pins: Sequence[bytes],
    key_log: KeyLogHead,
    issued_at: int,
    sequence: int,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Make a node's signed key bundle, checked as a peer will check it at ``issued_at``.

    Args:
        identity_private: the node's identity key; its public key goes in the bundle.
        city: the node's city name.
        current: the announcement of the current encryption key.
        next_key: the announcement of the next one.
        tls_pins: the accepted TLS pins (see :func:`protocol.keys.tls_pin`).
        key_log: the head of the node's key-history log.
        issued_at: now, in Unix seconds.
        sequence: greater than the sequence of the node's previous bundle.
        limits: the limits peers apply.

    Returns:
        ``[bundle_bytes, signature]`` encoded, as served to peers.

    Raises:
        LocalProtocolError: with the code a peer would refuse the bundle with.
    """
    public = public_bytes(identity_private)
    bundle = KeyBundle(
        city,
        public,
        key_id(KeyKind.IDENTITY, public),
        current,
        next_key,
        tuple(tls_pins),
        key_log,
        issued_at,
        sequence,
    )
    bundle_bytes = codec.encode(bundle)
    signature = sign(identity_private, Purpose.KEY_BUNDLE, bundle_bytes)
    signed = codec.encode(SignedKeyBundle(bundle_bytes, signature))
    try:
        verify_bundle(signed, public, issued_at, limits)
    except RemoteProtocolError as e:
        raise LocalProtocolError(e.code, e.message) from e
    return signed


def _check_windows(current: EncryptionKey, nxt: EncryptionKey, now: int, limits: Limits) -> None:
    if nxt.epoch != current.epoch + 1:
        raise RemoteProtocolError(
            ErrorCode.BAD_KEY_BUNDLE, "next encryption key epoch must follow current"
        )
    if nxt.public_key == current.public_key:
        raise RemoteProtocolError(
            ErrorCode.BAD_KEY_BUNDLE, "next encryption key repeats the current key"
        )
    if not current.not_before < nxt.not_before <= current.not_after < nxt.not_after:
        raise RemoteProtocolError(
            ErrorCode.BAD_KEY_BUNDLE,
            "next encryption key must start within the current key's window and end after it",
        )
    if current.not_after < now:
        raise RemoteProtocolError(ErrorCode.EXPIRED_KEY, "current encryption key has expired")
    if current.not_before > now + limits.max_clock_skew_s:
        raise RemoteProtocolError(
            ErrorCode.BAD_KEY_BUNDLE, "current encryption key is not yet valid"
        )


def verify_bundle(
    data: bytes, expected_identity: bytes | None, now: int, limits: Limits = DEFAULT_LIMITS
) -> VerifiedKeyBundle:
    """Verify a peer's signed key bundle.

    Checks, in order: decoding; the identity key id; the expected identity key (if given); the
    bundle signature; ``issued_at`` not in the future beyond the clock skew; each encryption key's
    signature and id; the windows (see :func:`_check_windows`); TLS pins distinct.

    Args:
        data: the exact bytes received.
        expected_identity: the identity public key we trust for this peer (from the agreement or
            its succession chain), or ``None`` on first contact — then the caller must have the
            operators compare :func:`protocol.keys.fingerprint` before trusting it.
        now: the current time, Unix seconds.
        limits: the limits.

    Returns:
        The verified bundle.

    Raises:
        RemoteProtocolError: ``bad_key_bundle``, ``bad_signature``, ``unknown_key`` (not the
            expected identity), ``expired_key``, ``from_future``, or a decoding code.
    """
    signed = codec.decode(
        data, SignedKeyBundle, max_bytes=limits.max_document_bytes, what="key bundle"
    )
    bundle = codec.decode(
        signed.bundle, KeyBundle, max_bytes=MAX_BUNDLE_BYTES, what="key bundle body"
    )
    if bundle.identity_key_id != key_id(KeyKind.IDENTITY, bundle.identity_key):
        raise RemoteProtocolError(
            ErrorCode.BAD_KEY_BUNDLE, "identity key id does not match its key"
        )
    if expected_identity is not None and bundle.identity_key != expected_identity:
        raise RemoteProtocolError(
            ErrorCode.UNKNOWN_KEY, "key bundle is not by the expected identity key"
        )
    check_public_key(
        bundle.identity_key, what="key bundle identity key", code=ErrorCode.BAD_KEY_BUNDLE
    )
    check_signature(
        bundle.identity_key, Purpose.KEY_BUNDLE, signed.bundle, signed.signature, what="key bundle"
    )
    if bundle.issued_at > now + limits.max_clock_skew_s:
        raise RemoteProtocolError(ErrorCode.FROM_FUTURE, "key bundle is issued in the future")
    current = verify_encryption_key(bundle.current, bundle.identity_key)
    nxt = verify_encryption_key(bundle.next, bundle.identity_key)
    _check_windows(current, nxt, now, limits)
    if len(set(bundle.tls_pins)) != len(bundle.tls_pins):
        raise RemoteProtocolError(ErrorCode.BAD_KEY_BUNDLE, "key bundle repeats a TLS pin")
    return VerifiedKeyBundle(
        city=bundle.city,
        identity_key=bundle.identity_key,
        identity_key_id=bundle.identity_key_id,
        current=current,
        next=nxt,
        tls_pins=bundle.tls_pins,
        key_log=bundle.key_log,
        issued_at=bundle.issued_at,
        sequence=bundle.sequence,
        signed_bytes=bytes(data),
    )


def check_bundle_update(previous: VerifiedKeyBundle, new: VerifiedKeyBundle) -> None:
    """Check that ``new`` may replace ``previous`` as a peer's bundle (no rollback).

    The same bytes again are accepted (a re-fetch). Otherwise the city must be the same, the
    sequence greater, and neither the key-log size nor the current epoch smaller. A changed
    identity key must have been accepted through
    :func:`protocol.succession.verify_succession_chain` before.

    Raises:
        RemoteProtocolError: ``bad_key_bundle``.
    """
    if new.signed_bytes == previous.signed_bytes:
        return
    if new.city != previous.city:
        raise RemoteProtocolError(ErrorCode.BAD_KEY_BUNDLE, "key bundle names another city")
    if new.sequence <= previous.sequence:
        raise RemoteProtocolError(ErrorCode.BAD_KEY_BUNDLE, "key bundle sequence did not increase")
    if new.key_log.size < previous.key_log.size:
        raise RemoteProtocolError(
            ErrorCode.BAD_KEY_BUNDLE, "key bundle shrinks the key-history log"
        )
    if new.current.epoch < previous.current.epoch:
        raise RemoteProtocolError(
            ErrorCode.BAD_KEY_BUNDLE, "key bundle goes back to an older epoch"
        )
