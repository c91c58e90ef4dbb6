"""Hypothesis strategies and fixed samples for the message catalogue, shared by protocol tests.

Everything generated is obviously fake: names come from a fixed list of placeholder names, and
every personnummer has a birth number in the 980-999 series (the style of Skatteverket's test
numbers), with a check digit computed here independently of ``protocol.personnummer``.

Public strategies: ``personnummer_canonical()``, ``inquiries()``, ``replies()``, ``referrals()``,
``intakes()``, ``progress_reports()``, ``closures()``, ``key_updates()``,
``agreement_proposals()``, ``agreement_signatures()``, ``keylog_checkpoints()``,
``balance_statements()``, ``case_messages()``, ``control_messages()``, ``messages()`` and
``MESSAGE_STRATEGIES`` (one per type). ``SAMPLE_MESSAGES`` holds one fixed valid message per
type, for fuzz corpora and vectors.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from protocol.fields import FIRST_DATE, LAST_DATE
from protocol.messages import (
    INTERVENTION_CHARS,
    MESSAGE_TYPES,
    AgreementProposal,
    AgreementSignature,
    AttachmentRef,
    BalanceStatement,
    CityCount,
    Closure,
    ClosureReason,
    Decision,
    Inquiry,
    Intake,
    KeylogCheckpoint,
    KeyUpdate,
    Message,
    Need,
    Person,
    ProgressReport,
    QuotaCount,
    Referral,
    Reply,
    ThreatLevel,
)

FAKE_NAMES = (
    "Tolvan Tolvansson",
    "Test Testsson",
    "Exempla Exempelsdotter",
    "Fiktiva Person",
    "Påhittad Svensson",
)
TOLVAN = "191212121212"
"""Tolvan Tolvansson's well-known example personnummer, 19121212-1212."""

_PERSONNUMMER_SHAPED = re.compile(r"(?<![0-9])(?:[0-9]{2})?[0-9]{6}[-+ ]?[0-9]{4}(?![0-9])")


def reference_luhn(nine_digits: str) -> int:
    """An independent Luhn: double every other digit from the left, sum the digits, complement."""
    doubled = "".join(str(int(d) * (2 - i % 2)) for i, d in enumerate(nine_digits))
    return -sum(int(d) for d in doubled) % 10


def canonical_from(born: datetime.date, serial: int, *, samordningsnummer: bool = False) -> str:
    """The canonical twelve digits for a birth date and a three-digit birth number."""
    day = born.day + (60 if samordningsnummer else 0)
    first = f"{born.year:04d}{born.month:02d}{day:02d}{serial:03d}"
    return first + str(reference_luhn(first[2:]))


@st.composite
def personnummer_canonical(
    draw: st.DrawFn,
    *,
    min_date: datetime.date = datetime.date(1900, 1, 1),
    max_date: datetime.date = datetime.date(2025, 12, 31),
    samordningsnummer: bool | None = None,
) -> str:
    """Valid canonical numbers with a test-series birth number (980-999)."""
    born = draw(st.dates(min_date, max_date))
    serial = draw(st.integers(980, 999))
    kind = draw(st.booleans()) if samordningsnummer is None else samordningsnummer
    return canonical_from(born, serial, samordningsnummer=kind)


# Text that passes the catalogue's rules: no control character (but \n and \t in multi-line
# text), no lone surrogate, not blank when required.
_LINE_CHARS = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf"))
_TEXT_CHARS = st.one_of(_LINE_CHARS, st.sampled_from("\n\t"))


def _text(*, max_size: int, required: bool = False, line: bool = False) -> st.SearchStrategy[str]:
    alphabet = _LINE_CHARS if line else _TEXT_CHARS
    strategy = st.text(alphabet, min_size=1 if required else 0, max_size=max_size)
    if required:
        strategy = strategy.filter(lambda s: bool(s.strip()))
    return strategy


case_ids = st.binary(min_size=16, max_size=16)
unit_names = st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)
dates = st.dates(FIRST_DATE, LAST_DATE)
summaries = _text(max_size=200).filter(lambda s: _PERSONNUMMER_SHAPED.search(s) is None)


def inquiries() -> st.SearchStrategy[Inquiry]:
    """Valid inquiries."""
    return st.builds(
        Inquiry,
        case_id=case_ids,
        from_unit=unit_names,
        to_unit=st.none() | unit_names,
        threat_level=st.sampled_from(ThreatLevel),
        police_consulted_on=st.none() | dates,
        consent=st.booleans(),
        needs=st.lists(st.sampled_from(Need), min_size=1, unique=True).map(tuple),
        summary=summaries,
        wished_start=st.none() | dates,
    )


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    """Valid replies: a reason that is not blank unless the decision is accept."""
    decision = draw(st.sampled_from(Decision))
    reason = draw(_text(max_size=200, required=decision is not Decision.ACCEPT))
    return Reply(case_id=draw(case_ids), unit=draw(unit_names), decision=decision, reason=reason)


