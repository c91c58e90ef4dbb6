"""What a user is shown of a case: the read model of the case API.

Owns how a case, its timeline and (where allowed) its person are presented. The case API encodes
these types as JSON and its OpenAPI description is generated from them. Invariants:

* A timeline entry never carries the person: a referral shows its interventions, payer, quota
  count and the number of documents, never the name, the personnummer or an attachment key.
  The person appears only in :attr:`CaseView.person`, filled by the service when the caller may
  see it and has given a purpose (the read is then audited).
* Ids are UUID strings (the 16-byte case id, the same at both nodes); message ids are hex;
  times are RFC 3339 in UTC; dates ISO.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgspec

from node.cases.journal import JournalEntry
from node.cases.records import WARNINGS, CaseSummary
from protocol.cases import CaseState, Direction, EventKind, Role, allowed_events
from protocol.messages import (
    Closure,
    Inquiry,
    Intake,
    Message,
    Need,
    Person,
    ProgressReport,
    QuotaCount,
    Referral,
    Reply,
    ThreatLevel,
)

# The case API path (POST /api/v1/cases/{id}/<action>) that sends each event.
ACTION_OF_EVENT: Final[dict[EventKind, str]] = {
    EventKind.INQUIRY: "inquiry",
    EventKind.ACCEPT: "reply",
    EventKind.DECLINE: "reply",
    EventKind.NEED_INFO: "reply",
    EventKind.REFERRAL: "referral",
    EventKind.INTAKE: "intake",
    EventKind.PROGRESS_REPORT: "reports",
    EventKind.CLOSURE: "close",
}


class _View(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of the views: absent optional fields are left out of the JSON."""


class WarningView(_View, frozen=True, kw_only=True):
    """A warning shown on the case, not hidden (e.g. the police handbook's advice)."""

    code: str
    message: str


class QuotaView(_View, frozen=True, kw_only=True):
    """Which relocation of the home city's yearly quota the referral used: "1 of 2 for 2026"."""

    year: int
    index: int
    total: int
    text: str


class PersonView(_View, frozen=True, kw_only=True):
    """The person referred (shown only where the caller may see it, for a stated purpose)."""

    name: str
    personnummer: str
    protected_identity: bool
    phone: str | None = None
    address: str | None = None


class IdentityAccess(_View, frozen=True, kw_only=True):
    """Whether the case holds an identity, and whether this response shows it.

    Attributes:
        held: this node holds the person's identity (sealed) for the case.
        shown: ``person`` is in this response.
        withheld: why not, when held and not shown: ``purpose_required`` (give a purpose),
            ``protected_identity`` (only the assigned unit's case workers), ``not_permitted``
            (the role may not read identities) or ``shredded``.
    """

    held: bool
    shown: bool
    withheld: str | None = None


class TimelineEntry(_View, frozen=True, kw_only=True):
    """One message of the case, with its delivery state; fields by message type."""

    seq: int
    type: str
    direction: Direction
    delivery: str
    at: datetime.datetime
    message_id: str
    receipted_at: datetime.datetime | None = None
    unit: str | None = None
    from_unit: str | None = None
    to_unit: str | None = None
    threat_level: ThreatLevel | None = None
    police_consulted_on: datetime.date | None = None
    consent: bool | None = None
    needs: list[Need] | None = None
    summary: str | None = None
    wished_start: datetime.date | None = None
    decision: str | None = None
    reason: str | None = None
    interventions: list[str] | None = None
    payer: str | None = None
    quota: QuotaView | None = None
    documents: int | None = None
    arrived_on: datetime.date | None = None
    contact: str | None = None
    period_start: datetime.date | None = None
    period_end: datetime.date | None = None
    text: str | None = None
    closed_on: datetime.date | None = None
    note: str | None = None


class CaseListItem(_View, frozen=True, kw_only=True):
    """A case as listed: no identity, no messages."""

    id: uuid.UUID
    state: CaseState
    role: Role
    home_city: str
    receiving_city: str
    unit: str | None = None
    peer_unit: str | None = None
    protected_identity: bool
    warnings: list[WarningView]
    created_at: datetime.datetime
    updated_at: datetime.datetime
    closed_at: datetime.datetime | None = None
    shredded: bool = False


class CaseView(CaseListItem, frozen=True, kw_only=True):
    """A case with its timeline, the actions open to it, and the person where allowed."""

    quota: QuotaView | None = None
    identity: IdentityAccess
    person: PersonView | None = None
    allowed_actions: list[str]
    timeline: list[TimelineEntry]


class CaseList(_View, frozen=True, kw_only=True):
    """``GET /api/v1/cases``."""

    cases: list[CaseListItem]


def case_uuid(case_id: bytes) -> uuid.UUID:
    """The API form of a case id."""
    return uuid.UUID(bytes=case_id)


