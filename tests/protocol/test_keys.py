"""Keys: encryption key announcements, key bundles, identity succession, revocation, fingerprints,
TLS pins, and the known-answer vectors of tests/vectors/keys.json."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, keys, messages
from protocol.errors import DecodeError, ErrorCode, LocalProtocolError, ProtocolError
from protocol.keys import (
    EncryptionKey,
    KeyBundle,
    KeyKind,
    KeyLogHead,
    SignedKeyBundle,
    SignedSuccession,
    VerifiedKeyBundle,
    VerifyKey,
)
from protocol.limits import Limits
from protocol.signing import Purpose, sign, verify

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "keys.json").read_text(encoding="utf-8")
)
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400
NOW = T0 + 3600


def ed25519(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"test key " + label.encode()).digest()
    )


def x25519_public(label: str) -> bytes:
    seed = hashlib.sha256(b"test x25519 " + label.encode()).digest()
    return X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def pub(label: str) -> bytes:
    return keys.public_bytes(ed25519(label))


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
        "current": keys.announce_encryption_key(private, current),
        "next_key": keys.announce_encryption_key(private, nxt),
        "tls_pins": [PIN],
        "key_log": LOG_HEAD,
        "issued_at": NOW,
        "sequence": 1,
    }
    args.update(fields)
    return keys.sign_bundle(private, **args)


def forge_bundle(identity: str = "stockholm", **changes: Any) -> bytes:
    """A correctly signed bundle whose body was changed, bypassing sign_bundle's checks."""
    outer = codec.decode(make_bundle(identity), SignedKeyBundle, max_bytes=1 << 20, what="t")
    body = codec.decode(outer.bundle, KeyBundle, max_bytes=1 << 20, what="t")
    body_bytes = codec.encode(msgspec.structs.replace(body, **changes))
    signature = sign(ed25519(identity), Purpose.KEY_BUNDLE, body_bytes)
    return codec.encode(SignedKeyBundle(body_bytes, signature))


def refused(code: ErrorCode, data: bytes, expected: bytes | None, now: int = NOW) -> None:
    with pytest.raises(ProtocolError) as caught:
        keys.verify_bundle(data, expected, now)
    assert caught.value.code is code


# --- Key records -------------------------------------------------------------------------------


def test_one_public_key_has_different_ids_as_identity_and_encryption_key() -> None:
    key = pub("stockholm")
    assert keys.key_id(KeyKind.IDENTITY, key) != keys.key_id(KeyKind.ENCRYPTION, key)
    assert len(keys.key_id(KeyKind.IDENTITY, key)) == 16


def test_encryption_key_record_with_empty_window_cannot_be_made() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        keys.encryption_key(x25519_public("a"), epoch=1, not_before=T0, not_after=T0)
    assert caught.value.code is ErrorCode.INVALID_FIELD


def test_key_module_city_rule_is_the_message_catalogue_rule() -> None:
    ours = keys.CityName.__metadata__[0]
    theirs = messages.CityName.__metadata__[0]
    assert (ours.pattern, ours.min_length, ours.max_length) == (
        theirs.pattern,
        theirs.min_length,
        theirs.max_length,
    )


# --- Key bundles -------------------------------------------------------------------------------


def test_bundle_verifies_and_carries_the_signed_key_state() -> None:
    data = make_bundle(sequence=7)
    bundle = keys.verify_bundle(data, pub("stockholm"), NOW)
    assert isinstance(bundle, VerifiedKeyBundle)
    assert (bundle.city, bundle.identity_key, bundle.sequence) == ("stockholm", pub("stockholm"), 7)
    assert (bundle.current, bundle.next, bundle.key_log) == (CURRENT, NEXT, LOG_HEAD)
    assert bundle.tls_pins == (PIN,)
    assert bundle.signed_bytes == data


def test_bundle_on_first_contact_verifies_without_an_expected_key() -> None:
    bundle = keys.verify_bundle(make_bundle(), None, NOW)
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
                keys.verify_bundle(bytes(tampered), pub("stockholm"), NOW)


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
    foreign = keys.announce_encryption_key(ed25519("goteborg"), CURRENT)
    refused(ErrorCode.BAD_SIGNATURE, forge_bundle(current=foreign), None)


