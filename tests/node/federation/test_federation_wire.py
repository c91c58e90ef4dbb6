"""The inbox wire format: strict decoding, exact sizes, and how a batch is split into requests."""

from __future__ import annotations

import itertools

import msgspec
import pytest
from federation_support import LIMITS
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config import NodeLimits
from node.delivery import ACCEPTED, DeliveryResult, OutgoingEnvelope
from node.federation import wire
from node.federation.client import split_batch
from protocol.errors import DecodeError
from protocol.limits import Limits

envelopes = st.lists(st.binary(max_size=70_000), max_size=20)


@settings(max_examples=60, deadline=None)
@given(envelopes)
def test_batch_size_is_computed_exactly_without_encoding(batch: list[bytes]) -> None:
    assert wire.batch_bytes(batch) == len(wire.encode_batch(batch))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=LIMITS.protocol.max_envelope_bytes), max_size=8))
def test_batch_within_the_limits_round_trips(batch: list[bytes]) -> None:
    encoded = wire.encode_batch(batch)
    if len(encoded) <= LIMITS.max_request_bytes:
        assert wire.decode_batch(encoded, LIMITS) == tuple(batch)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_decode_or_raise_only_a_decode_error(data: bytes) -> None:
    try:
        batch = wire.decode_batch(data, LIMITS)
    except DecodeError:
        return
    assert wire.encode_batch(batch) == data  # what decodes is canonical


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (wire.encode_batch([b"e"] * 9), "oversized"),
        (wire.encode_batch([b"e" * 4097]), "oversized"),
        (msgspec.msgpack.encode([1]), "bad_type"),
        (msgspec.msgpack.encode(["envelope"]), "bad_type"),
        (msgspec.msgpack.encode(b"not an array"), "bad_type"),
        (b"\x91", "malformed"),
    ],
)
def test_batch_breaking_the_format_is_refused_with_its_code(data: bytes, code: str) -> None:
    with pytest.raises(DecodeError) as raised:
        wire.decode_batch(data, LIMITS)
    assert raised.value.code == code


def test_results_round_trip_and_must_match_the_batch_length() -> None:
    results = [DeliveryResult(ACCEPTED, b"r1"), DeliveryResult("replayed", None)]
    encoded = wire.encode_results(results)

    claims = wire.decode_results(encoded, expected=2, limits=LIMITS)

    assert [(c.status, c.receipt) for c in claims] == [(ACCEPTED, b"r1"), ("replayed", None)]
    with pytest.raises(DecodeError) as raised:
        wire.decode_results(encoded, expected=3, limits=LIMITS)
    assert raised.value.code == "invalid_field"


@pytest.mark.parametrize(
    "item",
    [
        ["Accepted", None],  # not a code
        ["", None],
        ["a" * 65, None],
        [ACCEPTED, b"r" * (LIMITS.protocol.max_receipt_bytes + 1)],
        [ACCEPTED],
        [ACCEPTED, None, None],
        [ACCEPTED, "receipt as text"],
    ],
)
def test_result_item_breaking_the_format_is_refused(item: list[object]) -> None:
    with pytest.raises(DecodeError):
        wire.decode_results(msgspec.msgpack.encode([item]), expected=1, limits=LIMITS)


def test_error_body_round_trips_and_anything_else_is_not_one() -> None:
    body = wire.encode_error("unknown_peer", "client certificate is not pinned")

    decoded = wire.decode_error(body)

    assert decoded is not None
    assert (decoded.code, decoded.message) == ("unknown_peer", "client certificate is not pinned")
    assert wire.decode_error(b"<html>") is None
    assert wire.decode_error(b'{"error": {"code": 1}}') is None
    assert wire.decode_error(b" " * (wire.MAX_ERROR_BODY_BYTES + 1)) is None


def outgoing(seq: int, size: int) -> OutgoingEnvelope:
    return OutgoingEnvelope(seq, "stockholm", None, bytes(16), b"\x00" * size, 0.0, 0)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=4096), max_size=40),
    batch_size=st.integers(min_value=1, max_value=10),
)
def test_split_batch_keeps_order_and_every_part_within_both_limits(
    sizes: list[int], batch_size: int
) -> None:
    limits = NodeLimits(
        protocol=Limits(max_envelope_bytes=4096),
        max_request_bytes=4096 + 1024,
        batch_size=batch_size,
    )
    batch = [outgoing(i, size) for i, size in enumerate(sizes)]

    parts = split_batch(batch, limits)

    assert [e for part in parts for e in part] == batch
    for part in parts:
        assert 1 <= len(part) <= batch_size
        assert wire.batch_bytes([e.envelope for e in part]) <= limits.max_request_bytes
    for part, following in itertools.pairwise(parts):  # greedy: the next would not fit
        grown = [e.envelope for e in [*part, following[0]]]
        assert len(part) == batch_size or wire.batch_bytes(grown) > limits.max_request_bytes - 4