def timestamp(at: float) -> datetime.datetime:
    """A Unix time as an aware UTC datetime (RFC 3339 in JSON)."""
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC)


def quota_view(quota: QuotaCount) -> QuotaView:
    """The quota count, with the sentence the signed referral states."""
    text = f"{quota.index} of {quota.total} for {quota.year}"
    return QuotaView(year=quota.year, index=quota.index, total=quota.total, text=text)


def person_view(person: Person) -> PersonView:
    """The person, for a caller allowed to see it."""
    return PersonView(
        name=person.name,
        personnummer=person.personnummer,
        protected_identity=person.protected_identity,
        phone=person.phone,
        address=person.address,
    )


def list_item(case: CaseSummary) -> CaseListItem:
    """A case as listed."""
    return CaseListItem(**_common(case))


def case_view(
    case: CaseSummary,
    entries: Sequence[JournalEntry],
    *,
    identity: IdentityAccess,
    person: PersonView | None,
) -> CaseView:
    """A case with its timeline; ``person`` only when the service decided it may be shown."""
    quota = next(
        (quota_view(e.message.quota) for e in entries if isinstance(e.message, Referral)), None
    )
    actions = [] if case.shredded else allowed_actions(case.role, case.state)
    return CaseView(
        **_common(case),
        quota=quota,
        identity=identity,
        person=person,
        allowed_actions=actions,
        timeline=[timeline_entry(entry) for entry in entries],
    )


def allowed_actions(role: Role, state: CaseState) -> list[str]:
    """The case API actions this node may take on a case now, from the state table."""
    actions: list[str] = []
    for event in allowed_events(role, state):
        action = ACTION_OF_EVENT[event.kind]
        if event.direction is Direction.SENT and action not in actions:
            actions.append(action)
    return actions


def _common(case: CaseSummary) -> dict[str, Any]:
    return {
        "id": case_uuid(case.case_id),
        "state": case.state,
        "role": case.role,
        "home_city": case.home_city,
        "receiving_city": case.receiving_city,
        "unit": case.unit if case.assigned else None,
        "peer_unit": case.peer_unit,
        "protected_identity": case.protected_identity,
        "warnings": (
            [WarningView(code=case.warning, message=WARNINGS[case.warning])]
            if case.warning in WARNINGS
            else []
        ),
        "created_at": timestamp(case.created_at),
        "updated_at": timestamp(case.updated_at),
        "closed_at": None if case.closed_at is None else timestamp(case.closed_at),
        "shredded": case.shredded,
    }


def timeline_entry(entry: JournalEntry) -> TimelineEntry:
    """One journal entry as shown: the message's fields, never the person."""
    base: dict[str, Any] = {
        "seq": entry.seq,
        "type": entry.message_type,
        "direction": entry.direction,
        "delivery": entry.delivery,
        "at": timestamp(entry.at),
        "message_id": entry.message_id.hex(),
        "receipted_at": None if entry.receipted_at is None else timestamp(entry.receipted_at),
    }
    return TimelineEntry(**base, **_details(entry.message))


def _inquiry(message: Inquiry) -> dict[str, Any]:
    return {
        "from_unit": message.from_unit,
        "to_unit": message.to_unit,
        "threat_level": message.threat_level,
        "police_consulted_on": message.police_consulted_on,
        "consent": message.consent,
        "needs": list(message.needs),
        "summary": message.summary,
        "wished_start": message.wished_start,
    }


def _reply(message: Reply) -> dict[str, Any]:
    return {"unit": message.unit, "decision": message.decision.value, "reason": message.reason}


def _referral(message: Referral) -> dict[str, Any]:
    # Never the person, never an attachment's key or name: those are for the identity view.
    return {
        "from_unit": message.from_unit,
        "interventions": list(message.interventions),
        "payer": message.payer,
        "quota": quota_view(message.quota),
        "documents": len(message.documents),
    }


def _intake(message: Intake) -> dict[str, Any]:
    return {"unit": message.unit, "arrived_on": message.arrived_on, "contact": message.contact}


def _report(message: ProgressReport) -> dict[str, Any]:
    return {
        "unit": message.unit,
        "period_start": message.period_start,
        "period_end": message.period_end,
        "text": message.text,
    }


def _closure(message: Closure) -> dict[str, Any]:
    return {
        "unit": message.unit,
        "reason": message.reason.value,
        "closed_on": message.closed_on,
        "note": message.note,
    }


_DETAILS: Final[dict[type[Message], Callable[[Any], dict[str, Any]]]] = {
    Inquiry: _inquiry,
    Reply: _reply,
    Referral: _referral,
    Intake: _intake,
    ProgressReport: _report,
    Closure: _closure,
}


def _details(message: Message) -> dict[str, Any]:
    details = _DETAILS.get(type(message))
    return {} if details is None else details(message)
