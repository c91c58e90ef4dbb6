"""Field types that the wire records of several modules share, and the text and date rules.

Owns the one definition of each bounded value that more than one record carries: the city and
unit name rule (:data:`CityName`, :data:`UnitName`), case ids, Unix timestamps, 32-byte digests,
Ed25519 signatures, the calendar range of dates, and the rules on what a text field may hold.
``messages``, ``sealing``, ``keys``, ``key_bundle``, ``succession``, ``keylog`` and ``agreement``
import them from here; none of them defines its own copy.

Invariants:

* A name (city, unit) is 1-64 characters matching :data:`NAME_PATTERN` over the whole string:
  Python's ``$`` also matches before a final newline, ``$(?!\\n)`` is an exact end in Python and in
  ECMAScript (JSON Schema) alike.
* Dates lie between :data:`FIRST_DATE` and :data:`LAST_DATE`.
* Text holds no control character other than newline and tab, and no lone surrogate; a single-line
  field holds none at all (nor U+2028/U+2029); a label a person reads before trusting it (a file
  name, an agreement's title or display name) also holds no bidirectional control.
* A personnummer-shaped number (:func:`holds_personnummer_shaped`) is exactly what
  :data:`PERSONNUMMER_SHAPED_PATTERN` finds: ten or twelve ASCII digits, optionally split before
  the last four by one ``-``, ``+`` or space, with no ASCII digit on either side.
* The checks raise :class:`~protocol.errors.LocalProtocolError` ``invalid_field`` naming the field,
  never its value; decoders turn it into the peer's fault.
"""

from __future__ import annotations

import datetime
import itertools
import re
from typing import Annotated, Final

import msgspec

from protocol.errors import ErrorCode, LocalProtocolError
from protocol.signing import SIGNATURE_BYTES

NAME_PATTERN: Final = r"^[a-z][a-z0-9-]*$(?!\n)"
NAME_MAX_CHARS: Final = 64
CASE_ID_BYTES: Final = 16
DIGEST_BYTES: Final = 32
MAX_I64: Final = 2**63 - 1
"""The largest integer a signed 64-bit field (a timestamp, a sequence number) holds."""
FIRST_DATE: Final = datetime.date(2000, 1, 1)
LAST_DATE: Final = datetime.date(2100, 12, 31)

CityName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN)
]
UnitName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=NAME_MAX_CHARS, pattern=NAME_PATTERN)
]
CaseId = Annotated[bytes, msgspec.Meta(min_length=CASE_ID_BYTES, max_length=CASE_ID_BYTES)]
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=MAX_I64)]
"""Unix seconds."""
Digest = Annotated[bytes, msgspec.Meta(min_length=DIGEST_BYTES, max_length=DIGEST_BYTES)]
"""A 32-byte digest: SHA-256, or BLAKE3-256 for an attachment's content."""
Signature = Annotated[bytes, msgspec.Meta(min_length=SIGNATURE_BYTES, max_length=SIGNATURE_BYTES)]
"""An Ed25519 signature (see :mod:`protocol.signing`)."""

_CONTROL_CHARS: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_LINE_BREAKING: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
# Bidirectional embeddings, overrides and isolates can disguise a label ("Trojan Source").
_BIDI_CONTROLS: Final = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
# The same rules restricted to ASCII, as bytes to delete: what the patterns above match there.
_ASCII_CONTROL_CHARS: Final = bytes([*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F])
_ASCII_LINE_BREAKING: Final = bytes([*range(0x00, 0x20), 0x7F])

PERSONNUMMER_SHAPED_PATTERN: Final = r"(?<![0-9])(?:[0-9]{2})?[0-9]{6}[-+ ]?[0-9]{4}(?![0-9])"
"""The definition of a personnummer-shaped number; :func:`holds_personnummer_shaped` decides it."""
_ASCII_DIGITS: Final = b"0123456789"
_MIN_SHAPED_DIGITS: Final = 10
# UTF-8 bytes to classes: an ASCII digit becomes "0", a separator of the pattern "-", every other
# byte "x" (each byte of a multi-byte character is >= 0x80, so never a digit or a separator).
_SHAPE_CLASSES: Final = bytes(
    ord("0") if b in _ASCII_DIGITS else ord("-") if b in b"-+ " else ord("x") for b in range(256)
)
# In the classes, a stretch of digits and separators that starts with a digit and could hold a
# match (ten digits, or six, a separator and four: at least ten bytes). The literal first byte
# lets the search skip ahead in C.
_SHAPED_STRETCH: Final = re.compile(rb"0[0-]{9,}")


