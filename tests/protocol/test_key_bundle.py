"""Key bundles: encryption key announcements, signing and verifying a node's key state, updates,
and the bundle vectors of tests/vectors/keys.json."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from key_fixtures import DAY, NOW, T0, VECTORS, ed25519, pub, vector_identity, x25519_public

from protocol import codec, key_bundle, keys
from protocol.errors import DecodeError, ErrorCode, LocalProtocolError, ProtocolError
from protocol.key_bundle import KeyBundle, SignedKeyBundle, VerifiedKeyBundle
from protocol.keylog import EntryKind, KeyLog, KeyLogHead
from protocol.keys import EncryptionKey
from protocol.limits import Limits
from protocol.signing import Purpose, sign, verify


def enc(epoch: int, not_before: int, not_after: int) -> EncryptionKey:
    return keys.encryption_key(
        x25519_public(f"epoch {epoch}"), epoch=epoch, not_before=not_before, not_after=not_after
    )


CURRENT = enc(1, T0, T0 + 90 * DAY)
NEXT = enc(2, T0 + 60 * DAY, T0 + 180 * DAY)
LOG_HEAD = KeyLogHead(5, bytes(range(32)))
PIN = keys.tls_pin(b"test spki stockholm")


def make_bundle(
    identity: str = "stockholm",
    current: EncryptionKey = CURRENT,
    nxt: EncryptionKey = NEXT,
    **fields: Any,
) -> bytes:
    """A signed bundle made with sign_bundle (so it passes its self-check)."""
    private = ed25519(identity)
    args: dict[str, Any] = {
        "city": "stockholm",
        "current": key_bundle.announce_encryption_key(private, current),
        "next_key": key_bundle.announce_encryption_key(private, nxt),
        "tls_pins": [PIN],
        "key_log": LOG_HEAD,
        "issued_at": NOW,
        "sequence": 1,
    }
    args.update(fields)
    return key_bundle.sign_bundle(private, **args)


def forge_bundle(identity: str = "stockholm", **changes: Any) -> bytes:
    """A correctly signed bundle whose body was changed, bypassing sign_bundle's checks."""
    outer = codec.decode(make_bundle(identity), SignedKeyBundle, max_bytes=1 << 20, what="t")
    body = codec.decode(outer.bundle, KeyBundle, max_bytes=1 << 20, what="t")
    body_bytes = codec.encode(msgspec.structs.replace(body, **changes))
    signature = sign(ed25519(identity), Purpose.KEY_BUNDLE, body_bytes)
    return codec.encode(SignedKeyBundle(body_bytes, signature))


def refused(code: ErrorCode, data: bytes, expected: bytes | None, now: int = NOW) -> None:
    with pytest.raises(ProtocolError) as caught:
        key_bundle.verify_bundle(data, expected, now)
    assert caught.value.code is code


# --- Key bundles -------------------------------------------------------------------------------


def test_bundle_verifies_and_carries_the_signed_key_state() -> None:
    data = make_bundle(sequence=7)
    bundle = key_bundle.verify_bundle(data, pub("stockholm"), NOW)
    assert isinstance(bundle, VerifiedKeyBundle)
    assert (bundle.city, bundle.identity_key, bundle.sequence) == ("stockholm", pub("stockholm"), 7)
    assert (bundle.current, bundle.next, bundle.key_log) == (CURRENT, NEXT, LOG_HEAD)
    assert bundle.tls_pins == (PIN,)
    assert bundle.signed_bytes == data


def test_bundle_on_first_contact_verifies_without_an_expected_key() -> None:
    bundle = key_bundle.verify_bundle(make_bundle(), None, NOW)
    assert keys.fingerprint(bundle.city, bundle.identity_key) == keys.fingerprint(
        "stockholm", pub("stockholm")
    )


def test_bundle_with_any_single_bit_flipped_is_refused() -> None:
    data = make_bundle()
    for index in range(len(data)):
        for bit in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[index] ^= bit
            with pytest.raises(ProtocolError):
                key_bundle.verify_bundle(bytes(tampered), pub("stockholm"), NOW)


