"""Strictness of the codec on message bodies: what a hostile peer can send is refused, cheaply.

Covers ext types, floats, booleans for integers, maps, invalid UTF-8, trailing and truncated
input, size checked before parsing, absurd declared lengths, deep nesting, and a fuzz harness
(after h11's) that feeds random and mutated bytes to ``decode_message``: it may only return a
valid message or raise the protocol's own errors.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import SAMPLE_MESSAGES, TOLVAN

from protocol import codec
from protocol.errors import DecodeError, ErrorCode, ProtocolError, RemoteProtocolError
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import (
    AgreementSignature,
    Inquiry,
    Message,
    Referral,
    decode_message,
    message_tag,
    message_type_name,
)

SAMPLES: dict[type[Message], Message] = {type(m): m for m in SAMPLE_MESSAGES}
ENCODED = tuple(codec.encode(m) for m in SAMPLE_MESSAGES)
REFERRAL_BYTES = codec.encode(SAMPLES[Referral])
INQUIRY_BYTES = codec.encode(SAMPLES[Inquiry])


def _refused(data: bytes, limits: Limits = DEFAULT_LIMITS) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(data, limits)
    return caught.value


def _array(message: Message, position: int, raw: Any) -> bytes:
    """The message's wire array with element ``position`` (tag is 0) replaced by ``raw``."""
    array: list[Any] = [message.__struct_config__.tag]
    array += [getattr(message, name) for name in message.__struct_fields__]
    array[position] = raw
    return msgspec.msgpack.encode(array)


# --- Types a field does not allow --------------------------------------------------------------


def test_ext_type_in_place_of_a_field_is_refused() -> None:
    data = _array(SAMPLES[Inquiry], 8, msgspec.msgpack.Ext(1, b"summary"))
    assert _refused(data).code is ErrorCode.BAD_TYPE


def test_timestamp_ext_in_place_of_a_date_is_refused() -> None:
    data = _array(SAMPLES[Inquiry], 9, msgspec.msgpack.Ext(-1, bytes(4)))
    assert _refused(data).code is ErrorCode.BAD_TYPE


def test_float_in_place_of_an_integer_is_refused() -> None:
    data = _array(SAMPLES[AgreementSignature], 1, 3.0)
    assert _refused(data).code is ErrorCode.BAD_TYPE


def test_boolean_in_place_of_an_integer_is_refused() -> None:
    data = _array(SAMPLES[AgreementSignature], 1, True)
    assert _refused(data).code is ErrorCode.BAD_TYPE


def test_integer_in_place_of_a_boolean_is_refused() -> None:
    data = _array(SAMPLES[Inquiry], 6, 1)
    assert _refused(data).code is ErrorCode.BAD_TYPE


def test_string_in_place_of_bytes_is_refused() -> None:
    data = _array(SAMPLES[Inquiry], 1, "0" * 16)
    assert _refused(data).code is ErrorCode.BAD_TYPE


def test_message_encoded_as_a_map_is_refused() -> None:
    inquiry = SAMPLES[Inquiry]
    as_map = {"type": 1, **{name: getattr(inquiry, name) for name in inquiry.__struct_fields__}}
    assert _refused(msgspec.msgpack.encode(as_map)).code is ErrorCode.BAD_TYPE


def test_nested_person_encoded_as_a_map_is_refused() -> None:
    person = SAMPLES[Referral].person  # type: ignore[attr-defined]
    as_map = {name: getattr(person, name) for name in person.__struct_fields__}
    data = _array(SAMPLES[Referral], 3, as_map)
    error = _refused(data)
    assert error.code is ErrorCode.BAD_TYPE
    assert TOLVAN not in str(error)


def test_string_that_is_not_utf8_is_refused() -> None:
    good = "Behöver boende".encode()
    data = INQUIRY_BYTES.replace(good, b"Beh\xff\xfever boende")
    assert data != INQUIRY_BYTES
    assert _refused(data).code is ErrorCode.INVALID_UTF8


def test_utf8_encoded_surrogate_is_refused() -> None:
    data = INQUIRY_BYTES.replace("ö".encode(), b"\xed\xa0")
    assert data != INQUIRY_BYTES
    assert _refused(data).code is ErrorCode.INVALID_UTF8


