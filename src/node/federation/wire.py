"""The federation HTTP wire format: paths, media types, and the inbox batch codec.

Owns the bytes of ``POST /federation/v1/inbox`` and of every error body. Invariants:

* Request: a MessagePack array of ``bin`` (one sealed envelope each, exactly as sealed), at most
  ``NodeLimits.batch_size`` items, each at most ``Limits.max_envelope_bytes``; an empty array is
  a valid (heartbeat) batch. Response: an array, one ``[status: str, receipt: bin | nil]`` per
  envelope in request order; a status is 1..64 characters of ``[a-z0-9_]`` starting with a
  letter, a receipt at most ``Limits.max_receipt_bytes``.
* Decoding goes through :func:`protocol.codec.decode` with a typed, bounded schema (built once
  per set of limits): the size is checked before parsing, types are strict, trailing bytes are
  refused, and every failure is a :class:`protocol.errors.DecodeError` with its code.
* Error bodies are JSON ``{"error": {"code": str, "message": str}}``: readable by an operator
  with ``curl``; the message never carries a value from the request.
* A decoded response is a :class:`ClaimedResult`: the peer's *claim*, not yet verified. Only the
  client turns it into a :class:`node.delivery.DeliveryResult` after checking the receipt.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec

from node.config import NodeLimits
from node.delivery import DeliveryResult
from protocol import codec
from protocol.errors import DecodeError, ErrorCode

API_PREFIX: Final = "/federation/v1"
INBOX_PATH: Final = API_PREFIX + "/inbox"
KEYS_PATH: Final = API_PREFIX + "/keys"
ATTACHMENT_PATH: Final = API_PREFIX + "/attachments/{attachment_id}"
MSGPACK: Final = "application/msgpack"
OCTET_STREAM: Final = "application/octet-stream"
JSON: Final = "application/json"

STATUS_MAX_CHARS: Final = 64
STATUS_PATTERN: Final = "^[a-z][a-z0-9_]*$"
MAX_ERROR_BODY_BYTES: Final = 4096
READ_CHUNK_BYTES: Final = 64 * 1024  # bodies are read and streamed in chunks of at most this
ARRAY_HEADER_MAX_BYTES: Final = 5
# Encoded size of one result item beyond its receipt: array header, str header + status, bin
# header (or nil).
_RESULT_OVERHEAD: Final = 1 + 2 + STATUS_MAX_CHARS + 5

_Status = Annotated[
    str, msgspec.Meta(min_length=1, max_length=STATUS_MAX_CHARS, pattern=STATUS_PATTERN)
]


@dataclass(frozen=True, slots=True)
class ClaimedResult:
    """One item of an inbox response as the peer sent it: its receipt is NOT yet verified.

    Attributes:
        status: ``accepted``, ``duplicate`` or an error code.
        receipt: the signed receipt bytes, or ``None``.
    """

    status: str
    receipt: bytes | None


class ErrorBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``error`` member of an error response."""

    code: Annotated[str, msgspec.Meta(min_length=1, max_length=STATUS_MAX_CHARS)]
    message: Annotated[str, msgspec.Meta(max_length=1024)]


class _ErrorDocument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    error: ErrorBody


@functools.lru_cache(maxsize=16)
def _batch_type(batch_size: int, max_envelope_bytes: int) -> Any:
    envelope = Annotated[bytes, msgspec.Meta(max_length=max_envelope_bytes)]
    return Annotated[tuple[envelope, ...], msgspec.Meta(max_length=batch_size)]


@functools.lru_cache(maxsize=16)
def _results_type(batch_size: int, max_receipt_bytes: int) -> Any:
    receipt = Annotated[bytes, msgspec.Meta(max_length=max_receipt_bytes)]
    item = tuple[_Status, receipt | None]
    return Annotated[tuple[item, ...], msgspec.Meta(max_length=batch_size)]