def test_bundle_with_a_changed_sequence_is_refused_as_bad_signature() -> None:
    outer = codec.decode(make_bundle(), SignedKeyBundle, max_bytes=1 << 20, what="t")
    body = codec.decode(outer.bundle, KeyBundle, max_bytes=1 << 20, what="t")
    changed = codec.encode(msgspec.structs.replace(body, sequence=2))
    refused(ErrorCode.BAD_SIGNATURE, codec.encode(SignedKeyBundle(changed, outer.signature)), None)


def test_bundle_by_another_identity_than_expected_is_refused() -> None:
    refused(ErrorCode.UNKNOWN_KEY, make_bundle("goteborg"), pub("stockholm"))


def test_bundle_naming_a_wrong_identity_key_id_is_refused() -> None:
    refused(ErrorCode.BAD_KEY_BUNDLE, forge_bundle(identity_key_id=bytes(16)), None)


def test_bundle_whose_encryption_key_is_signed_by_another_identity_is_refused() -> None:
    foreign = key_bundle.announce_encryption_key(ed25519("goteborg"), CURRENT)
    refused(ErrorCode.BAD_SIGNATURE, forge_bundle(current=foreign), None)


def test_bundle_whose_encryption_key_id_does_not_match_is_refused() -> None:
    wrong = msgspec.structs.replace(CURRENT, key_id=NEXT.key_id)
    announced = key_bundle.announce_encryption_key(ed25519("stockholm"), wrong)
    refused(ErrorCode.BAD_KEY_BUNDLE, forge_bundle(current=announced), None)


@pytest.mark.parametrize(
    ("current", "nxt", "why"),
    [
        (CURRENT, enc(3, T0 + 60 * DAY, T0 + 180 * DAY), "next epoch skips one"),
        (CURRENT, enc(2, T0 + 91 * DAY, T0 + 180 * DAY), "next starts after current ends"),
        (CURRENT, enc(2, T0, T0 + 180 * DAY), "next starts with current"),
        (CURRENT, enc(2, T0 + 60 * DAY, T0 + 80 * DAY), "next ends before current"),
        (enc(1, NOW + 3600, T0 + 90 * DAY), NEXT, "current not yet valid"),
    ],
)
def test_bundle_with_encryption_key_windows_that_do_not_overlap_properly_is_refused(
    current: EncryptionKey, nxt: EncryptionKey, why: str
) -> None:
    private = ed25519("stockholm")
    data = forge_bundle(
        current=key_bundle.announce_encryption_key(private, current),
        next=key_bundle.announce_encryption_key(private, nxt),
    )
    refused(ErrorCode.BAD_KEY_BUNDLE, data, None)


def test_bundle_whose_next_key_repeats_the_current_key_is_refused() -> None:
    private = ed25519("stockholm")
    same = keys.encryption_key(
        CURRENT.public_key, epoch=2, not_before=T0 + DAY, not_after=T0 + 100 * DAY
    )
    data = forge_bundle(next=key_bundle.announce_encryption_key(private, same))
    refused(ErrorCode.BAD_KEY_BUNDLE, data, None)


def test_bundle_whose_current_key_expired_is_refused() -> None:
    refused(ErrorCode.EXPIRED_KEY, make_bundle(), None, now=CURRENT.not_after + 1)


def test_bundle_issued_beyond_the_clock_skew_is_refused() -> None:
    refused(ErrorCode.FROM_FUTURE, make_bundle(issued_at=NOW + 301), None)
    key_bundle.verify_bundle(make_bundle(issued_at=NOW + 300), None, NOW)


def test_bundle_repeating_a_tls_pin_is_refused() -> None:
    refused(ErrorCode.BAD_KEY_BUNDLE, forge_bundle(tls_pins=(PIN, PIN)), None)


def test_bundle_with_trailing_bytes_or_truncated_is_a_decode_error() -> None:
    data = make_bundle()
    for broken in (data + b"\x00", data[:-1], b""):
        with pytest.raises(DecodeError):
            key_bundle.verify_bundle(broken, None, NOW)
    with pytest.raises(DecodeError) as caught:
        key_bundle.verify_bundle(data, None, NOW, Limits(max_document_bytes=len(data) - 1))
    assert caught.value.code is ErrorCode.OVERSIZED