# --- Framing: trailing, truncated, oversized ----------------------------------------------------


@pytest.mark.parametrize("data", ENCODED, ids=[message_type_name(m) for m in SAMPLE_MESSAGES])
def test_trailing_bytes_after_a_valid_message_are_refused(data: bytes) -> None:
    assert _refused(data + b"\x00").code is ErrorCode.MALFORMED
    assert _refused(data + data).code is ErrorCode.MALFORMED


@pytest.mark.parametrize("data", ENCODED, ids=[message_type_name(m) for m in SAMPLE_MESSAGES])
def test_every_truncation_of_a_valid_message_is_refused(data: bytes) -> None:
    for end in range(len(data)):
        error = _refused(data[:end])
        assert isinstance(error, DecodeError), end


def test_oversized_body_is_refused_before_the_decoder_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the decoder ran on an oversized body")

    monkeypatch.setattr(msgspec.msgpack, "decode", must_not_run)
    limits = Limits(max_body_bytes=len(REFERRAL_BYTES) - 1)
    assert _refused(REFERRAL_BYTES, limits).code is ErrorCode.OVERSIZED
    huge = b"\x91" * (DEFAULT_LIMITS.max_body_bytes + 1)
    assert _refused(huge).code is ErrorCode.OVERSIZED


def test_body_at_the_size_limit_is_accepted() -> None:
    limits = Limits(max_body_bytes=len(REFERRAL_BYTES))
    assert decode_message(REFERRAL_BYTES, limits) == SAMPLES[Referral]


@pytest.mark.parametrize(
    "header",
    [
        b"\xdd\xff\xff\xff\xff\x01",  # array32 of 4 G elements, tag 1
        b"\x9a\x01\xc6\xff\xff\xff\xff",  # bin32 of 4 GiB as the case id
        b"\x9a\x01\xc4\x10" + bytes(16) + b"\xdb\xff\xff\xff\xff",  # str32 of 4 GiB
        b"\x9a\x01\xc4\x10" + bytes(16) + b"\xa1a\xc0\xa3low\xc0\xc3\xdd\xff\xff\xff\xff",  # needs
    ],
)
def test_absurd_declared_length_is_refused_quickly(header: bytes) -> None:
    started = time.perf_counter()
    error = _refused(header + bytes(64))
    assert isinstance(error, DecodeError)
    assert time.perf_counter() - started < 0.5


def test_100000_nested_arrays_are_refused_without_crashing() -> None:
    nested = b"\x91" * 100_000 + b"\x01"
    assert _refused(nested).code is ErrorCode.BAD_TYPE
    # Deep nesting in a field position reaches the typed decoder, which refuses it at once.
    in_field = b"\x93\x02" + b"\xc4\x10" + bytes(16) + b"\x91" * 100_000 + b"\xc0"
    assert isinstance(_refused(in_field), DecodeError)
    # And the codec itself, given the union directly, does not recurse into it either.
    with pytest.raises(DecodeError):
        codec.decode(nested, Inquiry, max_bytes=1 << 20, what="message")


def test_100000_nested_maps_are_refused_without_crashing() -> None:
    nested = b"\x92\x01" + b"\x81\x01" * 100_000 + b"\xc0"
    assert isinstance(_refused(nested), DecodeError)


def test_input_that_is_not_bytes_is_refused() -> None:
    with pytest.raises(DecodeError) as caught:
        decode_message("\x91\x01")  # type: ignore[arg-type]
    assert caught.value.code is ErrorCode.BAD_TYPE


def test_memoryview_and_bytearray_bodies_decode_like_bytes() -> None:
    assert decode_message(bytearray(INQUIRY_BYTES)) == SAMPLES[Inquiry]  # type: ignore[arg-type]
    assert decode_message(memoryview(INQUIRY_BYTES)) == SAMPLES[Inquiry]  # type: ignore[arg-type]


# --- Fuzzing: only the protocol's own errors --------------------------------------------------


_OPERATIONS = ("set", "xor", "insert", "delete", "cut")


