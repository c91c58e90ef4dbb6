"""The case service: what case workers and coordinators do with cases, under the agreement's rules.

Owns every user action on a case, at both ends of the flow: the home city opens an inquiry,
answers a request for information, refers the person and closes; the receiving city replies,
confirms intake, reports and closes; both read their cases. Invariants:

* **Who may do what** is decided by :func:`node.access.require` before anything else: a role
  without the action gets :class:`~node.access.Forbidden` (403) whether or not the case exists; a
  case worker asking about a case of another unit gets :class:`HiddenCase`, which is answered
  exactly like an unknown case (404) so that a case's existence is not revealed, and is audited
  as ``other_unit``. A received inquiry addressed to no unit is open to every case worker of the
  city until a unit replies (the reply assigns it).
* **The agreement's rules** are checked before a message is sealed: a new inquiry by
  :func:`protocol.agreement_rules.check_inquiry` (members and units, period, target group, police
  consultation, consent), a referral's quota by :func:`~protocol.agreement_rules.check_quota`
  against this home city's referrals of the calendar year (stated in the signed referral as
  "k of N for YEAR"), the personnummer by
  :func:`protocol.personnummer.parse_personal_identity_number`.
  The state machine is asked first (``protocol.cases.next_state``) and again, authoritatively, by
  the case ledger inside the sending transaction.
* **Every action is audited** — who, role, case, purpose, outcome — through
  :class:`node.audit.AuditTrail`: a done action in the very transaction that queues its message
  (``Outgoing.send(also=...)``), a refusal in a transaction of its own after the action's was
  rolled back. Nothing is changed by a refusal.
* **One commit for several requests.** The transaction that sends an action's message is a
  grouped unit of work (:mod:`node.storage.write_groups`): on SQLite, requests that queue behind
  one another share a ``COMMIT``, each still all or nothing, in order, and answered only once it
  is durable. The view answered for a new case is built inside its transaction from the rows
  it wrote (the case as committed, its one journal entry ``queued``), without a second read.
* **Identity** is shown only for a stated purpose (``node.audit.check_purpose``), only to those the
  policy allows, and for a protected identity only to the case workers of the assigned unit;
  every such read and every refused attempt is audited with its purpose before anything is
  returned. The inquiry stage is anonymous: the identity exists at a node only from the referral.
"""

from __future__ import annotations

import datetime
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from sqlalchemy.ext.asyncio import AsyncSession

from node.access import Action, Forbidden, Principal, UserRole, may, require
from node.audit import AuditTrail, check_purpose
from node.cases import views
from node.cases.commands import (
    CloseCommand,
    IntakeCommand,
    NewInquiry,
    ReferralCommand,
    ReplyCommand,
    ReportCommand,
    UpdatedInquiry,
)
from node.cases.documents import DocumentRecords
from node.cases.journal import CaseJournal, JournalEntry
from node.cases.records import (
    MAX_LISTED,
    UNASSIGNED_UNIT,
    CaseSummary,
    count_referrals,
    decode_identity,
    list_summaries,
    load_summary,
    summary_of,
)
from node.delivery import DeliveryState
from node.errors import NodeError
from node.outgoing import Outgoing
from node.storage.case_store import CaseNotFound, CaseStore, find_case
from node.storage.database import Database, StorageError
from node.storage.write_groups import grouped
from node.trust import TrustState
from protocol import codec
from protocol.agreement_rules import check_inquiry, check_quota
from protocol.cases import CaseEvent, EventKind, next_state
from protocol.errors import ErrorCode, LocalProtocolError, ProtocolError
from protocol.messages import (
    AttachmentRef,
    Closure,
    Decision,
    Inquiry,
    Intake,
    Message,
    Person,
    ProgressReport,
    Referral,
    Reply,
)
from protocol.personnummer import parse_personal_identity_number

logger = logging.getLogger(__name__)

CASE_ID_BYTES: Final = 16
OK: Final = "ok"
QUEUED: Final = DeliveryState.QUEUED.value

_DECISION_EVENTS: Final = {
    Decision.ACCEPT: EventKind.ACCEPT,
    Decision.DECLINE: EventKind.DECLINE,
    Decision.NEED_INFO: EventKind.NEED_INFO,
}


class HiddenCase(CaseNotFound):
    """A case of another unit: answered as unknown (404), audited as ``other_unit``."""

    code: ClassVar[str] = "unknown_case"
    audit_reason: ClassVar[str] = "other_unit"


