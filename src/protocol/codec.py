"""Strict MessagePack codec for every protocol object.

Owns the translation between bytes and typed, frozen objects. Invariants:

* Objects are ``msgspec`` structs encoded as MessagePack *arrays* in declared field order (no maps:
  no duplicate-key ambiguity, no key-order ambiguity). Tagged unions carry their small integer tag
  as the first array element.
* Decoding is typed and strict: only the MessagePack types a field allows (no ext, no float, no
  bool for an int), strings are valid UTF-8, every string, bytes and array field has a maximum
  length, the total size is checked before any parsing, and the nesting depth is fixed by the
  schema. Trailing bytes are refused.
* Any failure raises :class:`~protocol.errors.DecodeError` (or the validation error of the field,
  as the peer's fault) with a message naming the position, never the value.
* The exact bytes received are what signatures cover: callers keep them and never re-encode before
  verifying.
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeVar

import msgspec

from protocol.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
)

T = TypeVar("T")

_ENCODER: Final = msgspec.msgpack.Encoder()
_PATH = re.compile(r" - at `(\$[^`]*)`$")


def encode(obj: Any) -> bytes:
    """Encode a protocol object (or a tuple of them) to MessagePack bytes.

    Args:
        obj: a struct, or a tuple/bytes/str/int value made of them.

    Returns:
        The encoding; deterministic for a given object.
    """
    return _ENCODER.encode(obj)


_DECODERS: dict[object, msgspec.msgpack.Decoder[Any]] = {}


def _decoder(kind: object) -> msgspec.msgpack.Decoder[Any]:
    """One strict decoder per type, built once: building one costs more than a small decode."""
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS.setdefault(kind, msgspec.msgpack.Decoder(kind, strict=True))
    return decoder


def _where(err: msgspec.ValidationError) -> str:
    match = _PATH.search(str(err))
    return match.group(1) if match else "$"


def _classify(err: msgspec.ValidationError) -> ErrorCode:
    text = str(err)
    if "got `" in text:  # "Expected `int`, got `float`": a MessagePack type the field forbids
        return ErrorCode.BAD_TYPE
    if "length <=" in text or "at most length" in text:
        return ErrorCode.OVERSIZED
    if "Invalid value" in text and "$[0]" in text:
        return ErrorCode.UNKNOWN_MESSAGE_TYPE
    return ErrorCode.INVALID_FIELD


def decode(data: bytes, kind: type[T], *, max_bytes: int, what: str) -> T:
    """Decode peer bytes into a typed object, strictly.

    Args:
        data: the exact bytes received.
        kind: the struct type (or union of tagged structs) expected.
        max_bytes: the largest accepted size, checked before parsing.
        what: a short name of the object for error messages ("envelope", "header", ...).

    Returns:
        The typed, frozen object.

    Raises:
        DecodeError: oversized, malformed, wrong types, invalid UTF-8, trailing bytes.
        RemoteProtocolError: a field's own validation failed (its code is kept).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(ErrorCode.BAD_TYPE, f"{what} must be bytes")
    if len(data) > max_bytes:
        raise DecodeError(ErrorCode.OVERSIZED, f"{what} is larger than {max_bytes} bytes")
    try:
        decoded: T = _decoder(kind).decode(data)
    except LocalProtocolError as e:
        raise e.as_remote() from e
    except UnicodeDecodeError as e:
        raise DecodeError(ErrorCode.INVALID_UTF8, f"{what} holds a string that is not UTF-8") from e
    except msgspec.ValidationError as e:
        code = _classify(e)
        raise DecodeError(code, f"{what} field {_where(e)} is not valid ({code})") from e
    except msgspec.DecodeError as e:
        raise DecodeError(ErrorCode.MALFORMED, f"{what} is not well-formed MessagePack") from e
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise DecodeError(ErrorCode.MALFORMED, f"{what} could not be decoded") from e
    return decoded


