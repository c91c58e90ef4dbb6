"""Write tests/vectors/messages.json: known answers for every message type (spec section 3).

Run from the repository root: ``.venv/bin/python tests/vectors/generate_messages.py`` (``--check``
compares instead of writing, and exits 1 if the file is stale). Everything is fixed, so running it
again gives the same file byte for byte. ``tests/protocol/test_message_vectors.py`` checks the
file both ways with ``protocol`` (decode each body to its fields, build each message from its
fields to exactly its body); ``tests/independent/`` decodes it with a second implementation.

The file holds:

* ``messages``: one or more samples of each type (tags 1-6 and 16-20), each with its fields in
  JSON (``{"type": name, field: value, ...}``, as in ``envelopes.json``; bytes as lower-case hex,
  dates as ``YYYY-MM-DD``, nested records as objects, absent optionals as ``null``) and its
  ``body``, the exact shortest-form encoding;
* ``noncanonical``: bodies that a decoder must accept although an encoder would not write them
  (a wider integer encoding, a ``str8`` for a short string), with their fields and the ``canonical``
  body the same message encodes to;
* ``refused``: bodies that break exactly one rule, with the ``code`` a decoder refuses them with
  (and a smaller ``max_body_bytes`` where the rule is the size limit).

Every person is obviously fake (Tolvan Tolvansson and placeholder names) and every personnummer a
valid-checksum test number: 19121212-1212 (Skatteverket's well-known example) or birth numbers of
the 980-999 series.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import codec, signing
from protocol.attachments import content_digest
from protocol.errors import RemoteProtocolError
from protocol.keys import KeyKind, key_id
from protocol.limits import Limits
from protocol.messages import (
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
    decode_message,
    message_tag,
    message_type_name,
)

OUT = Path(__file__).with_name("messages.json")

CASE_A = bytes.fromhex("5ca1ab1e0000400080000000000000a1")
CASE_B = bytes.fromhex("5ca1ab1e0000400080000000000000b2")
EXAMPLE_CASE = bytes.fromhex("00112233445566778899aabbccddeeff")
TOLVAN = "191212121212"  # Tolvan Tolvansson, 19121212-1212: Skatteverket's example number
TEST_PERSON = "199005159810"  # born 1990-05-15, birth number 981 (test series)
TEST_SAMORDNING = "199005759825"  # samordningsnummer: day 75 = 15 + 60, birth number 982
TEST_LEAP_DAY = "200002299857"  # born 2000-02-29 (a leap year), birth number 985
DOCUMENT = b"Avtalsutkast version 4 (testdata)\n"
IDENTITY_SEED = hashlib.sha256(b"citynode test vector identity stockholm").digest()


def _date(text: str) -> datetime.date:
    return datetime.date.fromisoformat(text)


# ---------------------------------------------------------------------------------------------
# JSON form <-> typed messages, generically over the msgspec schema.


def to_json(value: Any) -> Any:
    """The JSON form of a message (with its ``type``), a nested record or a field value."""
    if isinstance(value, Message):
        return {"type": message_type_name(value), **_record_json(value)}
    if isinstance(value, msgspec.Struct):
        return _record_json(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [to_json(item) for item in value]
    return value


def _record_json(record: msgspec.Struct) -> dict[str, Any]:
    return {name: to_json(getattr(record, name)) for name in record.__struct_fields__}


def _from_json(info: msgspec.inspect.Type, value: Any) -> Any:
    if value is None:
        return None
    if isinstance(info, msgspec.inspect.UnionType):
        (inner,) = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        return _from_json(inner, value)
    if isinstance(info, msgspec.inspect.StructType):
        return info.cls(**{f.name: _from_json(f.type, value[f.name]) for f in info.fields})
    if isinstance(info, msgspec.inspect.BytesType):
        return bytes.fromhex(value)
    if isinstance(info, msgspec.inspect.DateType):
        return _date(value)
    if isinstance(info, msgspec.inspect.EnumType):
        return info.cls(value)
    if isinstance(info, msgspec.inspect.VarTupleType):
        return tuple(_from_json(info.item_type, item) for item in value)
    return value


def from_json(fields: dict[str, Any]) -> Message:
    """Build the typed message that a JSON form (with its ``type``) describes."""
    (kind,) = [k for k in MESSAGE_TYPES if message_type_name(k) == fields["type"]]
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    built: Message = _from_json(info, {k: v for k, v in fields.items() if k != "type"})
    return built


# ---------------------------------------------------------------------------------------------
# Samples.

TOLVAN_PROTECTED = Person(
    name="Tolvan Tolvansson",
    personnummer=TOLVAN,
    protected_identity=True,
    phone="+46 70-000 00 00",
    address=None,
)
TEST_PERSON_AT_HOME = Person(
    name="Test Testsson",
    personnummer=TEST_PERSON,
    protected_identity=False,
    phone=None,
    address="Exempelgatan 1\n123 45 Påhittstad",
)
INVESTIGATION = AttachmentRef(
    attachment_id=bytes.fromhex("a77ac4ed0000400080000000000000a1"),
    filename="utredning.pdf",
    media_type="application/pdf",
    size=150,
    digest=content_digest(b"placeholder: investigation"),
    key=bytes(range(32)),
    chunk_count=3,
)
EMPTY_NOTE = AttachmentRef(
    attachment_id=bytes.fromhex("a77ac4ed0000400080000000000000a3"),
    filename="tom anteckning.txt",
    media_type="text/plain",
    size=0,
    digest=content_digest(b""),
    key=bytes(range(32, 64)),
    chunk_count=1,
)
LARGE_THREAT_ASSESSMENT = AttachmentRef(
    attachment_id=bytes.fromhex("a77ac4ed0000400080000000000000a2"),
    filename="hotbildsbedömning.pdf",
    media_type="application/pdf",
    size=5_000_000_000,  # above 2^32: a uint64 on the wire
    digest=content_digest(b"placeholder: threat assessment"),
    key=bytes(range(64, 96)),
    chunk_count=76_294,  # ceil(size / 65536)
)


def _agreement_signature() -> AgreementSignature:
    """A real member signature of DOCUMENT by the vectors' Stockholm identity key."""
    private = Ed25519PrivateKey.from_private_bytes(IDENTITY_SEED)
    public = private.public_key().public_bytes_raw()
    return AgreementSignature(
        version=4,
        document_hash=hashlib.sha256(DOCUMENT).digest(),
        signer_key_id=key_id(KeyKind.IDENTITY, public),
        signature=signing.sign(private, signing.Purpose.AGREEMENT, DOCUMENT),
    )


