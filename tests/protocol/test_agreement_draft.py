"""The agreement draft: the sample of the seed in config/agreement.toml, reading a draft from TOML
with errors that name the key path, completing it with the members' keys, and the draft vector of
tests/vectors/agreement.json."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from agreement_fixtures import (
    SAMPLE,
    SAMPLE_AGREEMENT,
    TODAY,
    VECTORS,
    document_from_json,
    ed,
    genesis,
    pub,
    sample_keys,
    sample_with,
    signed,
)

from protocol import agreement, agreement_draft, key_bundle, keylog, keys
from protocol.agreement_draft import MemberKeys
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import ThreatLevel

# --- The sample of the seed --------------------------------------------------------------------


def test_sample_agreement_holds_the_period_quota_and_target_group_of_the_seed() -> None:
    draft = agreement_draft.draft_from_toml(SAMPLE)
    assert (draft.version, draft.valid_from, draft.valid_until) == (
        1,
        datetime.date(2026, 1, 1),
        datetime.date(2028, 12, 31),
    )
    assert draft.quota_per_home_city_per_year == 2
    assert draft.eligible_threat_levels == (ThreatLevel.LOW, ThreatLevel.MODERATE)
    assert draft.signing_threshold == 2


def test_sample_agreement_names_the_parties_and_units_of_the_seed() -> None:
    draft = agreement_draft.draft_from_toml(SAMPLE)
    units = {m.city: [(u.id, u.display_name) for u in m.units] for m in draft.members}
    assert units == {
        "stockholm": [
            ("socialnamnden", "Socialnämnden"),
            ("jarva", "Järva stadsdelsnämnd"),
            ("farsta", "Farsta stadsdelsnämnd"),
        ],
        "goteborg": [
            ("nordost", "Socialnämnden Nordost"),
            ("centrum", "Socialnämnden Centrum"),
            ("hisingen", "Socialnämnden Hisingen"),
        ],
        "malmo": [("arbetsmarknad-social", "Arbetsmarknads- och socialnämnden")],
    }
    endpoints = {m.city: m.endpoint for m in draft.members}
    assert endpoints == {
        "stockholm": "https://127.0.0.1:8443",
        "goteborg": "https://127.0.0.1:8444",
        "malmo": "https://127.0.0.1:8445",
    }
    assert [m.display_name for m in draft.members] == ["Stockholm", "Göteborg", "Malmö"]


def test_sample_completed_with_verified_keys_is_a_document_the_members_can_sign() -> None:
    draft = agreement_draft.draft_from_toml(SAMPLE)
    keyring = sample_keys()
    doc = agreement_draft.complete_draft(draft, keyring)
    first = agreement.verify_genesis(signed(doc, ["stockholm", "malmo"]), TODAY)
    assert first.member("goteborg").identity_key == pub("goteborg")
    assert first.document.previous_hash is None


# --- The TOML draft ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("members.0.units.1.id", "Järva", "members[0].units[1].id: expected a lowercase name"),
        ("members.1.endpoint", "http://127.0.0.1:8444/x", "members[1].endpoint: expected an https"),
        ("eligible_threat_levels", ["extreme"], "eligible_threat_levels[0]: expected one of"),
        ("valid_from", "2026-13-01", "valid_from: expected a date (YYYY-MM-DD)"),
        ("quota_per_home_city_per_year", "2", "quota_per_home_city_per_year: Expected `int`"),
        ("title", None, "missing required key `title`"),
        ("members.2.city", None, "members[2]: missing required key `city`"),
        ("qouta", 3, "unknown key `qouta`"),
    ],
)
def test_draft_error_names_the_key_path_and_what_is_expected(
    path: str, value: Any, expected: str
) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        agreement_draft.draft_from_toml(sample_with(path, value))
    assert caught.value.code is ErrorCode.INVALID_FIELD
    assert expected in caught.value.message
    if isinstance(value, str):
        assert value not in caught.value.message


def test_draft_breaking_a_rule_across_fields_is_refused() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        agreement_draft.draft_from_toml(sample_with("signing_threshold", 1))
    assert caught.value.code is ErrorCode.AGREEMENT_INVALID
    with pytest.raises(LocalProtocolError):
        agreement_draft.draft_from_toml(sample_with("members.2.city", "stockholm"))


def test_draft_completed_without_a_members_keys_is_refused() -> None:
    draft = agreement_draft.draft_from_toml(SAMPLE)
    with pytest.raises(LocalProtocolError) as caught:
        agreement_draft.complete_draft(
            draft, {"stockholm": MemberKeys(pub("stockholm"), (bytes(32),))}
        )
    assert caught.value.code is ErrorCode.INVALID_FIELD
    assert "members[1]" in caught.value.message


def test_draft_of_a_later_version_needs_the_version_it_follows() -> None:
    draft = agreement_draft.draft_from_toml(sample_with("version", 2))
    keyring = sample_keys()
    with pytest.raises(LocalProtocolError):
        agreement_draft.complete_draft(draft, keyring)
    with pytest.raises(LocalProtocolError):
        agreement_draft.complete_draft(
            agreement_draft.draft_from_toml(SAMPLE), keyring, previous=genesis()
        )
    second = agreement_draft.complete_draft(
        draft,
        {**keyring, "malmo": MemberKeys(pub("malmo-2"), (bytes(32),))},
        previous=SAMPLE_AGREEMENT,
        revoked_keys=[pub("malmo")],
    )
    assert second.previous_hash == SAMPLE_AGREEMENT.document_hash
    assert second.revoked_keys == (pub("malmo"),)


def test_member_keys_come_from_a_verified_bundle() -> None:
    private = ed("stockholm")
    current = keys.encryption_key(bytes(range(32)), epoch=0, not_before=0, not_after=100)
    nxt = keys.encryption_key(bytes(range(1, 33)), epoch=1, not_before=50, not_after=200)
    data = key_bundle.sign_bundle(
        private,
        city="stockholm",
        current=key_bundle.announce_encryption_key(private, current),
        next_key=key_bundle.announce_encryption_key(private, nxt),
        tls_pins=[keys.tls_pin(b"spki")],
        key_log=keylog.KeyLogHead(0, bytes(32)),
        issued_at=10,
        sequence=0,
    )
    got = MemberKeys.from_bundle(key_bundle.verify_bundle(data, pub("stockholm"), 10))
    assert got == MemberKeys(pub("stockholm"), (keys.tls_pin(b"spki"),))


# --- Known-answer vectors ----------------------------------------------------------------------


def test_vector_version_1_is_the_vectors_draft_completed_with_its_keys() -> None:
    first = VECTORS["versions"][0]["document"]
    draft = agreement_draft.draft_from_toml(VECTORS["draft"])
    keyring = {
        m["city"]: MemberKeys(
            bytes.fromhex(m["identity_key"]), tuple(bytes.fromhex(p) for p in m["tls_pins"])
        )
        for m in first["members"]
    }
    assert agreement_draft.complete_draft(draft, keyring) == document_from_json(first)
