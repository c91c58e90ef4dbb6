"""The message catalogue: every typed message the protocol carries.

Owns the case-flow messages of MISSION.md (inquiry, reply, referral, intake, progress report,
closure) and the control messages (key update, agreement proposal and signature, key-log
checkpoint, balance statement). Receipts are signed, not sealed, and live in ``protocol.sealing``.
The wire format of each message, field by field, is in ``docs/spec/20-messages.md``.

Invariants:

* Every message is a frozen ``msgspec`` struct encoded as a MessagePack array whose first element
  is its type tag, then its fields in declared order. Tags 1-15 are the case flow, 16-31 control
  messages; a tag is never reused once published.
* Every str, bytes and array field has a maximum length; enums are closed; dates are ISO
  ``YYYY-MM-DD`` strings on the wire. The field types shared with other modules (names, case ids,
  digests, signatures) and the date and text rules are those of :mod:`protocol.fields`.
* The :class:`Inquiry` has no field that can carry an identity: no name, no personnummer, no free
  text longer than a short needs summary, and that summary may not hold a personnummer-shaped
  number. Identity travels only in a :class:`Referral`'s :class:`Person`, whose personnummer is
  validated (date and Luhn) in canonical twelve-digit form.
* Constructors validate (``__post_init__``) what goes beyond a field's type and length, so such an
  invalid message cannot be built locally; decoding checks those rules and the lengths, and
  :func:`decode_message` turns every failure into the peer's fault. Errors name the field, never
  its value; ``repr`` of a :class:`Person` or an :class:`AttachmentRef` hides identity and keys.
"""

from __future__ import annotations

import datetime
import itertools
import re
from enum import StrEnum
from typing import Annotated, Any, Final, cast

import msgspec

from protocol import codec
from protocol.attachments import ATTACHMENT_ID_BYTES, ATTACHMENT_KEY_BYTES
from protocol.errors import DecodeError, ErrorCode, LocalProtocolError
from protocol.fields import (
    FIRST_DATE,
    LAST_DATE,
    CaseId,
    CityName,
    Digest,
    Signature,
    UnitName,
    check_date,
    check_label,
    check_lines,
    check_text,
    holds_personnummer_shaped,
    require,
)
from protocol.keys import KeyId
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.personnummer import PersonalIdentityNumber, parse_canonical, validate_canonical

SHORT_TEXT_CHARS: Final = 2000
REPORT_TEXT_CHARS: Final = 20_000
CONTACT_CHARS: Final = 1000
NAME_CHARS: Final = 200
ADDRESS_CHARS: Final = 500
INTERVENTION_CHARS: Final = 500
MAX_INTERVENTIONS: Final = 32
FILENAME_CHARS: Final = 255
MEDIA_TYPE_CHARS: Final = 127
MAX_DOCUMENTS: Final = 64
MAX_ATTACHMENT_BYTES: Final = 2**48
MAX_ATTACHMENT_CHUNKS: Final = 2**32 - 1
MAX_QUOTA: Final = 100
MAX_CONTROL_PAYLOAD_BYTES: Final = 192 * 1024
MAX_VERSION: Final = 2**32 - 1
MAX_BALANCE_COUNT: Final = 2**16 - 1
MAX_BALANCE_CITIES: Final = 512  # as many cities as an agreement has members at most

ShortText = Annotated[str, msgspec.Meta(max_length=SHORT_TEXT_CHARS)]
ReportText = Annotated[str, msgspec.Meta(max_length=REPORT_TEXT_CHARS)]
ContactText = Annotated[str, msgspec.Meta(max_length=CONTACT_CHARS)]
ControlPayload = Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_CONTROL_PAYLOAD_BYTES)]
Version = Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION)]

_PHONE: Final = re.compile(r"\+?[0-9][0-9 -]{2,30}")
_MEDIA_TYPE: Final = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")


class ThreatLevel(StrEnum):
    """The threat assessment (hotbild) of the person, from the home city's police consultation."""

    NONE = "none"
    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"


class Need(StrEnum):
    """What the person needs from the receiving city."""

    HOUSING = "housing"
    TREATMENT = "treatment"
    EMPLOYMENT = "employment"
    EDUCATION = "education"
    ECONOMIC_SUPPORT = "economic_support"
    SUBSTANCE_ABUSE_CARE = "substance_abuse_care"
    PSYCHIATRIC_CARE = "psychiatric_care"
    FAMILY_SUPPORT = "family_support"
    DEBT_COUNSELLING = "debt_counselling"
    OTHER = "other"