SAMPLES: tuple[tuple[str, Message], ...] = (
    (
        "inquiry with every field",
        Inquiry(
            case_id=CASE_A,
            from_unit="jarva",
            to_unit="nordost",
            threat_level=ThreatLevel.MODERATE,
            police_consulted_on=_date("2026-02-20"),
            consent=True,
            needs=(Need.HOUSING, Need.SUBSTANCE_ABUSE_CARE, Need.EMPLOYMENT),
            summary="Behöver boende och öppenvård; kan börja arbetsträning i april.",
            wished_start=_date("2026-04-01"),
        ),
    ),
    (
        "inquiry with every optional absent",
        Inquiry(
            case_id=CASE_B,
            from_unit="arbetsmarknad-social",
            to_unit=None,
            threat_level=ThreatLevel.LOW,
            police_consulted_on=None,
            consent=False,
            needs=(Need.OTHER,),
            summary="",
            wished_start=None,
        ),
    ),
    (
        "reply accepting",  # the worked example of the spec's section 3.7
        Reply(case_id=EXAMPLE_CASE, unit="nordost", decision=Decision.ACCEPT, reason=""),
    ),
    (
        "reply declining",
        Reply(
            case_id=CASE_A,
            unit="centrum",
            decision=Decision.DECLINE,
            reason="Inget boende ledigt före hösten.",
        ),
    ),
    (
        "reply asking for more information",
        Reply(
            case_id=CASE_B,
            unit="socialnamnden",
            decision=Decision.NEED_INFO,
            reason="Vilken behandling pågår i dag?",
        ),
    ),
    (
        "referral of a protected person with one document",
        Referral(
            case_id=CASE_A,
            from_unit="jarva",
            person=TOLVAN_PROTECTED,
            documents=(INVESTIGATION,),
            interventions=("Boende", "Öppenvårdsbehandling"),
            payer="jarva",
            quota=QuotaCount(year=2026, index=1, total=2),
        ),
    ),
    (
        "referral with an address and no document",
        Referral(
            case_id=CASE_B,
            from_unit="hisingen",
            person=TEST_PERSON_AT_HOME,
            documents=(),
            interventions=("Arbetsträning",),
            payer="nordost",
            quota=QuotaCount(year=2027, index=2, total=2),
        ),
    ),
    (
        "referral of a samordningsnummer with an empty and a large document",
        Referral(
            case_id=CASE_B,
            from_unit="socialnamnden",
            person=Person(
                name="Exempla Exempelsdotter",
                personnummer=TEST_SAMORDNING,
                protected_identity=False,
                phone="08-000 000",
                address=None,
            ),
            documents=(EMPTY_NOTE, LARGE_THREAT_ASSESSMENT),
            interventions=("Skuldrådgivning", "Familjestöd", "Psykiatrisk vård"),
            payer="socialnamnden",
            quota=QuotaCount(year=2026, index=2, total=2),
        ),
    ),
    (
        "referral of a person born on a leap day",
        Referral(
            case_id=CASE_A,
            from_unit="farsta",
            person=Person(
                name="Fiktiva Person",
                personnummer=TEST_LEAP_DAY,
                protected_identity=False,
                phone=None,
                address=None,
            ),
            documents=(),
            interventions=("Boende",),
            payer="farsta",
            quota=QuotaCount(year=2026, index=1, total=2),
        ),
    ),
    (
        "intake",
        Intake(
            case_id=CASE_A,
            unit="nordost",
            arrived_on=_date("2026-04-01"),
            contact="Handläggare Påhittad Svensson, tel 031-000 00 00",
        ),
    ),
    (
        "progress report with a long multi-line text",
        ProgressReport(
            case_id=CASE_A,
            unit="nordost",
            period_start=_date("2026-04-01"),
            period_end=_date("2026-06-30"),
            text="Insatserna löper enligt plan.\n\tBoende ordnat.\n" + "Uppföljning sker. " * 20,
        ),
    ),
    (
        "progress report of one day",
        ProgressReport(
            case_id=CASE_B,
            unit="arbetsmarknad-social",
            period_start=_date("2026-05-04"),
            period_end=_date("2026-05-04"),
            text="Inskriven.",
        ),
    ),
    (
        "closure to long-term housing",
        Closure(
            case_id=CASE_A,
            unit="jarva",
            reason=ClosureReason.LONG_TERM_HOUSING,
            closed_on=_date("2027-02-01"),
            note="Eget kontrakt från februari.",
        ),
    ),
    (
        "closure, returned, empty note",
        Closure(
            case_id=CASE_B,
            unit="nordost",
            reason=ClosureReason.RETURNED,
            closed_on=_date("2026-09-30"),
            note="",
        ),
    ),
    ("key update", KeyUpdate(bundle=bytes(i % 251 for i in range(300)))),
    ("agreement proposal", AgreementProposal(version=4, document=DOCUMENT)),
    ("agreement signature", _agreement_signature()),
    ("keylog checkpoint", KeylogCheckpoint(checkpoint=b"\x93\xc4\x01\x00\xc4\x00\xc4\x00")),
    (
        "balance statement of a home city",  # the seed: Stockholm sent three, received none
        BalanceStatement(
            city="stockholm",
            year=2026,
            sent=3,
            received=0,
            as_of=_date("2026-11-30"),
            sent_to=(CityCount(city="goteborg", count=2), CityCount(city="malmo", count=1)),
            received_from=(),
        ),
    ),
    (
        "balance statement of a city that sent and received",
        BalanceStatement(
            city="goteborg",
            year=2025,
            sent=1,
            received=2,
            as_of=_date("2026-01-02"),
            sent_to=(CityCount(city="malmo", count=1),),
            received_from=(CityCount(city="stockholm", count=2),),
        ),
    ),
    (
        "balance statement counting nothing",
        BalanceStatement(
            city="malmo",
            year=2026,
            sent=0,
            received=0,
            as_of=_date("2026-03-01"),
            sent_to=(),
            received_from=(),
        ),
    ),
)