def _mutate(data: bytes, program: bytes) -> bytes:
    """Apply a byte program to ``data``; each 3 bytes are (operation, position, value).

    The program is one Hypothesis draw (cheap, and still shrinkable): the operations set a byte,
    flip a bit, insert a byte, delete a byte or cut the tail.
    """
    body = bytearray(data)
    for start in range(0, len(program) - 2, 3):
        operation = _OPERATIONS[program[start] % len(_OPERATIONS)]
        position = (program[start + 1] * 7) % (len(body) + 1)
        value = program[start + 2]
        if operation == "cut":
            del body[position:]
        elif operation == "insert":
            body[position:position] = bytes([value])
        elif position < len(body):
            if operation == "set":
                body[position] = value
            elif operation == "xor":
                body[position] ^= 1 << (value % 8)
            else:
                del body[position]
    return bytes(body)


mutated_encodings = st.builds(_mutate, st.sampled_from(ENCODED), st.binary(min_size=3, max_size=12))


def _element_pool() -> tuple[bytes, ...]:
    """Encoded MessagePack values: every field of the samples, and values no field allows."""
    fields = {
        msgspec.msgpack.encode(getattr(message, name))
        for message in SAMPLE_MESSAGES
        for name in message.__struct_fields__
    }
    odd: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        2**64 - 1,
        -(2**63),
        1.5,
        "",
        b"",
        [],
        {},
        {"type": 1},
        [[[[]]]],
        "2026-02-30",
        "x" * 70,
        msgspec.msgpack.Ext(1, b"x"),
    ]
    raw = [b"\xc1", b"\xa2\xff\xfe", b"\xc4\x05ab", b"\xdd\xff\xff\xff\xff"]
    return tuple(sorted(fields)) + tuple(msgspec.msgpack.encode(v) for v in odd) + tuple(raw)


ELEMENT_POOL = _element_pool()


def _tagged_array(array16: bool, tag: int, picks: bytes) -> bytes:
    """An array header, a tag (valid or not), then the pool elements that ``picks`` select."""
    elements = [ELEMENT_POOL[pick % len(ELEMENT_POOL)] for pick in picks]
    count = len(elements) + 1
    header = b"\xdc" + count.to_bytes(2) if array16 else bytes([0x90 + count])
    return header + msgspec.msgpack.encode(tag) + b"".join(elements)


tagged_arrays = st.builds(
    _tagged_array,
    st.booleans(),
    st.sampled_from([message_tag(m) for m in SAMPLE_MESSAGES]) | st.integers(0, 40),
    st.binary(max_size=12),
)

# Each sample as its list of encoded elements: the tag, then each field.
SAMPLE_ELEMENTS = tuple(
    (
        msgspec.msgpack.encode(message_tag(m)),
        *(msgspec.msgpack.encode(getattr(m, name)) for name in m.__struct_fields__),
    )
    for m in SAMPLE_MESSAGES
)


def _substitute(elements: tuple[bytes, ...], program: bytes) -> bytes:
    """A sample's array with some elements (tag included) replaced by pool elements."""
    array = list(elements)
    for start in range(0, len(program) - 1, 2):
        array[program[start] % len(array)] = ELEMENT_POOL[program[start + 1] % len(ELEMENT_POOL)]
    return bytes([0x90 + len(array)]) + b"".join(array)


substituted_fields = st.builds(
    _substitute, st.sampled_from(SAMPLE_ELEMENTS), st.binary(min_size=2, max_size=6)
)


@settings(
    max_examples=10_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.one_of(st.binary(max_size=300), mutated_encodings, tagged_arrays, substituted_fields))
def test_random_and_mutated_bodies_raise_only_protocol_errors(data: bytes) -> None:
    try:
        message = decode_message(data)
    except RemoteProtocolError as error:
        refusal: ProtocolError | None = error
    else:
        refusal = None
        # Whatever decodes is a valid message whose encoding decodes to itself.
        assert isinstance(message, Message)
        assert decode_message(codec.encode(message)) == message
    # Any other exception (a library's, a LocalProtocolError) escapes and fails the test.
    if refusal is not None:
        assert refusal.code in set(ErrorCode)
        assert refusal.status >= 400
