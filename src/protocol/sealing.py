"""Sealing and opening envelopes, and the signed receipts that answer them.

Owns the envelope: how one typed message travels from one city node to another, signed by the
sender's identity key and encrypted to the recipient's encryption key. Construction (suite 1)::

    header_bytes = msgpack(Header)                           # cleartext, fixed field order
    body_bytes   = msgpack(message)                          # the typed message
    signature    = Ed25519(identity key, "citynode/v1 envelope" 0x00
                           || u32(len header) || header || u32(len body) || body)
    sealed       = HPKE-base(recipient encryption key,
                             info = "citynode/v1 envelope-hpke" 0x00 || header_bytes, aad = "",
                             plaintext = msgpack([body_bytes, signature]))
    envelope     = msgpack([header_bytes, sealed])

Invariants:

* Every header field is bound twice: by the HPKE ``info`` (any change fails decryption) and by the
  signature (only the sender's identity key can produce a header). The recipient is inside the
  signed header, so a signed message re-sealed to a third city fails verification there.
* :func:`open_envelope` checks in one fixed order (size, framing, version, suite, route, sender,
  time window, replay, own key, decrypt, signer key, signature, body) and raises the first
  failure's precise code; peers get one opaque error from the node layer, the code is for the log.
* Signatures are verified over the exact bytes received; nothing is re-encoded before verifying.
  Whether the sender's identity key counts at the header's timestamp is decided by
  :func:`protocol.keys.key_at` (the one rule for every signed object); its refusals become
  :class:`~protocol.errors.EnvelopeRejected` with the same code.
* Pure: message ids, timestamps, ``now`` and the HPKE ephemeral key are arguments. Recording a
  message id as seen is the caller's job, in the same transaction that stores the message.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Final, Protocol

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import codec, hpke, signing
from protocol.errors import (
    EnvelopeRejected,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.fields import CityName, Digest, Signature, Timestamp
from protocol.keys import (
    KEY_ID_BYTES,
    EncryptionKey,
    KeyId,
    VerifyKey,
    check_key_at,
    find_key,
    identity_key_id,
    key_at,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import Message, decode_message
from protocol.signing import Purpose

PROTOCOL_VERSION: Final = 1
SUITE_V1: Final = 1
"""X25519 / HKDF-SHA256 / ChaCha20-Poly1305 HPKE base mode, with Ed25519 signatures."""
SUPPORTED_SUITES: Final = frozenset({SUITE_V1})

MESSAGE_ID_BYTES: Final = 16
MAX_HEADER_BYTES: Final = 1024
"""Largest header the framing accepts, in every protocol version (a version-1 header is < 300)."""
HPKE_INFO_PREFIX: Final = b"citynode/v1 envelope-hpke\x00"
RECEIPT_ACCEPTED: Final = "accepted"
RECEIPT_STATUSES: Final = frozenset({RECEIPT_ACCEPTED} | {code.value for code in ErrorCode})

MessageId = Annotated[bytes, msgspec.Meta(min_length=MESSAGE_ID_BYTES, max_length=MESSAGE_ID_BYTES)]
Uint8 = Annotated[int, msgspec.Meta(ge=0, le=2**8 - 1)]
Uint16 = Annotated[int, msgspec.Meta(ge=0, le=2**16 - 1)]
Uint32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]


class Header(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The cleartext envelope header, bound by the HPKE ``info`` and by the signature.

    Attributes:
        version: the protocol version, :data:`PROTOCOL_VERSION`.
        suite: the cryptographic suite, :data:`SUITE_V1`.
        sender: the sending city.
        recipient: the receiving city.
        sender_key_id: key id of the sender's identity (signing) key.
        recipient_key_id: key id of the recipient's encryption key sealed to.
        recipient_key_epoch: that encryption key's epoch.
        agreement_version: the agreement version the sender acts under.
        message_id: 128 random bits naming this message; the replay check keys on it.
        timestamp: when the sender sealed it, Unix seconds.
    """

    version: Uint8
    suite: Uint16
    sender: CityName
    recipient: CityName
    sender_key_id: KeyId
    recipient_key_id: KeyId
    recipient_key_epoch: Uint32
    agreement_version: Uint32
    message_id: MessageId
    timestamp: Timestamp