class Decision(StrEnum):
    """The receiving city's answer to an inquiry."""

    ACCEPT = "accept"
    DECLINE = "decline"
    NEED_INFO = "need_info"


class ClosureReason(StrEnum):
    """Why a case was closed."""

    COMPLETED = "completed"
    ABORTED = "aborted"
    LONG_TERM_HOUSING = "long_term_housing"
    RETURNED = "returned"


class Message(
    msgspec.Struct,
    frozen=True,
    array_like=True,
    forbid_unknown_fields=True,
    tag_field="type",
):
    """Base of every sealed message. Subclasses set a unique integer ``tag``."""


class _Record(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """Base of the untagged structs nested inside messages."""


# ---------------------------------------------------------------------------------------------
# Case flow, tags 1-15.


class Inquiry(Message, tag=1, frozen=True):
    """Home → receiving: an anonymous needs profile. No field here can carry an identity.

    Attributes:
        case_id: the case's id, the same at both nodes, chosen by the home node.
        from_unit: the home city's unit that asks.
        to_unit: the receiving unit asked, or ``None`` to let the receiving city choose.
        threat_level: the threat assessment.
        police_consulted_on: the date the police (avhopparsamordnare) were consulted.
        consent: whether the person's consent to the inquiry is recorded.
        needs: what the person needs, at least one, none repeated.
        summary: a short anonymous description of the needs; no personnummer-shaped number.
        wished_start: the wished start of the relocation.
    """

    case_id: CaseId
    from_unit: UnitName
    to_unit: UnitName | None
    threat_level: ThreatLevel
    police_consulted_on: datetime.date | None
    consent: bool
    needs: Annotated[tuple[Need, ...], msgspec.Meta(min_length=1, max_length=len(Need))]
    summary: ShortText
    wished_start: datetime.date | None

    def __post_init__(self) -> None:
        require(len(set(self.needs)) == len(self.needs), "inquiry needs must not repeat")
        check_text(self.summary, "inquiry summary")
        require(
            not holds_personnummer_shaped(self.summary),
            "inquiry summary must not hold a personnummer-shaped number",
        )
        check_date(self.police_consulted_on, "inquiry police_consulted_on")
        check_date(self.wished_start, "inquiry wished_start")


class Reply(Message, tag=2, frozen=True):
    """Receiving → home: the answer to an inquiry.

    Attributes:
        case_id: the case's id.
        unit: the receiving city's unit that answers.
        decision: accept, decline or need_info.
        reason: why; required (not blank) for decline and need_info, may be empty for accept.
            Like the inquiry it answers, it must not identify the person.
    """

    case_id: CaseId
    unit: UnitName
    decision: Decision
    reason: ShortText

    def __post_init__(self) -> None:
        check_text(self.reason, "reply reason", required=self.decision != Decision.ACCEPT)


class QuotaCount(_Record, frozen=True):
    """Which relocation of the home city's yearly quota a referral uses: "1 of 2 for 2026".

    Attributes:
        year: the quota year.
        index: this relocation's number in that year, 1..total.
        total: the home city's quota for that year.
    """

    year: Annotated[int, msgspec.Meta(ge=FIRST_DATE.year, le=LAST_DATE.year)]
    index: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUOTA)]
    total: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUOTA)]

    def __post_init__(self) -> None:
        require(FIRST_DATE.year <= self.year <= LAST_DATE.year, "quota year is out of range")
        require(
            1 <= self.index <= self.total <= MAX_QUOTA,
            "quota index must lie between 1 and the quota total",
        )


class Person(_Record, frozen=True):
    """The person referred: the only place in the catalogue that carries an identity.

    Attributes:
        name: the full name, one line.
        personnummer: the personnummer or samordningsnummer, canonical twelve digits.
        protected_identity: the person has protected personal data (skyddade personuppgifter);
            then ``address`` must be ``None``.
        phone: a phone number (digits, spaces, hyphens, an optional leading ``+``), or ``None``.
        address: a postal address, or ``None``.
    """

    name: Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_CHARS)]
    personnummer: Annotated[str, msgspec.Meta(max_length=12)]
    protected_identity: bool
    phone: Annotated[str, msgspec.Meta(max_length=32)] | None
    address: Annotated[str, msgspec.Meta(max_length=ADDRESS_CHARS)] | None

    def __post_init__(self) -> None:
        check_text(self.name, "person name", required=True, line=True)
        parse_canonical(self.personnummer)  # every check of validate_canonical, done once
        if self.phone is not None:
            require(
                _PHONE.fullmatch(self.phone) is not None,
                "person phone must be digits, spaces and hyphens",
            )
        if self.address is not None:
            check_text(self.address, "person address", required=True)
            require(
                not self.protected_identity,
                "person address must be absent when the identity is protected",
            )

    @property
    def identity(self) -> PersonalIdentityNumber:
        """The validated personnummer or samordningsnummer."""
        return validate_canonical(self.personnummer)

    def __repr__(self) -> str:
        number = f"{self.personnummer[:8]}-****"
        return f"Person(personnummer={number!r}, protected_identity={self.protected_identity})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [
            ("personnummer", f"{self.personnummer[:8]}-****"),
            ("protected_identity", self.protected_identity),
        ]


