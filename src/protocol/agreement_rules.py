"""The rules of the agreement that the node applies to inquiries and referrals.

Owns the checks of a case against the verified agreement in force: its period, its members and
their units, the target group (threat levels), the recorded police consultation and consent, and
the quota of referrals per home city and calendar year; and the warning shown when the police
handbook advises against a relocation. The sending node applies them before sealing, the receiving
node again after opening. They take only a :class:`~protocol.agreement.VerifiedAgreement`.

Errors are :class:`~protocol.errors.LocalProtocolError` with the code of the broken rule
(``outside_period``, ``not_a_member``, ``unknown_unit``, ``not_eligible``, ``quota_exceeded``);
the receiving node turns them into the peer's fault.
"""

from __future__ import annotations

import datetime
from typing import Final

from protocol.agreement import VerifiedAgreement
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import QuotaCount, ThreatLevel

POLICE_ADVICE_WARNING: Final = (
    "Polisens handbok för avhopparverksamhet avråder från omlokalisering till en annan kommun "
    "när hotbilden inte är hög. The police handbook advises against relocation to another "
    "municipality when the threat is not high: record the police's view in the case."
)


def check_inquiry(
    agreement: VerifiedAgreement,
    *,
    home_city: str,
    from_unit: str,
    receiving_city: str,
    to_unit: str | None,
    threat_level: ThreatLevel,
    police_consulted_on: datetime.date | None,
    consent: bool,
    today: datetime.date,
) -> None:
    """Check that an inquiry is within the agreement; the receiving node applies it too.

    Raises:
        LocalProtocolError: ``outside_period`` (today outside the agreement's period),
            ``not_a_member`` (a city), ``unknown_unit`` (a unit not of its city),
            ``not_eligible`` (same city, threat level outside the target group, police not
            consulted, consent not recorded), ``invalid_field`` (consultation date in the future).
    """
    document = agreement.document
    if not document.valid_from <= today <= document.valid_until:
        raise LocalProtocolError(
            ErrorCode.OUTSIDE_PERIOD, "today is outside the agreement's period"
        )
    home, receiving = agreement.member(home_city), agreement.member(receiving_city)
    if home.city == receiving.city:
        raise LocalProtocolError(
            ErrorCode.NOT_ELIGIBLE, "the receiving city must not be the home city"
        )
    if not home.has_unit(from_unit):
        raise LocalProtocolError(ErrorCode.UNKNOWN_UNIT, "from_unit is not a unit of the home city")
    if to_unit is not None and not receiving.has_unit(to_unit):
        raise LocalProtocolError(
            ErrorCode.UNKNOWN_UNIT, "to_unit is not a unit of the receiving city"
        )
    if threat_level not in document.eligible_threat_levels:
        raise LocalProtocolError(ErrorCode.NOT_ELIGIBLE, "threat_level is outside the target group")
    if police_consulted_on is None:
        raise LocalProtocolError(ErrorCode.NOT_ELIGIBLE, "the police consultation must be recorded")
    if police_consulted_on > today:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "police_consulted_on lies in the future")
    if not consent:
        raise LocalProtocolError(ErrorCode.NOT_ELIGIBLE, "the person's consent must be recorded")


def check_quota(
    agreement: VerifiedAgreement, *, home_city: str, year: int, already_referred: int
) -> QuotaCount:
    """Count a new referral by ``home_city`` in calendar ``year`` against the quota.

    Args:
        agreement: the agreement in force.
        home_city: the home city making the referral.
        year: the calendar year of the referral.
        already_referred: referrals the home city already made that year.

    Returns:
        ``messages.QuotaCount(year, already_referred + 1, quota)``, for the referral.

    Raises:
        LocalProtocolError: ``not_a_member``, ``outside_period`` (year outside the period),
            ``invalid_field`` (negative count), ``quota_exceeded``.
    """
    agreement.member(home_city)
    document = agreement.document
    if not document.valid_from.year <= year <= document.valid_until.year:
        raise LocalProtocolError(ErrorCode.OUTSIDE_PERIOD, "year is outside the agreement's period")
    if already_referred < 0:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, "already_referred must not be negative")
    total = document.quota_per_home_city_per_year
    if already_referred >= total:
        raise LocalProtocolError(
            ErrorCode.QUOTA_EXCEEDED, "the home city's quota for the year is used"
        )
    return QuotaCount(year, already_referred + 1, total)


def police_advice_warning(threat_level: ThreatLevel) -> str | None:
    """Return the warning to show when the police handbook advises against this relocation.

    The police handbook advises against moving someone to another municipality when the threat is
    not high, while the agreement excludes high threat: every eligible case is against that
    advice. The system shows it rather than hiding or refusing it.

    Returns:
        :data:`POLICE_ADVICE_WARNING` unless the threat level is high, else ``None``.
    """
    return None if threat_level is ThreatLevel.HIGH else POLICE_ADVICE_WARNING