class _HeaderPrefix(msgspec.Struct, frozen=True, array_like=True):
    # The first two elements of any version's header; trailing elements are ignored.
    version: int
    suite: int


class _Envelope(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    header: Annotated[bytes, msgspec.Meta(max_length=MAX_HEADER_BYTES)]
    sealed: bytes


class _SignedBody(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    body: bytes
    signature: Signature


@dataclass(frozen=True, slots=True)
class DecryptionKey:
    """One of our own encryption keys, as :func:`open_envelope` needs it.

    Attributes:
        epoch: the key's epoch; a header naming the key id with another epoch is ``unknown_key``.
        private_key: the X25519 private key.
    """

    epoch: int
    private_key: X25519PrivateKey


class ReplayChecker(Protocol):
    """Answers whether a message id from a sender was already accepted (and is still remembered).

    The store keeps each accepted ``(sender, message_id)`` until its header timestamp is older
    than ``Limits.max_message_age_s`` (after which the time-window check refuses it as stale).
    When full it raises :class:`~protocol.errors.ReplayStoreFull`: fail closed, never forget.
    """

    def seen(self, sender: str, message_id: bytes) -> bool:
        """Return True if ``message_id`` from ``sender`` was already accepted."""
        ...


SenderKeys = Callable[[str], Sequence[VerifyKey] | None]
"""Resolves a city to its identity keys as we trust them, or ``None`` for an unknown city."""


@dataclass(frozen=True, slots=True)
class OpenedEnvelope:
    """A verified envelope: only :func:`open_envelope` makes one.

    Attributes:
        header: the typed header.
        header_bytes: the exact header bytes received (as signed).
        body_bytes: the exact body bytes received (as signed).
        signature: the sender's Ed25519 signature.
        message: the typed message.
        envelope_hash: SHA-256 of the exact envelope bytes; what a receipt names.
    """

    header: Header
    header_bytes: bytes
    body_bytes: bytes
    signature: bytes
    message: Message
    envelope_hash: bytes


def envelope_hash(data: bytes) -> bytes:
    """Return SHA-256 of the exact envelope bytes, the name a receipt gives an envelope."""
    return hashlib.sha256(data).digest()


def signed_payload(header_bytes: bytes, body_bytes: bytes) -> bytes:
    """Return the envelope signature's payload: each part prefixed by its 32-bit length.

    Args:
        header_bytes: the exact encoded header.
        body_bytes: the exact encoded message.

    Returns:
        ``u32be(len(header)) || header || u32be(len(body)) || body`` (signed under
        :attr:`Purpose.ENVELOPE`).
    """
    return (
        len(header_bytes).to_bytes(4, "big")
        + header_bytes
        + len(body_bytes).to_bytes(4, "big")
        + body_bytes
    )


def _as_local(error: ProtocolError, what: str) -> LocalProtocolError:
    local = LocalProtocolError(error.code, f"{what} is not valid ({error.code})")
    local.__cause__ = error
    return local


def _encode_header(header: Header) -> bytes:
    # Our own header must decode under the rules peers apply; decoding it checks every bound.
    header_bytes = codec.encode(header)
    try:
        codec.decode(header_bytes, Header, max_bytes=MAX_HEADER_BYTES, what="header")
    except ProtocolError as e:
        raise _as_local(e, "header") from e
    return header_bytes


def seal_envelope(
    *,
    sender: str,
    sender_identity: Ed25519PrivateKey,
    recipient: str,
    recipient_key: EncryptionKey,
    agreement_version: int,
    message: Message,
    message_id: bytes,
    timestamp: int,
    ephemeral: bytes,
    limits: Limits = DEFAULT_LIMITS,
) -> bytes:
    """Sign ``message`` as ``sender`` and seal it to ``recipient``'s encryption key.

    Args:
        sender: our city name.
        sender_identity: our identity (Ed25519) private key; its key id goes in the header.
        recipient: the receiving city.
        recipient_key: the recipient's encryption key, from its verified key bundle.
        agreement_version: the agreement version we act under.
        message: the typed message.
        message_id: 16 fresh random bytes.
        timestamp: now, Unix seconds.
        ephemeral: 32 fresh random bytes, the HPKE ephemeral private key; never reuse.
        limits: the size limits.

    Returns:
        The envelope bytes.

    Raises:
        LocalProtocolError: sealing to ourselves (``reflected``), a recipient key not valid at
            ``timestamp`` (``expired_key``), a header field out of bounds (wrong-length id, bad
            city name...), or a body or envelope too large (``oversized``).
    """
    if not isinstance(message, Message):
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "message must be a protocol message")
    if sender == recipient:
        raise LocalProtocolError(ErrorCode.REFLECTED, "an envelope cannot be sealed to its sender")
    if not recipient_key.not_before <= timestamp <= recipient_key.not_after:
        raise LocalProtocolError(
            ErrorCode.EXPIRED_KEY, "recipient encryption key is not valid at the timestamp"
        )
    header_bytes = _encode_header(
        Header(
            version=PROTOCOL_VERSION,
            suite=SUITE_V1,
            sender=sender,
            recipient=recipient,
            sender_key_id=identity_key_id(sender_identity),
            recipient_key_id=recipient_key.key_id,
            recipient_key_epoch=recipient_key.epoch,
            agreement_version=agreement_version,
            message_id=message_id,
            timestamp=timestamp,
        )
    )
    body_bytes = codec.encode(message)
    if len(body_bytes) > limits.max_body_bytes:
        raise LocalProtocolError(ErrorCode.OVERSIZED, "message body is too large to seal")
    signature = signing.sign(
        sender_identity, Purpose.ENVELOPE, signed_payload(header_bytes, body_bytes)
    )
    sealed = hpke.seal(
        recipient_key.public_key,
        HPKE_INFO_PREFIX + header_bytes,
        codec.encode((body_bytes, signature)),
        ephemeral,
    )
    envelope = codec.encode((header_bytes, sealed))
    if len(envelope) > limits.max_envelope_bytes:
        raise LocalProtocolError(ErrorCode.OVERSIZED, "sealed envelope is too large to send")
    return envelope


def _check_version_and_suite(version: int, suite: int) -> None:
    if version != PROTOCOL_VERSION:
        raise EnvelopeRejected(
            ErrorCode.UNSUPPORTED_VERSION, "envelope protocol version is not supported"
        )
    if suite not in SUPPORTED_SUITES:
        raise EnvelopeRejected(
            ErrorCode.UNSUPPORTED_SUITE, "envelope cryptographic suite is not supported"
        )


def _decode_header(header_bytes: bytes) -> Header:
    try:
        header = codec.decode(header_bytes, Header, max_bytes=MAX_HEADER_BYTES, what="header")
    except RemoteProtocolError:
        # Another version may lay its header out differently: read just version and suite, so
        # that it is refused as unsupported rather than as malformed.
        try:
            prefix = codec.decode(
                header_bytes, _HeaderPrefix, max_bytes=MAX_HEADER_BYTES, what="header"
            )
        except RemoteProtocolError:
            prefix = None
        if prefix is not None:
            _check_version_and_suite(prefix.version, prefix.suite)
        raise
    _check_version_and_suite(header.version, header.suite)
    return header


def _check_addressing(header: Header, me: str) -> None:
    if header.sender == me:
        raise EnvelopeRejected(ErrorCode.REFLECTED, "envelope claims to come from this node")
    if header.recipient != me:
        raise EnvelopeRejected(ErrorCode.WRONG_RECIPIENT, "envelope is addressed to another node")


def _check_time(header: Header, now: int, limits: Limits) -> None:
    if header.timestamp < now - limits.max_message_age_s:
        raise EnvelopeRejected(
            ErrorCode.STALE, "envelope timestamp is older than the accepted window"
        )
    if header.timestamp > now + limits.max_clock_skew_s:
        raise EnvelopeRejected(
            ErrorCode.FROM_FUTURE, "envelope timestamp is beyond the allowed clock skew"
        )


def _decryption_key(header: Header, my_keys: Mapping[bytes, DecryptionKey]) -> X25519PrivateKey:
    own = my_keys.get(header.recipient_key_id)
    if own is None or own.epoch != header.recipient_key_epoch:
        raise EnvelopeRejected(
            ErrorCode.UNKNOWN_KEY, "envelope is sealed to an encryption key we lack"
        )
    return own.private_key


@contextmanager
def _key_refusals_as_rejections() -> Iterator[None]:
    # The key checks of protocol.keys raise RemoteProtocolError; an envelope or a receipt is
    # refused as EnvelopeRejected, with the same code.
    try:
        yield
    except RemoteProtocolError as e:
        raise EnvelopeRejected(e.code, e.message) from e


def _signer_key(verify_keys: Sequence[VerifyKey], wanted: bytes, at: int) -> VerifyKey:
    # As _key_refusals_as_rejections around key_at, without a generator on the hot path.
    try:
        return key_at(verify_keys, wanted, at)
    except RemoteProtocolError as e:
        raise EnvelopeRejected(e.code, e.message) from e


def open_envelope(
    data: bytes,
    *,
    me: str,
    my_keys: Mapping[bytes, DecryptionKey],
    sender_keys: SenderKeys,
    replay: ReplayChecker,
    now: int,
    limits: Limits = DEFAULT_LIMITS,
) -> OpenedEnvelope:
    """Check, decrypt and verify an envelope received from a peer.

    Checks, in this order, each refusing with its own code: size (``oversized``, before decoding),
    framing and header (``DecodeError``), version (``unsupported_version``), suite
    (``unsupported_suite``), ``sender == me`` (``reflected``), ``recipient != me``
    (``wrong_recipient``), sender known (``unknown_sender``), timestamp window (``stale``,
    ``from_future``), replay (``replayed``), our encryption key id and epoch (``unknown_key``),
    decryption (``decrypt_failed``), inner framing (``DecodeError``), the sender's identity key
    (``unknown_key``, ``revoked_key``, ``expired_key``), signature (``bad_signature``), body.

    The message id is NOT recorded here: after storing the message, the caller records
    ``(header.sender, header.message_id)`` with ``header.timestamp`` in the same transaction.

    Args:
        data: the exact envelope bytes received.
        me: our city name.
        my_keys: our encryption keys that are still held, by key id.
        sender_keys: resolves a city to its trusted identity keys (``None``: unknown city).
        replay: answers whether the message id was already accepted.
        now: the current time, Unix seconds.
        limits: the limits.

    Returns:
        The verified envelope and its typed message.

    Raises:
        DecodeError: malformed or oversized bytes.
        EnvelopeRejected: a check failed; ``code`` says which.
        RemoteProtocolError: the message failed its own validation (code kept).
        ReplayStoreFull: from ``replay``: refuse for now (503), nothing is forgotten.
    """
    envelope = codec.decode(data, _Envelope, max_bytes=limits.max_envelope_bytes, what="envelope")
    header = _decode_header(envelope.header)
    _check_addressing(header, me)
    verify_keys = sender_keys(header.sender)
    if verify_keys is None:
        raise EnvelopeRejected(
            ErrorCode.UNKNOWN_SENDER, "envelope comes from a city we do not know"
        )
    _check_time(header, now, limits)
    if replay.seen(header.sender, header.message_id):
        raise EnvelopeRejected(ErrorCode.REPLAYED, "envelope message id was already accepted")
    private_key = _decryption_key(header, my_keys)
    plaintext = hpke.open(private_key, HPKE_INFO_PREFIX + envelope.header, envelope.sealed)
    inner = codec.decode(plaintext, _SignedBody, max_bytes=len(plaintext), what="sealed body")
    key = _signer_key(verify_keys, header.sender_key_id, header.timestamp)
    signing.check_signature(
        key.public_key,
        Purpose.ENVELOPE,
        signed_payload(envelope.header, inner.body),
        inner.signature,
        what="envelope",
        rejected=EnvelopeRejected,
    )
    return OpenedEnvelope(
        header=header,
        header_bytes=envelope.header,
        body_bytes=inner.body,
        signature=inner.signature,
        message=decode_message(inner.body, limits),
        envelope_hash=envelope_hash(data),
    )


# --- Receipts -------------------------------------------------------------------------------


class Receipt(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """The receiving node's signed statement that it received an envelope, and with what outcome.

    Attributes:
        envelope_hash: SHA-256 of the exact envelope bytes received.
        message_id: the envelope header's message id.
        sender: the city that sent the envelope.
        recipient: the city that received it and signs this receipt.
        received_at: when it was received, Unix seconds.
        status: ``"accepted"``, or the error code it was refused with.
    """

    envelope_hash: Digest
    message_id: MessageId
    sender: CityName
    recipient: CityName
    received_at: Timestamp
    status: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]

    def __post_init__(self) -> None:
        if self.status not in RECEIPT_STATUSES:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, "receipt status is not known")


