"""Swedish personal identity numbers: personnummer and samordningsnummer.

Owns parsing and validating the number that identifies the person in a referral. Invariants:

* A :class:`PersonalIdentityNumber` only exists for a number that passed every check: twelve ASCII
  digits ``YYYYMMDDNNNC`` in canonical form, century 18, 19 or 20, a real calendar date (leap years
  included; a samordningsnummer adds 60 to the day, so its day is 61-91), a birth number ``NNN``
  other than 000, and the Luhn check digit ``C`` over the ten digits ``YYMMDDNNN``.
* The check digit does not cover the century. The wire therefore carries only the canonical
  twelve-digit form (:func:`parse_canonical`), which needs no reference date. The ten-digit forms
  people type (``YYMMDD-NNNC``, ``YYMMDD+NNNC``) need one to pick the century, so
  :func:`parse_personal_identity_number` takes ``today`` as an argument: this module never reads
  the clock. ``-`` means the person turns at most 99 in ``today``'s year, ``+`` at least 100.
* The number never appears in an error message, and ``repr``/``str`` mask the last four digits
  (``19121212-****``). Only :attr:`PersonalIdentityNumber.canonical` gives the whole number.
* Every failure raises :class:`~protocol.errors.LocalProtocolError` with code
  ``invalid_personnummer`` and a sentence that names the rule broken, never the value.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from protocol.errors import ErrorCode, LocalProtocolError

CANONICAL_LENGTH: Final = 12
SAMORDNINGSNUMMER_DAY_OFFSET: Final = 60
CENTURIES: Final = (18, 19, 20)

# ASCII digits only: str.isdigit() would accept other scripts' digits.
_CANONICAL = re.compile(r"[0-9]{12}")
_LONG_FORM = re.compile(r"(?P<century>[0-9]{2})(?P<rest>[0-9]{6})-?(?P<serial>[0-9]{4})")
_SHORT_FORM = re.compile(r"(?P<rest>[0-9]{6})(?P<sep>[-+]?)(?P<serial>[0-9]{4})")


class IdentityNumberKind(StrEnum):
    """Which kind of number: a personnummer, or a samordningsnummer (day + 60)."""

    PERSONNUMMER = "personnummer"
    SAMORDNINGSNUMMER = "samordningsnummer"


def _invalid(reason: str) -> LocalProtocolError:
    return LocalProtocolError(ErrorCode.INVALID_PERSONNUMMER, f"personnummer {reason}")


def luhn_check_digit(digits: str) -> int:
    """Return the Luhn (modulus 10, weights 2 and 1) check digit for the given digits.

    Args:
        digits: ASCII digits; for a personnummer the nine digits ``YYMMDDNNN``.

    Returns:
        The check digit, 0-9.

    Raises:
        LocalProtocolError: ``invalid_personnummer`` if ``digits`` holds anything but ASCII digits.
    """
    if not re.fullmatch(r"[0-9]*", digits):
        raise _invalid("holds characters other than digits")
    total = 0
    for position, char in enumerate(digits):
        product = int(char) * (2 if position % 2 == 0 else 1)
        total += product // 10 + product % 10
    return (10 - total % 10) % 10


@dataclass(frozen=True, slots=True, repr=False)
class PersonalIdentityNumber:
    """A validated personnummer or samordningsnummer.

    Attributes:
        canonical: the twelve digits ``YYYYMMDDNNNC``; the only attribute holding the whole number.
        kind: personnummer or samordningsnummer.
        birth_date: the birth date (for a samordningsnummer, the day minus 60).
    """

    canonical: str
    kind: IdentityNumberKind
    birth_date: datetime.date

    def __post_init__(self) -> None:
        if parse_canonical(self.canonical) != (self.kind, self.birth_date):
            raise _invalid("does not match its kind and birth date")

    @property
    def masked(self) -> str:
        """The number with its last four digits hidden, ``YYYYMMDD-****``, for display."""
        return f"{self.canonical[:8]}-****"

    def __repr__(self) -> str:
        return f"PersonalIdentityNumber({self.masked!r})"

    def __str__(self) -> str:
        return self.masked


def _check_ten_digits(ten: str) -> None:
    if int(ten[6:9]) == 0:
        raise _invalid("has birth number 000, which is never assigned")
    if luhn_check_digit(ten[:9]) != int(ten[9]):
        raise _invalid("check digit does not match")


def _birth_date(year: int, month: int, day: int) -> tuple[IdentityNumberKind, datetime.date]:
    kind = IdentityNumberKind.PERSONNUMMER
    if day > SAMORDNINGSNUMMER_DAY_OFFSET:
        kind = IdentityNumberKind.SAMORDNINGSNUMMER
        day -= SAMORDNINGSNUMMER_DAY_OFFSET
    try:
        return kind, datetime.date(year, month, day)
    except ValueError as e:
        raise _invalid("does not hold a valid date") from e


def parse_canonical(text: str) -> tuple[IdentityNumberKind, datetime.date]:
    """Check a canonical twelve-digit number and return its kind and birth date.

    This is the wire-level check: the twelve digits carry the century, so no reference date is
    needed. It does not check that the birth date is in the past (the wire has no clock).

    Args:
        text: exactly twelve ASCII digits ``YYYYMMDDNNNC``.

    Returns:
        ``(kind, birth_date)``.

    Raises:
        LocalProtocolError: ``invalid_personnummer`` for a wrong length or character, a century
            other than 18, 19 or 20, an invalid date, birth number 000 or a wrong check digit.
    """
    if not isinstance(text, str) or not _CANONICAL.fullmatch(text):
        raise _invalid("must be twelve digits in canonical form")
    if int(text[:2]) not in CENTURIES:
        raise _invalid("century must be 18, 19 or 20")
    kind, born = _birth_date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    _check_ten_digits(text[2:])
    return kind, born


def validate_canonical(text: str) -> PersonalIdentityNumber:
    """Validate a canonical twelve-digit number (as carried on the wire).

    Args:
        text: exactly twelve ASCII digits ``YYYYMMDDNNNC``.

    Returns:
        The validated number.

    Raises:
        LocalProtocolError: ``invalid_personnummer`` as for :func:`parse_canonical`.
    """
    kind, born = parse_canonical(text)
    return PersonalIdentityNumber(canonical=text, kind=kind, birth_date=born)


def _century_for(short: str, separator: str, today: datetime.date) -> int:
    yy = int(short[:2])
    latest = today.year if separator != "+" else today.year - 100
    year = latest - (latest - yy) % 100
    return year // 100


def parse_personal_identity_number(text: str, *, today: datetime.date) -> PersonalIdentityNumber:
    """Parse a number as a person types it, in any accepted form.

    Accepted forms: ``YYYYMMDD-NNNC``, ``YYYYMMDDNNNC``, ``YYMMDD-NNNC``, ``YYMMDDNNNC`` and
    ``YYMMDD+NNNC``. For the ten-digit forms the century is the one that makes the person's age in
    ``today``'s year 0-99 (``-`` or no separator) or at least 100 (``+``), as Skatteverket writes
    them. No surrounding whitespace is accepted.

    Args:
        text: the number as typed.
        today: the reference date that picks the century and bounds the birth date.

    Returns:
        The validated number in canonical form.

    Raises:
        LocalProtocolError: ``invalid_personnummer`` for any malformed, invalid or future number.
    """
    if not isinstance(text, str):
        raise _invalid("must be text")
    if long_form := _LONG_FORM.fullmatch(text):
        canonical = long_form["century"] + long_form["rest"] + long_form["serial"]
    elif short_form := _SHORT_FORM.fullmatch(text):
        century = _century_for(short_form["rest"], short_form["sep"], today)
        canonical = f"{century:02d}" + short_form["rest"] + short_form["serial"]
    else:
        raise _invalid("has the wrong length or characters")
    number = validate_canonical(canonical)
    if number.birth_date > today:
        raise _invalid("holds a birth date after the reference date")
    return number