class AttachmentRef(_Record, frozen=True):
    """A document sent with a referral: names the attachment stream and carries its key.

    Attributes:
        attachment_id: the stream's 16-byte id.
        filename: a bare file name: no path separator, no control or bidi character, not ``.``
            or ``..``.
        media_type: a lower-case ``type/subtype`` media type without parameters.
        size: the plaintext size in bytes.
        digest: BLAKE3-256 of the whole plaintext (``protocol.attachments.content_digest``).
        key: the 32-byte per-attachment key (secret; never shown by ``repr``).
        chunk_count: the number of chunks in the stream: 1 when ``size`` is 0, otherwise at
            least 1 and at most ``size``.
    """

    attachment_id: Annotated[
        bytes, msgspec.Meta(min_length=ATTACHMENT_ID_BYTES, max_length=ATTACHMENT_ID_BYTES)
    ]
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=FILENAME_CHARS)]
    media_type: Annotated[str, msgspec.Meta(min_length=3, max_length=MEDIA_TYPE_CHARS)]
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_ATTACHMENT_BYTES)]
    digest: Digest
    key: Annotated[
        bytes, msgspec.Meta(min_length=ATTACHMENT_KEY_BYTES, max_length=ATTACHMENT_KEY_BYTES)
    ]
    chunk_count: Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTACHMENT_CHUNKS)]

    def __post_init__(self) -> None:
        check_label(self.filename, "attachment filename")
        require(
            "/" not in self.filename
            and "\\" not in self.filename
            and self.filename not in {".", ".."},
            "attachment filename must be a bare file name",
        )
        require(
            _MEDIA_TYPE.fullmatch(self.media_type) is not None,
            "attachment media_type must be a lower-case type/subtype",
        )
        require(
            1 <= self.chunk_count <= max(1, self.size),
            "attachment chunk_count does not fit its size",
        )

    def __repr__(self) -> str:
        return f"AttachmentRef(attachment_id={self.attachment_id.hex()!r}, size={self.size})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return [("attachment_id", self.attachment_id.hex()), ("size", self.size)]


class Referral(Message, tag=3, frozen=True):
    """Home → receiving, after acceptance: the person's identity, documents and the commission.

    Attributes:
        case_id: the case's id.
        from_unit: the home city's unit that refers.
        person: who is referred.
        documents: the attached documents (investigation, threat assessment ...), ids unique.
        interventions: the agreed interventions, at least one, each one line of text.
        payer: the home city's unit that pays: the receiving city works on the home city's
            commission. The receiving node checks it is a unit of the sending city.
        quota: which relocation of the home city's quota this is.
    """

    case_id: CaseId
    from_unit: UnitName
    person: Person
    documents: Annotated[tuple[AttachmentRef, ...], msgspec.Meta(max_length=MAX_DOCUMENTS)]
    interventions: Annotated[
        tuple[Annotated[str, msgspec.Meta(max_length=INTERVENTION_CHARS)], ...],
        msgspec.Meta(min_length=1, max_length=MAX_INTERVENTIONS),
    ]
    payer: UnitName
    quota: QuotaCount

    def __post_init__(self) -> None:
        ids = {document.attachment_id for document in self.documents}
        require(
            len(ids) == len(self.documents), "referral documents must not repeat an attachment id"
        )
        require(
            len(self.interventions) >= 1,
            "referral interventions must hold at least one intervention",
        )
        check_lines(self.interventions, "referral intervention")


class Intake(Message, tag=4, frozen=True):
    """Receiving → home: the person has arrived.

    Attributes:
        case_id: the case's id.
        unit: the receiving city's unit that took the person in.
        arrived_on: the arrival date.
        contact: how the home city reaches the receiving case worker (not blank).
    """

    case_id: CaseId
    unit: UnitName
    arrived_on: datetime.date
    contact: ContactText

    def __post_init__(self) -> None:
        check_date(self.arrived_on, "intake arrived_on")
        check_text(self.contact, "intake contact", required=True)


