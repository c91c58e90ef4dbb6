"""Keys: key ids and records, which key counts when, fingerprints, TLS pins, and their known-answer
vectors in tests/vectors/keys.json."""

from __future__ import annotations

import hashlib
import re

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from key_fixtures import NOW, T0, VECTORS, pub, vector_identity, x25519_public

from protocol import keys
from protocol.errors import ErrorCode, LocalProtocolError, ProtocolError
from protocol.keys import KeyKind

# --- Key records -------------------------------------------------------------------------------


def test_one_public_key_has_different_ids_as_identity_and_encryption_key() -> None:
    key = pub("stockholm")
    assert keys.key_id(KeyKind.IDENTITY, key) != keys.key_id(KeyKind.ENCRYPTION, key)
    assert len(keys.key_id(KeyKind.IDENTITY, key)) == 16


def test_encryption_key_record_with_empty_window_cannot_be_made() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        keys.encryption_key(x25519_public("a"), epoch=1, not_before=T0, not_after=T0)
    assert caught.value.code is ErrorCode.INVALID_FIELD


# --- Which key counts when --------------------------------------------------------------------


def test_signature_by_an_unknown_key_id_is_refused() -> None:
    trusted = keys.identity_key(pub("stockholm"), T0)
    with pytest.raises(ProtocolError) as caught:
        keys.key_at([trusted], bytes(16), NOW)
    assert caught.value.code is ErrorCode.UNKNOWN_KEY
    with pytest.raises(ProtocolError) as early:
        keys.key_at([trusted], trusted.key_id, T0 - 1)
    assert early.value.code is ErrorCode.EXPIRED_KEY


def test_key_is_found_whatever_its_window_but_counts_only_inside_it_and_before_revocation() -> None:
    retired = msgspec.structs.replace(
        keys.identity_key(pub("stockholm"), T0), valid_until=T0 + 10, revoked_since=T0 + 5
    )
    other = keys.identity_key(pub("goteborg"), T0)
    assert keys.find_key([other, retired], retired.key_id) is retired
    keys.check_key_at(retired, T0 + 4)
    for at, code in (
        (T0 - 1, ErrorCode.EXPIRED_KEY),
        (T0 + 5, ErrorCode.REVOKED_KEY),
        (T0 + 11, ErrorCode.REVOKED_KEY),  # revocation is reported before the window
    ):
        with pytest.raises(ProtocolError) as caught:
            keys.check_key_at(retired, at)
        assert caught.value.code is code
        with pytest.raises(ProtocolError) as same:
            keys.key_at([other, retired], retired.key_id, at)
        assert same.value.code is code


# --- Fingerprints and TLS pins -----------------------------------------------------------------


def test_fingerprint_is_six_groups_of_five_digits_and_names_city_and_key() -> None:
    text = keys.fingerprint("stockholm", pub("stockholm"))
    assert re.fullmatch(r"\d{5}( \d{5}){5}", text)
    assert text != keys.fingerprint("goteborg", pub("stockholm"))
    assert text != keys.fingerprint("stockholm", pub("stockholm-2"))
    assert text == keys.fingerprint("stockholm", pub("stockholm"))


def test_fingerprint_of_a_malformed_city_or_key_cannot_be_made() -> None:
    for city, key in (("Stockholm", pub("stockholm")), ("stockholm", b"short")):
        with pytest.raises(LocalProtocolError):
            keys.fingerprint(city, key)


def test_tls_pin_is_the_sha256_of_the_spki() -> None:
    assert keys.tls_pin(b"spki") == hashlib.sha256(b"spki").digest()
    with pytest.raises(LocalProtocolError):
        keys.tls_pin(b"")


# --- Known-answer vectors ----------------------------------------------------------------------


def test_vector_identities_match_their_seeds() -> None:
    for name, vector in VECTORS["identities"].items():
        public = keys.public_bytes(vector_identity(name))
        assert public.hex() == vector["public_key"]
        layout = b"citynode/v1 key-id\x00\x01" + public
        assert hashlib.sha256(layout).digest()[:16].hex() == vector["key_id"]


def test_vector_fingerprints_follow_the_documented_algorithm() -> None:
    for vector in VECTORS["fingerprints"]:
        key = bytes.fromhex(vector["identity_public"])
        digest = b"\x00\x00" + key + vector["city"].encode()
        assert digest.hex() == vector["initial_input"]
        for _ in range(5200):
            digest = hashlib.sha512(digest + key).digest()
        assert digest.hex() == vector["final_digest"]
        groups = [int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 30, 5)]
        assert " ".join(f"{g:05d}" for g in groups) == vector["fingerprint"]
        assert keys.fingerprint(vector["city"], key) == vector["fingerprint"]


def test_vector_tls_pins_are_reproduced() -> None:
    for vector in VECTORS["tls_pins"]:
        seed = bytes.fromhex(vector["tls_seed"])
        spki = (
            Ed25519PrivateKey.from_private_bytes(seed)
            .public_key()
            .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        assert spki.hex() == vector["spki_der"]
        assert keys.tls_pin(spki).hex() == vector["pin"]