# ---------------------------------------------------------------------------------------------
# Non-canonical and refused bodies, made by editing a sample's raw array.

_RAW = msgspec.msgpack.Encoder()


def _sample(name: str) -> Message:
    return dict(SAMPLES)[name]


def _edit(name: str, edit: Callable[[list[Any]], object]) -> bytes:
    """The body of a sample with its raw array changed in place by ``edit``."""
    raw: list[Any] = msgspec.msgpack.decode(codec.encode(_sample(name)))
    edit(raw)
    return _RAW.encode(raw)


def _set(path: tuple[int, ...], value: Any) -> Callable[[list[Any]], None]:
    def edit(raw: list[Any]) -> None:
        target = raw
        for index in path[:-1]:
            target = target[index]
        target[path[-1]] = value

    return edit


REPLY = "reply accepting"
INQUIRY = "inquiry with every field"
REFERRAL = "referral of a protected person with one document"
AT_HOME = "referral with an address and no document"
REPORT = "progress report of one day"
BALANCE = "balance statement of a home city"
EMPTY_REPLY_BODY = codec.encode(_sample(REPLY))

NONCANONICAL: tuple[tuple[str, str, bytes], ...] = (
    ("tag as a uint8", REPLY, b"\x95\xcc\x02" + EMPTY_REPLY_BODY[2:]),
    ("array header as array16", REPLY, b"\xdc\x00\x05" + EMPTY_REPLY_BODY[1:]),
    ("empty reason as str8", REPLY, EMPTY_REPLY_BODY[:-1] + b"\xd9\x00"),
    (
        "quota year as a uint32",
        REFERRAL,
        codec.encode(_sample(REFERRAL)).replace(b"\x93\xcd\x07\xea", b"\x93\xce\x00\x00\x07\xea"),
    ),
)