class ProgressReport(Message, tag=5, frozen=True):
    """Receiving → home: a periodic report on the work done on the home city's commission.

    Attributes:
        case_id: the case's id.
        unit: the receiving city's unit that reports.
        period_start: first day of the period reported.
        period_end: last day of the period, not before ``period_start``.
        text: the report (not blank).
    """

    case_id: CaseId
    unit: UnitName
    period_start: datetime.date
    period_end: datetime.date
    text: ReportText

    def __post_init__(self) -> None:
        check_date(self.period_start, "progress_report period_start")
        check_date(self.period_end, "progress_report period_end")
        require(
            self.period_start <= self.period_end,
            "progress_report period_end must not precede period_start",
        )
        check_text(self.text, "progress_report text", required=True)


class Closure(Message, tag=6, frozen=True):
    """Either side: the case is closed; each node's retention rules then apply.

    Attributes:
        case_id: the case's id.
        unit: the sending city's unit that closes the case.
        reason: completed, aborted, long_term_housing or returned.
        closed_on: the closing date.
        note: a short note, possibly empty.
    """

    case_id: CaseId
    unit: UnitName
    reason: ClosureReason
    closed_on: datetime.date
    note: ShortText

    def __post_init__(self) -> None:
        check_date(self.closed_on, "closure closed_on")
        check_text(self.note, "closure note")


# ---------------------------------------------------------------------------------------------
# Control messages, tags 16-31. Their payloads are the exact signed bytes of objects owned by
# other modules, which decode and verify them; here they are opaque and bounded.


class KeyUpdate(Message, tag=16, frozen=True):
    """A node's new signed key bundle (decoded and verified by ``protocol.keys``).

    Attributes:
        bundle: the exact bytes of the signed key bundle.
    """

    bundle: ControlPayload


class AgreementProposal(Message, tag=17, frozen=True):
    """A proposed agreement version, for the recipient's operators to review and sign.

    Attributes:
        version: the proposed version number.
        document: the exact bytes of the agreement document.
    """

    version: Version
    document: ControlPayload


class AgreementSignature(Message, tag=18, frozen=True):
    """A member's signature of an agreement version.

    Attributes:
        version: the signed version number.
        document_hash: SHA-256 of the exact agreement document bytes.
        signer_key_id: the key id of the identity key that signed.
        signature: the Ed25519 signature (purpose ``agreement``).
    """

    version: Version
    document_hash: Digest
    signer_key_id: KeyId
    signature: Signature


class KeylogCheckpoint(Message, tag=19, frozen=True):
    """A signed checkpoint of the sender's key-history log, for countersigning.

    Attributes:
        checkpoint: the exact bytes of the signed checkpoint.
    """

    checkpoint: ControlPayload


class CityCount(_Record, frozen=True):
    """How many relocations a balance statement counts with one other city.

    Attributes:
        city: the other city.
        count: how many, at least 1 (a city with none is left out).
    """

    city: CityName
    count: Annotated[int, msgspec.Meta(ge=1, le=MAX_BALANCE_COUNT)]


CityCounts = Annotated[tuple[CityCount, ...], msgspec.Meta(max_length=MAX_BALANCE_CITIES)]


class BalanceStatement(Message, tag=20, frozen=True):
    """A city's own count of the relocations it took part in during one year: anonymous.

    Unlike the control messages above it is not an opaque payload: its fields are the statement.
    A relocation counts in the year of its referral's quota (``QuotaCount.year``), at the home
    city as sent and at the receiving city as received. No field names a case or a person.

    Attributes:
        city: the stating city (the envelope's sender; the receiving node checks it is).
        year: the year counted.
        sent: referrals this city made as home city in that year: the sum of ``sent_to``.
        received: referrals it received as receiving city: the sum of ``received_from``.
        as_of: the day the counts were taken, in or after ``year``.
        sent_to: the referrals sent, per receiving city, in ascending order of city, each city
            once and not the stating city.
        received_from: the referrals received, per home city, in the same order and rules.
    """

    city: CityName
    year: Annotated[int, msgspec.Meta(ge=FIRST_DATE.year, le=LAST_DATE.year)]
    sent: Annotated[int, msgspec.Meta(ge=0, le=MAX_BALANCE_COUNT)]
    received: Annotated[int, msgspec.Meta(ge=0, le=MAX_BALANCE_COUNT)]
    as_of: datetime.date
    sent_to: CityCounts
    received_from: CityCounts

    def __post_init__(self) -> None:
        check_date(self.as_of, "balance_statement as_of")
        require(self.as_of.year >= self.year, "balance_statement as_of precedes its year")
        for counts, total, field in (
            (self.sent_to, self.sent, "sent_to"),
            (self.received_from, self.received, "received_from"),
        ):
            cities = [entry.city for entry in counts]
            require(
                all(a < b for a, b in itertools.pairwise(cities)),
                f"balance_statement {field} must list each city once, in ascending order",
            )
            require(self.city not in cities, f"balance_statement {field} names the stating city")
            require(
                sum(entry.count for entry in counts) == total,
                f"balance_statement {field} does not add up to its total",
            )


