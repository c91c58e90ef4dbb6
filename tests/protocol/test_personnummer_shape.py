"""The personnummer-shape rule of free text: the fast check decides exactly what the pattern does.

``protocol.fields.holds_personnummer_shaped`` replaces a regular-expression search (with a
lookbehind, tried at every position) by one pass over the UTF-8 bytes. Its definition stays the
pattern ``PERSONNUMMER_SHAPED_PATTERN``; these tests compare the two on hand-picked edges and on
generated text dense in digits, separators and non-ASCII letters and digits.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from protocol.fields import PERSONNUMMER_SHAPED_PATTERN, holds_personnummer_shaped

REFERENCE = re.compile(PERSONNUMMER_SHAPED_PATTERN)


def _reference(text: str) -> bool:
    return REFERENCE.search(text) is not None


@pytest.mark.parametrize(
    ("text", "shaped"),
    [
        ("191212121212", True),
        ("1912121212", True),
        ("19121212-1212", True),
        ("121212+1212", True),
        ("121212 1212", True),
        ("pnr:121212-1212.", True),
        ("ålder 121212-1212 år", True),
        ("1912121212 12", True),
        ("12121212121", False),  # eleven digits
        ("1912121212121", False),  # thirteen digits
        ("121212--1212", False),  # two separators
        ("1212121-1212", False),  # seven digits before the separator
        ("121212-12121", False),  # five after it
        ("121212-121", False),
        ("12 34 56 78 90 12", False),
        ("121212\u20131212", False),  # an en dash is no separator of the pattern
        ("١٢١٢١٢١٢١٢", False),  # Arabic-Indic digits are not [0-9]
        ("2 barn, 3 rum, start vecka 12 2026", False),
        ("", False),
    ],
)
def test_hand_picked_texts_are_decided_as_the_pattern_decides(text: str, shaped: bool) -> None:
    assert _reference(text) is shaped
    assert holds_personnummer_shaped(text) is shaped


_DENSE = st.text(
    st.one_of(
        st.sampled_from("0123456789"),
        st.sampled_from("0123456789-+ "),
        st.sampled_from("xåé\u2013\u0661\U0001d7ce\n"),
        st.characters(),
    ),
    max_size=60,
)


@settings(max_examples=2000)
@given(_DENSE)
@example("0" * 12)
@example("x" + "0" * 8 + "+" + "0" * 4 + "\u00e5")
def test_fast_check_agrees_with_the_pattern_on_any_text(text: str) -> None:
    assert holds_personnummer_shaped(text) == _reference(text)


@settings(max_examples=500)
@given(
    st.lists(st.integers(0, 13), min_size=1, max_size=6),
    st.lists(st.sampled_from(["", "-", "+", " ", "--", "a", "ö", " -"]), min_size=6, max_size=6),
)
def test_fast_check_agrees_with_the_pattern_on_runs_of_digits(
    runs: list[int], gaps: list[str]
) -> None:
    text = "".join(gap + "7" * run for run, gap in zip(runs, gaps, strict=False))
    assert holds_personnummer_shaped(text) == _reference(text)
