"""Who may see and do what through the case API, and what every identity read leaves behind.

Case workers act on their own unit's cases only (another unit's case is answered as unknown, so
its existence is not revealed); coordinators read the whole city but act on nothing; operators
and auditors read no case (so no identity). The person is shown only with a purpose, and a
protected identity only to the case workers of the assigned unit. Every identity read and every
refused attempt is in the audit trail with who, the case and the purpose.
"""

from __future__ import annotations

from typing import Any

import pytest
from api_fixtures import UNITS, LiveFederation, inquiry_body, referral_body

from node.access import UserRole
from node.audit import AuditTrail
from node.users import UserStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

PURPOSE = "planera mottagandet"


async def _referred_case(live: LiveFederation, *, protected: bool) -> str:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    case_id = str(opened.body["id"])
    await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    await live.call(
        "goteborg", "greta", "POST", f"/cases/{case_id}/reply", json={"decision": "accept"}
    )
    await live.wait_state("stockholm", "anna", case_id, "accepted")
    body = referral_body(protected_identity=protected, phone=None) if protected else referral_body()
    referred = await live.call("stockholm", "anna", "POST", f"/cases/{case_id}/referral", json=body)
    assert referred.status == 200, referred.body
    await live.wait_state("goteborg", "greta", case_id, "referred")
    return case_id


async def _audit(live: LiveFederation, city: str, case_id: str) -> list[Any]:
    node = live.nodes[city]
    raw = bytes.fromhex(case_id.replace("-", ""))
    return list(await AuditTrail(node.db, node.clock).entries(case_id=raw, limit=100))


@pytest.fixture(scope="module")
def cases() -> dict[str, str]:
    """Cases made once for the module's tests (the quota allows two referrals a year)."""
    return {}


async def _case(live: LiveFederation, cases: dict[str, str], kind: str) -> str:
    if kind not in cases:
        cases[kind] = await _referred_case(live, protected=kind == "protected")
    return cases[kind]


async def test_a_case_worker_of_another_unit_is_told_the_case_does_not_exist(
    live: LiveFederation, cases: dict[str, str]
) -> None:
    case_id = await _case(live, cases, "open")
    unknown = await live.case("stockholm", "jonas", "00000000-0000-4000-8000-000000000000")
    for city, user in (("stockholm", "jonas"), ("goteborg", "hugo")):
        hidden = await live.case(city, user, case_id)
        assert (hidden.status, hidden.body) == (404, unknown.body)
        acted = await live.call(
            city, user, "POST", f"/cases/{case_id}/close", json={"reason": "aborted"}
        )
        assert (acted.status, acted.code) == (404, "unknown_case")
        listed = await live.call(city, user, "GET", "/cases")
        assert case_id not in [c["id"] for c in listed.body["cases"]]
        entries = await _audit(live, city, case_id)
        refused = [e for e in entries if e.user == user]
        assert {(e.action, e.outcome) for e in refused} == {
            ("case_read", "other_unit"),
            ("case_close", "other_unit"),
        }
    assert (await live.case("goteborg", "greta", case_id)).body["state"] == "referred"


async def test_a_coordinator_reads_the_whole_city_but_acts_on_nothing(
    live: LiveFederation, cases: dict[str, str]
) -> None:
    case_id = await _case(live, cases, "open")
    listed = await live.call("stockholm", "karin", "GET", "/cases")
    assert case_id in [c["id"] for c in listed.body["cases"]]
    seen = await live.case("stockholm", "karin", case_id, purpose="kvartalsuppföljning")
    assert seen.body["person"]["name"] == "Testa Fiktiva Exempelsson"
    acted = await live.call(
        "stockholm", "karin", "POST", f"/cases/{case_id}/close", json={"reason": "aborted"}
    )
    assert (acted.status, acted.code) == (403, "forbidden")
    opened = await live.call("stockholm", "karin", "POST", "/cases", json=inquiry_body())
    assert (opened.status, opened.code) == (403, "forbidden")


@pytest.mark.parametrize("user", ["olle", "rut"])
async def test_operators_and_auditors_read_no_case_and_no_identity(
    live: LiveFederation, cases: dict[str, str], user: str
) -> None:
    case_id = await _case(live, cases, "open")
    for answer in (
        await live.case("stockholm", user, case_id, purpose=PURPOSE),
        await live.case("stockholm", user, "00000000-0000-4000-8000-000000000000"),
        await live.call("stockholm", user, "GET", "/cases"),
        await live.call("stockholm", user, "POST", "/cases", json=inquiry_body()),
    ):
        assert (answer.status, answer.code) == (403, "forbidden")
    entries = await _audit(live, "stockholm", case_id)
    assert ("case_read", "forbidden") in {(e.action, e.outcome) for e in entries if e.user == user}


async def test_the_person_is_shown_only_with_a_purpose_and_every_read_is_audited(
    live: LiveFederation, cases: dict[str, str]
) -> None:
    case_id = await _case(live, cases, "open")
    without = await live.case("goteborg", "greta", case_id)
    assert "person" not in without.body
    assert without.body["identity"]["withheld"] == "purpose_required"
    by_header = await live.call(
        "goteborg", "greta", "GET", f"/cases/{case_id}", headers={"X-Purpose": PURPOSE}
    )
    assert by_header.body["person"]["personnummer"] == "191212121212"
    assert by_header.body["identity"] == {"held": True, "shown": True}
    reads = [e for e in await _audit(live, "goteborg", case_id) if e.action == "read_identity"]
    assert reads[0].user == "greta"
    assert reads[0].role == "caseworker"
    assert reads[0].purpose == PURPOSE
    assert reads[0].outcome == "ok"
    for bad in ("x" * 121, "ring 0701234567", "   "):
        refused = await live.case("goteborg", "greta", case_id, purpose=bad)
        assert (refused.status, refused.code) == (422, "invalid_purpose")


