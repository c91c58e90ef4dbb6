"""What the sender does with the peer's answer for one envelope: the one table of refusal codes.

Owns the split of per-envelope results into three verdicts:

* ``DELIVERED`` — ``accepted`` or ``duplicate`` with a verified receipt: store the receipt, done.
* ``RETRY`` — a transient code (:data:`TRANSIENT_CODES`), or ``accepted``/``duplicate`` without
  a receipt: the envelope stays ``sent`` and goes again after a backoff. Sending the very same
  bytes again is always safe: the receiver answers a duplicate with its original receipt.
* ``REFUSED`` — every other code: the peer refused the envelope for good (it is malformed,
  misaddressed, signed by a revoked key...), so no retry of the same bytes can change the
  answer. The envelope becomes ``failed`` and the operator sees it.

Invariant: transient codes are listed here and nowhere else, each with the reason it is
transient. A code is transient only if a later attempt with the *same bytes* can succeed.
Codes a peer sends are untrusted strings: :func:`refusal_label` maps them onto a bounded set
before they reach a metric label or a log line.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Final

from node.delivery import (
    ACCEPTED,
    BAD_RECEIPT,
    DUPLICATE,
    REJECTED,
    REJECTED_RECEIPT,
    DeliveryResult,
)
from protocol.errors import ErrorCode

OTHER_CODE: Final = "other"
"""The label of a refusal code outside the known vocabulary (a buggy or hostile peer)."""

_RECEIPT_NOT_VERIFIED: Final = (
    "the peer's receipt is missing or failed our verification (corrupted in transit, or signed "
    "by a key we have not fetched yet); the peer has stored the envelope, so sending it again "
    "returns the original receipt as a duplicate, checked afresh"
)

TRANSPORT_STATUSES: Final = frozenset({BAD_RECEIPT, REJECTED_RECEIPT})
"""Statuses our own transport sets (never a peer's answer); it counts them in the metrics."""

TRANSIENT_CODES: Final = MappingProxyType(
    {
        BAD_RECEIPT: _RECEIPT_NOT_VERIFIED,
        REJECTED_RECEIPT: _RECEIPT_NOT_VERIFIED + " (an older name of bad_receipt)",
        ErrorCode.REPLAY_STORE_FULL.value: (
            "the peer is at capacity and kept nothing; it accepts once its replay window moves on"
        ),
        ErrorCode.UNKNOWN_KEY.value: (
            "the two nodes' views of each other's keys differ, typically just after a rotation; "
            "the sender refreshes the peer's keys (on_unknown_key) and the grace windows "
            "guarantee the keys involved are still held, so a later attempt verifies"
        ),
        "overloaded": (
            "the peer's queue is full and it kept nothing (node.delivery.Overloaded); it accepts "
            "once it has drained"
        ),
    }
)
"""Refusal codes after which the same envelope is sent again, each with why it is transient."""

KEY_REFRESH_CODES: Final = frozenset({ErrorCode.UNKNOWN_KEY.value})
"""Codes after which the sender asks for the peer's key state to be fetched again."""

_KNOWN_CODES: Final = frozenset(
    {code.value for code in ErrorCode} | {ACCEPTED, DUPLICATE, REJECTED} | set(TRANSIENT_CODES)
)


class Verdict(StrEnum):
    """What becomes of one envelope after the peer's answer."""

    DELIVERED = "delivered"  # receipt stored: receipted
    RETRY = "retry"  # left sent: sent again after a backoff
    REFUSED = "refused"  # refused for good: failed


def classify(result: DeliveryResult) -> Verdict:
    """Decide what becomes of an envelope given the peer's answer for it.

    Args:
        result: the transport's verified result for one envelope.

    Returns:
        ``DELIVERED`` for a receipted envelope, ``RETRY`` for a transient code or a missing
        receipt, ``REFUSED`` for any other code.
    """
    if result.delivered:
        return Verdict.DELIVERED
    if result.status in (ACCEPTED, DUPLICATE) or result.status in TRANSIENT_CODES:
        return Verdict.RETRY
    return Verdict.REFUSED


def refusal_label(status: str) -> str:
    """Map a status string from a peer onto a bounded vocabulary, safe as a label or in a log.

    Args:
        status: the status the peer (or the transport) gave for one envelope.

    Returns:
        The status itself when it is a known code, else :data:`OTHER_CODE`.
    """
    return status if status in _KNOWN_CODES else OTHER_CODE