def test_bundle_whose_encryption_key_id_does_not_match_is_refused() -> None:
    wrong = msgspec.structs.replace(CURRENT, key_id=NEXT.key_id)
    announced = keys.announce_encryption_key(ed25519("stockholm"), wrong)
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
        current=keys.announce_encryption_key(private, current),
        next=keys.announce_encryption_key(private, nxt),
    )
    refused(ErrorCode.BAD_KEY_BUNDLE, data, None)


def test_bundle_whose_next_key_repeats_the_current_key_is_refused() -> None:
    private = ed25519("stockholm")
    same = keys.encryption_key(
        CURRENT.public_key, epoch=2, not_before=T0 + DAY, not_after=T0 + 100 * DAY
    )
    data = forge_bundle(next=keys.announce_encryption_key(private, same))
    refused(ErrorCode.BAD_KEY_BUNDLE, data, None)


def test_bundle_whose_current_key_expired_is_refused() -> None:
    refused(ErrorCode.EXPIRED_KEY, make_bundle(), None, now=CURRENT.not_after + 1)


def test_bundle_issued_beyond_the_clock_skew_is_refused() -> None:
    refused(ErrorCode.FROM_FUTURE, make_bundle(issued_at=NOW + 301), None)
    keys.verify_bundle(make_bundle(issued_at=NOW + 300), None, NOW)


def test_bundle_repeating_a_tls_pin_is_refused() -> None:
    refused(ErrorCode.BAD_KEY_BUNDLE, forge_bundle(tls_pins=(PIN, PIN)), None)


def test_bundle_with_trailing_bytes_or_truncated_is_a_decode_error() -> None:
    data = make_bundle()
    for broken in (data + b"\x00", data[:-1], b""):
        with pytest.raises(DecodeError):
            keys.verify_bundle(broken, None, NOW)
    with pytest.raises(DecodeError) as caught:
        keys.verify_bundle(data, None, NOW, Limits(max_document_bytes=len(data) - 1))
    assert caught.value.code is ErrorCode.OVERSIZED


def test_node_cannot_sign_a_bundle_peers_would_refuse() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        make_bundle(nxt=enc(5, T0 + 60 * DAY, T0 + 180 * DAY))
    assert caught.value.code is ErrorCode.BAD_KEY_BUNDLE
    with pytest.raises(LocalProtocolError):
        make_bundle(city="Stockholm")


def test_sealer_picks_the_newest_encryption_key_valid_at_the_time() -> None:
    bundle = keys.verify_bundle(make_bundle(), None, NOW)
    assert bundle.sealing_key(NOW) == CURRENT
    assert bundle.sealing_key(NEXT.not_before) == NEXT
    assert bundle.sealing_key(CURRENT.not_after + 1) == NEXT
    with pytest.raises(ProtocolError) as caught:
        bundle.sealing_key(NEXT.not_after + 1)
    assert caught.value.code is ErrorCode.EXPIRED_KEY
    assert bundle.encryption_key(NEXT.key_id) == NEXT
    assert bundle.encryption_key(bytes(16)) is None


def test_bundle_update_must_move_forward() -> None:
    first = keys.verify_bundle(make_bundle(sequence=5), None, NOW)
    keys.check_bundle_update(first, first)
    newer = keys.verify_bundle(make_bundle(sequence=6), None, NOW)
    keys.check_bundle_update(first, newer)
    for stale in (make_bundle(sequence=5, issued_at=NOW + 1), make_bundle(sequence=4)):
        with pytest.raises(ProtocolError) as caught:
            keys.check_bundle_update(first, keys.verify_bundle(stale, None, NOW))
        assert caught.value.code is ErrorCode.BAD_KEY_BUNDLE
    shrunk = make_bundle(sequence=9, key_log=KeyLogHead(4, bytes(32)))
    with pytest.raises(ProtocolError):
        keys.check_bundle_update(first, keys.verify_bundle(shrunk, None, NOW))


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
    bundle = keys.verify_bundle(data, pub("stockholm"), start)
    assert (bundle.current, bundle.next, bundle.tls_pins) == (current, nxt, tuple(pins))
    assert (bundle.key_log, bundle.sequence, bundle.issued_at) == (head, sequence, start)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_as_a_bundle_raise_only_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        keys.verify_bundle(data, None, NOW)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_bundles_raise_only_protocol_errors(data: st.DataObject) -> None:
    original = bytearray(make_bundle())
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(original) - 1))
        original[index] = data.draw(st.integers(0, 255))
    try:
        keys.verify_bundle(bytes(original), pub("stockholm"), NOW)
    except ProtocolError:
        return
    assert bytes(original) == make_bundle()  # only an unchanged bundle may verify


