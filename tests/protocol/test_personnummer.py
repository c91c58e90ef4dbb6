"""Personnummer and samordningsnummer: forms, dates, check digit, century and masking.

Every number here is invented: Tolvan Tolvansson's well-known 19121212-1212, or a number whose
birth number lies in the 980-999 series, with a check digit that passes.
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import TOLVAN, canonical_from, personnummer_canonical, reference_luhn

from protocol.errors import ErrorCode, LocalProtocolError
from protocol.personnummer import (
    IdentityNumberKind,
    PersonalIdentityNumber,
    luhn_check_digit,
    parse_canonical,
    parse_personal_identity_number,
    validate_canonical,
)

TODAY = datetime.date(2026, 1, 1)


def _refused(text: str, today: datetime.date = TODAY) -> LocalProtocolError:
    with pytest.raises(LocalProtocolError) as caught:
        parse_personal_identity_number(text, today=today)
    assert caught.value.code is ErrorCode.INVALID_PERSONNUMMER
    return caught.value


@pytest.mark.parametrize(
    "typed",
    ["19121212-1212", "191212121212", "121212+1212"],
)
def test_tolvan_is_accepted_in_every_form_that_names_his_century(typed: str) -> None:
    number = parse_personal_identity_number(typed, today=TODAY)
    assert number.canonical == TOLVAN
    assert number.kind is IdentityNumberKind.PERSONNUMMER
    assert number.birth_date == datetime.date(1912, 12, 12)


@pytest.mark.parametrize("typed", ["121212-1212", "1212121212"])
def test_short_form_with_hyphen_or_no_separator_means_under_100(typed: str) -> None:
    number = parse_personal_identity_number(typed, today=TODAY)
    assert number.canonical == "201212121212"
    assert number.birth_date == datetime.date(2012, 12, 12)


def test_plus_sign_means_100_or_older_in_the_reference_year() -> None:
    # 1926-12-01 turns 100 during 2026: from 2026 the number is written with '+'.
    text = canonical_from(datetime.date(1926, 12, 1), 981)
    short = text[2:8] + "+" + text[8:]
    assert parse_personal_identity_number(short, today=datetime.date(2026, 1, 1)).canonical == text
    # With '-' in 2026 the same digits would be a child born 2026-12-01: not born yet.
    hyphen = text[2:8] + "-" + text[8:]
    _refused(hyphen, today=datetime.date(2026, 1, 1))
    # In 2025 the person is 99 and the number is written with '-'.
    number = parse_personal_identity_number(hyphen, today=datetime.date(2025, 12, 31))
    assert number.birth_date == datetime.date(1926, 12, 1)


def test_century_of_short_form_follows_the_reference_date() -> None:
    text = canonical_from(datetime.date(2025, 6, 1), 990)
    short = text[2:8] + "-" + text[8:]
    assert parse_personal_identity_number(short, today=datetime.date(2025, 6, 1)).canonical == text
    # The day before birth the same short form cannot be anyone yet.
    _refused(short, today=datetime.date(2025, 5, 31))


def test_samordningsnummer_adds_60_to_the_day() -> None:
    number = parse_personal_identity_number("19900575-9817", today=TODAY)
    assert number.kind is IdentityNumberKind.SAMORDNINGSNUMMER
    assert number.birth_date == datetime.date(1990, 5, 15)
    assert number.canonical == "199005759817"


@pytest.mark.parametrize(
    ("typed", "born"),
    [("20000229-9980", datetime.date(2000, 2, 29)), ("040229-9820", datetime.date(2004, 2, 29))],
)
def test_leap_day_is_a_valid_birth_date(typed: str, born: datetime.date) -> None:
    assert parse_personal_identity_number(typed, today=TODAY).birth_date == born


@pytest.mark.parametrize(
    "typed",
    [
        "19121212-1213",  # check digit off by one
        "19121212-1221",  # two digits swapped
        "19850101-9909",
    ],
)
def test_wrong_check_digit_is_refused(typed: str) -> None:
    assert "check digit" in _refused(typed).message


@pytest.mark.parametrize(
    "typed",
    [
        "19900230-9988",  # February 30
        "19901301-9980",  # month 13
        "19900431-9985",  # April 31
        "19910229-9980",  # 1991 is no leap year
        "19000229-9980",  # 1900 is no leap year, though 2000 is (same ten digits)
        "19900592-9980",  # samordningsnummer day 92 (32)
        "19900560-9988",  # day 60: samordningsnummer day 0
    ],
)
def test_luhn_valid_number_without_a_real_date_is_refused(typed: str) -> None:
    assert reference_luhn(typed[2:8] + typed[9:12]) == int(typed[-1])
    assert "date" in _refused(typed).message


def test_birth_number_000_is_refused() -> None:
    assert "000" in _refused("19121212-0008").message


@pytest.mark.parametrize(
    "typed",
    [
        "",
        "1912121212121",  # 13 digits
        "19121212121",  # 11 digits
        "12121-21212",
        "121212 1212",
        " 191212121212",
        "191212121212\n",
        "19121212+1212",  # '+' only in the ten-digit form
        "19121212--1212",
        "1912121a1212",
        "١٩١٢١٢١٢١٢١٢",  # Arabic-Indic digits are not ASCII digits
        "17121212-1212",  # century 17
        "21121212-1212",  # century 21
    ],
)
def test_wrong_length_characters_or_century_are_refused(typed: str) -> None:
    _refused(typed)


def test_future_birth_date_in_twelve_digit_form_is_refused() -> None:
    text = canonical_from(datetime.date(2026, 6, 1), 985)
    _refused(text, today=TODAY)
    # The wire check has no clock and does not bound the birth date.
    assert validate_canonical(text).birth_date == datetime.date(2026, 6, 1)


def test_error_message_never_contains_the_number() -> None:
    for typed in ("19121212-1213", "19900230-9988", "1912121a1212"):
        error = _refused(typed)
        assert typed not in str(error)
        assert typed[-4:] not in str(error)


def test_repr_and_str_mask_the_last_four_digits() -> None:
    number = validate_canonical(TOLVAN)
    assert repr(number) == "PersonalIdentityNumber('19121212-****')"
    assert str(number) == "19121212-****"
    assert f"{number}" == "19121212-****"
    assert number.masked == "19121212-****"


def test_direct_construction_with_inconsistent_fields_is_refused() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        PersonalIdentityNumber(
            canonical=TOLVAN,
            kind=IdentityNumberKind.SAMORDNINGSNUMMER,
            birth_date=datetime.date(1912, 12, 12),
        )
    assert caught.value.code is ErrorCode.INVALID_PERSONNUMMER


def test_luhn_of_the_textbook_example() -> None:
    # The worked example in Skatteverket's description: 640823-323 gives check digit 4.
    assert luhn_check_digit("640823323") == 4
    with pytest.raises(LocalProtocolError):
        luhn_check_digit("64082332x")


@settings(max_examples=300)
@given(personnummer_canonical())
def test_every_valid_number_round_trips_through_every_form(canonical: str) -> None:
    number = validate_canonical(canonical)
    assert number.canonical == canonical
    assert parse_personal_identity_number(canonical, today=TODAY) == number
    assert (
        parse_personal_identity_number(canonical[:8] + "-" + canonical[8:], today=TODAY) == number
    )
    age_in_years = TODAY.year - number.birth_date.year
    separator = "+" if age_in_years >= 100 else "-"
    short = canonical[2:8] + separator + canonical[8:]
    assert parse_personal_identity_number(short, today=TODAY) == number
    day = int(canonical[6:8])
    expected = IdentityNumberKind.SAMORDNINGSNUMMER if day > 60 else IdentityNumberKind.PERSONNUMMER
    assert number.kind is expected
    assert parse_canonical(canonical) == (number.kind, number.birth_date)


@settings(max_examples=300)
@given(personnummer_canonical(), st.integers(2, 11), st.integers(1, 9))
def test_any_single_digit_change_after_the_century_is_refused(
    canonical: str, position: int, delta: int
) -> None:
    # The check digit covers the ten digits YYMMDDNNNC; the century is outside it by design,
    # which is why the wire carries the twelve-digit form.
    digits = list(canonical)
    digits[position] = str((int(digits[position]) + delta) % 10)
    with pytest.raises(LocalProtocolError) as caught:
        validate_canonical("".join(digits))
    assert caught.value.code is ErrorCode.INVALID_PERSONNUMMER
