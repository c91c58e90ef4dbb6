"""The message catalogue: round trips, tags, anonymity of the inquiry and every validation rule.

Rules checked in ``__post_init__`` are refused both when a message is built locally
(``LocalProtocolError``) and when it arrives from a peer (``RemoteProtocolError``, same code).
Length and range rules are checked by the decoder; the tests put the bad value on the wire by
encoding a raw array, bypassing the constructors.
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    CASE_ID,
    MESSAGE_STRATEGIES,
    SAMPLE_ATTACHMENT,
    SAMPLE_MESSAGES,
    TOLVAN,
    TOLVAN_PERSON,
    messages,
)

from protocol import codec
from protocol.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from protocol.limits import Limits
from protocol.messages import (
    CASE_MESSAGES,
    CONTROL_MESSAGES,
    MESSAGE_TYPES,
    REPORT_TEXT_CHARS,
    SHORT_TEXT_CHARS,
    AgreementSignature,
    AttachmentRef,
    Closure,
    Decision,
    Inquiry,
    Intake,
    KeyUpdate,
    Message,
    Person,
    ProgressReport,
    QuotaCount,
    Referral,
    Reply,
    decode_message,
    message_tag,
    message_type_name,
)

SAMPLES: dict[type[Message], Message] = {type(m): m for m in SAMPLE_MESSAGES}
INQUIRY = SAMPLES[Inquiry]
REFERRAL = SAMPLES[Referral]

# Published tags: never change or reuse one.
PUBLISHED_TAGS = {
    "inquiry": 1,
    "reply": 2,
    "referral": 3,
    "intake": 4,
    "progress_report": 5,
    "closure": 6,
    "key_update": 16,
    "agreement_proposal": 17,
    "agreement_signature": 18,
    "keylog_checkpoint": 19,
    "balance_statement": 20,
}


def _raw(obj: msgspec.Struct) -> list[Any]:
    """The wire array of a struct, nested structs as arrays, without any validation."""
    fields = [getattr(obj, name) for name in obj.__struct_fields__]
    tag = obj.__struct_config__.tag
    return [tag, *fields] if tag is not None else fields


def _wire(message: Message, **changes: Any) -> bytes:
    """Encode ``message`` with some fields replaced by raw values, bypassing validation."""
    array = _raw(message)
    names = message.__struct_fields__
    for name, value in changes.items():
        array[1 + names.index(name)] = value
    return msgspec.msgpack.encode(array)


def _refused_from_peer(data: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(data)
    return caught.value


# --- Round trips and the catalogue -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(messages())
def test_any_valid_message_round_trips_to_identical_bytes(message: Message) -> None:
    data = codec.encode(message)
    decoded = decode_message(data)
    assert decoded == message
    assert type(decoded) is type(message)
    assert codec.encode(decoded) == data


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=message_type_name)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_every_message_type_round_trips(kind: type[Message], data: st.DataObject) -> None:
    message = data.draw(MESSAGE_STRATEGIES[kind]())
    assert isinstance(message, kind)
    assert decode_message(codec.encode(message)) == message


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=message_type_name)
def test_sample_message_encodes_its_tag_first(message: Message) -> None:
    data = codec.encode(message)
    assert data[0] & 0xF0 == 0x90  # a fixarray
    assert data[1] == message_tag(message)
    assert data[0] & 0x0F == 1 + len(message.__struct_fields__)
    assert decode_message(data) == message


def test_tags_are_published_and_never_reused() -> None:
    assert {message_type_name(k): message_tag(k) for k in MESSAGE_TYPES} == PUBLISHED_TAGS
    assert len({message_tag(k) for k in MESSAGE_TYPES}) == len(MESSAGE_TYPES)
    assert all(1 <= message_tag(k) <= 15 for k in CASE_MESSAGES)
    assert all(16 <= message_tag(k) <= 31 for k in CONTROL_MESSAGES)
    assert set(MESSAGE_TYPES) == CASE_MESSAGES | CONTROL_MESSAGES
    assert [message_tag(k) for k in MESSAGE_TYPES] == sorted(PUBLISHED_TAGS.values())


def test_message_type_name_of_something_else_is_refused() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        message_type_name(TOLVAN_PERSON)  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.UNKNOWN_MESSAGE_TYPE


# Known answers: the exact encoding of each sample message (strategies.SAMPLE_MESSAGES),
# checked both ways. docs/spec/20-messages.md walks through the reply byte by byte.
KNOWN_ANSWERS = {
    "inquiry": (
        "9a01c41000112233445566778899aabbccddeeffa6666172737461a76e6f72646f7374a86d6f6465"
        "72617465aa323032362d30312d3135c392a7686f7573696e67a974726561746d656e74d93d426568"
        "c3b676657220626f656e6465206f636820626568616e646c696e673b20686f7462696c6420626564"
        "c3b66d6420736f6d206dc3a574746c69672eaa323032362d30332d3031"
    ),
    "reply": "9502c41000112233445566778899aabbccddeeffa76e6f72646f7374a6616363657074a0",
    "referral": (
        "9803c41000112233445566778899aabbccddeeffa666617273746195b1546f6c76616e20546f6c76"
        "616e73736f6eac313931323132313231323132c3ad3037302d303030203030203030c09197c41000"
        "0102030405060708090a0b0c0d0e0fad75747265646e696e672e706466af6170706c69636174696f"
        "6e2f706466ce000249f0c420000102030405060708090a0b0c0d0e0f101112131415161718191a1b"
        "1c1d1e1fc420202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f0392"
        "a6426f656e6465b34d6973736272756b73626568616e646c696e67a666617273746193cd07ea0102"
    ),
    "intake": (
        "9504c41000112233445566778899aabbccddeeffa76e6f72646f7374aa323032362d30332d3032d9"
        "2748616e646cc3a46767617265204578656d706c612c2074656c203033312d303030203030203030"
    ),
    "progress_report": (
        "9605c41000112233445566778899aabbccddeeffa76e6f72646f7374aa323032362d30332d3032aa"
        "323032362d30362d3330d92e496e7361747365726e61206cc3b670657220656e6c69677420706c61"
        "6e2e0a09426f656e6465206f72646e61742e"
    ),
    "closure": (
        "9606c41000112233445566778899aabbccddeeffa6666172737461b16c6f6e675f7465726d5f686f"
        "7573696e67aa323032372d30322d3031a0"
    ),
    "key_update": "9210c40493010203",
    "agreement_proposal": "931103c40791a56472616674",
    "agreement_signature": (
        "951203c4200000000000000000000000000000000000000000000000000000000000000000c41000"
        "000000000000000000000000000000c4400000000000000000000000000000000000000000000000"
        "00000000000000000000000000000000000000000000000000000000000000000000000000000000"
        "00"
    ),
    "keylog_checkpoint": "9213c4049207c400",
    "balance_statement": (
        "9814a973746f636b686f6c6dcd07ea0300aa323032362d31312d33309292a8676f7465626f72670292"
        "a56d616c6d6f0190"
    ),
}


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=message_type_name)
def test_sample_message_matches_its_known_answer_both_ways(message: Message) -> None:
    known = bytes.fromhex(KNOWN_ANSWERS[message_type_name(message)])
    assert codec.encode(message) == known
    assert decode_message(known) == message


# --- Anonymity of the inquiry ------------------------------------------------------------------


def test_inquiry_has_no_field_that_can_carry_an_identity() -> None:
    assert Inquiry.__struct_fields__ == (
        "case_id",
        "from_unit",
        "to_unit",
        "threat_level",
        "police_consulted_on",
        "consent",
        "needs",
        "summary",
        "wished_start",
    )
    info = msgspec.inspect.type_info(Inquiry)
    assert isinstance(info, msgspec.inspect.StructType)
    for field in info.fields:
        # No nested structs (no Person) and the only free text is the bounded summary.
        assert not isinstance(field.type, msgspec.inspect.StructType)
        if isinstance(field.type, msgspec.inspect.StrType):
            assert field.name in {"from_unit", "summary"}
            assert field.type.max_length is not None
            assert field.type.max_length <= SHORT_TEXT_CHARS


@pytest.mark.parametrize(
    "summary",
    [
        "Personen har nummer 19121212-1212.",
        "pnr 121212+1212",
        "121212 1212 behöver boende",
        "1912121212 12",
        "191212121212",
    ],
)
def test_inquiry_summary_with_a_personnummer_shaped_number_is_refused(summary: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        msgspec.structs.replace(INQUIRY, summary=summary)
    assert caught.value.code is ErrorCode.INVALID_FIELD
    assert summary not in str(caught.value)
    assert _refused_from_peer(_wire(INQUIRY, summary=summary)).code is ErrorCode.INVALID_FIELD


def test_inquiry_summary_may_hold_short_numbers() -> None:
    inquiry = msgspec.structs.replace(INQUIRY, summary="2 barn, 3 rum, start vecka 12 2026")
    assert decode_message(codec.encode(inquiry)) == inquiry


def test_inquiry_summary_longer_than_its_bound_is_refused() -> None:
    at_bound = "a" * SHORT_TEXT_CHARS
    assert decode_message(_wire(INQUIRY, summary=at_bound)).summary == at_bound  # type: ignore[union-attr]
    error = _refused_from_peer(_wire(INQUIRY, summary=at_bound + "a"))
    assert error.code is ErrorCode.OVERSIZED


# --- Validation rules checked by the constructors ----------------------------------------------

# (message, field, bad value, code): each is refused locally and from a peer.
POST_INIT_RULES: list[tuple[Message, str, Any, ErrorCode]] = [
    (INQUIRY, "needs", ("housing", "housing"), ErrorCode.INVALID_FIELD),
    (INQUIRY, "summary", "rad\x00", ErrorCode.INVALID_FIELD),
    (INQUIRY, "summary", "rad\r\n", ErrorCode.INVALID_FIELD),
    (INQUIRY, "summary", "\x1b[31m", ErrorCode.INVALID_FIELD),
    (INQUIRY, "summary", "\x85", ErrorCode.INVALID_FIELD),
    (INQUIRY, "police_consulted_on", datetime.date(1999, 12, 31), ErrorCode.INVALID_FIELD),
    (INQUIRY, "wished_start", datetime.date(2101, 1, 1), ErrorCode.INVALID_FIELD),
    (
        Reply(CASE_ID, "nordost", Decision.ACCEPT, ""),
        "decision",
        "decline",
        ErrorCode.INVALID_FIELD,
    ),
    (
        Reply(CASE_ID, "nordost", Decision.ACCEPT, " \n"),
        "decision",
        "need_info",
        ErrorCode.INVALID_FIELD,
    ),
    (SAMPLES[Intake], "contact", " ", ErrorCode.INVALID_FIELD),
    (SAMPLES[Intake], "arrived_on", datetime.date(1999, 1, 1), ErrorCode.INVALID_FIELD),
    (SAMPLES[ProgressReport], "period_end", datetime.date(2026, 3, 1), ErrorCode.INVALID_FIELD),
    (SAMPLES[ProgressReport], "text", "\t\n", ErrorCode.INVALID_FIELD),
    (SAMPLES[ProgressReport], "text", "a\x7f", ErrorCode.INVALID_FIELD),
    (SAMPLES[Closure], "note", "a\x0cb", ErrorCode.INVALID_FIELD),
    (SAMPLES[Closure], "closed_on", datetime.date(2101, 1, 1), ErrorCode.INVALID_FIELD),
    (REFERRAL, "documents", (SAMPLE_ATTACHMENT, SAMPLE_ATTACHMENT), ErrorCode.INVALID_FIELD),
    (REFERRAL, "interventions", (" ",), ErrorCode.INVALID_FIELD),
    (REFERRAL, "interventions", ("Boende\nBehandling",), ErrorCode.INVALID_FIELD),
]


def _rule_ids(rules: list[tuple[Message, str, Any, ErrorCode]]) -> list[str]:
    return [f"{message_type_name(message)}.{field}" for message, field, _, _ in rules]


@pytest.mark.parametrize(
    ("message", "field", "value", "code"), POST_INIT_RULES, ids=_rule_ids(POST_INIT_RULES)
)
def test_invalid_field_is_refused_locally_and_from_a_peer(
    message: Message, field: str, value: Any, code: ErrorCode
) -> None:
    with pytest.raises(LocalProtocolError) as local:
        msgspec.structs.replace(message, **{field: value})
    assert local.value.code is code
    assert local.value.message.startswith(message_type_name(message))
    remote = _refused_from_peer(_wire(message, **{field: value}))
    assert remote.code is code
    assert not isinstance(remote, LocalProtocolError)


def _person(**changes: Any) -> list[Any]:
    person = _raw(TOLVAN_PERSON)
    names = Person.__struct_fields__
    for name, value in changes.items():
        person[names.index(name)] = value
    return person


def _attachment(**changes: Any) -> list[Any]:
    ref = _raw(SAMPLE_ATTACHMENT)
    names = AttachmentRef.__struct_fields__
    for name, value in changes.items():
        ref[names.index(name)] = value
    return ref


NESTED_RULES: list[tuple[str, Any, ErrorCode]] = [
    (
        "person.personnummer check digit",
        _person(personnummer="191212121213"),
        ErrorCode.INVALID_PERSONNUMMER,
    ),
    (
        "person.personnummer Feb 30",
        _person(personnummer="199002309988"),
        ErrorCode.INVALID_PERSONNUMMER,
    ),
    (
        "person.personnummer ten digits",
        _person(personnummer="1212121212"),
        ErrorCode.INVALID_PERSONNUMMER,
    ),
    (
        "person.personnummer hyphen",
        _person(personnummer="19121212-121"),
        ErrorCode.INVALID_PERSONNUMMER,
    ),
    ("person.personnummer too long", _person(personnummer=TOLVAN + "0"), ErrorCode.OVERSIZED),
    ("person.name blank", _person(name="  "), ErrorCode.INVALID_FIELD),
    ("person.name newline", _person(name="Tolvan\nTolvansson"), ErrorCode.INVALID_FIELD),
    ("person.name too long", _person(name="T" * 201), ErrorCode.OVERSIZED),
    ("person.phone letters", _person(phone="ring mig"), ErrorCode.INVALID_FIELD),
    ("person.address protected", _person(address="Exempelgatan 1"), ErrorCode.INVALID_FIELD),
    ("person.protected_identity int", _person(protected_identity=1), ErrorCode.BAD_TYPE),
    ("attachment.filename slash", _attachment(filename="../etc/passwd"), ErrorCode.INVALID_FIELD),
    ("attachment.filename backslash", _attachment(filename="a\\b.pdf"), ErrorCode.INVALID_FIELD),
    ("attachment.filename dotdot", _attachment(filename=".."), ErrorCode.INVALID_FIELD),
    (
        "attachment.filename bidi",
        _attachment(filename="bild\u202efdp.exe"),
        ErrorCode.INVALID_FIELD,
    ),
    ("attachment.filename nul", _attachment(filename="a\x00.pdf"), ErrorCode.INVALID_FIELD),
    ("attachment.filename empty", _attachment(filename=""), ErrorCode.INVALID_FIELD),
    (
        "attachment.media_type upper",
        _attachment(media_type="Application/PDF"),
        ErrorCode.INVALID_FIELD,
    ),
    (
        "attachment.media_type params",
        _attachment(media_type="text/plain; charset=utf-8"),
        ErrorCode.INVALID_FIELD,
    ),
    ("attachment.size negative", _attachment(size=-1), ErrorCode.INVALID_FIELD),
    ("attachment.chunk_count zero", _attachment(chunk_count=0), ErrorCode.INVALID_FIELD),
    (
        "attachment.chunk_count over size",
        _attachment(size=2, chunk_count=3),
        ErrorCode.INVALID_FIELD,
    ),
    ("attachment.digest short", _attachment(digest=bytes(31)), ErrorCode.INVALID_FIELD),
    ("attachment.key long", _attachment(key=bytes(33)), ErrorCode.OVERSIZED),
    ("attachment.key as str", _attachment(key="k" * 32), ErrorCode.BAD_TYPE),
    ("attachment.id short", _attachment(attachment_id=bytes(15)), ErrorCode.INVALID_FIELD),
]


@pytest.mark.parametrize(
    ("rule", "person_or_ref", "code"), NESTED_RULES, ids=[r[0] for r in NESTED_RULES]
)
def test_invalid_person_or_attachment_in_referral_from_a_peer_is_refused(
    rule: str, person_or_ref: list[Any], code: ErrorCode
) -> None:
    if rule.startswith("person"):
        data = _wire(REFERRAL, person=person_or_ref)
    else:
        data = _wire(REFERRAL, documents=[person_or_ref])
    error = _refused_from_peer(data)
    assert error.code is code
    assert TOLVAN not in str(error)


def test_protected_person_with_address_cannot_be_built() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        msgspec.structs.replace(TOLVAN_PERSON, address="Exempelgatan 1")
    assert caught.value.code is ErrorCode.INVALID_FIELD
    unprotected = msgspec.structs.replace(
        TOLVAN_PERSON, protected_identity=False, address="Exempelgatan 1\n123 45 Exempelstad"
    )
    assert unprotected.address is not None


def test_invalid_personnummer_cannot_be_built_and_is_not_echoed() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        msgspec.structs.replace(TOLVAN_PERSON, personnummer="191212121213")
    assert caught.value.code is ErrorCode.INVALID_PERSONNUMMER
    assert "191212121213" not in str(caught.value)
    assert "1213" not in str(caught.value)


def test_person_and_attachment_repr_hide_identity_and_key() -> None:
    text = repr(REFERRAL)
    assert "Tolvan" not in text
    assert TOLVAN not in text
    assert "1212'" not in text
    assert "19121212-****" in text
    assert SAMPLE_ATTACHMENT.key.hex() not in text
    assert repr(SAMPLE_ATTACHMENT.key) not in text
    assert TOLVAN_PERSON.identity.canonical == TOLVAN


@pytest.mark.parametrize(
    ("year", "index", "total"),
    [(2026, 0, 2), (2026, 3, 2), (2026, 1, 0), (1999, 1, 2), (2101, 1, 2)],
)
def test_quota_count_out_of_range_is_refused(year: int, index: int, total: int) -> None:
    with pytest.raises(LocalProtocolError) as local:
        QuotaCount(year=year, index=index, total=total)
    assert local.value.code is ErrorCode.INVALID_FIELD
    remote = _refused_from_peer(_wire(REFERRAL, quota=[year, index, total]))
    assert remote.code is ErrorCode.INVALID_FIELD


def test_reply_built_from_plain_values_is_checked_like_a_peer_would() -> None:
    fields = {"case_id": CASE_ID, "unit": "nordost", "decision": "accept", "reason": ""}
    reply = codec.build(Reply, fields, what="reply")
    assert reply.decision is Decision.ACCEPT
    with pytest.raises(LocalProtocolError) as blank:
        codec.build(Reply, {**fields, "decision": "decline"}, what="reply")
    assert blank.value.code is ErrorCode.INVALID_FIELD
    with pytest.raises(LocalProtocolError) as short:
        codec.build(Reply, {**fields, "case_id": bytes(15)}, what="reply")
    assert short.value.code is ErrorCode.INVALID_FIELD


def test_locally_built_message_breaking_a_length_rule_is_refused_by_check() -> None:
    # Constructors check only __post_init__ rules; codec.check applies the decoder's rules.
    too_long = msgspec.structs.replace(INQUIRY, summary="a" * (SHORT_TEXT_CHARS + 1))
    with pytest.raises(LocalProtocolError) as caught:
        codec.check(too_long, what="inquiry")
    assert caught.value.code is ErrorCode.OVERSIZED
    assert codec.check(INQUIRY, what="inquiry") == INQUIRY


# --- Validation rules checked by the decoder (types, lengths, enums) ---------------------------

WIRE_RULES: list[tuple[Message, str, Any, ErrorCode]] = [
    (INQUIRY, "case_id", bytes(15), ErrorCode.INVALID_FIELD),
    (INQUIRY, "case_id", bytes(17), ErrorCode.OVERSIZED),
    (INQUIRY, "from_unit", "Farsta", ErrorCode.INVALID_FIELD),
    (INQUIRY, "from_unit", "farsta\n", ErrorCode.INVALID_FIELD),
    (INQUIRY, "from_unit", "", ErrorCode.INVALID_FIELD),
    (INQUIRY, "threat_level", "extreme", ErrorCode.INVALID_FIELD),
    (INQUIRY, "needs", (), ErrorCode.INVALID_FIELD),
    (INQUIRY, "needs", ("housing", "flying"), ErrorCode.INVALID_FIELD),
    (INQUIRY, "consent", 1, ErrorCode.BAD_TYPE),
    (INQUIRY, "wished_start", "2026-02-30", ErrorCode.INVALID_FIELD),
    (INQUIRY, "wished_start", "2026-03-01T00:00:00Z", ErrorCode.INVALID_FIELD),
    (INQUIRY, "wished_start", 20260301, ErrorCode.BAD_TYPE),
    (SAMPLES[Reply], "decision", "maybe", ErrorCode.INVALID_FIELD),
    (SAMPLES[Reply], "reason", "r" * (SHORT_TEXT_CHARS + 1), ErrorCode.OVERSIZED),
    (REFERRAL, "interventions", (), ErrorCode.INVALID_FIELD),
    (REFERRAL, "interventions", ("i",) * 33, ErrorCode.OVERSIZED),
    (REFERRAL, "documents", [SAMPLE_ATTACHMENT] * 65, ErrorCode.OVERSIZED),
    (REFERRAL, "payer", "Stockholm stad", ErrorCode.INVALID_FIELD),
    (REFERRAL, "quota", [2026, True, 2], ErrorCode.BAD_TYPE),
    (SAMPLES[ProgressReport], "text", "t" * (REPORT_TEXT_CHARS + 1), ErrorCode.OVERSIZED),
    (SAMPLES[Closure], "reason", "finished", ErrorCode.INVALID_FIELD),
    (SAMPLES[KeyUpdate], "bundle", b"", ErrorCode.INVALID_FIELD),
    (SAMPLES[AgreementSignature], "version", 0, ErrorCode.INVALID_FIELD),
    (SAMPLES[AgreementSignature], "version", 3.0, ErrorCode.BAD_TYPE),
    (SAMPLES[AgreementSignature], "signature", bytes(63), ErrorCode.INVALID_FIELD),
    (SAMPLES[AgreementSignature], "signer_key_id", bytes(32), ErrorCode.OVERSIZED),
]


@pytest.mark.parametrize(
    ("message", "field", "value", "code"), WIRE_RULES, ids=_rule_ids(WIRE_RULES)
)
def test_field_of_wrong_type_length_or_value_from_a_peer_is_refused(
    message: Message, field: str, value: Any, code: ErrorCode
) -> None:
    error = _refused_from_peer(_wire(message, **{field: value}))
    assert error.code is code
    position = 1 + message.__struct_fields__.index(field)
    assert f"$[{position}]" in error.message


def test_control_payload_larger_than_its_bound_is_refused() -> None:
    limits = Limits(max_body_bytes=400 * 1024)
    data = _wire(SAMPLES[KeyUpdate], bundle=bytes(192 * 1024 + 1))
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(data, limits)
    assert caught.value.code is ErrorCode.OVERSIZED


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=message_type_name)
def test_message_with_an_extra_field_is_refused(message: Message) -> None:
    data = msgspec.msgpack.encode([*_raw(message), None])
    with pytest.raises(RemoteProtocolError):
        decode_message(data)


@pytest.mark.parametrize("message", SAMPLE_MESSAGES, ids=message_type_name)
def test_message_with_a_missing_field_is_refused(message: Message) -> None:
    data = msgspec.msgpack.encode(_raw(message)[:-1])
    with pytest.raises(RemoteProtocolError):
        decode_message(data)


def test_message_of_one_type_under_another_tag_is_refused() -> None:
    fields = _raw(SAMPLES[Intake])[1:]
    data = msgspec.msgpack.encode([message_tag(Closure), *fields])
    with pytest.raises(RemoteProtocolError):
        decode_message(data)


# --- Unknown message types ---------------------------------------------------------------------

UNASSIGNED_TAGS = sorted(set(range(256)) - set(PUBLISHED_TAGS.values()))


@pytest.mark.parametrize("tag", UNASSIGNED_TAGS)
def test_unassigned_tag_is_refused_as_unknown_message_type(tag: int) -> None:
    # The fields of a valid inquiry follow, so only the tag is wrong.
    data = msgspec.msgpack.encode([tag, *_raw(INQUIRY)[1:]])
    error = _refused_from_peer(data)
    assert error.code is ErrorCode.UNKNOWN_MESSAGE_TYPE


@pytest.mark.parametrize(
    "data",
    [
        b"\x91\x07",
        b"\x91\x00",
        b"\x91\xff",  # negative fixint -1
        b"\x91\xd0\x80",  # int8 -128
        b"\x91\xcd\x01\x00",  # uint16 256
        b"\x91\xcf" + bytes(7) + b"\x01",  # uint64 1: a non-minimal encoding is not a tag
        b"\xdc\x00\x01\x15",  # array16 holding tag 21
        b"\xdd\x00\x00\x00\x01\xcc\x1f",  # array32 holding uint8 tag 31
    ],
)
def test_unknown_tag_in_any_array_header_is_refused_before_the_fields(data: bytes) -> None:
    assert _refused_from_peer(data).code is ErrorCode.UNKNOWN_MESSAGE_TYPE


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", ErrorCode.MALFORMED),
        (b"\x90", ErrorCode.MALFORMED),
        (b"\xdc\x00", ErrorCode.MALFORMED),
        (b"\xdc", ErrorCode.MALFORMED),
        (b"\x91", ErrorCode.MALFORMED),
        (b"\x92\xcc", ErrorCode.MALFORMED),
        (b"\x81\x01\x02", ErrorCode.BAD_TYPE),
        (b"\x01", ErrorCode.BAD_TYPE),
        (b"\xa4type", ErrorCode.BAD_TYPE),
        (b"\x91\xc0", ErrorCode.BAD_TYPE),
        (b"\x91\xa7inquiry", ErrorCode.BAD_TYPE),
        (b"\x91\xc3", ErrorCode.BAD_TYPE),
        (b"\x91\xcb" + bytes(8), ErrorCode.BAD_TYPE),  # float64 tag
    ],
)
def test_body_that_is_not_a_tagged_array_is_refused(data: bytes, code: ErrorCode) -> None:
    assert _refused_from_peer(data).code is code


def test_every_refusal_is_a_protocol_error_with_a_status() -> None:
    error = _refused_from_peer(b"\x91\x07")
    assert isinstance(error, ProtocolError)
    assert error.status == 400