def test_node_cannot_sign_a_bundle_peers_would_refuse() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        make_bundle(nxt=enc(5, T0 + 60 * DAY, T0 + 180 * DAY))
    assert caught.value.code is ErrorCode.BAD_KEY_BUNDLE
    with pytest.raises(LocalProtocolError):
        make_bundle(city="Stockholm")


def test_sealer_picks_the_newest_encryption_key_valid_at_the_time() -> None:
    bundle = key_bundle.verify_bundle(make_bundle(), None, NOW)
    assert bundle.sealing_key(NOW) == CURRENT
    assert bundle.sealing_key(NEXT.not_before) == NEXT
    assert bundle.sealing_key(CURRENT.not_after + 1) == NEXT
    with pytest.raises(ProtocolError) as caught:
        bundle.sealing_key(NEXT.not_after + 1)
    assert caught.value.code is ErrorCode.EXPIRED_KEY
    assert bundle.encryption_key(NEXT.key_id) == NEXT
    assert bundle.encryption_key(bytes(16)) is None


def test_bundle_update_must_move_forward() -> None:
    first = key_bundle.verify_bundle(make_bundle(sequence=5), None, NOW)
    key_bundle.check_bundle_update(first, first)
    newer = key_bundle.verify_bundle(make_bundle(sequence=6), None, NOW)
    key_bundle.check_bundle_update(first, newer)
    for stale in (make_bundle(sequence=5, issued_at=NOW + 1), make_bundle(sequence=4)):
        with pytest.raises(ProtocolError) as caught:
            key_bundle.check_bundle_update(first, key_bundle.verify_bundle(stale, None, NOW))
        assert caught.value.code is ErrorCode.BAD_KEY_BUNDLE
    shrunk = make_bundle(sequence=9, key_log=KeyLogHead(4, bytes(32)))
    with pytest.raises(ProtocolError):
        key_bundle.check_bundle_update(first, key_bundle.verify_bundle(shrunk, None, NOW))


def test_bundle_carries_the_head_of_the_nodes_key_log() -> None:
    log = KeyLog().append(EntryKind.IDENTITY_KEY, b"test statement: identity key", T0)
    log = log.append(EntryKind.TLS_PIN, b"test statement: tls pin", T0 + 1)
    bundle = key_bundle.verify_bundle(make_bundle(key_log=log.head_record()), None, NOW)
    assert (bundle.key_log.size, bundle.key_log.root) == (2, log.head)
    assert KeyLog().head_record() == KeyLogHead(0, bytes(32))


@settings(max_examples=40, deadline=None)
@given(
    epoch=st.integers(0, 2**32 - 2),
    start=st.integers(0, 2**40),
    current_days=st.integers(2, 400),
    overlap_days=st.integers(1, 30),
    next_days=st.integers(1, 400),
    pins=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=4, unique=True),
    sequence=st.integers(0, 2**63 - 1),
    log_size=st.integers(0, 2**63 - 1),
)
def test_any_well_formed_bundle_round_trips_through_sign_and_verify(
    epoch: int,
    start: int,
    current_days: int,
    overlap_days: int,
    next_days: int,
    pins: list[bytes],
    sequence: int,
    log_size: int,
) -> None:
    overlap_days = min(overlap_days, current_days - 1)
    current = keys.encryption_key(
        x25519_public("c"), epoch=epoch, not_before=start, not_after=start + current_days * DAY
    )
    nxt_start = current.not_after - overlap_days * DAY
    nxt = keys.encryption_key(
        x25519_public("n"),
        epoch=epoch + 1,
        not_before=nxt_start,
        not_after=current.not_after + next_days * DAY,
    )
    head = KeyLogHead(log_size, hashlib.sha256(b"%d" % log_size).digest())
    data = make_bundle(
        current=current, nxt=nxt, tls_pins=pins, key_log=head, issued_at=start, sequence=sequence
    )
    bundle = key_bundle.verify_bundle(data, pub("stockholm"), start)
    assert (bundle.current, bundle.next, bundle.tls_pins) == (current, nxt, tuple(pins))
    assert (bundle.key_log, bundle.sequence, bundle.issued_at) == (head, sequence, start)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_as_a_bundle_raise_only_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        key_bundle.verify_bundle(data, None, NOW)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_bundles_raise_only_protocol_errors(data: st.DataObject) -> None:
    original = bytearray(make_bundle())
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(original) - 1))
        original[index] = data.draw(st.integers(0, 255))
    try:
        key_bundle.verify_bundle(bytes(original), pub("stockholm"), NOW)
    except ProtocolError:
        return
    assert bytes(original) == make_bundle()  # only an unchanged bundle may verify


