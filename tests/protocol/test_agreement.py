"""The agreement document: version 1 as the trust root, the version chain and its thresholds,
member key replacement, the document's rules and decoding, and the vectors of
tests/vectors/agreement.json."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import msgspec
import pytest
from agreement_fixtures import (
    CITIES,
    TODAY,
    VECTORS,
    document,
    document_from_json,
    ed,
    genesis,
    member,
    pub,
    sample_with,
    signed,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import agreement, agreement_draft, codec, keys
from protocol.agreement import (
    AgreementDocument,
    SignedAgreement,
    Unit,
    VerifiedAgreement,
)
from protocol.errors import (
    AgreementRejected,
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
)
from protocol.limits import Limits
from protocol.messages import ThreatLevel


def refused(code: ErrorCode, current: VerifiedAgreement, data: bytes) -> AgreementRejected:
    with pytest.raises(AgreementRejected) as caught:
        agreement.verify_successor(current, data, TODAY)
    assert caught.value.code is code, caught.value.message
    return caught.value


def with_uppsala(current: VerifiedAgreement) -> AgreementDocument:
    """Version 2: Uppsala joins; four members, so the threshold becomes 3."""
    members = [*current.document.members, member("uppsala")]
    return document(2, current, members, threshold=3)


# --- Version 1 ---------------------------------------------------------------------------------


def test_version_1_signed_by_a_threshold_of_its_members_is_trusted() -> None:
    first = genesis(["goteborg", "malmo"])
    assert first.version == 1
    assert first.signers == {
        keys.key_id(keys.KeyKind.IDENTITY, pub(c)) for c in ("goteborg", "malmo")
    }
    assert first.document_hash == hashlib.sha256(first.document_bytes).digest()


def test_version_1_signed_by_one_member_is_refused() -> None:
    with pytest.raises(AgreementRejected) as caught:
        genesis(["stockholm"])
    assert caught.value.code is ErrorCode.AGREEMENT_THRESHOLD


def test_version_1_signed_by_outsiders_only_is_refused() -> None:
    with pytest.raises(AgreementRejected) as caught:
        genesis(["uppsala", "lund"])
    assert caught.value.code is ErrorCode.NOT_A_MEMBER


def test_version_1_naming_keys_other_than_those_verified_out_of_band_is_refused() -> None:
    data = signed(document(), CITIES)
    trusted = {c: pub(c) for c in CITIES}
    assert agreement.verify_genesis(data, TODAY, trusted).version == 1
    for wrong in ({**trusted, "malmo": pub("mallory")}, {"stockholm": pub("stockholm")}):
        with pytest.raises(AgreementRejected) as caught:
            agreement.verify_genesis(data, TODAY, wrong)
        assert caught.value.code is ErrorCode.UNKNOWN_KEY


def test_trust_root_that_is_not_version_1_is_refused() -> None:
    first = genesis()
    with pytest.raises(AgreementRejected) as caught:
        agreement.verify_genesis(signed(with_uppsala(first), [*CITIES, "uppsala"]), TODAY)
    assert caught.value.code is ErrorCode.AGREEMENT_INVALID


def test_expired_version_1_is_refused() -> None:
    with pytest.raises(AgreementRejected) as caught:
        agreement.verify_genesis(signed(document(), CITIES), datetime.date(2029, 1, 1))
    assert caught.value.code is ErrorCode.AGREEMENT_EXPIRED
    assert agreement.verify_genesis(signed(document(), CITIES), datetime.date(2028, 12, 31))


# --- Version N → N+1 ---------------------------------------------------------------------------


def test_new_member_joins_with_thresholds_of_old_and_new_members() -> None:
    first = genesis()
    second = agreement.verify_successor(
        first, signed(with_uppsala(first), ["stockholm", "goteborg", "uppsala"]), TODAY
    )
    assert second.version == 2
    assert second.document.previous_hash == first.document_hash
    assert second.member("uppsala").endpoint == "https://uppsala.example:8443"


def test_successor_signed_by_a_threshold_of_old_members_only_is_refused() -> None:
    first = genesis()
    error = refused(
        ErrorCode.AGREEMENT_THRESHOLD,
        first,
        signed(with_uppsala(first), ["stockholm", "goteborg"]),
    )
    assert "new-version" in error.message


def test_successor_signed_by_a_threshold_of_new_members_only_is_refused() -> None:
    first = genesis()
    members = [member("stockholm"), member("goteborg", "goteborg-2"), member("malmo", "malmo-2")]
    data = signed(document(2, first, members), ["stockholm", "goteborg-2", "malmo-2"])
    error = refused(ErrorCode.AGREEMENT_THRESHOLD, first, data)
    assert "current-version" in error.message


def test_duplicate_signatures_by_one_key_count_once() -> None:
    first = genesis()
    refused(
        ErrorCode.AGREEMENT_THRESHOLD,
        first,
        signed(with_uppsala(first), ["stockholm", "stockholm", "stockholm", "uppsala"]),
    )


def test_signature_that_does_not_verify_counts_for_nothing() -> None:
    first = genesis()
    data = agreement.encode_document(with_uppsala(first))
    good = [agreement.sign_document(ed(s), data) for s in ("stockholm", "goteborg", "uppsala")]
    broken = msgspec.structs.replace(good[1], signature=bytes(64))
    refused(ErrorCode.AGREEMENT_THRESHOLD, first, agreement.encode_signed(data, [good[0], broken]))
    with_extra = agreement.encode_signed(data, [good[0], broken, *good[1:]])
    assert agreement.verify_successor(first, with_extra, TODAY).version == 2


def test_signatures_by_non_members_only_are_refused() -> None:
    first = genesis()
    refused(ErrorCode.NOT_A_MEMBER, first, signed(with_uppsala(first), ["lund", "umea"]))


def test_removed_member_signature_does_not_count_for_the_new_version() -> None:
    first = genesis()
    without_malmo = document(2, first, [member("stockholm"), member("goteborg")], threshold=2)
    error = refused(
        ErrorCode.AGREEMENT_THRESHOLD, first, signed(without_malmo, ["stockholm", "malmo"])
    )
    assert "new-version" in error.message
    accepted = agreement.verify_successor(
        first, signed(without_malmo, ["stockholm", "goteborg"]), TODAY
    )
    assert [m.city for m in accepted.document.members] == ["stockholm", "goteborg"]


def test_same_version_again_is_refused_as_rollback() -> None:
    first = genesis()
    refused(ErrorCode.AGREEMENT_ROLLBACK, first, signed(document(), CITIES))


def test_older_version_is_refused_as_rollback() -> None:
    first = genesis()
    second = agreement.verify_successor(
        first, signed(with_uppsala(first), ["stockholm", "goteborg", "malmo", "uppsala"]), TODAY
    )
    refused(ErrorCode.AGREEMENT_ROLLBACK, second, first.signed_bytes)


def test_another_document_with_the_current_version_number_is_a_fork() -> None:
    first = genesis()
    refused(ErrorCode.AGREEMENT_FORK, first, signed(document(title="Annat avtal"), CITIES))


def test_skipped_version_is_refused() -> None:
    first = genesis()
    third = document(3, first)
    refused(ErrorCode.AGREEMENT_SKIPPED_VERSION, first, signed(third, CITIES))


def test_successor_naming_another_previous_document_is_a_fork() -> None:
    first = genesis()
    forked = msgspec.structs.replace(
        with_uppsala(first), previous_hash=hashlib.sha256(b"x").digest()
    )
    refused(ErrorCode.AGREEMENT_FORK, first, signed(forked, [*CITIES, "uppsala"]))


def test_successor_that_has_already_expired_is_refused() -> None:
    first = genesis()
    expired = document(2, first, valid_until=datetime.date(2026, 5, 31))
    refused(ErrorCode.AGREEMENT_EXPIRED, first, signed(expired, CITIES))


def test_lapsed_agreement_is_renewed_by_its_members() -> None:
    lapsed_until = datetime.date(2025, 12, 31)
    old = document(valid_from=datetime.date(2025, 1, 1), valid_until=lapsed_until)
    first = agreement.verify_genesis(signed(old, CITIES), lapsed_until)
    renewal = document(2, first)
    assert agreement.verify_successor(first, signed(renewal, CITIES), TODAY).version == 2


# --- Replacing a member's key ------------------------------------------------------------------


def replace_malmo(first: VerifiedAgreement, revoke: bool = True) -> AgreementDocument:
    members = [member("stockholm"), member("goteborg"), member("malmo", "malmo-2")]
    return document(2, first, members, revoked=[pub("malmo")] if revoke else [])


def test_other_members_replace_a_compromised_members_key() -> None:
    first = genesis()
    second = agreement.verify_successor(
        first, signed(replace_malmo(first), ["stockholm", "goteborg"]), TODAY
    )
    assert second.member("malmo").identity_key == pub("malmo-2")
    assert second.document.revoked_keys == (pub("malmo"),)


def test_compromised_key_does_not_count_toward_its_own_replacement() -> None:
    first = genesis()
    data = signed(replace_malmo(first), ["stockholm", "malmo", "malmo-2"])
    error = refused(ErrorCode.AGREEMENT_THRESHOLD, first, data)
    assert "current-version" in error.message


def test_member_cannot_approve_its_own_key_change_even_without_revocation() -> None:
    first = genesis()
    data = signed(replace_malmo(first, revoke=False), ["stockholm", "malmo", "malmo-2"])
    refused(ErrorCode.AGREEMENT_THRESHOLD, first, data)


def test_attacker_holding_a_compromised_key_cannot_sign_a_version_alone() -> None:
    first = genesis()
    hijack = document(
        2, first, [member("stockholm"), member("goteborg"), member("malmo", "mallory")]
    )
    refused(ErrorCode.AGREEMENT_THRESHOLD, first, signed(hijack, ["malmo", "mallory"]))


def test_revoked_key_stays_revoked_in_later_versions() -> None:
    first = genesis()
    second = agreement.verify_successor(
        first, signed(replace_malmo(first), ["stockholm", "goteborg"]), TODAY
    )
    members = second.document.members
    forgetful = document(3, second, members)
    with pytest.raises(AgreementRejected) as caught:
        agreement.verify_successor(second, signed(forgetful, CITIES), TODAY)
    assert caught.value.code is ErrorCode.AGREEMENT_INVALID
    with pytest.raises(LocalProtocolError) as back:
        document(3, second, [*members[:2], member("malmo")], revoked=[pub("malmo")])
    assert back.value.code is ErrorCode.AGREEMENT_INVALID


# --- Chains ------------------------------------------------------------------------------------


def test_chain_verifies_to_its_last_version_and_ignores_expiry_of_history() -> None:
    old = document(valid_from=datetime.date(2024, 1, 1), valid_until=datetime.date(2025, 12, 31))
    v1 = agreement.verify_genesis(signed(old, CITIES), datetime.date(2025, 1, 1))
    v2 = agreement.verify_successor(v1, signed(document(2, v1), CITIES), TODAY)
    v3_doc = replace_malmo(v2)
    v3_doc = msgspec.structs.replace(v3_doc, version=3)
    last = agreement.verify_chain(
        v1.signed_bytes,
        [v2.signed_bytes, signed(v3_doc, ["stockholm", "goteborg"])],
        TODAY,
        trusted_identity_keys={c: pub(c) for c in CITIES},
    )
    assert last.version == 3
    with pytest.raises(AgreementRejected) as caught:
        agreement.verify_chain(v1.signed_bytes, [], TODAY)
    assert caught.value.code is ErrorCode.AGREEMENT_EXPIRED


def test_chain_with_a_missing_link_is_refused() -> None:
    v1 = genesis()
    v2 = agreement.verify_successor(v1, signed(document(2, v1), CITIES), TODAY)
    v3 = signed(document(3, v2), CITIES)
    with pytest.raises(AgreementRejected) as caught:
        agreement.verify_chain(v1.signed_bytes, [v3], TODAY)
    assert caught.value.code is ErrorCode.AGREEMENT_SKIPPED_VERSION


# --- Document rules and decoding ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"threshold": 1}, "threshold not a majority"),
        ({"threshold": 4}, "threshold above the members"),
        ({"members": [member("stockholm"), member("stockholm", "other")]}, "city repeated"),
        ({"members": [member("stockholm"), member("malmo", "stockholm")]}, "key shared"),
        ({"previous_hash": bytes(32)}, "version 1 with a previous hash"),
        ({"version": 2}, "version 2 without a previous hash"),
        ({"valid_from": datetime.date(2029, 1, 1)}, "period reversed"),
        ({"eligible_threat_levels": (ThreatLevel.LOW, ThreatLevel.LOW)}, "level repeated"),
        ({"revoked": [pub("x"), pub("x")]}, "revoked key repeated"),
    ],
)
def test_document_breaking_a_rule_cannot_be_made(fields: dict[str, Any], why: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        document(**fields)
    assert caught.value.code is ErrorCode.AGREEMENT_INVALID


@pytest.mark.parametrize("text", ["", "  ", "Malm\u00f6\nstad", "\u202eadnäms", "a\x00b"])
def test_names_that_hide_what_they_hold_cannot_be_made(text: str) -> None:
    with pytest.raises(LocalProtocolError):
        Unit("east", text)
    with pytest.raises(LocalProtocolError):
        document(title=text)
    with pytest.raises(LocalProtocolError):
        agreement_draft.draft_from_toml(sample_with("members.0.display_name", text or " "))


def test_member_with_repeated_units_or_pins_cannot_be_made() -> None:
    base = member("stockholm")
    with pytest.raises(LocalProtocolError):
        msgspec.structs.replace(base, units=(base.units[0], base.units[0]))
    with pytest.raises(LocalProtocolError):
        msgspec.structs.replace(base, tls_pins=(base.tls_pins[0], base.tls_pins[0]))


@pytest.mark.parametrize(
    "endpoint", ["http://malmo.example", "https://malmo.example\n", "https://malmo.example/?q=1"]
)
def test_document_with_an_endpoint_that_is_not_a_plain_https_url_cannot_be_encoded(
    endpoint: str,
) -> None:
    plain = msgspec.structs.replace(member("malmo"), endpoint=endpoint)
    with pytest.raises(LocalProtocolError):
        agreement.encode_document(document(members=[member("stockholm"), plain]))


def test_peer_document_breaking_a_rule_is_refused_as_invalid() -> None:
    # Encode an invalid document by hand: a threshold of 1 for three members.
    fields = list(msgspec.msgpack.decode(agreement.encode_document(document())))
    fields[8] = 1
    data = codec.encode(SignedAgreement(msgspec.msgpack.encode(fields), ()))
    with pytest.raises(AgreementRejected) as caught:
        agreement.verify_genesis(data, TODAY)
    assert caught.value.code is ErrorCode.AGREEMENT_INVALID


def test_malformed_truncated_or_oversized_agreement_is_a_decode_error() -> None:
    data = signed(document(), CITIES)
    for broken in (data[:-1], data + b"\x00", b"\x92\x01\x02"):
        with pytest.raises(DecodeError):
            agreement.verify_genesis(broken, TODAY)
    with pytest.raises(DecodeError) as caught:
        agreement.verify_genesis(data, TODAY, limits=Limits(max_document_bytes=100))
    assert caught.value.code is ErrorCode.OVERSIZED


def test_members_add_their_signatures_one_by_one() -> None:
    data = agreement.encode_document(document())
    proposal = agreement.encode_signed(data, [])
    once = agreement.add_signature(proposal, ed("stockholm"))
    assert agreement.add_signature(once, ed("stockholm")) == once
    twice = agreement.add_signature(once, ed("goteborg"))
    assert agreement.verify_genesis(twice, TODAY).version == 1
    assert agreement.decode_document(data) == document()


@settings(max_examples=30, deadline=None)
@given(
    count=st.integers(1, 6),
    quota=st.integers(0, 100),
    levels=st.lists(st.sampled_from(ThreatLevel), min_size=1, max_size=4, unique=True),
    title=st.text(st.characters(categories=("L", "N", "P", "S")), min_size=1, max_size=40),
    span=st.integers(0, 2000),
)
def test_any_valid_document_round_trips_and_verifies_when_all_members_sign(
    count: int, quota: int, levels: list[ThreatLevel], title: str, span: int
) -> None:
    cities = [f"city-{i}" for i in range(count)]
    doc = document(
        members=[member(c) for c in cities],
        threshold=count // 2 + 1,
        quota_per_home_city_per_year=quota,
        eligible_threat_levels=tuple(levels),
        title=title,
        valid_until=datetime.date(2026, 1, 1) + datetime.timedelta(days=span),
    )
    data = agreement.encode_document(doc)
    assert agreement.decode_document(data) == doc
    verified = agreement.verify_genesis(signed(doc, cities), datetime.date(2026, 1, 1))
    assert verified.document == doc
    assert len(verified.signers) == count


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_as_an_agreement_raise_only_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        agreement.verify_genesis(data, TODAY)


# --- Known-answer vectors ----------------------------------------------------------------------


def _vector_private(name: str) -> Ed25519PrivateKey:
    seed = hashlib.sha256(b"citynode test vector identity " + name.encode()).digest()
    private = Ed25519PrivateKey.from_private_bytes(seed)
    assert keys.public_bytes(private).hex() == VECTORS["identities"][name]
    return private


def _vector_chain() -> dict[int, VerifiedAgreement]:
    today = datetime.date.fromisoformat(VECTORS["today"])
    trusted = {c: bytes.fromhex(k) for c, k in VECTORS["trusted_identity_keys"].items()}
    first, second = (bytes.fromhex(v["signed"]) for v in VECTORS["versions"])
    v1 = agreement.verify_genesis(first, today, trusted)
    return {1: v1, 2: agreement.verify_successor(v1, second, today)}


def test_vector_versions_are_reproduced_from_their_fields_and_seeds() -> None:
    for vector in VECTORS["versions"]:
        data = agreement.encode_document(document_from_json(vector["document"]))
        assert data.hex() == vector["document_bytes"]
        assert hashlib.sha256(data).hexdigest() == vector["document_hash"]
        signatures = []
        for entry in vector["signatures"]:
            signature = agreement.sign_document(_vector_private(entry["signer"]), data)
            assert signature.signer_key_id.hex() == entry["signer_key_id"]
            assert signature.signature.hex() == entry["signature"]
            signatures.append(signature)
        assert agreement.encode_signed(data, signatures).hex() == vector["signed"]


def test_vector_chain_verifies_and_version_2_replaces_malmos_key() -> None:
    chain = _vector_chain()
    assert chain[2].document_hash.hex() == VECTORS["versions"][1]["document_hash"]
    assert chain[2].document.previous_hash == chain[1].document_hash
    assert chain[2].member("malmo").identity_key.hex() == VECTORS["identities"]["malmo-2"]
    assert [k.hex() for k in chain[2].document.revoked_keys] == [VECTORS["identities"]["malmo"]]


@pytest.mark.parametrize("case", VECTORS["refused"], ids=lambda c: c["name"])
def test_vector_refused_version_is_refused_with_its_code(case: dict[str, Any]) -> None:
    current = _vector_chain()[case["current_version"]]
    today = datetime.date.fromisoformat(VECTORS["today"])
    with pytest.raises(AgreementRejected) as caught:
        agreement.verify_successor(current, bytes.fromhex(case["signed"]), today)
    assert caught.value.code == case["error"]