@dataclass(frozen=True, slots=True)
class _Step:
    """One action on an existing case: its audit name, the event it sends, how to build it."""

    name: str
    kind: EventKind
    build: Callable[[CaseSummary], Awaitable[Message]]


class CaseService:
    """Case actions for the users of one node.

    Args:
        city: this node's city.
        db: the database.
        cases: the case store (sealed identities).
        journal: the case journal (timelines).
        outgoing: sends messages (the case change, the audit entry and the outbox row commit
            together).
        audit: the audit trail.
        trust: the current trust snapshot (the agreement in force).
        clock: Unix seconds now.
        random_bytes: the RNG for case ids.
        documents: the case documents (a referral carries the case's offered ones), or
            ``None`` for a node without documents.
    """

    def __init__(
        self,
        *,
        city: str,
        db: Database,
        cases: CaseStore,
        journal: CaseJournal,
        outgoing: Outgoing,
        audit: AuditTrail,
        trust: Callable[[], TrustState],
        clock: Callable[[], float],
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        documents: DocumentRecords | None = None,
    ) -> None:
        self._city = city
        self._db = db
        self._cases = cases
        self._journal = journal
        self._outgoing = outgoing
        self._audit = audit
        self._trust = trust
        self._clock = clock
        self._random_bytes = random_bytes
        self._documents = documents

    # --- home city ------------------------------------------------------------------------

    async def open_inquiry(self, principal: Principal, command: NewInquiry) -> views.CaseView:
        """Open a case: check the agreement's rules and send the anonymous inquiry.

        Raises:
            Forbidden: not a case worker, or ``from_unit`` is not the case worker's unit.
            LocalProtocolError: ``not_a_member``, ``unknown_unit``, ``outside_period``,
                ``not_eligible``, ``invalid_field``.
            UnknownPeer: no keys from the receiving city yet. OutboxFull: its queue is full.
        """
        case_id = self._random_bytes(CASE_ID_BYTES)
        try:
            from_unit = command.from_unit or principal.unit
            require(principal, Action.OPEN_CASE, from_unit)
            if from_unit is None:  # pragma: no cover - only case workers may open, with a unit
                raise Forbidden("a case is opened by a case worker of a unit")
            check_inquiry(
                self._trust().agreement,
                home_city=self._city,
                from_unit=from_unit,
                receiving_city=command.to_city,
                to_unit=command.to_unit,
                threat_level=command.threat_level,
                police_consulted_on=command.police_consulted_on,
                consent=command.consent,
                today=self._today(),
            )
            inquiry = _checked(
                Inquiry(
                    case_id=case_id,
                    from_unit=from_unit,
                    to_unit=command.to_unit,
                    threat_level=command.threat_level,
                    police_consulted_on=command.police_consulted_on,
                    consent=command.consent,
                    needs=tuple(command.needs),
                    summary=command.summary,
                    wished_start=command.wished_start,
                )
            )
            opened: list[views.CaseView] = []
            also = self._opened(principal, case_id, opened)
            with grouped():  # one commit with other requests' actions (node.storage.write_groups)
                await self._outgoing.send(command.to_city, inquiry, also=also)
        except (NodeError, ProtocolError) as e:
            await self._refused(principal, "case_open", None, e)
            raise
        return opened[0] if opened else await self._view(case_id)

    async def update_inquiry(
        self, principal: Principal, case_id: bytes, command: UpdatedInquiry
    ) -> views.CaseView:
        """Answer a request for more information with an updated anonymous profile."""

        async def build(case: CaseSummary) -> Message:
            check_inquiry(
                self._trust().agreement,
                home_city=self._city,
                from_unit=case.unit,
                receiving_city=case.peer,
                to_unit=None,
                threat_level=command.threat_level,
                police_consulted_on=command.police_consulted_on,
                consent=command.consent,
                today=min(self._today(), self._trust().agreement.document.valid_until),
            )
            return Inquiry(
                case_id=case.case_id,
                from_unit=case.unit,
                to_unit=case.peer_unit,
                threat_level=command.threat_level,
                police_consulted_on=command.police_consulted_on,
                consent=command.consent,
                needs=tuple(command.needs),
                summary=command.summary,
                wished_start=command.wished_start,
            )

        return await self._act(principal, case_id, _Step("case_inquiry", EventKind.INQUIRY, build))

    async def send_referral(
        self, principal: Principal, case_id: bytes, command: ReferralCommand
    ) -> views.CaseView:
        """Refer the person after acceptance, counting the referral against the quota.

        Raises:
            LocalProtocolError: ``invalid_personnummer``, ``invalid_field``, ``unknown_unit``
                (payer), ``quota_exceeded``, ``outside_period``, ``invalid_transition``.
        """

        async def build(case: CaseSummary) -> Message:
            today = self._today()
            number = parse_personal_identity_number(command.person.personnummer, today=today)
            person = Person(
                name=command.person.name,
                personnummer=number.canonical,
                protected_identity=command.person.protected_identity,
                phone=command.person.phone,
                address=command.person.address,
            )
            payer = command.payer or case.unit
            agreement = self._trust().agreement
            if not agreement.member(self._city).has_unit(payer):
                raise LocalProtocolError(ErrorCode.UNKNOWN_UNIT, "payer is not a unit of this city")
            async with self._db.reading() as s:
                used = await count_referrals(s, self._city, today.year)
            quota = check_quota(
                agreement, home_city=self._city, year=today.year, already_referred=used
            )
            documents: tuple[AttachmentRef, ...] = ()
            if self._documents is not None:
                documents = await self._documents.offered_references(case.case_id)
            return Referral(
                case_id=case.case_id,
                from_unit=case.unit,
                person=person,
                documents=documents,
                interventions=tuple(command.interventions),
                payer=payer,
                quota=quota,
            )

        step = _Step("case_referral", EventKind.REFERRAL, build)
        return await self._act(principal, case_id, step)

    # --- receiving city -------------------------------------------------------------------

    async def reply(
        self, principal: Principal, case_id: bytes, command: ReplyCommand
    ) -> views.CaseView:
        """Accept, decline or ask for more information; an unaddressed inquiry is assigned to
        the replying unit.

        Raises:
            Forbidden: the unit given is not the case worker's (for an unassigned inquiry).
            LocalProtocolError: ``invalid_field`` (the unit is not the case's, a blank reason),
                ``unknown_unit``, ``invalid_transition``.
        """

        async def build(case: CaseSummary) -> Message:
            unit = command.unit or (case.unit if case.assigned else principal.unit) or ""
            if case.assigned and unit != case.unit:
                raise LocalProtocolError(ErrorCode.INVALID_FIELD, "unit must be the case's unit")
            if not case.assigned and principal.role is UserRole.CASEWORKER:
                require(principal, Action.ACT_ON_CASE, unit)
            if not self._trust().agreement.member(self._city).has_unit(unit):
                raise LocalProtocolError(ErrorCode.UNKNOWN_UNIT, "unit is not a unit of this city")
            return Reply(
                case_id=case.case_id, unit=unit, decision=command.decision, reason=command.reason
            )

        step = _Step("case_reply", _DECISION_EVENTS[command.decision], build)
        return await self._act(principal, case_id, step)

    async def confirm_intake(
        self, principal: Principal, case_id: bytes, command: IntakeCommand
    ) -> views.CaseView:
        """Tell the home city the person has arrived."""

        async def build(case: CaseSummary) -> Message:
            contact = command.contact or f"{case.unit}, {self._city}"
            return Intake(
                case_id=case.case_id, unit=case.unit, arrived_on=command.arrived_on, contact=contact
            )

        return await self._act(principal, case_id, _Step("case_intake", EventKind.INTAKE, build))

    async def send_report(
        self, principal: Principal, case_id: bytes, command: ReportCommand
    ) -> views.CaseView:
        """Send a progress report; the period starts after the previous one by default."""

        async def build(case: CaseSummary) -> Message:
            start = command.period_start
            if start is None:
                start = _next_period_start(await self._journal.entries(case.case_id))
                start = min(start or command.period_end, command.period_end)
            return ProgressReport(
                case_id=case.case_id,
                unit=case.unit,
                period_start=start,
                period_end=command.period_end,
                text=command.text,
            )

        step = _Step("case_report", EventKind.PROGRESS_REPORT, build)
        return await self._act(principal, case_id, step)

    # --- either side ----------------------------------------------------------------------

    async def close(
        self, principal: Principal, case_id: bytes, command: CloseCommand
    ) -> views.CaseView:
        """Close the case (either side, where the state table allows it)."""

        async def build(case: CaseSummary) -> Message:
            return Closure(
                case_id=case.case_id,
                unit=case.unit,
                reason=command.reason,
                closed_on=command.closed_on or self._today(),
                note=command.note,
            )

        return await self._act(principal, case_id, _Step("case_close", EventKind.CLOSURE, build))

    async def list_cases(self, principal: Principal, *, limit: int = 100) -> views.CaseList:
        """The cases the principal may see: a case worker's unit (and unassigned inquiries),
        or the whole city for a coordinator; newest change first.

        Raises:
            Forbidden: the role may not list cases.
        """
        try:
            require(principal, Action.LIST_CASES)
        except Forbidden as e:
            await self._refused(principal, "case_list", None, e)
            raise
        unit = principal.unit if principal.role is UserRole.CASEWORKER else None
        async with self._db.reading() as s:
            found = await list_summaries(
                s, self._city, unit=unit, limit=max(1, min(limit, MAX_LISTED))
            )
        await self._audit.record(
            None, principal=principal, action="case_list", case_id=None, purpose=None, outcome=OK
        )
        return views.CaseList(cases=[views.list_item(case) for case in found])

    async def read_case(
        self, principal: Principal, case_id: bytes, purpose: str | None = None
    ) -> views.CaseView:
        """A case with its timeline, and its person when allowed and a purpose is given.

        Raises:
            Forbidden: the role may not read cases.
            CaseNotFound: no such case, or (:class:`HiddenCase`) one of another unit.
            InvalidPurpose: the purpose is blank, too long, not one line, or looks personal.
        """
        try:
            purpose = check_purpose(purpose)
            case = await self._visible(principal, Action.READ_CASE, case_id)
        except (NodeError, ProtocolError) as e:
            await self._refused(principal, "case_read", case_id, e)
            raise
        person, access = await self._identity(principal, case, purpose)
        await self._audit.record(
            None, principal=principal, action="case_read", case_id=case_id, purpose=None, outcome=OK
        )
        return await self._view(case_id, seen=case, person=person, access=access)

    # --- the machinery --------------------------------------------------------------------

    async def _act(self, principal: Principal, case_id: bytes, step: _Step) -> views.CaseView:
        try:
            case = await self._visible(principal, Action.ACT_ON_CASE, case_id)
            next_state(case.role, case.state, CaseEvent.sent(step.kind))
            message = _checked(await step.build(case))
            also = self._audited(principal, step.name, case_id)
            with grouped():  # one commit with other requests' actions (node.storage.write_groups)
                await self._outgoing.send(case.peer, message, also=also)
        except (NodeError, ProtocolError) as e:
            await self._refused(principal, step.name, case_id, e)
            raise
        return await self._view(case_id)

    async def _visible(self, principal: Principal, action: Action, case_id: bytes) -> CaseSummary:
        """The case, if the principal may do ``action`` on it."""
        require(principal, action)
        async with self._db.reading() as s:
            case = await load_summary(s, case_id, self._city)
        if case is None:
            raise CaseNotFound("no case with this id is held by this node")
        # An unassigned case (a received inquiry addressed to no unit) is open to every case
        # worker of the city until a unit replies.
        if case.assigned and not may(principal, action, case.unit):
            raise HiddenCase("no case with this id is held by this node")
        return case

    async def _identity(
        self, principal: Principal, case: CaseSummary, purpose: str | None
    ) -> tuple[views.PersonView | None, views.IdentityAccess]:
        """Open the identity when allowed; audit every attempt made with a purpose."""
        held = case.has_identity
        if case.shredded:
            return None, views.IdentityAccess(held=False, shown=False, withheld="shredded")
        if not held:
            return None, views.IdentityAccess(held=False, shown=False)
        if purpose is None:
            return None, views.IdentityAccess(held=True, shown=False, withheld="purpose_required")
        withheld = _withheld(principal, case)
        if withheld is not None:
            await self._audit.record(
                None,
                principal=principal,
                action="read_identity",
                case_id=case.case_id,
                purpose=purpose,
                outcome=withheld,
            )
            return None, views.IdentityAccess(held=True, shown=False, withheld=withheld)
        sealed = await self._cases.open_identity(case.case_id)
        if sealed is None:  # pragma: no cover - has_identity said it was there
            return None, views.IdentityAccess(held=False, shown=False)
        person = decode_identity(sealed)
        await self._audit.record(
            None,
            principal=principal,
            action="read_identity",
            case_id=case.case_id,
            purpose=purpose,
            outcome=OK,
        )
        return views.person_view(person), views.IdentityAccess(held=True, shown=True)

    async def _view(
        self,
        case_id: bytes,
        *,
        seen: CaseSummary | None = None,
        person: views.PersonView | None = None,
        access: views.IdentityAccess | None = None,
    ) -> views.CaseView:
        """The case's view; ``seen``: the summary the identity decision was made on (its
        state and flags are shown, so the person and the state shown always agree)."""
        case = seen
        entries: Sequence[JournalEntry] = []
        if case is None:  # one read for the case and its journal, as they are at one moment
            async with self._db.reading() as s:
                case = await load_summary(s, case_id, self._city)
                if case is not None and not case.shredded:
                    entries = await self._journal.entries_in(s, case_id)
        elif not case.shredded:
            entries = await self._journal.entries(case_id)
        if case is None:  # pragma: no cover - cases are never deleted
            raise CaseNotFound("no case with this id is held by this node")
        if access is None:
            withheld = "purpose_required" if case.has_identity else None
            access = views.IdentityAccess(held=case.has_identity, shown=False, withheld=withheld)
        return views.case_view(case, entries, identity=access, person=person)

    def _opened(
        self, principal: Principal, case_id: bytes, opened: list[views.CaseView]
    ) -> Callable[[AsyncSession], Awaitable[None]]:
        """The audit entry of a new case, after its view as the transaction commits it: the
        case row and the journal entry it wrote (no read afterwards, no decryption)."""
        audited = self._audited(principal, "case_open", case_id)

        async def view_and_record(session: AsyncSession) -> None:
            entries = await self._journal.recorded_in(session, case_id, delivery=QUEUED)
            row = await find_case(session, case_id)
            if row is not None:
                case = summary_of(row, self._city)
                access = views.IdentityAccess(held=case.has_identity, shown=False)
                opened.append(views.case_view(case, entries, identity=access, person=None))
            await audited(session)  # last (node.audit: the audit lock is held to the commit)

        return view_and_record

    def _audited(
        self, principal: Principal, action: str, case_id: bytes
    ) -> Callable[[AsyncSession], Awaitable[None]]:
        async def record(session: AsyncSession) -> None:
            await self._audit.record(
                session,
                principal=principal,
                action=action,
                case_id=case_id,
                purpose=None,
                outcome=OK,
            )

        return record

    async def _refused(
        self,
        principal: Principal,
        action: str,
        case_id: bytes | None,
        error: NodeError | ProtocolError,
    ) -> None:
        """Audit a refusal in a transaction of its own (the action's was rolled back)."""
        if isinstance(error, StorageError):
            return  # not a refusal: the database failed, and would fail the audit entry too
        reason = getattr(error, "audit_reason", None) or str(error.code)
        await self._audit.record(
            None,
            principal=principal,
            action=action,
            case_id=case_id,
            purpose=None,
            outcome=reason,
        )
        logger.info("case action %s refused: %s", action, reason)

    def _today(self) -> datetime.date:
        return datetime.datetime.fromtimestamp(self._clock(), tz=datetime.UTC).date()


def _checked(message: Message) -> Message:
    """Apply every field constraint a peer will apply (lengths, patterns, ranges)."""
    return codec.check(message, what="message")


def _withheld(principal: Principal, case: CaseSummary) -> str | None:
    """Why the principal may not see this case's identity, or ``None`` if they may."""
    if not may(principal, Action.READ_IDENTITY, case.unit):
        return "not_permitted"
    assigned_worker = principal.role is UserRole.CASEWORKER and principal.unit == case.unit
    if case.protected_identity and not assigned_worker:
        return "protected_identity"
    return None


def _next_period_start(entries: Sequence[JournalEntry]) -> datetime.date | None:
    """The day after the last report's period, else the arrival date, else ``None``."""
    start: datetime.date | None = None
    for entry in entries:
        message = entry.message
        if isinstance(message, Intake) and start is None:
            start = message.arrived_on
        elif isinstance(message, ProgressReport):
            start = message.period_end + datetime.timedelta(days=1)
    return start


__all__ = ["UNASSIGNED_UNIT", "CaseService", "HiddenCase"]