def peek_tag(data: bytes | bytearray | memoryview, *, what: str) -> int:
    """Read the tag of a tagged union from the start of its array, without parsing the rest.

    Lets a decoder refuse an unknown type before decoding a large body as a union. Tags are small
    (0-255): a wider or a negative integer is never a tag.

    Args:
        data: the exact bytes received.
        what: a short name of the object for error messages ("message").

    Returns:
        The tag, the first element of the array.

    Raises:
        DecodeError: empty, truncated, not an array, no first element, or a first element that is
            not an integer (``bad_type``) or too wide to be a tag (``unknown_message_type``).
    """
    view = memoryview(data)
    if len(view) == 0:
        raise DecodeError(ErrorCode.MALFORMED, f"{what} is empty")
    head = view[0]
    if 0x90 <= head <= 0x9F:
        length, offset = head & 0x0F, 1
    elif head in (0xDC, 0xDD):
        offset = 3 if head == 0xDC else 5
        if len(view) < offset:
            raise DecodeError(ErrorCode.MALFORMED, f"{what} is truncated")
        length = int.from_bytes(view[1:offset], "big")
    else:
        raise DecodeError(ErrorCode.BAD_TYPE, f"{what} must be a MessagePack array")
    if length == 0:
        raise DecodeError(ErrorCode.MALFORMED, f"{what} has no type tag")
    if len(view) <= offset:
        raise DecodeError(ErrorCode.MALFORMED, f"{what} is truncated")
    first = view[offset]
    if first <= 0x7F:
        return first
    if first == 0xCC:
        if len(view) <= offset + 1:
            raise DecodeError(ErrorCode.MALFORMED, f"{what} is truncated")
        return view[offset + 1]
    if 0xCD <= first <= 0xD3 or first >= 0xE0:
        raise DecodeError(ErrorCode.UNKNOWN_MESSAGE_TYPE, f"{what} type tag is not known")
    raise DecodeError(ErrorCode.BAD_TYPE, f"{what} type tag must be an integer")


def check(obj: T, *, what: str) -> T:
    """Check every constraint of an object built locally, as decoding would check it for a peer.

    Plain construction of a struct runs only its ``__post_init__``; this also applies the length,
    range and type constraints of its fields, so local input meets the rules peers are held to.

    Args:
        obj: a struct built by our own code from a caller's values.
        what: a short name for error messages.

    Returns:
        The checked object, as decoded from its own encoding.

    Raises:
        LocalProtocolError: a field is of the wrong type, too long, out of range or invalid.
    """
    try:
        checked: T = _decoder(type(obj)).decode(_ENCODER.encode(obj))
    except LocalProtocolError:
        raise
    except (msgspec.ValidationError, msgspec.EncodeError, TypeError) as e:
        code = _classify(e) if isinstance(e, msgspec.ValidationError) else ErrorCode.BAD_TYPE
        if code is ErrorCode.UNKNOWN_MESSAGE_TYPE:
            code = ErrorCode.INVALID_FIELD
        raise LocalProtocolError(code, f"{what} field {_where_any(e)} is not valid") from e
    return checked


def build(kind: type[T], fields: dict[str, Any], *, what: str) -> T:
    """Build a typed object from Python values given by our own caller, checking every constraint.

    Args:
        kind: the struct type.
        fields: field values by name (dates as ``datetime.date``, enums as members or values).
        what: a short name for error messages.

    Returns:
        The typed, frozen, checked object.

    Raises:
        LocalProtocolError: a field is missing, unknown, of the wrong type, or invalid.
    """
    try:
        obj = kind(**fields)
    except TypeError as e:
        raise LocalProtocolError(
            ErrorCode.INVALID_FIELD, f"{what} has missing or unknown fields"
        ) from e
    return check(obj, what=what)


def _where_any(err: Exception) -> str:
    return _where(err) if isinstance(err, msgspec.ValidationError) else "$"
