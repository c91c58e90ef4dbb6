"""Key records, signed key bundles, identity succession, revocation and fingerprints.

Owns the public, typed view of a node's keys that peers verify and the sealing code uses.
Invariants:

* A key id is ``SHA-256(b"citynode/v1 key-id\\x00" || kind || public_key)[:16]``; it names a key
  everywhere (headers, bundles, logs). ``kind`` is one byte: ``0x01`` identity (Ed25519),
  ``0x02`` encryption (X25519).
* Keys are handled as raw 32-byte public keys in records; private keys never enter a record.
* A peer's identity keys are known as :class:`VerifyKey` — a public key with the window in which
  its signatures count (``valid_from`` .. ``valid_until``) and, once revoked, the time from which
  they no longer count (``revoked_since``). Times are Unix seconds, passed in by the caller.
* Every signed statement travels as ``[statement_bytes, signature...]``: signatures cover the exact
  statement bytes received, which are decoded only after — never re-encoded to verify.
* Unverified bundles never leave this module: :func:`verify_bundle` returns a
  :class:`VerifiedKeyBundle`, a different type from the wire :class:`KeyBundle`.
* Encryption keys of a bundle are successive (``next.epoch == current.epoch + 1``) and overlap
  (``next`` starts before ``current`` ends), so a peer always knows the key that comes next.
* Identity keys change only by a :class:`Succession` signed by the old and the new key, effective
  from a time ``T``: the old key's signatures count up to ``T - 1``, the new key's from ``T``.
  A :class:`Revocation` ("key K compromised since T") is signed by ``K`` or a successor of ``K``;
  the earliest compromise time wins and successions made effective at or after it are distrusted.

The wire formats, signing inputs and the fingerprint algorithm are in ``docs/spec/50-keys.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Annotated, Final, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import codec
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.signing import SIGNATURE_BYTES, Purpose, sign, verify

KEY_ID_BYTES: Final = 16
PUBLIC_KEY_BYTES: Final = 32
TLS_PIN_BYTES: Final = 32
DIGEST_BYTES: Final = 32
MAX_TLS_PINS: Final = 4
MAX_STATEMENT_BYTES: Final = 512
MAX_BUNDLE_BYTES: Final = 16 * 1024
FINGERPRINT_VERSION: Final = 0
FINGERPRINT_ITERATIONS: Final = 5200
_KEY_ID_DOMAIN: Final = b"citynode/v1 key-id\x00"
_MAX_U32: Final = 2**32 - 1
_MAX_I64: Final = 2**63 - 1

KeyId = Annotated[bytes, msgspec.Meta(min_length=KEY_ID_BYTES, max_length=KEY_ID_BYTES)]
PublicKey = Annotated[bytes, msgspec.Meta(min_length=PUBLIC_KEY_BYTES, max_length=PUBLIC_KEY_BYTES)]
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=_MAX_I64)]
Signature = Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]
TlsPin = Annotated[bytes, msgspec.Meta(min_length=TLS_PIN_BYTES, max_length=TLS_PIN_BYTES)]
Digest = Annotated[bytes, msgspec.Meta(min_length=DIGEST_BYTES, max_length=DIGEST_BYTES)]
StatementBytes = Annotated[bytes, msgspec.Meta(max_length=MAX_STATEMENT_BYTES)]
# The same rule as ``messages.CityName`` (a test holds them equal); kept here so that ``keys``
# does not import ``messages``, which may import ``keys``.
CityName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9-]*$(?!\n)")
]

_T = TypeVar("_T")


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


# --- Wire records ------------------------------------------------------------------------------


class SignedEncryptionKey(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """An encryption key announcement: ``[key_bytes, signature]``.

    Attributes:
        key: the exact MessagePack bytes of an :class:`EncryptionKey`.
        signature: the identity key's signature, purpose ``encryption-key``, over ``key``.
    """

    key: StatementBytes
    signature: Signature


class KeyLogHead(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The head of a node's key-history log, opaque here: ``[size, root]``.

    Attributes:
        size: the number of entries in the log.
        root: the 32-byte hash of the log at that size.
    """

    size: Annotated[int, msgspec.Meta(ge=0, le=_MAX_I64)]
    root: Digest


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
    sequence: Annotated[int, msgspec.Meta(ge=0, le=_MAX_I64)]


