"""The protocol's one error tree, with a stable string code and a status hint on every error.

Rules of this module:

* Every error raised by ``protocol`` is a :class:`ProtocolError`. Library exceptions (msgpack,
  cryptography, unicode) are wrapped at the boundary where they occur (``raise ... from e``).
* Each error carries a :class:`ErrorCode` — a stable string that tools, tests and peers rely on —
  and an HTTP-style status hint derived from the code. The message is a human sentence that never
  contains a field's *value*: values can be names, personnummer or document text.
* Two roots, after h11: :class:`RemoteProtocolError` when bytes we received break the rules (the
  peer's fault) and :class:`LocalProtocolError` when our own caller does (a case worker's input, a
  transition not in the table, sealing with an unusable key). Validation code raises
  :class:`LocalProtocolError`; the decoders of peer input re-raise it as remote with
  :meth:`LocalProtocolError.as_remote`, keeping the code.

The tree::

    ProtocolError                  code, status, message
    ├── LocalProtocolError         we (or our caller) broke the rules
    │   └── ReplayStoreFull        replay store at capacity: refuse, never forget (503)
    └── RemoteProtocolError        the peer broke the rules
        ├── DecodeError            bytes that are not a well-formed protocol object
        ├── EnvelopeRejected       a well-formed envelope that fails a check of ``open``
        ├── AttachmentRejected     an attachment stream that fails authentication
        ├── AgreementRejected      an agreement version that does not verify
        ├── EquivocationDetected   two different key-log heads signed for one size
        └── KeyLogBroken           a key-history log whose chain breaks (names the entry)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class ErrorCode(StrEnum):
    """Stable error codes. Never renumber or rename one: peers and tools match on them."""

    # Decoding (400)
    MALFORMED = "malformed"
    OVERSIZED = "oversized"
    TOO_DEEP = "too_deep"
    BAD_TYPE = "bad_type"
    INVALID_UTF8 = "invalid_utf8"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_SUITE = "unsupported_suite"
    # Field validation (422)
    INVALID_FIELD = "invalid_field"
    INVALID_PERSONNUMMER = "invalid_personnummer"
    # Envelope checks (400/401/403/409)
    WRONG_RECIPIENT = "wrong_recipient"
    REFLECTED = "reflected"
    UNKNOWN_SENDER = "unknown_sender"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED_KEY = "expired_key"
    REVOKED_KEY = "revoked_key"
    STALE = "stale"
    FROM_FUTURE = "from_future"
    REPLAYED = "replayed"
    DECRYPT_FAILED = "decrypt_failed"
    BAD_SIGNATURE = "bad_signature"
    # Attachments (400)
    ATTACHMENT_CORRUPT = "attachment_corrupt"
    ATTACHMENT_TRUNCATED = "attachment_truncated"
    # Agreement (403/409)
    AGREEMENT_INVALID = "agreement_invalid"
    AGREEMENT_ROLLBACK = "agreement_rollback"
    AGREEMENT_SKIPPED_VERSION = "agreement_skipped_version"
    AGREEMENT_FORK = "agreement_fork"
    AGREEMENT_THRESHOLD = "agreement_threshold"
    AGREEMENT_EXPIRED = "agreement_expired"
    NOT_A_MEMBER = "not_a_member"
    UNKNOWN_UNIT = "unknown_unit"
    OUTSIDE_PERIOD = "outside_period"
    NOT_ELIGIBLE = "not_eligible"
    QUOTA_EXCEEDED = "quota_exceeded"
    # Keys and key history (400/409)
    BAD_KEY_BUNDLE = "bad_key_bundle"
    BAD_SUCCESSION = "bad_succession"
    KEYLOG_BROKEN = "keylog_broken"
    EQUIVOCATION = "equivocation"
    # Case state machine (409)
    INVALID_TRANSITION = "invalid_transition"
    # Capacity (503)
    REPLAY_STORE_FULL = "replay_store_full"


STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.OVERSIZED: 413,
    ErrorCode.TOO_DEEP: 400,
    ErrorCode.BAD_TYPE: 400,
    ErrorCode.INVALID_UTF8: 400,
    ErrorCode.UNKNOWN_MESSAGE_TYPE: 400,
    ErrorCode.UNSUPPORTED_VERSION: 400,
    ErrorCode.UNSUPPORTED_SUITE: 400,
    ErrorCode.INVALID_FIELD: 422,
    ErrorCode.INVALID_PERSONNUMMER: 422,
    ErrorCode.WRONG_RECIPIENT: 400,
    ErrorCode.REFLECTED: 400,
    ErrorCode.UNKNOWN_SENDER: 403,
    ErrorCode.UNKNOWN_KEY: 400,
    ErrorCode.EXPIRED_KEY: 403,
    ErrorCode.REVOKED_KEY: 403,
    ErrorCode.STALE: 400,
    ErrorCode.FROM_FUTURE: 400,
    ErrorCode.REPLAYED: 409,
    ErrorCode.DECRYPT_FAILED: 400,
    ErrorCode.BAD_SIGNATURE: 401,
    ErrorCode.ATTACHMENT_CORRUPT: 400,
    ErrorCode.ATTACHMENT_TRUNCATED: 400,
    ErrorCode.AGREEMENT_INVALID: 400,
    ErrorCode.AGREEMENT_ROLLBACK: 409,
    ErrorCode.AGREEMENT_SKIPPED_VERSION: 409,
    ErrorCode.AGREEMENT_FORK: 409,
    ErrorCode.AGREEMENT_THRESHOLD: 403,
    ErrorCode.AGREEMENT_EXPIRED: 403,
    ErrorCode.NOT_A_MEMBER: 403,
    ErrorCode.UNKNOWN_UNIT: 422,
    ErrorCode.OUTSIDE_PERIOD: 422,
    ErrorCode.NOT_ELIGIBLE: 422,
    ErrorCode.QUOTA_EXCEEDED: 409,
    ErrorCode.BAD_KEY_BUNDLE: 400,
    ErrorCode.BAD_SUCCESSION: 400,
    ErrorCode.KEYLOG_BROKEN: 400,
    ErrorCode.EQUIVOCATION: 409,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.REPLAY_STORE_FULL: 503,
}


class ProtocolError(Exception):
    """Base of every error raised by ``protocol``.

    Attributes:
        code: the stable :class:`ErrorCode`.
        status: an HTTP-style status hint for the code.
        message: a human sentence without personal data.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.status = STATUS[code]
        self.message = message