def require(condition: bool, message: str) -> None:
    """Raise ``invalid_field`` with ``message`` unless ``condition`` holds.

    Raises:
        LocalProtocolError: ``invalid_field``.
    """
    if not condition:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, message)


def _holds_control(value: str, line: bool) -> bool:
    """Whether ``value`` holds a character that :data:`_CONTROL_CHARS` (or, for a single-line
    field, :data:`_LINE_BREAKING`) matches.

    Two exact fast paths before the pattern, since every message field goes through here: ASCII
    text is checked by deleting the ASCII characters of the rule in C and comparing lengths; other
    text that ``str.isprintable`` accepts holds no character of category Cc, Cf, Cs, Zl or Zp, so
    none that either pattern (or :data:`_BIDI_CONTROLS`) matches.
    """
    if value.isascii():
        delete = _ASCII_LINE_BREAKING if line else _ASCII_CONTROL_CHARS
        return len(value.encode("ascii").translate(None, delete)) != len(value)
    if value.isprintable():
        return False
    return (_LINE_BREAKING if line else _CONTROL_CHARS).search(value) is not None


def check_text(value: str, field: str, *, required: bool = False, line: bool = False) -> None:
    """Refuse control characters (all of them in a single-line field) and, if required, blanks.

    Args:
        value: the text.
        field: the field's name, for the error message.
        required: the text must hold something other than white space.
        line: a single-line field: no line break of any kind either.

    Raises:
        LocalProtocolError: ``invalid_field``.
        TypeError: ``value`` is not a ``str`` (a caller's bug; decoding never gives one).
    """
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str")
    if _holds_control(value, line):
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, f"{field} holds a control character")
    # str.strip() and str.isspace() agree on what white space is.
    if required and (not value or value.isspace()):
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, f"{field} must not be blank")


def check_lines(values: tuple[str, ...], field: str) -> None:
    """Check each of several required one-line texts, as ``check_text(required=True, line=True)``.

    The control-character rule runs once over the texts joined: joining adds no character, so
    the joined text holds one exactly when one of the texts does.

    Raises:
        LocalProtocolError: ``invalid_field``.
        TypeError: an item is not a ``str`` (a caller's bug; decoding never gives one).
    """
    if _holds_control("".join(values), line=True):
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, f"{field} holds a control character")
    for value in values:
        if not value or value.isspace():
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, f"{field} must not be blank")


def check_label(value: str, field: str) -> None:
    """Check a one-line label that a person reads before acting on it (a name, a title).

    It must not be blank and holds no control, line-breaking or bidirectional control character,
    so that it shows what it holds.

    Raises:
        LocalProtocolError: ``invalid_field``.
    """
    check_text(value, field, required=True, line=True)
    if not value.isascii() and _BIDI_CONTROLS.search(value) is not None:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, f"{field} holds a bidirectional control")


def holds_personnummer_shaped(value: str) -> bool:
    """Whether ``value`` holds a personnummer-shaped number (:data:`PERSONNUMMER_SHAPED_PATTERN`).

    A pass in C over the UTF-8 bytes instead of the pattern's lookbehind tried at every position
    (about 100-200 µs over a 2,000-character summary, against a few µs): text with fewer than ten
    ASCII digits holds none; otherwise each byte is classed (digit, separator, other) and each
    stretch of digits and separators is split into maximal runs of digits. The pattern's guards
    (no digit before or after) make a match exactly a run of ten or twelve digits, or a run of
    six or eight digits, one separator, and a run of four.

    Args:
        value: the text (lone surrogates are allowed here; :func:`check_text` refuses them).

    Returns:
        Whether the pattern finds a match in ``value``.
    """
    data = value.encode("utf-8", "surrogatepass")
    if len(data) - len(data.translate(None, _ASCII_DIGITS)) < _MIN_SHAPED_DIGITS:
        return False
    for stretch in _SHAPED_STRETCH.findall(data.translate(_SHAPE_CLASSES)):
        runs = list(map(len, stretch.split(b"-")))  # maximal digit runs, one separator apart
        if 10 in runs or 12 in runs:
            return True
        if 4 in runs and any(a in (6, 8) and b == 4 for a, b in itertools.pairwise(runs)):
            return True
    return False


def check_date(value: datetime.date | None, field: str) -> None:
    """Check that a date, if given, lies between :data:`FIRST_DATE` and :data:`LAST_DATE`.

    Raises:
        LocalProtocolError: ``invalid_field``.
    """
    if value is not None:
        require(
            FIRST_DATE <= value <= LAST_DATE,
            f"{field} must lie between {FIRST_DATE} and {LAST_DATE}",
        )
