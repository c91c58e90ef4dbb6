"""Sealing and opening envelopes: the round trip, every check of ``open``, its order, tampering,
and fuzzing. The known-answer vectors are in ``test_sealing_vectors.py``."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sealing_fixtures import (
    INQUIRY,
    KEYS,
    FakeReplayStore,
    T,
    decryption_keys,
    encryption_record,
    identity,
    known_cities,
    open_,
    seal,
    verify_key,
)

from protocol import codec, hpke, sealing, signing
from protocol.errors import (
    DecodeError,
    EnvelopeRejected,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ReplayStoreFull,
)
from protocol.keys import EncryptionKey, KeyKind, VerifyKey, key_id
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import ThreatLevel
from protocol.signing import Purpose

AGE = DEFAULT_LIMITS.max_message_age_s
SKEW = DEFAULT_LIMITS.max_clock_skew_s


def refused(
    data: bytes, code: ErrorCode, kind: type[ProtocolError] = EnvelopeRejected, **ctx: Any
) -> ProtocolError:
    with pytest.raises(kind) as caught:
        open_(data, **ctx)
    assert caught.value.code is code, f"expected {code}, got {caught.value.code}"
    return caught.value


def split(envelope: bytes) -> tuple[sealing.Header, bytes]:
    header_bytes, sealed = codec.decode(envelope, tuple[bytes, bytes], max_bytes=1 << 20, what="")
    return codec.decode(header_bytes, sealing.Header, max_bytes=1024, what=""), sealed


def with_header(envelope: bytes, **changes: Any) -> bytes:
    """The same sealed part under a header with ``changes`` (what a network attacker can do)."""
    header, sealed = split(envelope)
    return codec.encode((codec.encode(msgspec.structs.replace(header, **changes)), sealed))


def reseal(envelope: bytes, to_city: str, inner: bytes | None = None, **changes: Any) -> bytes:
    """Re-encrypt the signed inner plaintext (as its legitimate recipient could) under a header."""
    header, sealed = split(envelope)
    if inner is None:
        private = decryption_keys("goteborg")[header.recipient_key_id].private_key
        inner = hpke.open(private, sealing.HPKE_INFO_PREFIX + codec.encode(header), sealed)
    new_header = codec.encode(msgspec.structs.replace(header, **changes))
    new_sealed = hpke.seal(
        encryption_record(to_city).public_key,
        sealing.HPKE_INFO_PREFIX + new_header,
        inner,
        os.urandom(32),
    )
    return codec.encode((new_header, new_sealed))


# --- Round trip -----------------------------------------------------------------------------


def test_sealed_inquiry_opens_to_the_same_message_and_header() -> None:
    message_id = os.urandom(16)
    envelope = seal(message_id=message_id)
    opened = open_(envelope)
    assert opened.message == INQUIRY
    assert opened.header.sender == "stockholm"
    assert opened.header.recipient == "goteborg"
    assert opened.header.message_id == message_id
    assert opened.header.timestamp == T
    assert opened.header.agreement_version == 3
    assert opened.header.sender_key_id == bytes.fromhex(KEYS["stockholm"]["identity_key_id"])
    assert opened.header.recipient_key_id == encryption_record("goteborg").key_id
    assert opened.header.recipient_key_epoch == KEYS["goteborg"]["encryption_epoch"]
    assert opened.envelope_hash == hashlib.sha256(envelope).digest()
    assert opened.body_bytes == codec.encode(INQUIRY)
    assert signing.verify(
        bytes.fromhex(KEYS["stockholm"]["identity_public"]),
        Purpose.ENVELOPE,
        sealing.signed_payload(opened.header_bytes, opened.body_bytes),
        opened.signature,
    )


def test_open_asks_the_replay_store_but_leaves_recording_to_the_caller() -> None:
    envelope = seal()
    store = FakeReplayStore()
    open_(envelope, replay=store)
    open_(envelope, replay=store)
    header, _ = split(envelope)
    assert store.asked == [("stockholm", header.message_id)] * 2
    assert store.ids == set()


def test_header_is_cleartext_but_message_is_not() -> None:
    envelope = seal()
    assert b"stockholm" in envelope
    assert "behöver".encode() not in envelope
    assert INQUIRY.case_id not in envelope


# --- Every header field is bound ------------------------------------------------------------

OTHER_KEY_ID = bytes(16)
HEADER_TAMPERING = [
    ("version", 2, ErrorCode.UNSUPPORTED_VERSION),
    ("version", 0, ErrorCode.UNSUPPORTED_VERSION),
    ("suite", 2, ErrorCode.UNSUPPORTED_SUITE),
    ("suite", 0, ErrorCode.UNSUPPORTED_SUITE),
    ("sender", "malmo", ErrorCode.DECRYPT_FAILED),
    ("sender", "uppsala", ErrorCode.UNKNOWN_SENDER),
    ("sender", "goteborg", ErrorCode.REFLECTED),
    ("recipient", "malmo", ErrorCode.WRONG_RECIPIENT),
    ("sender_key_id", OTHER_KEY_ID, ErrorCode.DECRYPT_FAILED),
    ("recipient_key_id", OTHER_KEY_ID, ErrorCode.UNKNOWN_KEY),
    ("recipient_key_epoch", KEYS["goteborg"]["encryption_epoch"] + 1, ErrorCode.UNKNOWN_KEY),
    ("agreement_version", 4, ErrorCode.DECRYPT_FAILED),
    ("message_id", bytes(16), ErrorCode.DECRYPT_FAILED),
    ("timestamp", T - 1, ErrorCode.DECRYPT_FAILED),
    ("timestamp", T - AGE - 10, ErrorCode.STALE),
    ("timestamp", T + SKEW + 10, ErrorCode.FROM_FUTURE),
]


def test_header_tampering_covers_every_header_field() -> None:
    assert {field for field, _, _ in HEADER_TAMPERING} == set(sealing.Header.__struct_fields__)


@pytest.mark.parametrize(("field", "value", "code"), HEADER_TAMPERING, ids=lambda x: str(x)[:20])
def test_tampered_header_field_is_refused_with_its_code(
    field: str, value: Any, code: ErrorCode
) -> None:
    refused(with_header(seal(), **{field: value}), code)


def test_tampered_message_id_that_was_seen_is_refused_as_replayed() -> None:
    seen_id = os.urandom(16)
    store = FakeReplayStore([("stockholm", seen_id)])
    refused(with_header(seal(), message_id=seen_id), ErrorCode.REPLAYED, replay=store)


# --- A flipped bit in every region ----------------------------------------------------------


def _regions(envelope: bytes) -> dict[str, range]:
    header_bytes, sealed = codec.decode(envelope, tuple[bytes, bytes], max_bytes=1 << 20, what="")
    header_at = envelope.index(header_bytes)
    sealed_at = len(envelope) - len(sealed)
    enc_end = sealed_at + hpke.ENC_BYTES
    tag_at = len(envelope) - hpke.TAG_BYTES
    return {
        "framing": range(0, header_at),
        "header": range(header_at, header_at + len(header_bytes)),
        "sealed framing": range(header_at + len(header_bytes), sealed_at),
        "enc": range(sealed_at, enc_end),
        "ciphertext": range(enc_end, tag_at),
        "tag": range(tag_at, len(envelope)),
    }


def _flipped(envelope: bytes, index: int, bit: int) -> bytes:
    out = bytearray(envelope)
    out[index] ^= 1 << bit
    return bytes(out)


HEADER_FLIP_CODES = {
    ErrorCode.MALFORMED,
    ErrorCode.BAD_TYPE,
    ErrorCode.OVERSIZED,
    ErrorCode.INVALID_FIELD,
    ErrorCode.INVALID_UTF8,
    ErrorCode.UNSUPPORTED_VERSION,
    ErrorCode.UNSUPPORTED_SUITE,
    ErrorCode.WRONG_RECIPIENT,
    ErrorCode.REFLECTED,
    ErrorCode.UNKNOWN_SENDER,
    ErrorCode.UNKNOWN_KEY,
    ErrorCode.STALE,
    ErrorCode.FROM_FUTURE,
    ErrorCode.DECRYPT_FAILED,
}


@pytest.mark.parametrize("region", ["enc", "ciphertext", "tag"])
def test_every_flipped_bit_of_the_sealed_part_is_refused_as_decrypt_failed(region: str) -> None:
    envelope = seal()
    for index in _regions(envelope)[region]:
        for bit in range(8):
            refused(_flipped(envelope, index, bit), ErrorCode.DECRYPT_FAILED)


@pytest.mark.parametrize("region", ["framing", "sealed framing"])
def test_every_flipped_bit_of_the_outer_framing_is_refused_as_undecodable(region: str) -> None:
    envelope = seal()
    for index in _regions(envelope)[region]:
        for bit in range(8):
            with pytest.raises(DecodeError) as caught:
                open_(_flipped(envelope, index, bit))
            assert caught.value.code in {
                ErrorCode.MALFORMED,
                ErrorCode.BAD_TYPE,
                ErrorCode.OVERSIZED,
                ErrorCode.INVALID_FIELD,
            }


def test_every_flipped_bit_of_the_header_is_refused() -> None:
    envelope = seal()
    seen: set[ErrorCode] = set()
    for index in _regions(envelope)["header"]:
        for bit in range(8):
            with pytest.raises(RemoteProtocolError) as caught:
                open_(_flipped(envelope, index, bit))
            seen.add(caught.value.code)
    assert seen <= HEADER_FLIP_CODES
    assert {ErrorCode.DECRYPT_FAILED, ErrorCode.UNKNOWN_KEY, ErrorCode.MALFORMED} <= seen


def test_every_truncation_is_refused() -> None:
    envelope = seal()
    for length in range(len(envelope)):
        with pytest.raises(RemoteProtocolError):
            open_(envelope[:length])


def test_trailing_bytes_are_refused_as_malformed() -> None:
    refused(seal() + b"\x00", ErrorCode.MALFORMED, DecodeError)


def test_extended_sealed_part_is_refused_as_decrypt_failed() -> None:
    header, sealed = split(seal())
    refused(codec.encode((codec.encode(header), sealed + b"\x00")), ErrorCode.DECRYPT_FAILED)


# --- Re-sealing, addressing, senders --------------------------------------------------------


def test_signed_message_resealed_to_a_third_city_under_a_header_naming_it_is_a_bad_signature() -> (
    None
):
    malmo = encryption_record("malmo")
    forged = reseal(
        seal(),
        "malmo",
        recipient="malmo",
        recipient_key_id=malmo.key_id,
        recipient_key_epoch=malmo.epoch,
    )
    refused(forged, ErrorCode.BAD_SIGNATURE, me="malmo")


def test_signed_message_resealed_to_a_third_city_under_its_own_header_is_wrong_recipient() -> None:
    refused(reseal(seal(), "malmo"), ErrorCode.WRONG_RECIPIENT, me="malmo")


def test_envelope_for_another_city_is_refused_as_wrong_recipient() -> None:
    refused(seal(), ErrorCode.WRONG_RECIPIENT, me="malmo")


def test_own_envelope_reflected_back_is_refused_as_reflected() -> None:
    refused(seal(), ErrorCode.REFLECTED, me="stockholm")


def test_envelope_from_an_unknown_city_is_refused_as_unknown_sender() -> None:
    refused(seal(), ErrorCode.UNKNOWN_SENDER, sender_keys=lambda city: None)


def test_envelope_sealed_to_an_encryption_key_we_do_not_hold_is_unknown_key() -> None:
    future_private = X25519PrivateKey.generate()
    future_public = future_private.public_key().public_bytes_raw()
    future = EncryptionKey(
        key_id=key_id(KeyKind.ENCRYPTION, future_public),
        public_key=future_public,
        epoch=KEYS["goteborg"]["encryption_epoch"] + 1,
        not_before=T,
        not_after=T + 86400,
    )
    refused(seal(recipient_key=future), ErrorCode.UNKNOWN_KEY)
    my_keys = decryption_keys("goteborg") | {
        future.key_id: sealing.DecryptionKey(epoch=future.epoch, private_key=future_private)
    }
    assert open_(seal(recipient_key=future), my_keys=my_keys).message == INQUIRY


def test_signature_by_an_identity_key_we_do_not_know_is_unknown_key() -> None:
    rotated = Ed25519PrivateKey.generate()
    refused(seal(sender_identity=rotated), ErrorCode.UNKNOWN_KEY)


def test_signature_by_a_key_revoked_before_the_timestamp_is_refused() -> None:
    keys = known_cities(stockholm=[verify_key("stockholm", revoked_since=T - 1)])
    refused(seal(), ErrorCode.REVOKED_KEY, sender_keys=keys)
    keys = known_cities(stockholm=[verify_key("stockholm", revoked_since=T)])
    refused(seal(), ErrorCode.REVOKED_KEY, sender_keys=keys)


def test_signature_made_before_the_key_was_revoked_is_accepted() -> None:
    keys = known_cities(stockholm=[verify_key("stockholm", revoked_since=T + 1)])
    assert open_(seal(), sender_keys=keys, now=T + 2).message == INQUIRY


def test_signature_outside_the_key_validity_is_refused_as_expired() -> None:
    expired = known_cities(stockholm=[verify_key("stockholm", valid_until=T - 1)])
    refused(seal(), ErrorCode.EXPIRED_KEY, sender_keys=expired)
    not_yet = known_cities(stockholm=[verify_key("stockholm", valid_from=T + 1)])
    refused(seal(), ErrorCode.EXPIRED_KEY, sender_keys=not_yet)
    last_second = known_cities(stockholm=[verify_key("stockholm", valid_until=T)])
    assert open_(seal(), sender_keys=last_second).message == INQUIRY


def test_old_identity_key_still_verifies_after_rotation_within_its_validity() -> None:
    new = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    keys = [
        VerifyKey(key_id=key_id(KeyKind.IDENTITY, new), public_key=new, valid_from=T + 100),
        verify_key("stockholm", valid_until=T + 100),
    ]
    assert open_(seal(), sender_keys=known_cities(stockholm=keys)).message == INQUIRY


def _sealed_inner(body: bytes, signature: bytes, **header_changes: Any) -> bytes:
    return reseal(seal(**header_changes), "goteborg", inner=codec.encode((body, signature)))


def test_message_body_swapped_under_the_original_signature_is_a_bad_signature() -> None:
    envelope = seal()
    header, sealed = split(envelope)
    private = decryption_keys("goteborg")[header.recipient_key_id].private_key
    inner = hpke.open(private, sealing.HPKE_INFO_PREFIX + codec.encode(header), sealed)
    _, signature = codec.decode(inner, tuple[bytes, bytes], max_bytes=1 << 20, what="")
    other = msgspec.structs.replace(INQUIRY, threat_level=ThreatLevel.LOW)
    forged = reseal(envelope, "goteborg", inner=codec.encode((codec.encode(other), signature)))
    refused(forged, ErrorCode.BAD_SIGNATURE)


def test_garbage_sealed_to_us_by_anyone_is_refused_as_undecodable() -> None:
    refused(reseal(seal(), "goteborg", inner=b"\xc1"), ErrorCode.MALFORMED, DecodeError)
    short_signature = codec.encode((codec.encode(INQUIRY), bytes(63)))
    refused(reseal(seal(), "goteborg", inner=short_signature), ErrorCode.INVALID_FIELD, DecodeError)


def test_validly_signed_body_that_is_no_known_message_is_refused_after_verifying() -> None:
    message_id = os.urandom(16)
    envelope = seal(message_id=message_id)
    header, _ = split(envelope)
    header_bytes = codec.encode(header)
    body = codec.encode((99, b"not a message"))
    signature = signing.sign(
        identity("stockholm"), Purpose.ENVELOPE, sealing.signed_payload(header_bytes, body)
    )
    forged = reseal(envelope, "goteborg", inner=codec.encode((body, signature)))
    refused(forged, ErrorCode.UNKNOWN_MESSAGE_TYPE, DecodeError)


# --- Time window and replay -----------------------------------------------------------------


def test_time_window_boundaries() -> None:
    envelope = seal()
    assert open_(envelope, now=T + AGE).message == INQUIRY
    refused(envelope, ErrorCode.STALE, now=T + AGE + 1)
    assert open_(envelope, now=T - SKEW).message == INQUIRY
    refused(envelope, ErrorCode.FROM_FUTURE, now=T - SKEW - 1)


def test_envelope_whose_id_was_seen_is_refused_as_replayed() -> None:
    message_id = os.urandom(16)
    store = FakeReplayStore([("stockholm", message_id)])
    refused(seal(message_id=message_id), ErrorCode.REPLAYED, replay=store)


def test_same_message_id_from_another_sender_is_not_a_replay() -> None:
    message_id = os.urandom(16)
    store = FakeReplayStore([("malmo", message_id)])
    assert open_(seal(message_id=message_id), replay=store).message == INQUIRY


def test_full_replay_store_fails_closed() -> None:
    with pytest.raises(ReplayStoreFull) as caught:
        open_(seal(), replay=FakeReplayStore(full=True))
    assert caught.value.status == 503


# --- Versions, suites, sizes ----------------------------------------------------------------


def test_version_2_header_with_a_different_layout_is_unsupported_version() -> None:
    _, sealed = split(seal())
    header = codec.encode((2, 7, {"a": 1}, 3.5))
    refused(codec.encode((header, sealed)), ErrorCode.UNSUPPORTED_VERSION)


def test_downgrade_to_an_unknown_suite_with_a_different_layout_is_unsupported_suite() -> None:
    _, sealed = split(seal())
    refused(codec.encode((codec.encode((1, 0)), sealed)), ErrorCode.UNSUPPORTED_SUITE)


def test_malformed_header_of_our_version_is_a_decode_error() -> None:
    _, sealed = split(seal())
    refused(codec.encode((codec.encode((1, 1, "x")), sealed)), ErrorCode.INVALID_FIELD, DecodeError)
    refused(codec.encode((b"\xc1", sealed)), ErrorCode.MALFORMED, DecodeError)


def test_oversized_input_is_refused_before_decoding() -> None:
    garbage = b"\xc1" * (DEFAULT_LIMITS.max_envelope_bytes + 1)
    refused(garbage, ErrorCode.OVERSIZED, DecodeError)
    envelope = seal()
    refused(
        envelope,
        ErrorCode.OVERSIZED,
        DecodeError,
        limits=Limits(max_envelope_bytes=len(envelope) - 1),
    )
    assert open_(envelope, limits=Limits(max_envelope_bytes=len(envelope))).message == INQUIRY


def test_oversized_header_is_refused() -> None:
    _, sealed = split(seal())
    refused(codec.encode((bytes(2000), sealed)), ErrorCode.OVERSIZED, DecodeError)


# --- Check order ----------------------------------------------------------------------------

ORDER_CASES = [
    # (what is wrong, context, expected first failure)
    ("wrong recipient and stale", {"me": "malmo", "now": T + AGE + 10}, ErrorCode.WRONG_RECIPIENT),
    (
        "unknown sender and stale",
        {"sender_keys": lambda c: None, "now": T + AGE + 10},
        ErrorCode.UNKNOWN_SENDER,
    ),
    ("stale and replayed", {"now": T + AGE + 10, "replay": "seen"}, ErrorCode.STALE),
    ("replayed and no own key", {"replay": "seen", "my_keys": {}}, ErrorCode.REPLAYED),
    (
        "no own key and unknown signer",
        {"my_keys": {}, "sender_keys": lambda c: []},
        ErrorCode.UNKNOWN_KEY,
    ),
    ("reflected and wrong recipient", {"me": "stockholm"}, ErrorCode.REFLECTED),
]


@pytest.mark.parametrize(("name", "ctx", "code"), ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_checks_run_in_the_specified_order(name: str, ctx: dict[str, Any], code: ErrorCode) -> None:
    message_id = os.urandom(16)
    envelope = seal(message_id=message_id)
    if ctx.get("replay") == "seen":
        ctx = ctx | {"replay": FakeReplayStore([("stockholm", message_id)])}
    refused(envelope, code, **ctx)


def test_replay_store_is_not_consulted_for_an_envelope_refused_earlier() -> None:
    store = FakeReplayStore()
    refused(seal(), ErrorCode.STALE, replay=store, now=T + AGE + 10)
    assert store.asked == []


def test_revoked_key_is_reported_before_a_bad_signature() -> None:
    forged = _sealed_inner(codec.encode(INQUIRY), bytes(64))
    keys = known_cities(stockholm=[verify_key("stockholm", revoked_since=T - 1)])
    refused(forged, ErrorCode.REVOKED_KEY, sender_keys=keys)
    refused(forged, ErrorCode.BAD_SIGNATURE)


# --- Local refusals when sealing ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"timestamp": encryption_record("goteborg").not_after + 1}, ErrorCode.EXPIRED_KEY),
        ({"timestamp": encryption_record("goteborg").not_before - 1}, ErrorCode.EXPIRED_KEY),
        ({"message_id": bytes(15)}, ErrorCode.INVALID_FIELD),
        ({"message_id": bytes(17)}, ErrorCode.OVERSIZED),
        ({"recipient": "stockholm"}, ErrorCode.REFLECTED),
        ({"recipient": "Göteborg"}, ErrorCode.INVALID_FIELD),
        ({"sender": ""}, ErrorCode.INVALID_FIELD),
        ({"agreement_version": -1}, ErrorCode.INVALID_FIELD),
        ({"ephemeral": bytes(31)}, ErrorCode.INVALID_FIELD),
        ({"message": "not a message"}, ErrorCode.INVALID_FIELD),
    ],
    ids=lambda x: str(x)[:30],
)
def test_sealing_with_unusable_input_is_refused_locally(
    changes: dict[str, Any], code: ErrorCode
) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        seal(**changes)
    assert caught.value.code is code


def test_sealing_a_body_over_the_limit_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        seal(limits=Limits(max_body_bytes=len(codec.encode(INQUIRY)) - 1))
    assert caught.value.code is ErrorCode.OVERSIZED
    with pytest.raises(LocalProtocolError) as caught:
        seal(limits=Limits(max_envelope_bytes=100))
    assert caught.value.code is ErrorCode.OVERSIZED


# --- Fuzzing: only the protocol's own errors ------------------------------------------------

FUZZ_ENVELOPE = seal()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        open_(data)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(FUZZ_ENVELOPE)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        index = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[index] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[index : index + draw(st.integers(1, 8))]
    return bytes(data)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutations())
def test_mutated_envelopes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        opened = open_(data)
    except ProtocolError:
        return
    # Only a mutation that re-frames the very same header and sealed bytes can still open.
    header, sealed = split(FUZZ_ENVELOPE)
    assert opened.header_bytes == codec.encode(header)
    assert data.endswith(sealed)