class LocalProtocolError(ProtocolError):
    """We, or the caller of the protocol API, broke the rules."""

    def as_remote(self) -> RemoteProtocolError:
        """Return the same code and message as the peer's fault (for input decoded from a peer)."""
        remote = RemoteProtocolError(self.code, self.message)
        remote.__cause__ = self
        return remote


class ReplayStoreFull(LocalProtocolError):
    """The replay store is at capacity: the message is refused (503), nothing is forgotten."""

    def __init__(self, message: str = "replay store is full; retry later") -> None:
        super().__init__(ErrorCode.REPLAY_STORE_FULL, message)


class RemoteProtocolError(ProtocolError):
    """The peer broke the rules: what it sent is refused."""


class DecodeError(RemoteProtocolError):
    """Bytes that are not a well-formed protocol object."""


class EnvelopeRejected(RemoteProtocolError):
    """A well-formed envelope that fails one of the checks of ``open_envelope``."""


class AttachmentRejected(RemoteProtocolError):
    """An attachment stream that fails authentication (corrupt, reordered, spliced, truncated)."""


class AgreementRejected(RemoteProtocolError):
    """An agreement version, or a chain of them, that does not verify."""


class EquivocationDetected(RemoteProtocolError):
    """A node signed two different key-log heads for the same size; the proof is attached."""

    def __init__(self, message: str, proof: object) -> None:
        super().__init__(ErrorCode.EQUIVOCATION, message)
        self.proof = proof


class KeyLogBroken(RemoteProtocolError):
    """A key-history log whose hash chain does not hold, or that does not extend a checkpoint.

    Attributes:
        index: the position of the first entry that is wrong or missing.
    """

    def __init__(self, index: int, message: str) -> None:
        super().__init__(ErrorCode.KEYLOG_BROKEN, message)
        self.index = index