# --- Identity succession -----------------------------------------------------------------------

SUCCESSION_AT = T0 + 100 * DAY


def succession(old: str, new: str, at: int = SUCCESSION_AT, city: str = "stockholm") -> bytes:
    return keys.sign_succession(ed25519(old), ed25519(new), city=city, effective_from=at)


def genesis(label: str = "stockholm") -> VerifyKey:
    return keys.identity_key(pub(label), T0)


def chain_error(statements: list[bytes], **kwargs: Any) -> ErrorCode:
    with pytest.raises(ProtocolError) as caught:
        keys.verify_succession_chain(genesis(), statements, **kwargs)
    return caught.value.code


def test_archived_signature_by_the_old_key_still_verifies_for_its_time() -> None:
    chain = keys.verify_succession_chain(genesis(), [succession("stockholm", "stockholm-2")])
    archived_at = SUCCESSION_AT - 1
    payload = b"archived receipt"
    signature = sign(ed25519("stockholm"), Purpose.RECEIPT, payload)
    old = keys.key_at(chain, keys.key_id(KeyKind.IDENTITY, pub("stockholm")), archived_at)
    assert verify(old.public_key, Purpose.RECEIPT, payload, signature)
    assert (chain[0].valid_until, chain[1].valid_from) == (SUCCESSION_AT - 1, SUCCESSION_AT)
    assert chain[1].valid_until is None


def test_new_signature_by_the_old_key_after_succession_is_refused() -> None:
    chain = keys.verify_succession_chain(genesis(), [succession("stockholm", "stockholm-2")])
    old_id = keys.key_id(KeyKind.IDENTITY, pub("stockholm"))
    with pytest.raises(ProtocolError) as caught:
        keys.key_at(chain, old_id, SUCCESSION_AT)
    assert caught.value.code is ErrorCode.EXPIRED_KEY
    new = keys.key_at(chain, keys.key_id(KeyKind.IDENTITY, pub("stockholm-2")), SUCCESSION_AT)
    assert new.public_key == pub("stockholm-2")


def test_two_successions_give_three_consecutive_windows() -> None:
    later = SUCCESSION_AT + 50 * DAY
    chain = keys.verify_succession_chain(
        genesis(),
        [succession("stockholm", "stockholm-2"), succession("stockholm-2", "stockholm-3", later)],
        city="stockholm",
    )
    assert [(k.valid_from, k.valid_until) for k in chain] == [
        (T0, SUCCESSION_AT - 1),
        (SUCCESSION_AT, later - 1),
        (later, None),
    ]


def test_succession_signed_by_one_of_the_two_keys_only_is_refused() -> None:
    signed = codec.decode(
        succession("stockholm", "stockholm-2"), SignedSuccession, max_bytes=4096, what="t"
    )
    only_old = msgspec.structs.replace(signed, new_signature=bytes(64))
    only_new = msgspec.structs.replace(signed, old_signature=bytes(64))
    swapped = msgspec.structs.replace(
        signed, old_signature=signed.new_signature, new_signature=signed.old_signature
    )
    for forged in (only_old, only_new, swapped):
        assert chain_error([codec.encode(forged)]) is ErrorCode.BAD_SIGNATURE


def test_succession_not_starting_from_the_trusted_key_is_refused() -> None:
    assert chain_error([succession("stockholm-2", "stockholm-3")]) is ErrorCode.BAD_SUCCESSION


def test_succession_back_to_an_earlier_key_is_refused() -> None:
    statements = [
        succession("stockholm", "stockholm-2"),
        succession("stockholm-2", "stockholm", SUCCESSION_AT + DAY),
    ]
    assert chain_error(statements) is ErrorCode.BAD_SUCCESSION