# ---------------------------------------------------------------------------------------------
# The catalogue.

# Every concrete message type, in tag order. A tag is never reused once published.
MESSAGE_TYPES: Final[tuple[type[Message], ...]] = (
    Inquiry,
    Reply,
    Referral,
    Intake,
    ProgressReport,
    Closure,
    KeyUpdate,
    AgreementProposal,
    AgreementSignature,
    KeylogCheckpoint,
    BalanceStatement,
)

AnyMessage = (
    Inquiry
    | Reply
    | Referral
    | Intake
    | ProgressReport
    | Closure
    | KeyUpdate
    | AgreementProposal
    | AgreementSignature
    | KeylogCheckpoint
    | BalanceStatement
)

CASE_MESSAGES: Final[frozenset[type[Message]]] = frozenset(
    {Inquiry, Reply, Referral, Intake, ProgressReport, Closure}
)
CONTROL_MESSAGES: Final[frozenset[type[Message]]] = frozenset(
    {KeyUpdate, AgreementProposal, AgreementSignature, KeylogCheckpoint, BalanceStatement}
)

_TYPE_NAMES: Final[dict[type[Message], str]] = {
    Inquiry: "inquiry",
    Reply: "reply",
    Referral: "referral",
    Intake: "intake",
    ProgressReport: "progress_report",
    Closure: "closure",
    KeyUpdate: "key_update",
    AgreementProposal: "agreement_proposal",
    AgreementSignature: "agreement_signature",
    KeylogCheckpoint: "keylog_checkpoint",
    BalanceStatement: "balance_statement",
}


def message_tag(kind: type[Message] | Message) -> int:
    """Return the wire tag of a message type or message.

    Args:
        kind: a message class or instance.

    Returns:
        The integer tag.
    """
    cls = kind if isinstance(kind, type) else type(kind)
    tag = cls.__struct_config__.tag
    if not isinstance(tag, int):
        raise LocalProtocolError(ErrorCode.UNKNOWN_MESSAGE_TYPE, "not a message type")
    return tag


def message_type_name(message: Message | type[Message]) -> str:
    """Return the stable snake_case name of a message's type, for logs and timelines.

    Args:
        message: a message or message class.

    Returns:
        e.g. ``"inquiry"``, ``"referral"``, ``"progress_report"``.

    Raises:
        LocalProtocolError: ``unknown_message_type`` for anything not in the catalogue.
    """
    cls = message if isinstance(message, type) else type(message)
    name = _TYPE_NAMES.get(cls)
    if name is None:
        raise LocalProtocolError(ErrorCode.UNKNOWN_MESSAGE_TYPE, "not a message type")
    return name


_TAGS: Final[frozenset[int]] = frozenset(message_tag(kind) for kind in MESSAGE_TYPES)


def decode_message(data: bytes, limits: Limits = DEFAULT_LIMITS) -> AnyMessage:
    """Decode a message body received from a peer.

    The size is checked first, then the type tag (the first array element) against the
    catalogue, then the body is decoded strictly as that type.

    Args:
        data: the exact body bytes (as signed).
        limits: the size limits.

    Returns:
        The typed message.

    Raises:
        DecodeError: malformed, oversized, wrong types, unknown message type.
        RemoteProtocolError: a field failed its validation (code kept).
    """
    small = isinstance(data, bytes | bytearray | memoryview) and len(data) <= limits.max_body_bytes
    if small and codec.peek_tag(data, what="message") not in _TAGS:
        raise DecodeError(ErrorCode.UNKNOWN_MESSAGE_TYPE, "message type tag is not known")
    # Not bytes, or too large, is refused by the codec with its own code before any parsing.
    decoded: AnyMessage = codec.decode(
        data, cast(Any, AnyMessage), max_bytes=limits.max_body_bytes, what="message"
    )
    return decoded