def _array_header_bytes(count: int) -> int:
    return 1 if count < 16 else 3 if count < 2**16 else 5


def _bin_header_bytes(length: int) -> int:
    return 2 if length < 2**8 else 3 if length < 2**16 else 5


def envelope_item_bytes(envelope_length: int) -> int:
    """Return the encoded size of one envelope inside a batch (its ``bin`` header included)."""
    return _bin_header_bytes(envelope_length) + envelope_length


def batch_bytes(envelopes: Sequence[bytes]) -> int:
    """Return the exact encoded size of a batch, without encoding it.

    Args:
        envelopes: the sealed envelopes.

    Returns:
        ``len(encode_batch(envelopes))``.
    """
    return _array_header_bytes(len(envelopes)) + sum(envelope_item_bytes(len(e)) for e in envelopes)


def encode_batch(envelopes: Sequence[bytes]) -> bytes:
    """Encode an inbox request body.

    Args:
        envelopes: the sealed envelopes, exactly as sealed.

    Returns:
        The MessagePack array of ``bin``.
    """
    return codec.encode(tuple(bytes(e) for e in envelopes))


def decode_batch(data: bytes, limits: NodeLimits) -> tuple[bytes, ...]:
    """Decode an inbox request body strictly.

    Args:
        data: the whole body (already bounded by ``limits.max_request_bytes``).
        limits: the node's limits.

    Returns:
        The envelopes, in order.

    Raises:
        DecodeError: malformed, wrong types, too many envelopes or one too large (``oversized``),
            trailing bytes.
    """
    kind = _batch_type(limits.batch_size, limits.protocol.max_envelope_bytes)
    envelopes: tuple[bytes, ...] = codec.decode(
        data, kind, max_bytes=limits.max_request_bytes, what="inbox batch"
    )
    return envelopes


def encode_results(results: Sequence[DeliveryResult]) -> bytes:
    """Encode an inbox response body: one ``[status, receipt | nil]`` per envelope.

    Args:
        results: the handler's results, in request order.

    Returns:
        The MessagePack bytes.
    """
    return codec.encode(tuple((r.status, r.receipt) for r in results))


def max_results_bytes(count: int, limits: NodeLimits) -> int:
    """Return the largest valid response body for a batch of ``count`` envelopes."""
    per_item = _RESULT_OVERHEAD + limits.protocol.max_receipt_bytes
    return ARRAY_HEADER_MAX_BYTES + count * per_item


def decode_results(data: bytes, *, expected: int, limits: NodeLimits) -> tuple[ClaimedResult, ...]:
    """Decode an inbox response body strictly.

    Args:
        data: the whole body.
        expected: how many envelopes the request held.
        limits: the node's limits.

    Returns:
        The claimed results, in request order (receipts unverified).

    Raises:
        DecodeError: malformed, wrong types, a bad status or receipt, or not exactly
            ``expected`` items (``invalid_field``).
    """
    kind = _results_type(max(limits.batch_size, expected), limits.protocol.max_receipt_bytes)
    items: tuple[tuple[str, bytes | None], ...] = codec.decode(
        data, kind, max_bytes=max_results_bytes(expected, limits), what="inbox response"
    )
    if len(items) != expected:
        raise DecodeError(
            ErrorCode.INVALID_FIELD, "inbox response does not hold one result per envelope"
        )
    return tuple(ClaimedResult(status, receipt) for status, receipt in items)


def encode_error(code: str, message: str) -> bytes:
    """Encode an error body: ``{"error": {"code": ..., "message": ...}}`` (JSON)."""
    return msgspec.json.encode(_ErrorDocument(ErrorBody(code=code, message=message)))


def decode_error(data: bytes) -> ErrorBody | None:
    """Decode an error body, or return ``None`` when it is not one (never raises)."""
    if len(data) > MAX_ERROR_BODY_BYTES:
        return None
    try:
        return msgspec.json.decode(data, type=_ErrorDocument, strict=True).error
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