def persons() -> st.SearchStrategy[Person]:
    """Valid, obviously fake persons; an address only when the identity is not protected."""

    def person(protected: bool) -> st.SearchStrategy[Person]:
        return st.builds(
            Person,
            name=st.sampled_from(FAKE_NAMES),
            personnummer=personnummer_canonical(),
            protected_identity=st.just(protected),
            phone=st.none() | st.from_regex(r"\+?[0-9][0-9 -]{2,30}", fullmatch=True),
            address=st.none() if protected else st.none() | _text(max_size=100, required=True),
        )

    return st.booleans().flatmap(person)


@st.composite
def attachment_refs(draw: st.DrawFn) -> AttachmentRef:
    """Valid attachment references."""
    size = draw(st.integers(0, 2**40))
    filename = draw(
        st.text(
            st.characters(
                exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf"), exclude_characters="/\\"
            ),
            min_size=1,
            max_size=60,
        ).filter(lambda s: bool(s.strip()) and s not in {".", ".."})
    )
    return AttachmentRef(
        attachment_id=draw(st.binary(min_size=16, max_size=16)),
        filename=filename,
        media_type=draw(st.sampled_from(["application/pdf", "text/plain", "image/png"])),
        size=size,
        digest=draw(st.binary(min_size=32, max_size=32)),
        key=draw(st.binary(min_size=32, max_size=32)),
        chunk_count=draw(st.integers(1, max(1, min(size, 2**32 - 1)))),
    )


@st.composite
def quota_counts(draw: st.DrawFn) -> QuotaCount:
    """Valid quota counts (1 <= index <= total)."""
    total = draw(st.integers(1, 100))
    index = draw(st.integers(1, total))
    return QuotaCount(year=draw(st.integers(2000, 2100)), index=index, total=total)


def referrals() -> st.SearchStrategy[Referral]:
    """Valid referrals."""
    return st.builds(
        Referral,
        case_id=case_ids,
        from_unit=unit_names,
        person=persons(),
        documents=st.lists(attachment_refs(), max_size=3, unique_by=lambda a: a.attachment_id).map(
            tuple
        ),
        interventions=st.lists(
            _text(max_size=min(80, INTERVENTION_CHARS), required=True, line=True),
            min_size=1,
            max_size=4,
        ).map(tuple),
        payer=unit_names,
        quota=quota_counts(),
    )


def intakes() -> st.SearchStrategy[Intake]:
    """Valid intakes."""
    return st.builds(
        Intake,
        case_id=case_ids,
        unit=unit_names,
        arrived_on=dates,
        contact=_text(max_size=100, required=True),
    )


@st.composite
def progress_reports(draw: st.DrawFn) -> ProgressReport:
    """Valid progress reports (period_start <= period_end)."""
    start, end = sorted((draw(dates), draw(dates)))
    return ProgressReport(
        case_id=draw(case_ids),
        unit=draw(unit_names),
        period_start=start,
        period_end=end,
        text=draw(_text(max_size=300, required=True)),
    )


def closures() -> st.SearchStrategy[Closure]:
    """Valid closures."""
    return st.builds(
        Closure,
        case_id=case_ids,
        unit=unit_names,
        reason=st.sampled_from(ClosureReason),
        closed_on=dates,
        note=_text(max_size=200),
    )


_payloads = st.binary(min_size=1, max_size=300)
_versions = st.integers(1, 2**32 - 1)


def key_updates() -> st.SearchStrategy[KeyUpdate]:
    """Key updates with opaque payloads."""
    return st.builds(KeyUpdate, bundle=_payloads)


def agreement_proposals() -> st.SearchStrategy[AgreementProposal]:
    """Agreement proposals with opaque documents."""
    return st.builds(AgreementProposal, version=_versions, document=_payloads)


def agreement_signatures() -> st.SearchStrategy[AgreementSignature]:
    """Agreement signatures with arbitrary (unverified) bytes of the right sizes."""
    return st.builds(
        AgreementSignature,
        version=_versions,
        document_hash=st.binary(min_size=32, max_size=32),
        signer_key_id=st.binary(min_size=16, max_size=16),
        signature=st.binary(min_size=64, max_size=64),
    )


def keylog_checkpoints() -> st.SearchStrategy[KeylogCheckpoint]:
    """Key-log checkpoints with opaque payloads."""
    return st.builds(KeylogCheckpoint, checkpoint=_payloads)


