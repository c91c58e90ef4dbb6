"""Ed25519 as the protocol verifies it: libsodium's strict rules, one key check where keys enter.

``protocol.signing.verify`` runs libsodium, which refuses what OpenSSL lets through (a small-order
or non-canonical public key, a small-order ``R``, ``S >= L``). These tests hold it to accepting
every signature ``cryptography`` makes, to refusing the forgeries a small-order key allows, and
hold every door a peer's identity key comes through (agreement, key bundle, succession,
``keys.identity_key``) to refusing such a key with that statement's own code.
"""

from __future__ import annotations

import nacl.bindings
import pytest
from agreement_fixtures import document, member
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from key_fixtures import T0, ed25519, pub
from test_key_bundle import forge_bundle, refused

from protocol import agreement, codec, keys, succession
from protocol.errors import AgreementRejected, ErrorCode, LocalProtocolError, ProtocolError
from protocol.keys import KeyKind
from protocol.signing import (
    Purpose,
    check_public_key,
    check_signature,
    is_valid_public_key,
    sign,
    signing_input,
    verify,
)
from protocol.succession import SignedSuccession, Succession

L = 2**252 + 27742317777372353535851937790883648493
"""The order of Ed25519's prime-order subgroup."""

SMALL_ORDER_KEYS = [
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity, order 1
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4
        "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    )
]
IDENTITY_POINT = SMALL_ORDER_KEYS[0]
ORDER_8_POINT = SMALL_ORDER_KEYS[4]
# y = p + 1 with the sign bit clear: a non-canonical encoding of the identity point.
NON_CANONICAL_KEY = (2**255 - 19 + 1).to_bytes(32, "little")


def universal_forgery() -> bytes:
    """A "signature" that OpenSSL accepts for every message under the identity-point key.

    With ``A`` the identity, ``[k]A`` vanishes from the check ``[S]B == R + [k]A``, so
    ``R = [s]B, S = s`` satisfies it whatever the message.
    """
    s = (123456789).to_bytes(32, "little")
    return nacl.bindings.crypto_scalarmult_ed25519_base_noclamp(s) + s


def mixed_order_key() -> bytes:
    """A real public key plus a point of order 8: on the curve, outside the prime-order group."""
    return nacl.bindings.crypto_core_ed25519_add(pub("stockholm"), ORDER_8_POINT)


# --- Verification ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(max_size=4096), purpose=st.sampled_from(list(Purpose)))
def test_signature_made_by_cryptography_verifies_with_libsodium(
    payload: bytes, purpose: Purpose
) -> None:
    private = ed25519("stockholm")
    signature = sign(private, purpose, payload)
    assert verify(pub("stockholm"), purpose, payload, signature)
    # The two libraries agree on what was signed: OpenSSL accepts the same bytes.
    private.public_key().verify(signature, signing_input(purpose, payload))
    assert not verify(pub("goteborg"), purpose, payload, signature)
    assert not verify(pub("stockholm"), purpose, payload + b"\x00", signature)


@settings(max_examples=40, deadline=None)
@given(payload=st.binary(max_size=512), index=st.integers(0, 63), bit=st.integers(0, 7))
def test_signature_with_any_bit_flipped_is_refused(payload: bytes, index: int, bit: int) -> None:
    signature = bytearray(sign(ed25519("stockholm"), Purpose.ENVELOPE, payload))
    signature[index] ^= 1 << bit
    assert not verify(pub("stockholm"), Purpose.ENVELOPE, payload, bytes(signature))


def test_signature_with_s_not_reduced_modulo_l_is_refused() -> None:
    payload = b"receipt"
    signature = sign(ed25519("stockholm"), Purpose.RECEIPT, payload)
    s = int.from_bytes(signature[32:], "little")
    # S + L satisfies the group equation as S does; only the canonical S is a valid signature.
    malleated = signature[:32] + (s + L).to_bytes(32, "little")
    assert verify(pub("stockholm"), Purpose.RECEIPT, payload, signature)
    assert not verify(pub("stockholm"), Purpose.RECEIPT, payload, malleated)
    with pytest.raises(ProtocolError) as caught:
        check_signature(pub("stockholm"), Purpose.RECEIPT, payload, malleated, what="receipt")
    assert caught.value.code is ErrorCode.BAD_SIGNATURE


def test_signature_under_a_small_order_key_is_refused_where_openssl_accepts_a_forgery() -> None:
    forged = universal_forgery()
    message = signing_input(Purpose.AGREEMENT, b"any document at all")
    Ed25519PublicKey.from_public_bytes(IDENTITY_POINT).verify(forged, message)  # OpenSSL: "valid"
    for key in SMALL_ORDER_KEYS:
        assert not verify(key, Purpose.AGREEMENT, b"any document at all", forged)
    with pytest.raises(ProtocolError) as caught:
        check_signature(IDENTITY_POINT, Purpose.AGREEMENT, b"x", forged, what="agreement")
    assert caught.value.code is ErrorCode.BAD_SIGNATURE