# --- Known-answer vectors ----------------------------------------------------------------------


def _vector_encryption_key(vector: dict[str, Any]) -> EncryptionKey:
    seed = bytes.fromhex(vector["x25519_seed"])
    public = X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return keys.encryption_key(
        public,
        epoch=vector["epoch"],
        not_before=vector["not_before"],
        not_after=vector["not_after"],
    )


def test_vector_encryption_key_announcements_are_reproduced_and_verify() -> None:
    identity = vector_identity(VECTORS["bundle"]["identity"])
    for name in ("current", "next"):
        vector = VECTORS["bundle"][name]
        record = _vector_encryption_key(vector)
        assert (record.public_key.hex(), record.key_id.hex()) == (
            vector["public_key"],
            vector["key_id"],
        )
        announced = key_bundle.announce_encryption_key(identity, record)
        assert announced.key.hex() == vector["record_bytes"]
        assert announced.signature.hex() == vector["signature"]
        assert codec.encode(announced).hex() == vector["announcement"]
        received = codec.decode(
            bytes.fromhex(vector["announcement"]),
            key_bundle.SignedEncryptionKey,
            max_bytes=1024,
            what="t",
        )
        assert key_bundle.verify_encryption_key(received, keys.public_bytes(identity)) == record


def test_vector_bundle_is_reproduced_from_its_inputs() -> None:
    vector = VECTORS["bundle"]
    identity = vector_identity(vector["identity"])
    signed = key_bundle.sign_bundle(
        identity,
        city=vector["city"],
        current=key_bundle.announce_encryption_key(
            identity, _vector_encryption_key(vector["current"])
        ),
        next_key=key_bundle.announce_encryption_key(
            identity, _vector_encryption_key(vector["next"])
        ),
        tls_pins=[bytes.fromhex(pin) for pin in vector["tls_pins"]],
        key_log=KeyLogHead(vector["key_log"]["size"], bytes.fromhex(vector["key_log"]["root"])),
        issued_at=vector["issued_at"],
        sequence=vector["sequence"],
    )
    assert signed.hex() == vector["signed"]
    outer = codec.decode(signed, SignedKeyBundle, max_bytes=1 << 20, what="t")
    assert outer.bundle.hex() == vector["bundle_bytes"]
    assert outer.signature.hex() == vector["signature"]


def test_vector_recorded_bundle_verifies_to_its_fields() -> None:
    vector = VECTORS["bundle"]
    identity = bytes.fromhex(VECTORS["identities"][vector["identity"]]["public_key"])
    bundle = key_bundle.verify_bundle(
        bytes.fromhex(vector["signed"]), identity, vector["verify_at"]
    )
    assert bundle.city == vector["city"]
    assert bundle.current.key_id.hex() == vector["current"]["key_id"]
    assert bundle.next.key_id.hex() == vector["next"]["key_id"]
    assert [pin.hex() for pin in bundle.tls_pins] == vector["tls_pins"]
    assert (bundle.issued_at, bundle.sequence) == (vector["issued_at"], vector["sequence"])
    for at, expected in vector["sealing_key_at"].items():
        assert bundle.sealing_key(int(at)).key_id.hex() == expected
    assert verify(
        identity,
        Purpose.KEY_BUNDLE,
        bytes.fromhex(vector["bundle_bytes"]),
        bytes.fromhex(vector["signature"]),
    )


@pytest.mark.parametrize("case", VECTORS["refused_bundles"], ids=lambda c: c["name"])
def test_vector_refused_bundle_is_refused_with_its_code(case: dict[str, Any]) -> None:
    expected = bytes.fromhex(case["expected_identity"])
    with pytest.raises(ProtocolError) as caught:
        key_bundle.verify_bundle(bytes.fromhex(case["signed"]), expected, case["now"])
    assert caught.value.code == case["error"]