class _SignedReceipt(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    receipt: bytes
    signer_key_id: KeyId
    signature: Signature


def receipt_for(
    opened: OpenedEnvelope, *, received_at: int, status: str = RECEIPT_ACCEPTED
) -> Receipt:
    """Return the receipt that answers an opened envelope.

    Args:
        opened: the verified envelope.
        received_at: when it was received, Unix seconds.
        status: ``"accepted"`` or the error code it was refused with after opening.

    Returns:
        The unsigned receipt.

    Raises:
        LocalProtocolError: an unknown status.
    """
    return Receipt(
        envelope_hash=opened.envelope_hash,
        message_id=opened.header.message_id,
        sender=opened.header.sender,
        recipient=opened.header.recipient,
        received_at=received_at,
        status=status,
    )


def sign_receipt(receipt: Receipt, identity_key: Ed25519PrivateKey, signer_key_id: bytes) -> bytes:
    """Sign a receipt with our identity key.

    Args:
        receipt: the receipt; its ``recipient`` is our city.
        identity_key: our identity (Ed25519) private key.
        signer_key_id: the key id of ``identity_key``.

    Returns:
        The signed receipt: ``msgpack([receipt_bytes, signer_key_id, signature])``.

    Raises:
        LocalProtocolError: a receipt field out of bounds, or a key id not naming the key.
    """
    receipt_bytes = codec.encode(receipt)
    try:
        codec.decode(receipt_bytes, Receipt, max_bytes=len(receipt_bytes), what="receipt")
    except ProtocolError as e:
        raise _as_local(e, "receipt") from e
    if len(signer_key_id) != KEY_ID_BYTES or signer_key_id != identity_key_id(identity_key):
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "signer key id does not name the key")
    signature = signing.sign(identity_key, Purpose.RECEIPT, receipt_bytes)
    return codec.encode((receipt_bytes, signer_key_id, signature))