async def test_a_protected_identity_is_shown_only_to_the_assigned_case_workers(
    live: LiveFederation, cases: dict[str, str]
) -> None:
    case_id = await _case(live, cases, "protected")
    for city, worker, coordinator in (
        ("goteborg", "greta", "ines"),
        ("stockholm", "anna", "karin"),
    ):
        shown = await live.case(city, worker, case_id, purpose=PURPOSE)
        assert shown.body["protected_identity"] is True
        assert shown.body["person"]["name"] == "Testa Fiktiva Exempelsson"
        withheld = await live.case(city, coordinator, case_id, purpose=PURPOSE)
        assert withheld.status == 200
        assert "person" not in withheld.body
        assert withheld.body["identity"]["withheld"] == "protected_identity"
        attempts = [
            (e.user, e.outcome, e.purpose)
            for e in await _audit(live, city, case_id)
            if e.action == "read_identity"
        ]
        assert (coordinator, "protected_identity", PURPOSE) in attempts
        assert (worker, "ok", PURPOSE) in attempts


async def test_an_expired_or_revoked_or_missing_token_is_unauthenticated(
    live: LiveFederation,
) -> None:
    node = live.nodes["stockholm"]
    users = UserStore(node.db, node.clock)
    await users.add("tilda", *_caseworker("socialnamnden"))
    short = await users.issue_token("tilda", 60)
    assert (await live.call("stockholm", None, "GET", "/cases", token=short)).status == 200
    live.clock.offset += 120
    try:
        expired = await live.call("stockholm", None, "GET", "/cases", token=short)
    finally:
        live.clock.offset -= 120
    assert (expired.status, expired.code) == (401, "unauthenticated")
    assert expired.headers["WWW-Authenticate"].startswith("Bearer")
    token = await users.issue_token("tilda", 3600)
    await users.revoke("tilda")
    revoked = await live.call("stockholm", None, "GET", "/cases", token=token)
    assert (revoked.status, revoked.code) == (401, "unauthenticated")
    for header in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}):
        missing = await live.call("stockholm", None, "GET", "/cases", headers=header)
        assert (missing.status, missing.code) == (401, "unauthenticated")
    garbage = await live.call("stockholm", None, "GET", "/cases", token="cn_" + "A" * 43)
    assert garbage.status == 401


def _caseworker(unit: str) -> tuple[UserRole, str, tuple[str, ...]]:
    return UserRole.CASEWORKER, unit, UNITS["stockholm"]


async def test_oversized_malformed_and_mistyped_bodies_are_refused_before_any_action(
    live: LiveFederation,
) -> None:
    limit = live.nodes["stockholm"].config.limits.max_api_request_bytes
    json_type = {"Content-Type": "application/json"}
    answers = {
        "oversized": await live.call(
            "stockholm", "anna", "POST", "/cases", data=b" " * (limit + 1), headers=json_type
        ),
        "malformed": await live.call(
            "stockholm", "anna", "POST", "/cases", data=b'{"to_city": ', headers=json_type
        ),
        "media": await live.call(
            "stockholm",
            "anna",
            "POST",
            "/cases",
            data=b"to_city=goteborg",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ),
        "unknown_field": await live.call(
            "stockholm", "anna", "POST", "/cases", json={**inquiry_body(), "name": "Testa"}
        ),
        "wrong_type": await live.call(
            "stockholm", "anna", "POST", "/cases", json={**inquiry_body(), "consent": "ja"}
        ),
        "bad_enum": await live.call(
            "stockholm", "anna", "POST", "/cases", json={**inquiry_body(), "needs": ["Testa"]}
        ),
    }
    assert {name: (a.status, a.code) for name, a in answers.items()} == {
        "oversized": (413, "oversized"),
        "malformed": (400, "malformed"),
        "media": (415, "unsupported_media_type"),
        "unknown_field": (422, "invalid_field"),
        "wrong_type": (422, "invalid_field"),
        "bad_enum": (422, "invalid_field"),
    }
    assert "Testa" not in str([a.body for a in answers.values()])  # no value echoed
    assert "$.consent" in answers["wrong_type"].body["error"]["message"]


async def test_unknown_paths_methods_and_ids_answer_the_json_error_shape(
    live: LiveFederation,
) -> None:
    missing = await live.call("stockholm", "anna", "GET", "/reports/quota")
    assert (missing.status, missing.code) == (404, "not_found")
    method = await live.call("stockholm", "anna", "DELETE", "/cases")
    assert (method.status, method.code) == (405, "method_not_allowed")
    assert "GET" in method.headers["Allow"]
    bad_id = await live.call("stockholm", "anna", "GET", "/cases/not-a-uuid")
    assert (bad_id.status, bad_id.code) == (404, "unknown_case")
    described = await live.call("stockholm", None, "GET", "/openapi.json")
    assert described.status == 200
    assert described.body["openapi"] == "3.1.0"