def test_succession_going_back_in_time_is_refused() -> None:
    statements = [
        succession("stockholm", "stockholm-2"),
        succession("stockholm-2", "stockholm-3", SUCCESSION_AT),
    ]
    assert chain_error(statements) is ErrorCode.BAD_SUCCESSION
    assert chain_error([succession("stockholm", "stockholm-2", T0)]) is ErrorCode.BAD_SUCCESSION


def test_succession_for_another_city_is_refused() -> None:
    other = succession("stockholm", "stockholm-2", city="malmo")
    assert chain_error([other], city="stockholm") is ErrorCode.BAD_SUCCESSION


def test_succession_chain_longer_than_the_limit_is_refused() -> None:
    statements = [succession("stockholm", "stockholm-2")]
    assert chain_error(statements, limits=Limits(max_key_successions=0)) is ErrorCode.BAD_SUCCESSION


def test_key_cannot_be_made_to_succeed_itself() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        succession("stockholm", "stockholm")
    assert caught.value.code is ErrorCode.BAD_SUCCESSION


# --- Revocation --------------------------------------------------------------------------------

COMPROMISED = T0 + 40 * DAY


def revocation(signer: str, revoked: str = "stockholm", since: int = COMPROMISED) -> bytes:
    return keys.sign_revocation(
        ed25519(signer), city="stockholm", revoked_key=pub(revoked), compromised_since=since
    )


def test_revoked_key_counts_before_the_compromise_and_not_after() -> None:
    chain = keys.apply_revocation([genesis()], revocation("stockholm"), city="stockholm")
    kid = keys.key_id(KeyKind.IDENTITY, pub("stockholm"))
    assert chain[0].revoked_since == COMPROMISED
    assert keys.key_at(chain, kid, COMPROMISED - 1).public_key == pub("stockholm")
    with pytest.raises(ProtocolError) as caught:
        keys.key_at(chain, kid, COMPROMISED)
    assert caught.value.code is ErrorCode.REVOKED_KEY


def test_successor_may_revoke_a_retired_key_leaked_after_its_retirement() -> None:
    chain = keys.verify_succession_chain(genesis(), [succession("stockholm", "stockholm-2")])
    leaked = SUCCESSION_AT + 10 * DAY
    revoked = keys.apply_revocation(chain, revocation("stockholm-2", since=leaked))
    assert revoked[0].revoked_since == leaked
    assert revoked[1].revoked_since is None  # its succession predates the compromise


def test_succession_made_effective_after_the_compromise_is_distrusted() -> None:
    chain = keys.verify_succession_chain(genesis(), [succession("stockholm", "stockholm-2")])
    early = revocation("stockholm", since=SUCCESSION_AT - DAY)
    revoked = keys.apply_revocation(chain, early)
    assert revoked[1].revoked_since == SUCCESSION_AT
    with pytest.raises(ProtocolError) as caught:
        keys.key_at(revoked, revoked[1].key_id, SUCCESSION_AT + 1)
    assert caught.value.code is ErrorCode.REVOKED_KEY


def test_earliest_compromise_time_wins() -> None:
    once = keys.apply_revocation([genesis()], revocation("stockholm", since=COMPROMISED))
    later = keys.apply_revocation(once, revocation("stockholm", since=COMPROMISED + DAY))
    earlier = keys.apply_revocation(once, revocation("stockholm", since=COMPROMISED - DAY))
    assert later[0].revoked_since == COMPROMISED
    assert earlier[0].revoked_since == COMPROMISED - DAY


def test_revocation_by_a_predecessor_or_a_stranger_is_refused() -> None:
    chain = keys.verify_succession_chain(genesis(), [succession("stockholm", "stockholm-2")])
    for signed in (revocation("stockholm", "stockholm-2"), revocation("goteborg")):
        with pytest.raises(ProtocolError) as caught:
            keys.apply_revocation(chain, signed)
        assert caught.value.code is ErrorCode.UNKNOWN_KEY