def _refused() -> list[tuple[str, bytes, str, int | None]]:
    """(name, body, code, max_body_bytes or None): each body breaks one rule."""
    reply = codec.encode(_sample(REPLY))
    return [
        ("empty body", b"", "malformed", None),
        ("a map, not an array", b"\x81\x01\x02", "bad_type", None),
        ("an empty array", b"\x90", "malformed", None),
        ("unassigned tag 7", b"\x95\x07" + reply[2:], "unknown_message_type", None),
        ("tag as a uint16", b"\x95\xcd\x00\x02" + reply[2:], "unknown_message_type", None),
        ("tag as a string", b"\x95\xa1\x02" + reply[2:], "bad_type", None),
        ("one element too many", _edit(REPLY, lambda r: r.append("")), "oversized", None),
        ("one element too few", _edit(REPLY, lambda r: r.pop()), "invalid_field", None),
        ("trailing byte", reply + b"\xc0", "malformed", None),
        ("cut in the middle", reply[:-3], "malformed", None),
        ("body over the size limit", reply, "oversized", len(reply) - 1),
        ("case id of 15 bytes", _edit(REPLY, _set((1,), bytes(15))), "invalid_field", None),
        ("case id of 17 bytes", _edit(REPLY, _set((1,), bytes(17))), "oversized", None),
        ("case id as a string", _edit(REPLY, _set((1,), "0" * 16)), "bad_type", None),
        ("unit with a capital", _edit(REPLY, _set((2,), "Nordost")), "invalid_field", None),
        (
            "unit with a trailing newline",
            _edit(REPLY, _set((2,), "nordost\n")),
            "invalid_field",
            None,
        ),
        ("unknown decision", _edit(REPLY, _set((3,), "maybe")), "invalid_field", None),
        (
            "declined with a blank reason",
            _edit(REPLY, _set((3,), "decline")),
            "invalid_field",
            None,
        ),
        ("reason not UTF-8", reply[:-1] + b"\xa2\xc3\x28", "invalid_utf8", None),
        ("a float for consent", _edit(INQUIRY, _set((6,), 1.0)), "bad_type", None),
        ("an integer for consent", _edit(INQUIRY, _set((6,), 1)), "bad_type", None),
        (
            "a need repeated",
            _edit(INQUIRY, _set((7,), ["housing", "housing"])),
            "invalid_field",
            None,
        ),
        ("no need", _edit(INQUIRY, _set((7,), [])), "invalid_field", None),
        (
            "a personnummer-shaped number in the summary",
            _edit(INQUIRY, _set((8,), "Kontakt via 121212-1212.")),
            "invalid_field",
            None,
        ),
        (
            "summary with a carriage return",
            _edit(INQUIRY, _set((8,), "a\r\nb")),
            "invalid_field",
            None,
        ),
        ("30 February", _edit(INQUIRY, _set((9,), "2026-02-30")), "invalid_field", None),
        ("a date without hyphens", _edit(INQUIRY, _set((9,), "20260401")), "invalid_field", None),
        ("a date before 2000", _edit(INQUIRY, _set((9,), "1999-12-31")), "invalid_field", None),
        (
            "personnummer with a wrong check digit",
            _edit(REFERRAL, _set((3, 1), "191212121213")),
            "invalid_personnummer",
            None,
        ),
        (
            "personnummer in the ten-digit form",
            _edit(REFERRAL, _set((3, 1), "121212-1212")),
            "invalid_personnummer",
            None,
        ),
        (
            "29 February of a year that is not leap",
            _edit(REFERRAL, _set((3, 1), "190002299857")),
            "invalid_personnummer",
            None,
        ),
        (
            "samordningsnummer with day 60",
            _edit(REFERRAL, _set((3, 1), "199005609814")),
            "invalid_personnummer",
            None,
        ),
        (
            "protected person with an address",
            _edit(REFERRAL, _set((3, 4), "Exempelgatan 1")),
            "invalid_field",
            None,
        ),
        (
            "a name on two lines",
            _edit(REFERRAL, _set((3, 0), "Tolvan\nTolvansson")),
            "invalid_field",
            None,
        ),
        ("a blank address", _edit(AT_HOME, _set((3, 4), " \n ")), "invalid_field", None),
        (
            "a phone with letters",
            _edit(REFERRAL, _set((3, 3), "070-TOLVAN")),
            "invalid_field",
            None,
        ),
        (
            "a filename with a path",
            _edit(REFERRAL, _set((4, 0, 1), "../utredning.pdf")),
            "invalid_field",
            None,
        ),
        (
            "a media type in capitals",
            _edit(REFERRAL, _set((4, 0, 2), "Application/PDF")),
            "invalid_field",
            None,
        ),
        ("more chunks than bytes", _edit(REFERRAL, _set((4, 0, 6), 151)), "invalid_field", None),
        (
            "one document twice",
            _edit(REFERRAL, lambda r: r[4].append(r[4][0])),
            "invalid_field",
            None,
        ),
        ("no intervention", _edit(REFERRAL, _set((5,), [])), "invalid_field", None),
        (
            "a blank intervention",
            _edit(REFERRAL, _set((5,), ["Boende", "  "])),
            "invalid_field",
            None,
        ),
        ("quota index above the total", _edit(REFERRAL, _set((7, 1), 3)), "invalid_field", None),
        ("quota year as true", _edit(REFERRAL, _set((7, 0), True)), "bad_type", None),
        (
            "period ending before it starts",
            _edit(REPORT, _set((4,), "2026-05-03")),
            "invalid_field",
            None,
        ),
        ("a blank report", _edit(REPORT, _set((5,), "\n\t ")), "invalid_field", None),
        ("an empty key bundle", b"\x92\x10\xc4\x00", "invalid_field", None),
        ("balance sent not the sum", _edit(BALANCE, _set((3,), 4)), "invalid_field", None),
        (
            "balance cities out of order",
            _edit(BALANCE, lambda r: r[6].reverse()),
            "invalid_field",
            None,
        ),
        (
            "balance city counted twice",
            _edit(BALANCE, _set((6,), [["goteborg", 2], ["goteborg", 1]])),
            "invalid_field",
            None,
        ),
        (
            "balance counts the stating city",
            _edit(BALANCE, _set((6, 1, 0), "stockholm")),
            "invalid_field",
            None,
        ),
        (
            "balance count of zero",
            _edit(BALANCE, lambda r: r[7].append(["malmo", 0])),
            "invalid_field",
            None,
        ),
        (
            "balance as of a day before its year",
            _edit(BALANCE, _set((5,), "2025-12-31")),
            "invalid_field",
            None,
        ),
        ("balance year 1999", _edit(BALANCE, _set((2,), 1999)), "invalid_field", None),
        (
            "balance city with a capital",
            _edit(BALANCE, _set((1,), "Stockholm")),
            "invalid_field",
            None,
        ),
        ("balance count as a string", _edit(BALANCE, _set((3,), "3")), "bad_type", None),
        ("agreement version 0", b"\x93\x11\x00" + codec.encode(DOCUMENT), "invalid_field", None),
    ]


