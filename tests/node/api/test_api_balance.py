"""``GET /api/v1/reports/balance``: who may read the balance, what bad input gets, and that the
description of the operation is true (schemathesis against the live node, this operation only).

A referral made through the API is counted at the home city straight away: the report is the
city's own word from its cases, beside what the other cities stated (nothing yet, here).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
import schemathesis
from api_fixtures import LiveFederation, inquiry_body, referral_body
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from node.audit import AuditTrail
from node.balance_report import BalanceReport

pytestmark = pytest.mark.asyncio(loop_scope="module")

PATH = "/reports/balance"


async def _referral(live: LiveFederation) -> None:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    case_id = str(opened.body["id"])
    await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    await live.call(
        "goteborg", "greta", "POST", f"/cases/{case_id}/reply", json={"decision": "accept"}
    )
    await live.wait_state("stockholm", "anna", case_id, "accepted")
    referred = await live.call(
        "stockholm", "anna", "POST", f"/cases/{case_id}/referral", json=referral_body()
    )
    assert referred.status == 200, referred.body


async def test_a_coordinator_sees_the_home_citys_referral_counted_at_once(
    live: LiveFederation,
) -> None:
    await _referral(live)
    year = live.nodes["stockholm"].today().year
    answer = await live.call("stockholm", "karin", "GET", PATH, params={"year": str(year)})
    assert answer.status == 200, answer.body
    report = msgspec.convert(answer.body, BalanceReport)  # the described shape, strictly
    (stockholm,) = [c for c in report.cities if c.city == "stockholm"]
    assert (stockholm.sent, stockholm.received, stockholm.source) == (1, 0, "own")
    (goteborg,) = [c for c in report.cities if c.city == "goteborg"]
    assert goteborg.source == "none"  # Göteborg has not stated its counts yet
    assert report.years == [year]


@pytest.mark.parametrize(
    ("user", "status"), [("olle", 200), ("karin", 200), ("anna", 403), ("rut", 403), (None, 401)]
)
async def test_only_coordinators_and_operators_read_the_balance(
    live: LiveFederation, user: str | None, status: int
) -> None:
    answer = await live.call("stockholm", user, "GET", PATH)
    assert answer.status == status
    if status == 403:
        assert answer.code == "forbidden"
        node = live.nodes["stockholm"]
        (last,) = await AuditTrail(node.db, node.clock).entries(limit=1)
        assert (last.user, last.action, last.outcome) == (user, "balance_read", "forbidden")


@pytest.mark.parametrize(
    "params", [{"year": "1999"}, {"year": "20x6"}, {"year": "+2026"}, {"yeer": "2026"}]
)
async def test_a_bad_year_or_an_unknown_parameter_is_refused(
    live: LiveFederation, params: dict[str, str]
) -> None:
    answer = await live.call("stockholm", "karin", "GET", PATH, params=params)
    assert answer.status == 422
    assert answer.code == "invalid_field"


def _fuzz(document: dict[str, Any], base_url: str, token: str) -> None:
    schema = schemathesis.openapi.from_dict(document)
    operation = schema["/api/v1/reports/balance"]["GET"]
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
        negative_data_rejection,
    ]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=12,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=base_url, headers={"Authorization": f"Bearer {token}"}, checks=checks
            )

        check()


async def test_schemathesis_finds_nothing_against_the_balance_report(live: LiveFederation) -> None:
    described = await live.call("stockholm", None, "GET", "/openapi.json")
    base_url = f"http://127.0.0.1:{live.api_ports['stockholm']}"
    token = live.tokens["stockholm"]["karin"]  # a coordinator: the 200 answers are checked too
    await asyncio.to_thread(_fuzz, described.body, base_url, token)
