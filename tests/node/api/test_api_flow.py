"""The whole case flow between two live nodes, through the case API only.

Stockholm is the home city, Göteborg the receiving city. Every step is a call to one node's API;
the message then travels over the federation (real mutual TLS) and the test waits until the other
node's API shows its effect: inquiry → accept → referral with identity → intake → report → close.
A declined inquiry never reveals the identity: the receiving node never holds one.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from api_fixtures import LiveFederation, inquiry_body, personal_strings, referral_body
from node_fixtures import personal_data_in
from sqlalchemy import select

from node.storage.schema import CaseMessageRow, CaseRow, InboxRow

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _open_and_accept(live: LiveFederation, **inquiry: Any) -> str:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body(**inquiry))
    assert opened.status == 201, opened.body
    case_id = opened.body["id"]
    await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    accepted = await live.call(
        "goteborg", "greta", "POST", f"/cases/{case_id}/reply", json={"decision": "accept"}
    )
    assert accepted.status == 200, accepted.body
    await live.wait_state("stockholm", "anna", case_id, "accepted")
    return str(case_id)


async def _identity_rows(live: LiveFederation, city: str, case_id: str) -> list[Any]:
    async with live.nodes[city].db.reading() as s:
        row = await s.get(CaseRow, bytes.fromhex(case_id.replace("-", "")))
        return [] if row is None else [row.sealed_identity]


async def test_the_whole_case_flow_runs_between_two_nodes_through_the_api(
    live: LiveFederation, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    assert opened.status == 201
    assert opened.headers["Location"].endswith(opened.body["id"])
    case_id = opened.body["id"]
    assert opened.body["state"] == "awaiting_reply"
    assert opened.body["role"] == "home"
    assert opened.body["warnings"][0]["code"] == "police_advice"  # shown, not hidden

    received = await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    assert received["id"] == case_id  # the same id at both nodes
    assert received["role"] == "receiving"
    assert received["home_city"] == "stockholm"
    assert received["unit"] == "nordost"
    assert received["warnings"][0]["code"] == "police_advice"
    assert received["identity"] == {"held": False, "shown": False}
    assert received["timeline"][0]["type"] == "inquiry"
    assert received["timeline"][0]["needs"] == ["housing", "treatment"]

    await live.call(
        "goteborg", "greta", "POST", f"/cases/{case_id}/reply", json={"decision": "accept"}
    )
    await live.wait_state("stockholm", "anna", case_id, "accepted")

    referred = await live.call(
        "stockholm", "anna", "POST", f"/cases/{case_id}/referral", json=referral_body()
    )
    assert referred.status == 200, referred.body
    assert referred.body["state"] == "referred"
    assert referred.body["quota"]["text"].startswith("1 of 2 for ")
    assert "person" not in referred.body  # not without a purpose

    at_goteborg = await live.wait_state("goteborg", "greta", case_id, "referred")
    assert at_goteborg["quota"]["index"] == 1
    assert at_goteborg["identity"] == {
        "held": True,
        "shown": False,
        "withheld": "purpose_required",
    }
    seen = await live.case("goteborg", "greta", case_id, purpose="planera mottagandet")
    assert seen.body["person"]["name"] == "Testa Fiktiva Exempelsson"
    assert seen.body["person"]["personnummer"] == "191212121212"

    intake = await live.call(
        "goteborg", "greta", "POST", f"/cases/{case_id}/intake", json={"arrived_on": "2026-11-20"}
    )
    assert intake.status == 200, intake.body
    await live.wait_state("stockholm", "anna", case_id, "in_progress")

    report = await live.call(
        "goteborg",
        "greta",
        "POST",
        f"/cases/{case_id}/reports",
        json={"period_end": "2026-11-26", "text": "Boende ordnat, behandling påbörjad."},
    )
    assert report.status == 200, report.body
    home_view = await live.wait_receipted("goteborg", "greta", case_id)
    assert home_view["timeline"][-1]["period_start"] == "2026-11-20"  # from the arrival date

    closed = await live.call(
        "stockholm", "anna", "POST", f"/cases/{case_id}/close", json={"reason": "completed"}
    )
    assert closed.status == 200, closed.body
    final = await live.wait_state("goteborg", "greta", case_id, "closed")
    assert [e["type"] for e in final["timeline"]] == [
        "inquiry",
        "reply",
        "referral",
        "intake",
        "progress_report",
        "closure",
    ]
    assert final["allowed_actions"] == []

    home = await live.wait_receipted("stockholm", "anna", case_id)
    assert [(e["type"], e["direction"]) for e in home["timeline"]] == [
        ("inquiry", "sent"),
        ("reply", "received"),
        ("referral", "sent"),
        ("intake", "received"),
        ("progress_report", "received"),
        ("closure", "sent"),
    ]
    assert all(e["delivery"] in {"receipted", "received"} for e in home["timeline"])
    referral_entry = home["timeline"][2]
    assert "person" not in referral_entry
    assert "name" not in referral_entry
    assert referral_entry["quota"]["text"].startswith("1 of 2")
    assert len(caplog.records) > 50  # both nodes logged at every level ...
    assert personal_data_in(caplog.records) == []  # ... and never the person


async def test_a_declined_inquiry_never_reveals_the_identity(live: LiveFederation) -> None:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    case_id = opened.body["id"]
    await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    declined = await live.call(
        "goteborg",
        "greta",
        "POST",
        f"/cases/{case_id}/reply",
        json={"decision": "decline", "reason": "Ingen plats i år."},
    )
    assert declined.status == 200
    await live.wait_state("stockholm", "anna", case_id, "declined")

    refused = await live.call(
        "stockholm", "anna", "POST", f"/cases/{case_id}/referral", json=referral_body()
    )
    assert refused.status == 409
    assert refused.code == "invalid_transition"

    raw_id = bytes.fromhex(case_id.replace("-", ""))
    for city in ("stockholm", "goteborg"):
        assert await _identity_rows(live, city, case_id) == [None]
        async with live.nodes[city].db.reading() as s:
            types = (
                await s.scalars(
                    select(CaseMessageRow.message_type).where(CaseMessageRow.case_id == raw_id)
                )
            ).all()
        assert "referral" not in types
    async with live.nodes["goteborg"].db.reading() as s:
        received = (
            await s.scalars(select(InboxRow.message_type).where(InboxRow.case_id == raw_id))
        ).all()
    assert sorted(received) == ["inquiry"]
    database = (live.root / "goteborg" / "citynode.sqlite3").read_bytes()
    assert not any(text.encode() in database for text in personal_strings())


async def test_an_inquiry_to_no_unit_is_taken_by_the_unit_that_replies(
    live: LiveFederation,
) -> None:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body(to_unit=None))
    case_id = opened.body["id"]
    unassigned = await live.wait_state("goteborg", "hugo", case_id, "awaiting_reply")
    assert "unit" not in unassigned  # any case worker of Göteborg may see and take it
    taken = await live.call(
        "goteborg", "hugo", "POST", f"/cases/{case_id}/reply", json={"decision": "accept"}
    )
    assert taken.status == 200, taken.body
    assert taken.body["unit"] == "centrum"
    hidden = await live.case("goteborg", "greta", case_id)  # now another unit's case
    assert hidden.status == 404
    home = await live.wait_state("stockholm", "anna", case_id, "accepted")
    assert home["peer_unit"] == "centrum"


async def test_a_request_for_information_is_answered_with_an_updated_inquiry(
    live: LiveFederation,
) -> None:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    case_id = opened.body["id"]
    await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    asked = await live.call(
        "goteborg",
        "greta",
        "POST",
        f"/cases/{case_id}/reply",
        json={"decision": "need_info", "reason": "Beskriv behandlingsbehovet."},
    )
    assert asked.status == 200
    await live.wait_state("stockholm", "anna", case_id, "info_requested")
    updated = await live.call(
        "stockholm",
        "anna",
        "POST",
        f"/cases/{case_id}/inquiry",
        json={
            "threat_level": "low",
            "police_consulted_on": "2026-02-01",
            "consent": True,
            "needs": ["treatment"],
            "summary": "Behöver öppenvård, inget boende.",
        },
    )
    assert updated.status == 200, updated.body
    view = await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    assert view["timeline"][-1]["needs"] == ["treatment"]
    assert len(view["timeline"]) == 3


async def test_each_sent_message_shows_its_delivery_state_until_receipted(
    live: LiveFederation,
) -> None:
    case_id = await _open_and_accept(live)
    view = await live.wait_receipted("goteborg", "greta", case_id)
    reply = view["timeline"][-1]
    assert reply["type"] == "reply"
    assert reply["delivery"] == "receipted"
    assert reply["receipted_at"] >= reply["at"]