def test_revocation_with_a_forged_signature_or_for_another_city_is_refused() -> None:
    signed = codec.decode(revocation("stockholm"), keys.SignedRevocation, max_bytes=4096, what="t")
    forged = codec.encode(msgspec.structs.replace(signed, signature=bytes(64)))
    with pytest.raises(ProtocolError) as caught:
        keys.apply_revocation([genesis()], forged)
    assert caught.value.code is ErrorCode.BAD_SIGNATURE
    with pytest.raises(ProtocolError):
        keys.apply_revocation([genesis()], revocation("stockholm"), city="malmo")


def test_signature_by_an_unknown_key_id_is_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        keys.key_at([genesis()], bytes(16), NOW)
    assert caught.value.code is ErrorCode.UNKNOWN_KEY
    with pytest.raises(ProtocolError) as early:
        keys.key_at([genesis()], genesis().key_id, T0 - 1)
    assert early.value.code is ErrorCode.EXPIRED_KEY


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


def _identity(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["identities"][name]["seed"]))


def _chain_json(chain: tuple[VerifyKey, ...]) -> list[dict[str, Any]]:
    return [
        {
            "key_id": k.key_id.hex(),
            "valid_from": k.valid_from,
            "valid_until": k.valid_until,
            "revoked_since": k.revoked_since,
        }
        for k in chain
    ]


def test_vector_identities_match_their_seeds() -> None:
    for name, vector in VECTORS["identities"].items():
        public = keys.public_bytes(_identity(name))
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
    identity = _identity(VECTORS["bundle"]["identity"])
    for name in ("current", "next"):
        vector = VECTORS["bundle"][name]
        record = _vector_encryption_key(vector)
        assert (record.public_key.hex(), record.key_id.hex()) == (
            vector["public_key"],
            vector["key_id"],
        )
        announced = keys.announce_encryption_key(identity, record)
        assert announced.key.hex() == vector["record_bytes"]
        assert announced.signature.hex() == vector["signature"]
        assert codec.encode(announced).hex() == vector["announcement"]
        received = codec.decode(
            bytes.fromhex(vector["announcement"]),
            keys.SignedEncryptionKey,
            max_bytes=1024,
            what="t",
        )
        assert keys.verify_encryption_key(received, keys.public_bytes(identity)) == record


def test_vector_bundle_is_reproduced_from_its_inputs() -> None:
    vector = VECTORS["bundle"]
    identity = _identity(vector["identity"])
    signed = keys.sign_bundle(
        identity,
        city=vector["city"],
        current=keys.announce_encryption_key(identity, _vector_encryption_key(vector["current"])),
        next_key=keys.announce_encryption_key(identity, _vector_encryption_key(vector["next"])),
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
    bundle = keys.verify_bundle(bytes.fromhex(vector["signed"]), identity, vector["verify_at"])
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
        keys.verify_bundle(bytes.fromhex(case["signed"]), expected, case["now"])
    assert caught.value.code == case["error"]


def test_vector_succession_is_reproduced_and_verifies() -> None:
    vector = VECTORS["succession"]
    signed = keys.sign_succession(
        _identity(vector["old"]),
        _identity(vector["new"]),
        city=vector["city"],
        effective_from=vector["effective_from"],
    )
    assert signed.hex() == vector["signed"]
    wire = codec.decode(signed, SignedSuccession, max_bytes=4096, what="t")
    assert wire.statement.hex() == vector["statement"]
    assert (wire.old_signature.hex(), wire.new_signature.hex()) == (
        vector["old_signature"],
        vector["new_signature"],
    )
    old = bytes.fromhex(VECTORS["identities"][vector["old"]]["public_key"])
    chain = keys.verify_succession_chain(keys.identity_key(old), [bytes.fromhex(vector["signed"])])
    assert _chain_json(chain) == vector["chain"]


def test_vector_revocation_is_reproduced_and_applies() -> None:
    vector = VECTORS["revocation"]
    revoked = bytes.fromhex(VECTORS["identities"][vector["revoked"]]["public_key"])
    signed = keys.sign_revocation(
        _identity(vector["signer"]),
        city=vector["city"],
        revoked_key=revoked,
        compromised_since=vector["compromised_since"],
    )
    assert signed.hex() == vector["signed"]
    chain = keys.apply_revocation([keys.identity_key(revoked)], bytes.fromhex(vector["signed"]))
    assert _chain_json(chain) == vector["chain"]