# ---------------------------------------------------------------------------------------------
# The file.


def _refusal_code(body: bytes, max_body_bytes: int | None) -> str:
    limits = Limits() if max_body_bytes is None else Limits(max_body_bytes=max_body_bytes)
    try:
        decode_message(body, limits)
    except RemoteProtocolError as e:
        return str(e.code)
    raise AssertionError("a refused vector decodes")


def build() -> dict[str, Any]:
    """Compute every vector, checking each against ``protocol`` as it goes."""
    messages = []
    for name, message in SAMPLES:
        body = codec.encode(message)
        assert decode_message(body) == message
        messages.append(
            {
                "name": name,
                "tag": message_tag(message),
                "message": to_json(message),
                "body": body.hex(),
            }
        )
    noncanonical = []
    for name, sample, body in NONCANONICAL:
        canonical = codec.encode(_sample(sample))
        assert body != canonical
        assert decode_message(body) == _sample(sample)
        noncanonical.append(
            {
                "name": name,
                "message": to_json(_sample(sample)),
                "body": body.hex(),
                "canonical": canonical.hex(),
            }
        )
    refused = []
    for name, body, code, max_body_bytes in _refused():
        assert _refusal_code(body, max_body_bytes) == code, name
        vector: dict[str, Any] = {"name": name, "body": body.hex(), "code": code}
        if max_body_bytes is not None:
            vector["max_body_bytes"] = max_body_bytes
        refused.append(vector)
    return {
        "description": (
            "Message bodies (docs/spec/20-messages.md). 'messages': decoding 'body' gives "
            "'message' and encoding 'message' gives 'body' exactly (shortest form). Fields are "
            "JSON: {'type': name, field: value...} in the spec's field order, bytes as lower-case "
            "hex, dates as YYYY-MM-DD, nested records as objects, absent optionals as null. "
            "'noncanonical': bodies a decoder accepts although an encoder writes 'canonical'. "
            "'refused': bodies that break one rule each and the code a decoder refuses them with "
            "(with the default max_body_bytes of 204800 unless the vector gives one). "
            "All people are fake; every personnummer is a valid-checksum test number."
        ),
        "generator": "tests/vectors/generate_messages.py",
        "messages": messages,
        "noncanonical": noncanonical,
        "refused": refused,
    }


def render(vectors: dict[str, Any]) -> str:
    """The exact text of the vectors file."""
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Write (or with ``--check`` compare) the vectors file."""
    text = render(build())
    if "--check" in sys.argv[1:]:
        stale = OUT.read_text("utf-8") != text
        print(f"stale: {OUT.name}" if stale else "vectors are up to date")
        return 1 if stale else 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