class SignedKeyBundle(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[bundle_bytes, signature]``: the identity key signs the bundle (``key-bundle``)."""

    bundle: Annotated[bytes, msgspec.Meta(max_length=MAX_BUNDLE_BYTES)]
    signature: Signature


class Succession(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Statement: identity ``old_key`` is succeeded by ``new_key`` from ``effective_from``."""

    city: CityName
    old_key: PublicKey
    new_key: PublicKey
    effective_from: Timestamp


class SignedSuccession(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[statement, old_signature, new_signature]``: both keys sign the same statement bytes."""

    statement: StatementBytes
    old_signature: Signature
    new_signature: Signature


class Revocation(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Statement: a city's identity ``key`` is compromised since ``compromised_since``."""

    city: CityName
    key: PublicKey
    compromised_since: Timestamp


class SignedRevocation(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[statement, signer_key, signature]``: by the revoked key or one of its successors."""

    statement: StatementBytes
    signer_key: PublicKey
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


# --- Small helpers -----------------------------------------------------------------------------


def _remote(code: ErrorCode, message: str) -> RemoteProtocolError:
    return RemoteProtocolError(code, message)


def _decode(data: bytes, kind: type[_T], max_bytes: int, what: str) -> _T:
    return codec.decode(data, kind, max_bytes=max_bytes, what=what)


def public_bytes(private_key: Ed25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key of an Ed25519 private key."""
    return private_key.public_key().public_bytes_raw()


def identity_key(public_key: bytes, valid_from: int = 0) -> VerifyKey:
    """Return the :class:`VerifyKey` of an identity public key, with its key id filled in.

    Args:
        public_key: the raw Ed25519 public key.
        valid_from: the first second its signatures count.

    Returns:
        The record (current: no ``valid_until``, not revoked).
    """
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
    if not 0 <= not_before < not_after <= _MAX_I64:
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


# --- Encryption key announcements and key bundles ----------------------------------------------


def announce_encryption_key(
    identity_private: Ed25519PrivateKey, key: EncryptionKey
) -> SignedEncryptionKey:
    """Sign an encryption key with the identity key (purpose ``encryption-key``).

    Args:
        identity_private: the node's identity key.
        key: the record, made with :func:`encryption_key`.

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
    if not verify(identity_public, Purpose.ENCRYPTION_KEY, signed.key, signed.signature):
        raise _remote(ErrorCode.BAD_SIGNATURE, "encryption key signature does not verify")
    key = _decode(signed.key, EncryptionKey, MAX_STATEMENT_BYTES, "encryption key")
    if key.key_id != key_id(KeyKind.ENCRYPTION, key.public_key):
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "encryption key id does not match its key")
    if key.not_before >= key.not_after:
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "encryption key window is empty")
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
        tls_pins: the accepted TLS pins (see :func:`tls_pin`).
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
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "next encryption key epoch must follow current")
    if nxt.public_key == current.public_key:
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "next encryption key repeats the current key")
    if not current.not_before < nxt.not_before <= current.not_after < nxt.not_after:
        raise _remote(
            ErrorCode.BAD_KEY_BUNDLE,
            "next encryption key must start within the current key's window and end after it",
        )
    if current.not_after < now:
        raise _remote(ErrorCode.EXPIRED_KEY, "current encryption key has expired")
    if current.not_before > now + limits.max_clock_skew_s:
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "current encryption key is not yet valid")


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
            operators compare :func:`fingerprint` before trusting it.
        now: the current time, Unix seconds.
        limits: the limits.

    Returns:
        The verified bundle.

    Raises:
        RemoteProtocolError: ``bad_key_bundle``, ``bad_signature``, ``unknown_key`` (not the
            expected identity), ``expired_key``, ``from_future``, or a decoding code.
    """
    signed = _decode(data, SignedKeyBundle, limits.max_document_bytes, "key bundle")
    bundle = _decode(signed.bundle, KeyBundle, MAX_BUNDLE_BYTES, "key bundle body")
    if bundle.identity_key_id != key_id(KeyKind.IDENTITY, bundle.identity_key):
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "identity key id does not match its key")
    if expected_identity is not None and bundle.identity_key != expected_identity:
        raise _remote(ErrorCode.UNKNOWN_KEY, "key bundle is not by the expected identity key")
    if not verify(bundle.identity_key, Purpose.KEY_BUNDLE, signed.bundle, signed.signature):
        raise _remote(ErrorCode.BAD_SIGNATURE, "key bundle signature does not verify")
    if bundle.issued_at > now + limits.max_clock_skew_s:
        raise _remote(ErrorCode.FROM_FUTURE, "key bundle is issued in the future")
    current = verify_encryption_key(bundle.current, bundle.identity_key)
    nxt = verify_encryption_key(bundle.next, bundle.identity_key)
    _check_windows(current, nxt, now, limits)
    if len(set(bundle.tls_pins)) != len(bundle.tls_pins):
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "key bundle repeats a TLS pin")
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
    identity key must have been accepted through :func:`verify_succession_chain` before.

    Raises:
        RemoteProtocolError: ``bad_key_bundle``.
    """
    if new.signed_bytes == previous.signed_bytes:
        return
    if new.city != previous.city:
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "key bundle names another city")
    if new.sequence <= previous.sequence:
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "key bundle sequence did not increase")
    if new.key_log.size < previous.key_log.size:
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "key bundle shrinks the key-history log")
    if new.current.epoch < previous.current.epoch:
        raise _remote(ErrorCode.BAD_KEY_BUNDLE, "key bundle goes back to an older epoch")


# --- Identity succession and revocation --------------------------------------------------------


def sign_succession(
    old_private: Ed25519PrivateKey,
    new_private: Ed25519PrivateKey,
    *,
    city: str,
    effective_from: int,
) -> bytes:
    """Make "the old identity key is succeeded by the new one from ``effective_from``".

    Returns:
        ``[statement, old_signature, new_signature]`` encoded.

    Raises:
        LocalProtocolError: ``bad_succession`` when both keys are the same.
    """
    old, new = public_bytes(old_private), public_bytes(new_private)
    if old == new:
        raise LocalProtocolError(ErrorCode.BAD_SUCCESSION, "a key cannot succeed itself")
    statement = codec.encode(Succession(city, old, new, effective_from))
    return codec.encode(
        SignedSuccession(
            statement,
            sign(old_private, Purpose.SUCCESSION_OLD, statement),
            sign(new_private, Purpose.SUCCESSION_NEW, statement),
        )
    )


def verify_succession(data: bytes) -> Succession:
    """Decode a succession statement and check both of its signatures.

    Raises:
        RemoteProtocolError: ``bad_signature``, ``bad_succession`` or a decoding code.
    """
    signed = _decode(data, SignedSuccession, MAX_STATEMENT_BYTES * 2, "succession")
    statement = _decode(signed.statement, Succession, MAX_STATEMENT_BYTES, "succession statement")
    if statement.old_key == statement.new_key:
        raise _remote(ErrorCode.BAD_SUCCESSION, "a key cannot succeed itself")
    old_ok = verify(
        statement.old_key, Purpose.SUCCESSION_OLD, signed.statement, signed.old_signature
    )
    new_ok = verify(
        statement.new_key, Purpose.SUCCESSION_NEW, signed.statement, signed.new_signature
    )
    if not (old_ok and new_ok):
        raise _remote(ErrorCode.BAD_SIGNATURE, "succession is not signed by both keys")
    return statement


def _check_successor(last: VerifyKey, step: Succession, seen: set[bytes]) -> None:
    if step.old_key != last.public_key:
        raise _remote(ErrorCode.BAD_SUCCESSION, "succession does not continue the chain")
    if step.new_key in seen:
        raise _remote(ErrorCode.BAD_SUCCESSION, "succession returns to an earlier key")
    if step.effective_from <= last.valid_from:
        raise _remote(ErrorCode.BAD_SUCCESSION, "succession is not later than the key it ends")
    if last.revoked_since is not None and step.effective_from >= last.revoked_since:
        raise _remote(ErrorCode.BAD_SUCCESSION, "succession made by an already revoked key")


def verify_succession_chain(
    genesis_key: VerifyKey,
    statements: Sequence[bytes],
    *,
    city: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[VerifyKey, ...]:
    """Follow a city's identity keys from the key we trust through its succession statements.

    Args:
        genesis_key: the identity key we trust (from the agreement), as a :class:`VerifyKey`.
        statements: the signed succession statements, oldest first.
        city: if given, every statement must name this city.
        limits: ``max_key_successions`` bounds the chain.

    Returns:
        Every key, oldest first: each succeeded key valid up to ``effective_from - 1`` of the
        statement that ends it (so its archived signatures still verify for their time), the last
        one current (``valid_until`` ``None``).

    Raises:
        RemoteProtocolError: ``bad_succession`` (gap, fork, loop, time going back, another city,
            too long), ``bad_signature``, or a decoding code.
    """
    if len(statements) > limits.max_key_successions:
        raise _remote(ErrorCode.BAD_SUCCESSION, "succession chain is too long")
    keys = [genesis_key]
    seen = {genesis_key.public_key}
    for data in statements:
        step = verify_succession(data)
        if city is not None and step.city != city:
            raise _remote(ErrorCode.BAD_SUCCESSION, "succession names another city")
        city = step.city
        _check_successor(keys[-1], step, seen)
        keys[-1] = msgspec.structs.replace(keys[-1], valid_until=step.effective_from - 1)
        keys.append(identity_key(step.new_key, step.effective_from))
        seen.add(step.new_key)
    return tuple(keys)


def sign_revocation(
    signer_private: Ed25519PrivateKey, *, city: str, revoked_key: bytes, compromised_since: int
) -> bytes:
    """Make "``revoked_key`` is compromised since ``compromised_since``".

    Args:
        signer_private: the revoked key itself, or a key that succeeds it.
        city: the city whose identity key it is.
        revoked_key: the raw public key revoked.
        compromised_since: from this second on, its signatures are refused.

    Returns:
        ``[statement, signer_key, signature]`` encoded.
    """
    statement = codec.encode(Revocation(city, revoked_key, compromised_since))
    signature = sign(signer_private, Purpose.REVOCATION, statement)
    return codec.encode(SignedRevocation(statement, public_bytes(signer_private), signature))


def _index_of(keys: Sequence[VerifyKey], public_key: bytes) -> int | None:
    for index, key in enumerate(keys):
        if key.public_key == public_key:
            return index
    return None


def apply_revocation(
    keys: Sequence[VerifyKey], data: bytes, *, city: str | None = None
) -> tuple[VerifyKey, ...]:
    """Apply a signed revocation to a city's verified identity keys.

    The revoked key gets ``revoked_since`` = the earlier of its current value and the statement's.
    Every later key whose ``valid_from`` is at or after that time was made effective by a key
    that was already compromised, so it is distrusted too (``revoked_since = valid_from``).

    Args:
        keys: the chain from :func:`verify_succession_chain`, oldest first.
        data: the signed revocation received.
        city: if given, the statement must name this city.

    Returns:
        The chain with the revocation applied.

    Raises:
        RemoteProtocolError: ``unknown_key`` (revoked key not in the chain, or signer neither the
            key nor a successor of it), ``bad_signature``, ``invalid_field`` (another city), or a
            decoding code.
    """
    signed = _decode(data, SignedRevocation, MAX_STATEMENT_BYTES * 2, "revocation")
    if not verify(signed.signer_key, Purpose.REVOCATION, signed.statement, signed.signature):
        raise _remote(ErrorCode.BAD_SIGNATURE, "revocation signature does not verify")
    statement = _decode(signed.statement, Revocation, MAX_STATEMENT_BYTES, "revocation statement")
    if city is not None and statement.city != city:
        raise _remote(ErrorCode.INVALID_FIELD, "revocation names another city")
    revoked = _index_of(keys, statement.key)
    signer = _index_of(keys, signed.signer_key)
    if revoked is None or signer is None or signer < revoked:
        raise _remote(ErrorCode.UNKNOWN_KEY, "revocation is not by the key or its successor")
    since = statement.compromised_since
    previous = keys[revoked].revoked_since
    if previous is not None:
        since = min(since, previous)
    result = list(keys)
    result[revoked] = msgspec.structs.replace(keys[revoked], revoked_since=since)
    for index in range(revoked + 1, len(result)):
        key = result[index]
        if key.valid_from >= since:
            cut = (
                key.valid_from
                if key.revoked_since is None
                else min(key.revoked_since, key.valid_from)
            )
            result[index] = msgspec.structs.replace(key, revoked_since=cut)
    return tuple(result)


def key_at(keys: Sequence[VerifyKey], wanted: bytes, at: int) -> VerifyKey:
    """Return the identity key with id ``wanted`` if its signatures count at time ``at``.

    Args:
        keys: a city's verified identity keys.
        wanted: the key id named by what is being verified.
        at: the time the signature claims (an envelope's timestamp, a checkpoint's time).

    Returns:
        The key, for :func:`protocol.signing.verify`.

    Raises:
        RemoteProtocolError: ``unknown_key``; ``expired_key`` outside its validity window;
            ``revoked_key`` at or after its ``revoked_since``.
    """
    for key in keys:
        if key.key_id == wanted:
            if key.revoked_since is not None and at >= key.revoked_since:
                raise _remote(ErrorCode.REVOKED_KEY, "signing key is revoked for that time")
            if at < key.valid_from or (key.valid_until is not None and at > key.valid_until):
                raise _remote(ErrorCode.EXPIRED_KEY, "signing key is not valid for that time")
            return key
    raise _remote(ErrorCode.UNKNOWN_KEY, "signing key is not a known key of the peer")
