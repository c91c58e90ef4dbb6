"""The agreement's rules, enforced by the software: each refusal has its code and changes nothing.

Through the case API of two live nodes: an unknown city or unit, an inquiry outside the
agreement's period (ongoing cases go on after it), an ineligible threat level, a missing consent
or police consultation, the quota on both sides (the home node refuses the third referral of the
year; the receiving node refuses a referral whose signed count is above the quota, or whose slot
is already used), and actions the case's state does not allow. Every refusal is audited.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from api_fixtures import LiveFederation, inquiry_body, referral_body, shifted_api
from node_fixtures import PERSON_NAME, PERSONNUMMER, inbox_processor, seal
from sqlalchemy import func, select

from node.audit import AuditTrail
from node.storage.schema import CaseMessageRow, CaseRow, OutboxRow
from protocol.messages import Person, QuotaCount, Referral

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _counts(live: LiveFederation, city: str) -> tuple[int, int, int]:
    """Cases, journal entries and outbox rows held by ``city``."""
    async with live.nodes[city].db.reading() as s:
        counts = [
            await s.scalar(select(func.count()).select_from(table))
            for table in (CaseRow, CaseMessageRow, OutboxRow)
        ]
    return counts[0] or 0, counts[1] or 0, counts[2] or 0


async def _accepted_case(live: LiveFederation) -> str:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    assert opened.status == 201, opened.body
    case_id = str(opened.body["id"])
    await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    await live.call(
        "goteborg", "greta", "POST", f"/cases/{case_id}/reply", json={"decision": "accept"}
    )
    await live.wait_state("stockholm", "anna", case_id, "accepted")
    return case_id


async def _last_audit(live: LiveFederation, city: str, action: str) -> Any:
    """The newest audit entry of ``action`` at ``city``."""
    node = live.nodes[city]
    entries = await AuditTrail(node.db, node.clock).entries(limit=50)
    return next(entry for entry in entries if entry.action == action)


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"to_city": "uppsala"}, 422, "not_a_member"),
        ({"to_city": "stockholm"}, 422, "not_eligible"),
        ({"to_unit": "hisingen"}, 422, "unknown_unit"),
        ({"threat_level": "high"}, 422, "not_eligible"),
        ({"threat_level": "none"}, 422, "not_eligible"),
        ({"consent": False}, 422, "not_eligible"),
        ({"police_consulted_on": None}, 422, "not_eligible"),
        ({"police_consulted_on": "2099-01-01"}, 422, "invalid_field"),
        ({"summary": "Personen 19121212-1212 behöver hjälp."}, 422, "invalid_field"),
        ({"needs": ["housing", "housing"]}, 422, "invalid_field"),
        ({"from_unit": "jarva"}, 403, "forbidden"),
    ],
)
async def test_an_inquiry_against_the_agreement_is_refused_with_its_code_and_nothing_changes(
    live: LiveFederation, change: dict[str, Any], status: int, code: str
) -> None:
    before = await _counts(live, "stockholm")
    refused = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body(**change))
    assert (refused.status, refused.code) == (status, code)
    assert await _counts(live, "stockholm") == before
    audited = await _last_audit(live, "stockholm", "case_open")
    assert (audited.action, audited.user, audited.outcome) == ("case_open", "anna", code)


async def test_new_inquiries_are_refused_outside_the_period_but_ongoing_cases_continue(
    live: LiveFederation,
) -> None:
    case_id = await _accepted_case(live)
    async with shifted_api(live, "stockholm", days=500) as later:
        before = await _counts(live, "stockholm")
        refused = await live.call(
            "stockholm", "anna", "POST", "/cases", json=inquiry_body(), base=later
        )
        assert (refused.status, refused.code) == (422, "outside_period")
        assert await _counts(live, "stockholm") == before
        closed = await live.call(
            "stockholm",
            "anna",
            "POST",
            f"/cases/{case_id}/close",
            json={"reason": "aborted", "closed_on": "2026-11-27"},
            base=later,
        )
        assert closed.status == 200, closed.body
        assert closed.body["state"] == "closed"


async def test_the_home_node_refuses_a_referral_beyond_the_quota_and_counts_it_in_the_referral(
    live: LiveFederation,
) -> None:
    cases = [await _accepted_case(live) for _ in range(3)]
    year = datetime.datetime.now(tz=datetime.UTC).year
    for index, case_id in enumerate(cases[:2], start=1):
        referred = await live.call(
            "stockholm", "anna", "POST", f"/cases/{case_id}/referral", json=referral_body()
        )
        assert referred.status == 200, referred.body
        assert referred.body["quota"]["text"] == f"{index} of 2 for {year}"
    before = await _counts(live, "stockholm")
    refused = await live.call(
        "stockholm", "anna", "POST", f"/cases/{cases[2]}/referral", json=referral_body()
    )
    assert (refused.status, refused.code) == (409, "quota_exceeded")
    assert await _counts(live, "stockholm") == before
    view = (await live.case("stockholm", "anna", cases[2])).body
    assert view["state"] == "accepted"
    assert view["identity"] == {"held": False, "shown": False}
    assert (await _last_audit(live, "stockholm", "case_referral")).outcome == "quota_exceeded"
    received = await live.wait_state("goteborg", "greta", cases[1], "referred")
    assert received["quota"]["text"] == f"2 of 2 for {year}"

    # The receiving node counts too: a third referral from Stockholm this year is refused there,
    # whatever count a (misbehaving) home node signs into it. Nothing of it is stored.
    for quota in (QuotaCount(year, 3, 3), QuotaCount(year, 2, 2), QuotaCount(year, 1, 2)):
        before = await _counts(live, "goteborg")
        result = await _deliver_forged_referral(live, cases[2], quota)
        assert result == "quota_exceeded"
        assert await _counts(live, "goteborg") == before
    at_goteborg = (await live.case("goteborg", "greta", cases[2])).body
    assert at_goteborg["state"] == "accepted"
    assert at_goteborg["identity"] == {"held": False, "shown": False}


async def _deliver_forged_referral(live: LiveFederation, case_id: str, quota: QuotaCount) -> str:
    """A referral sealed by Stockholm's own key but never counted by it, delivered to Göteborg."""
    stockholm, goteborg = live.nodes["stockholm"], live.nodes["goteborg"]
    referral = Referral(
        case_id=bytes.fromhex(case_id.replace("-", "")),
        from_unit="socialnamnden",
        person=Person(PERSON_NAME, PERSONNUMMER, False, None, None),
        documents=(),
        interventions=("Boendestöd",),
        payer="socialnamnden",
        quota=quota,
    )
    envelope = seal(stockholm, "goteborg", referral)
    [result] = await inbox_processor(goteborg).handle_batch("stockholm", [envelope])
    return result.status