def test_signature_with_a_small_order_r_is_refused() -> None:
    # R of order 1 and S = 0 satisfy the equation only for a key whose [k]A is the identity;
    # libsodium refuses the small-order R before any arithmetic, whatever the key.
    forged = IDENTITY_POINT + bytes(32)
    assert not verify(IDENTITY_POINT, Purpose.RECEIPT, b"r", forged)
    assert not verify(pub("stockholm"), Purpose.RECEIPT, b"r", forged)


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [(b"\x01" * 31, bytes(64)), (b"\x01" * 33, bytes(64)), (b"", b""), (bytes(32), bytes(63))],
)
def test_verify_answers_no_for_wrong_sizes_without_raising(
    public_key: bytes, signature: bytes
) -> None:
    assert not verify(public_key, Purpose.ENVELOPE, b"p", signature)


def test_openssl_and_libsodium_agree_on_fresh_keys() -> None:
    for _ in range(20):
        private = Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes_raw()
        signature = sign(private, Purpose.KEY_BUNDLE, b"bundle")
        assert is_valid_public_key(public)
        assert verify(public, Purpose.KEY_BUNDLE, b"bundle", signature)
        with pytest.raises(InvalidSignature):
            private.public_key().verify(signature, signing_input(Purpose.RECEIPT, b"bundle"))
        assert not verify(public, Purpose.RECEIPT, b"bundle", signature)


# --- Keys where they enter ---------------------------------------------------------------------


UNUSABLE_KEYS = [*SMALL_ORDER_KEYS, NON_CANONICAL_KEY, mixed_order_key()]


@pytest.mark.parametrize("public_key", UNUSABLE_KEYS)
def test_small_order_mixed_order_and_non_canonical_keys_are_not_valid(public_key: bytes) -> None:
    assert not is_valid_public_key(public_key)
    with pytest.raises(ProtocolError) as caught:
        check_public_key(public_key, what="test key", code=ErrorCode.BAD_KEY_BUNDLE)
    assert caught.value.code is ErrorCode.BAD_KEY_BUNDLE
    assert public_key.hex() not in caught.value.message


@pytest.mark.parametrize("public_key", [b"", b"\x01" * 31, b"\x01" * 33, bytearray(32)])
def test_key_of_wrong_size_or_type_is_not_valid(public_key: bytes) -> None:
    assert not is_valid_public_key(public_key)


def test_identity_key_record_refuses_a_small_order_key() -> None:
    assert keys.identity_key(pub("stockholm"), T0).public_key == pub("stockholm")
    with pytest.raises(LocalProtocolError) as caught:
        keys.identity_key(IDENTITY_POINT, T0)
    assert caught.value.code is ErrorCode.INVALID_FIELD


def test_key_bundle_signed_by_a_small_order_key_is_refused_as_bad_key_bundle() -> None:
    # forge_bundle signs with a real key; the claimed identity key is the small-order point, with a
    # matching key id, so only the key check stands between it and the (forgeable) signature.
    data = forge_bundle(
        identity_key=IDENTITY_POINT, identity_key_id=keys.key_id(KeyKind.IDENTITY, IDENTITY_POINT)
    )
    refused(ErrorCode.BAD_KEY_BUNDLE, data, None)


def test_succession_to_a_small_order_key_is_refused_as_bad_succession() -> None:
    statement = codec.encode(
        Succession(
            city="stockholm",
            old_key=pub("stockholm"),
            new_key=IDENTITY_POINT,
            effective_from=T0 + 10,
        )
    )
    data = codec.encode(
        SignedSuccession(
            statement,
            sign(ed25519("stockholm"), Purpose.SUCCESSION_OLD, statement),
            universal_forgery(),
        )
    )
    with pytest.raises(ProtocolError) as caught:
        succession.verify_succession(data)
    assert caught.value.code is ErrorCode.BAD_SUCCESSION


def test_agreement_naming_a_small_order_member_key_is_refused_as_agreement_invalid() -> None:
    good = member("malmo")
    with pytest.raises(LocalProtocolError) as caught:
        document(members=[member("stockholm"), member("goteborg"), _with_key(good, IDENTITY_POINT)])
    assert caught.value.code is ErrorCode.AGREEMENT_INVALID
    # The same document arriving from a peer: the member key is swapped in the encoded bytes.
    data = agreement.encode_document(document())
    forged = data.replace(pub("malmo"), IDENTITY_POINT)
    assert forged != data
    with pytest.raises(AgreementRejected) as rejected:
        agreement.decode_document(forged)
    assert rejected.value.code is ErrorCode.AGREEMENT_INVALID


def _with_key(record: agreement.Member, public_key: bytes) -> agreement.Member:
    fields = {name: getattr(record, name) for name in record.__struct_fields__}
    return agreement.Member(**{**fields, "identity_key": public_key})