@st.composite
def balance_statements(draw: st.DrawFn) -> BalanceStatement:
    """Balance statements: per-city counts in ascending order of city, totals that add up."""
    city = draw(unit_names)
    others = st.lists(unit_names.filter(lambda name: name != city), max_size=6, unique=True)
    counts = st.integers(1, 100)
    sent_to = tuple(CityCount(city=c, count=draw(counts)) for c in sorted(draw(others)))
    received_from = tuple(CityCount(city=c, count=draw(counts)) for c in sorted(draw(others)))
    year = draw(st.integers(FIRST_DATE.year, LAST_DATE.year))
    return BalanceStatement(
        city=city,
        year=year,
        sent=sum(entry.count for entry in sent_to),
        received=sum(entry.count for entry in received_from),
        as_of=draw(st.dates(datetime.date(year, 1, 1), LAST_DATE)),
        sent_to=sent_to,
        received_from=received_from,
    )


MESSAGE_STRATEGIES: dict[type[Message], Callable[[], st.SearchStrategy[Any]]] = {
    Inquiry: inquiries,
    Reply: replies,
    Referral: referrals,
    Intake: intakes,
    ProgressReport: progress_reports,
    Closure: closures,
    KeyUpdate: key_updates,
    AgreementProposal: agreement_proposals,
    AgreementSignature: agreement_signatures,
    KeylogCheckpoint: keylog_checkpoints,
    BalanceStatement: balance_statements,
}
assert set(MESSAGE_STRATEGIES) == set(MESSAGE_TYPES), "a message type has no strategy"


def case_messages() -> st.SearchStrategy[Message]:
    """Any valid case-flow message."""
    return st.one_of(inquiries(), replies(), referrals(), intakes(), progress_reports(), closures())


def control_messages() -> st.SearchStrategy[Message]:
    """Any valid control message."""
    return st.one_of(
        key_updates(),
        agreement_proposals(),
        agreement_signatures(),
        keylog_checkpoints(),
        balance_statements(),
    )


def messages() -> st.SearchStrategy[Message]:
    """Any valid message of the catalogue."""
    return st.one_of(case_messages(), control_messages())


CASE_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
TOLVAN_PERSON = Person(
    name="Tolvan Tolvansson",
    personnummer=TOLVAN,
    protected_identity=True,
    phone="070-000 00 00",
    address=None,
)
SAMPLE_ATTACHMENT = AttachmentRef(
    attachment_id=bytes(range(16)),
    filename="utredning.pdf",
    media_type="application/pdf",
    size=150_000,
    digest=bytes(range(32)),
    key=bytes(range(32, 64)),
    chunk_count=3,
)
SAMPLE_MESSAGES: tuple[Message, ...] = (
    Inquiry(
        case_id=CASE_ID,
        from_unit="farsta",
        to_unit="nordost",
        threat_level=ThreatLevel.MODERATE,
        police_consulted_on=datetime.date(2026, 1, 15),
        consent=True,
        needs=(Need.HOUSING, Need.TREATMENT),
        summary="Behöver boende och behandling; hotbild bedömd som måttlig.",
        wished_start=datetime.date(2026, 3, 1),
    ),
    Reply(case_id=CASE_ID, unit="nordost", decision=Decision.ACCEPT, reason=""),
    Referral(
        case_id=CASE_ID,
        from_unit="farsta",
        person=TOLVAN_PERSON,
        documents=(SAMPLE_ATTACHMENT,),
        interventions=("Boende", "Missbruksbehandling"),
        payer="farsta",
        quota=QuotaCount(year=2026, index=1, total=2),
    ),
    Intake(
        case_id=CASE_ID,
        unit="nordost",
        arrived_on=datetime.date(2026, 3, 2),
        contact="Handläggare Exempla, tel 031-000 00 00",
    ),
    ProgressReport(
        case_id=CASE_ID,
        unit="nordost",
        period_start=datetime.date(2026, 3, 2),
        period_end=datetime.date(2026, 6, 30),
        text="Insatserna löper enligt plan.\n\tBoende ordnat.",
    ),
    Closure(
        case_id=CASE_ID,
        unit="farsta",
        reason=ClosureReason.LONG_TERM_HOUSING,
        closed_on=datetime.date(2027, 2, 1),
        note="",
    ),
    KeyUpdate(bundle=b"\x93\x01\x02\x03"),
    AgreementProposal(version=3, document=b"\x91\xa5draft"),
    AgreementSignature(
        version=3,
        document_hash=bytes(32),
        signer_key_id=bytes(16),
        signature=bytes(64),
    ),
    KeylogCheckpoint(checkpoint=b"\x92\x07\xc4\x00"),
    BalanceStatement(
        city="stockholm",
        year=2026,
        sent=3,
        received=0,
        as_of=datetime.date(2026, 11, 30),
        sent_to=(CityCount(city="goteborg", count=2), CityCount(city="malmo", count=1)),
        received_from=(),
    ),
)