@pytest.mark.parametrize(
    ("city", "user", "action", "body"),
    [
        ("stockholm", "anna", "intake", {"arrived_on": "2026-11-20"}),
        ("stockholm", "anna", "reply", {"decision": "accept"}),
        ("stockholm", "anna", "reports", {"period_end": "2026-11-20", "text": "Rapport."}),
        ("goteborg", "greta", "referral", referral_body()),
        ("goteborg", "greta", "close", {"reason": "completed"}),
    ],
)
async def test_an_action_the_state_does_not_allow_is_refused_and_changes_nothing(
    live: LiveFederation, city: str, user: str, action: str, body: dict[str, Any]
) -> None:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    case_id = opened.body["id"]
    await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    before = await _counts(live, city)
    refused = await live.call(city, user, "POST", f"/cases/{case_id}/{action}", json=body)
    assert (refused.status, refused.code) == (409, "invalid_transition")
    assert await _counts(live, city) == before
    assert (await live.case(city, user, case_id)).body["state"] == "awaiting_reply"
    audited = await _last_audit(live, city, "case_" + action.removesuffix("s"))
    assert audited.outcome == "invalid_transition"


async def test_an_invalid_personnummer_is_refused_and_no_identity_is_kept(
    live: LiveFederation,
) -> None:
    case_id = await _accepted_case(live)
    before = await _counts(live, "stockholm")
    for number in ("19121212-1213", "19121312-1212", "abc", "19121212121"):
        refused = await live.call(
            "stockholm",
            "anna",
            "POST",
            f"/cases/{case_id}/referral",
            json=referral_body(personnummer=number),
        )
        assert (refused.status, refused.code) == (422, "invalid_personnummer"), number
        assert number not in refused.body["error"]["message"]
    assert await _counts(live, "stockholm") == before
    view = (await live.case("stockholm", "anna", case_id)).body
    assert view["state"] == "accepted"
    assert view["identity"]["held"] is False


async def test_a_payer_outside_the_home_city_is_refused(live: LiveFederation) -> None:
    case_id = await _accepted_case(live)
    body = {**referral_body(), "payer": "nordost"}
    refused = await live.call("stockholm", "anna", "POST", f"/cases/{case_id}/referral", json=body)
    assert (refused.status, refused.code) == (422, "unknown_unit")