def verify_receipt(
    data: bytes,
    *,
    signer: str,
    verify_keys: Sequence[VerifyKey],
    limits: Limits = DEFAULT_LIMITS,
) -> Receipt:
    """Verify a receipt signed by ``signer`` and return it.

    The caller then matches the receipt to its outbox: ``envelope_hash``, ``message_id`` and
    ``sender`` must be those of the envelope it sent.

    Args:
        data: the exact signed receipt received.
        signer: the city expected to have signed it (the envelope's recipient).
        verify_keys: that city's identity keys as we trust them.
        limits: the limits.

    Returns:
        The verified receipt.

    Raises:
        DecodeError: malformed or oversized bytes.
        EnvelopeRejected: ``unknown_key``, ``bad_signature``, ``revoked_key`` or
            ``expired_key`` (at ``received_at``), or ``invalid_field`` when the receipt names
            another city than ``signer`` as its recipient.
    """
    signed = codec.decode(data, _SignedReceipt, max_bytes=limits.max_receipt_bytes, what="receipt")
    # The key must be known before its signature is checked, but its window can only be checked
    # at the receipt's own time, known once the verified receipt is decoded.
    with _key_refusals_as_rejections():
        key = find_key(verify_keys, signed.signer_key_id)
    signing.check_signature(
        key.public_key,
        Purpose.RECEIPT,
        signed.receipt,
        signed.signature,
        what="receipt",
        rejected=EnvelopeRejected,
    )
    receipt = codec.decode(signed.receipt, Receipt, max_bytes=len(signed.receipt), what="receipt")
    with _key_refusals_as_rejections():
        check_key_at(key, receipt.received_at)
    if receipt.recipient != signer:
        raise EnvelopeRejected(ErrorCode.INVALID_FIELD, "receipt names another city as its signer")
    return receipt
