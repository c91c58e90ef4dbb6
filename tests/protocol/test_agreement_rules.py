"""The agreement's rules for inquiries and referrals: period, members, units, target group,
police consultation, consent, quota, and the police handbook's warning."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from agreement_fixtures import SAMPLE_AGREEMENT, TODAY

from protocol import agreement_rules, messages
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import ThreatLevel

# --- Rules for inquiries and referrals ---------------------------------------------------------

INQUIRY: dict[str, Any] = {
    "home_city": "stockholm",
    "from_unit": "jarva",
    "receiving_city": "goteborg",
    "to_unit": "hisingen",
    "threat_level": ThreatLevel.MODERATE,
    "police_consulted_on": datetime.date(2026, 5, 20),
    "consent": True,
    "today": TODAY,
}


def test_inquiry_within_the_agreement_passes() -> None:
    agreement_rules.check_inquiry(SAMPLE_AGREEMENT, **INQUIRY)
    agreement_rules.check_inquiry(SAMPLE_AGREEMENT, **{**INQUIRY, "to_unit": None})
    agreement_rules.check_inquiry(
        SAMPLE_AGREEMENT,
        **{**INQUIRY, "home_city": "malmo", "from_unit": "arbetsmarknad-social",
           "receiving_city": "stockholm", "to_unit": "farsta", "threat_level": ThreatLevel.LOW},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"today": datetime.date(2025, 12, 31)}, ErrorCode.OUTSIDE_PERIOD),
        ({"today": datetime.date(2029, 1, 1)}, ErrorCode.OUTSIDE_PERIOD),
        ({"home_city": "uppsala"}, ErrorCode.NOT_A_MEMBER),
        ({"receiving_city": "lund"}, ErrorCode.NOT_A_MEMBER),
        ({"receiving_city": "stockholm", "to_unit": None}, ErrorCode.NOT_ELIGIBLE),
        ({"from_unit": "hisingen"}, ErrorCode.UNKNOWN_UNIT),
        ({"to_unit": "jarva"}, ErrorCode.UNKNOWN_UNIT),
        ({"threat_level": ThreatLevel.HIGH}, ErrorCode.NOT_ELIGIBLE),
        ({"threat_level": ThreatLevel.NONE}, ErrorCode.NOT_ELIGIBLE),
        ({"police_consulted_on": None}, ErrorCode.NOT_ELIGIBLE),
        ({"police_consulted_on": datetime.date(2026, 6, 2)}, ErrorCode.INVALID_FIELD),
        ({"consent": False}, ErrorCode.NOT_ELIGIBLE),
    ],
)
def test_inquiry_outside_the_agreement_is_refused_with_its_code(
    change: dict[str, Any], code: ErrorCode
) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        agreement_rules.check_inquiry(SAMPLE_AGREEMENT, **{**INQUIRY, **change})
    assert caught.value.code is code
    for value in change.values():
        if isinstance(value, str):
            assert value not in caught.value.message


def test_quota_counts_referrals_per_home_city_and_year() -> None:
    first = agreement_rules.check_quota(
        SAMPLE_AGREEMENT, home_city="stockholm", year=2026, already_referred=0
    )
    assert (first.year, first.index, first.total) == (2026, 1, 2)
    second = agreement_rules.check_quota(
        SAMPLE_AGREEMENT, home_city="stockholm", year=2026, already_referred=1
    )
    assert (second.index, second.total) == (2, 2)
    assert isinstance(second, messages.QuotaCount)


def test_third_referral_of_a_home_city_in_a_year_exceeds_the_quota() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        agreement_rules.check_quota(
            SAMPLE_AGREEMENT, home_city="stockholm", year=2026, already_referred=2
        )
    assert caught.value.code is ErrorCode.QUOTA_EXCEEDED


@pytest.mark.parametrize(
    ("city", "year", "count", "code"),
    [
        ("uppsala", 2026, 0, ErrorCode.NOT_A_MEMBER),
        ("malmo", 2025, 0, ErrorCode.OUTSIDE_PERIOD),
        ("malmo", 2029, 0, ErrorCode.OUTSIDE_PERIOD),
        ("malmo", 2026, -1, ErrorCode.INVALID_FIELD),
    ],
)
def test_quota_check_outside_the_agreement_is_refused(
    city: str, year: int, count: int, code: ErrorCode
) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        agreement_rules.check_quota(
            SAMPLE_AGREEMENT, home_city=city, year=year, already_referred=count
        )
    assert caught.value.code is code


def test_police_advice_against_relocation_is_shown_for_threats_that_are_not_high() -> None:
    for level in (ThreatLevel.LOW, ThreatLevel.MODERATE, ThreatLevel.NONE):
        warning = agreement_rules.police_advice_warning(level)
        assert warning is not None
        assert "hotbilden inte är hög" in warning
    assert agreement_rules.police_advice_warning(ThreatLevel.HIGH) is None
