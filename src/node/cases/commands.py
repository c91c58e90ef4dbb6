"""What a user asks of a case: the typed commands of the case workflow.

Owns the shape of every request of the case API (they are its JSON bodies, and its OpenAPI
description is generated from these types, so the two cannot drift). Invariants:

* Every string and list is bounded; enums are closed; dates are ISO ``YYYY-MM-DD``; unknown
  fields are refused. Decoding a command checks its shape only: the rules (the agreement, the
  state machine, the personnummer) are applied by :class:`~node.cases.service.CaseService`.
* Commands are frozen; nothing here holds a value longer than the protocol message it becomes.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Final

import msgspec

from protocol.fields import CityName, UnitName
from protocol.messages import (
    ADDRESS_CHARS,
    CONTACT_CHARS,
    INTERVENTION_CHARS,
    MAX_INTERVENTIONS,
    NAME_CHARS,
    REPORT_TEXT_CHARS,
    SHORT_TEXT_CHARS,
    ClosureReason,
    Decision,
    Need,
    ThreatLevel,
)

PERSONNUMMER_INPUT_CHARS: Final = 13  # "YYYYMMDD-NNNC", the longest accepted form
PHONE_CHARS: Final = 32

ShortText = Annotated[str, msgspec.Meta(max_length=SHORT_TEXT_CHARS)]
Needs = Annotated[list[Need], msgspec.Meta(min_length=1, max_length=len(Need))]


class _Command(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every command: a JSON object with no unknown field."""


class NewInquiry(_Command, frozen=True, kw_only=True):
    """Open a case: the anonymous inquiry to another city. No field can carry an identity.

    Attributes:
        to_city: the receiving city (a member of the agreement).
        to_unit: the receiving unit asked, or ``None`` to let the receiving city choose.
        from_unit: the asking unit of this city (default: the case worker's unit).
        threat_level: the threat assessment.
        police_consulted_on: the date the police were consulted.
        consent: whether the person's consent is recorded.
        needs: what the person needs, at least one, none repeated.
        summary: a short anonymous description; no personnummer-shaped number.
        wished_start: the wished start.
    """

    to_city: CityName
    to_unit: UnitName | None = None
    from_unit: UnitName | None = None
    threat_level: ThreatLevel
    police_consulted_on: datetime.date | None = None
    consent: bool
    needs: Needs
    summary: ShortText = ""
    wished_start: datetime.date | None = None


class UpdatedInquiry(_Command, frozen=True, kw_only=True):
    """Answer a request for more information with an updated, still anonymous, profile."""

    threat_level: ThreatLevel
    police_consulted_on: datetime.date | None = None
    consent: bool
    needs: Needs
    summary: ShortText = ""
    wished_start: datetime.date | None = None


class ReplyCommand(_Command, frozen=True, kw_only=True):
    """The receiving city's answer to an inquiry.

    Attributes:
        decision: accept, decline or need_info.
        reason: why (required for decline and need_info); must not identify the person.
        unit: the answering unit (default: the case's unit, or the case worker's for an
            inquiry addressed to no unit, which the reply then assigns to that unit).
    """

    decision: Decision
    reason: ShortText = ""
    unit: UnitName | None = None


class PersonInput(_Command, frozen=True, kw_only=True):
    """The person referred, as the case worker types it.

    Attributes:
        name: the full name, one line.
        personnummer: personnummer or samordningsnummer in any form Skatteverket writes
            (``YYYYMMDD-NNNC``, ``YYYYMMDDNNNC``, ``YYMMDD-NNNC``, ``YYMMDD+NNNC``).
        protected_identity: protected personal data: only the assigned case workers see it.
        phone: a phone number.
        address: a postal address (not with a protected identity).
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_CHARS)]
    personnummer: Annotated[str, msgspec.Meta(min_length=1, max_length=PERSONNUMMER_INPUT_CHARS)]
    protected_identity: bool = False
    phone: Annotated[str, msgspec.Meta(max_length=PHONE_CHARS)] | None = None
    address: Annotated[str, msgspec.Meta(max_length=ADDRESS_CHARS)] | None = None


class ReferralCommand(_Command, frozen=True, kw_only=True):
    """Hand the case over after acceptance: the identity and the commission.

    Attributes:
        person: who is referred.
        interventions: the agreed interventions, one line each.
        payer: this city's unit that pays (default: the case's unit).
    """

    person: PersonInput
    interventions: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=INTERVENTION_CHARS)]],
        msgspec.Meta(min_length=1, max_length=MAX_INTERVENTIONS),
    ]
    payer: UnitName | None = None


class IntakeCommand(_Command, frozen=True, kw_only=True):
    """The person has arrived.

    Attributes:
        arrived_on: the arrival date.
        contact: how the home city reaches the receiving case worker (default: the unit).
    """

    arrived_on: datetime.date
    contact: Annotated[str, msgspec.Meta(max_length=CONTACT_CHARS)] | None = None


class ReportCommand(_Command, frozen=True, kw_only=True):
    """A progress report to the home city.

    Attributes:
        period_end: the last day reported.
        period_start: the first day (default: the day after the previous report's period, or
            the arrival date for the first report).
        text: the report.
    """

    period_end: datetime.date
    period_start: datetime.date | None = None
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=REPORT_TEXT_CHARS)]


class CloseCommand(_Command, frozen=True, kw_only=True):
    """Close the case.

    Attributes:
        reason: completed, aborted, long_term_housing or returned.
        note: a short note.
        closed_on: the closing date (default: today).
    """

    reason: ClosureReason
    note: ShortText = ""
    closed_on: datetime.date | None = None


COMMANDS: Final[tuple[type[msgspec.Struct], ...]] = (
    NewInquiry,
    UpdatedInquiry,
    ReplyCommand,
    ReferralCommand,
    IntakeCommand,
    ReportCommand,
    CloseCommand,
)
