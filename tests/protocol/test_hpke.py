"""HPKE base mode: RFC 9180 known answers, interoperability with ``cryptography``, tampering."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hpke as lib_hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import hpke
from protocol.errors import EnvelopeRejected, ErrorCode, LocalProtocolError

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "hpke.json").read_text(encoding="utf-8")
)
RFC = VECTORS["rfc9180_a2_1"]
LIB_SUITE = lib_hpke.Suite(
    lib_hpke.KEM.X25519, lib_hpke.KDF.HKDF_SHA256, lib_hpke.AEAD.CHACHA20_POLY1305
)


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def _fresh_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def _open_fails(private: X25519PrivateKey, info: bytes, sealed: bytes) -> None:
    with pytest.raises(EnvelopeRejected) as caught:
        hpke.open(private, info, sealed)
    assert caught.value.code is ErrorCode.DECRYPT_FAILED


# --- RFC 9180 Appendix A.2.1 -----------------------------------------------------------------


def test_rfc9180_vector_is_for_our_exact_suite() -> None:
    assert (RFC["mode"], RFC["kem_id"], RFC["kdf_id"], RFC["aead_id"]) == (
        hpke.MODE_BASE,
        hpke.KEM_ID,
        hpke.KDF_ID,
        hpke.AEAD_ID,
    )


def test_rfc9180_keys_are_consistent() -> None:
    sk_e = X25519PrivateKey.from_private_bytes(h(RFC["skEm"]))
    sk_r = X25519PrivateKey.from_private_bytes(h(RFC["skRm"]))
    assert _public(sk_e).hex() == RFC["pkEm"] == RFC["enc"]
    assert _public(sk_r).hex() == RFC["pkRm"]


def test_rfc9180_sender_derives_the_published_shared_secret_key_and_nonce() -> None:
    shared_secret, enc = hpke.encapsulate(h(RFC["pkRm"]), h(RFC["skEm"]))
    assert enc.hex() == RFC["enc"]
    assert shared_secret.hex() == RFC["shared_secret"]
    key, base_nonce = hpke.key_schedule(shared_secret, h(RFC["info"]))
    assert key.hex() == RFC["key"]
    assert base_nonce.hex() == RFC["base_nonce"] == RFC["encryption"]["nonce"]


def test_rfc9180_seal_reproduces_the_published_ciphertext_byte_for_byte() -> None:
    encryption = RFC["encryption"]
    sealed = hpke.seal(
        h(RFC["pkRm"]),
        h(RFC["info"]),
        h(encryption["pt"]),
        h(RFC["skEm"]),
        aad=h(encryption["aad"]),
    )
    assert sealed[: hpke.ENC_BYTES].hex() == RFC["enc"]
    assert sealed[hpke.ENC_BYTES :].hex() == encryption["ct"]


def test_rfc9180_recipient_decapsulates_and_decrypts_the_published_ciphertext() -> None:
    sk_r = X25519PrivateKey.from_private_bytes(h(RFC["skRm"]))
    shared_secret = hpke.decapsulate(h(RFC["enc"]), sk_r)
    assert shared_secret.hex() == RFC["shared_secret"]
    key, nonce = hpke.key_schedule(shared_secret, h(RFC["info"]))
    encryption = RFC["encryption"]
    plaintext = ChaCha20Poly1305(key).decrypt(nonce, h(encryption["ct"]), h(encryption["aad"]))
    assert plaintext.hex() == encryption["pt"]


# --- citynode vectors (empty aad) -----------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["citynode"], ids=lambda v: v["name"])
def test_citynode_vector_is_reproduced_by_seal(vector: dict[str, Any]) -> None:
    sealed = hpke.seal(h(vector["pkRm"]), h(vector["info"]), h(vector["pt"]), h(vector["skEm"]))
    assert sealed.hex() == vector["sealed"]
    assert sealed[: hpke.ENC_BYTES].hex() == vector["enc"]
    shared_secret, _ = hpke.encapsulate(h(vector["pkRm"]), h(vector["skEm"]))
    assert shared_secret.hex() == vector["shared_secret"]
    assert [v.hex() for v in hpke.key_schedule(shared_secret, h(vector["info"]))] == [
        vector["key"],
        vector["base_nonce"],
    ]


@pytest.mark.parametrize("vector", VECTORS["citynode"], ids=lambda v: v["name"])
def test_citynode_vector_opens_with_ours_and_with_cryptography(vector: dict[str, Any]) -> None:
    private = X25519PrivateKey.from_private_bytes(h(vector["skRm"]))
    assert _public(private).hex() == vector["pkRm"]
    sealed = h(vector["sealed"])
    assert hpke.open(private, h(vector["info"]), sealed).hex() == vector["pt"]
    assert LIB_SUITE.decrypt(sealed, private, info=h(vector["info"])).hex() == vector["pt"]


# --- Interoperability and determinism -------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 2048, 70_000])
def test_our_seal_is_opened_by_cryptography_hpke(size: int) -> None:
    private = _fresh_key()
    plaintext, info = os.urandom(size), b"citynode interop " + os.urandom(8)
    sealed = hpke.seal(_public(private), info, plaintext, os.urandom(32))
    assert len(sealed) == size + hpke.OVERHEAD_BYTES
    assert LIB_SUITE.decrypt(sealed, private, info=info) == plaintext


@pytest.mark.parametrize("size", [0, 1, 2048, 70_000])
def test_cryptography_hpke_output_is_opened_by_ours(size: int) -> None:
    private = _fresh_key()
    plaintext, info = os.urandom(size), os.urandom(40)
    sealed = LIB_SUITE.encrypt(plaintext, private.public_key(), info=info)
    assert hpke.open(private, info, sealed) == plaintext


def test_seal_accepts_a_prebuilt_public_key_object_with_the_same_result() -> None:
    private, ephemeral = _fresh_key(), os.urandom(32)
    raw = hpke.seal(_public(private), b"i", b"p", ephemeral)
    assert hpke.seal(private.public_key(), b"i", b"p", ephemeral) == raw


def test_seal_is_deterministic_in_the_ephemeral_key_only() -> None:
    public = _public(_fresh_key())
    ephemeral = os.urandom(32)
    first = hpke.seal(public, b"info", b"plaintext", ephemeral)
    assert hpke.seal(public, b"info", b"plaintext", ephemeral) == first
    assert hpke.seal(public, b"info", b"plaintext", os.urandom(32)) != first


@settings(max_examples=60, deadline=None)
@given(plaintext=st.binary(max_size=300), info=st.binary(max_size=100))
def test_any_plaintext_and_info_round_trip(plaintext: bytes, info: bytes) -> None:
    private = _fresh_key()
    sealed = hpke.seal(_public(private), info, plaintext, os.urandom(32))
    assert hpke.open(private, info, sealed) == plaintext


# --- Refusals -------------------------------------------------------------------------------


def test_open_with_another_info_fails() -> None:
    private = _fresh_key()
    sealed = hpke.seal(_public(private), b"header A", b"secret", os.urandom(32))
    _open_fails(private, b"header B", sealed)
    _open_fails(private, b"", sealed)


def test_open_with_another_private_key_fails() -> None:
    sealed = hpke.seal(_public(_fresh_key()), b"i", b"secret", os.urandom(32))
    _open_fails(_fresh_key(), b"i", sealed)


def test_every_flipped_bit_of_enc_ciphertext_and_tag_fails() -> None:
    private = _fresh_key()
    sealed = hpke.seal(_public(private), b"i", b"0123456789", os.urandom(32))
    for index in range(len(sealed)):
        for bit in range(8):
            tampered = bytearray(sealed)
            tampered[index] ^= 1 << bit
            _open_fails(private, b"i", bytes(tampered))


def test_truncated_and_extended_sealed_data_fails() -> None:
    private = _fresh_key()
    sealed = hpke.seal(_public(private), b"i", b"0123456789", os.urandom(32))
    for length in range(len(sealed)):
        _open_fails(private, b"i", sealed[:length])
    _open_fails(private, b"i", sealed + b"\x00")
    _open_fails(private, b"i", b"")


def test_low_order_encapsulated_key_fails_as_decrypt_failed() -> None:
    private = _fresh_key()
    _open_fails(private, b"i", bytes(32) + bytes(40))
    with pytest.raises(EnvelopeRejected):
        hpke.decapsulate(bytes(32), private)


def test_sealing_to_a_low_order_public_key_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        hpke.seal(bytes(32), b"i", b"p", os.urandom(32))
    assert caught.value.code is ErrorCode.INVALID_FIELD


@pytest.mark.parametrize("ephemeral", [b"", bytes(31), bytes(33)])
def test_wrong_length_ephemeral_key_is_refused_locally(ephemeral: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        hpke.seal(_public(_fresh_key()), b"i", b"p", ephemeral)


def test_wrong_length_recipient_key_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError):
        hpke.seal(bytes(31), b"i", b"p", os.urandom(32))
