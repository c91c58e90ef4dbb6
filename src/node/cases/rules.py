"""The agreement's rules checked inside the transaction that moves a case.

Owns the checks that need the node's own records as well as the agreement in force, run by the
case ledger in the transaction that stores the message. Invariants:

* **Receiving node, on arrival.** An inquiry is checked again with
  :func:`protocol.agreement_rules.check_inquiry` (members, units, period, target group, police
  consultation, consent). A referral is refused with ``quota_exceeded`` when its signed quota
  count does not fit the agreement (a total other than the agreement's quota, an index above it),
  when this node already holds the quota's worth of referrals from that home city for that year,
  or when the slot it names was used by another referral. Its units must be the sender's. The
  other messages must name a unit of the sending city. A refusal raises
  :class:`~protocol.errors.LocalProtocolError`, which the ledger turns into the peer's fault:
  nothing of the envelope is stored.
* **Home node, on sending.** A referral's quota slot is checked once more under the write
  transaction: if another referral took it since the count was made, the send is refused
  (``quota_exceeded``) and nothing is queued.
* **Ongoing cases continue after the agreement ends** (the seed): only a *new* inquiry is held to
  the validity period; an updated inquiry of an existing case is checked as on the period's last
  day once the period is over.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession

from node.cases.records import count_referrals, quota_slot_taken
from node.storage.case_store import find_case
from protocol.agreement import VerifiedAgreement
from protocol.agreement_rules import check_inquiry
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import Closure, Inquiry, Intake, Message, ProgressReport, Referral, Reply


class CaseRules:
    """Applies the agreement's rules to case messages, in the ledger's transaction.

    Args:
        city: this node's city.
        agreement: the agreement in force (read at each call).
        today: the current date (UTC), for the calendar rules.
    """

    def __init__(
        self,
        *,
        city: str,
        agreement: Callable[[], VerifiedAgreement],
        today: Callable[[], datetime.date],
    ) -> None:
        self._city = city
        self._agreement = agreement
        self._today = today

    async def check_received(self, session: AsyncSession, sender: str, message: Message) -> None:
        """Check a case message from ``sender`` before it moves its case.

        Raises:
            LocalProtocolError: the rule broken (``outside_period``, ``not_a_member``,
                ``unknown_unit``, ``not_eligible``, ``quota_exceeded``, ``invalid_field``).
        """
        agreement = self._agreement()
        if isinstance(message, Inquiry):
            existing = await find_case(session, message.case_id)
            check_inquiry(
                agreement,
                home_city=sender,
                from_unit=message.from_unit,
                receiving_city=self._city,
                to_unit=message.to_unit,
                threat_level=message.threat_level,
                police_consulted_on=message.police_consulted_on,
                consent=message.consent,
                today=self._rule_day(agreement, ongoing=existing is not None),
            )
        elif isinstance(message, Referral):
            await self._check_referral_received(session, agreement, sender, message)
        elif isinstance(message, Reply | Intake | ProgressReport | Closure):
            _require_unit(agreement, sender, message.unit)

    async def check_sent(self, session: AsyncSession, message: Message) -> None:
        """Check a message this node sends, under the write transaction.

        Raises:
            LocalProtocolError: ``quota_exceeded`` — the referral's quota slot was taken by
                another referral since it was counted.
        """
        if not isinstance(message, Referral):
            return
        quota = message.quota
        used = await count_referrals(session, self._city, quota.year)
        if used != quota.index - 1:
            raise LocalProtocolError(
                ErrorCode.QUOTA_EXCEEDED,
                "another referral used this quota slot first: count again and resend",
            )

    def _rule_day(self, agreement: VerifiedAgreement, *, ongoing: bool) -> datetime.date:
        today = self._today()
        if ongoing:
            return min(today, agreement.document.valid_until)
        return today

    async def _check_referral_received(
        self,
        session: AsyncSession,
        agreement: VerifiedAgreement,
        sender: str,
        referral: Referral,
    ) -> None:
        _require_unit(agreement, sender, referral.from_unit)
        _require_unit(agreement, sender, referral.payer)
        quota = referral.quota
        total = agreement.document.quota_per_home_city_per_year
        if quota.total != total or quota.index > total:
            raise LocalProtocolError(
                ErrorCode.QUOTA_EXCEEDED, "the referral's quota count exceeds the agreement's quota"
            )
        today = self._today()
        if not today.year - 1 <= quota.year <= today.year:
            raise LocalProtocolError(
                ErrorCode.INVALID_FIELD, "the referral's quota year is not the current year"
            )
        if await count_referrals(session, sender, quota.year) >= total:
            raise LocalProtocolError(
                ErrorCode.QUOTA_EXCEEDED,
                "the home city's referrals to this city already fill the year's quota",
            )
        if await quota_slot_taken(session, sender, quota.year, quota.index):
            raise LocalProtocolError(
                ErrorCode.QUOTA_EXCEEDED, "another referral already used this quota slot"
            )


def _require_unit(agreement: VerifiedAgreement, city: str, unit: str) -> None:
    if not agreement.member(city).has_unit(unit):
        raise LocalProtocolError(ErrorCode.UNKNOWN_UNIT, "the unit is not a unit of its city")
