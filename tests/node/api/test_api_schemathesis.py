"""The OpenAPI description is true: schemathesis against the live case API finds nothing.

Schemathesis reads the description the node serves (``GET /api/v1/openapi.json``), generates
requests for every operation — valid ones (positive) and invalid ones (negative) — sends them to
the live API of a node federated with a peer, and checks each answer: no server error, a status
the description lists, the media type and the body schema it describes, invalid input rejected
with a 4xx, and no access without a token. Operations on a case run both with random ids and
with the id of a real case, so the answers for existing cases are checked too.

Left out: ``positive_data_acceptance``, which expects every schema-valid request to succeed. The
agreement's rules refuse schema-valid requests by design (an unknown city is a valid string, a
third referral a valid body), with 409 and 422: those statuses and their body are checked by the
other checks. The examples are bounded and derandomized so the run is the same in CI, a few
seconds long.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import schemathesis
from api_fixtures import LiveFederation, inquiry_body
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
]


def _fuzz(document: dict[str, Any], base_url: str, token: str, case_id: str) -> int:
    """Run schemathesis over every operation; returns how many operations were exercised."""
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {token}"}
    exercised = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        targets: list[dict[str, Any] | None] = [None]
        if "{case_id}" in operation.path:
            targets.append({"case_id": case_id})
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for path_parameters in targets:
                strategy = operation.as_strategy(
                    generation_mode=mode, path_parameters=path_parameters
                )

                @given(case=strategy)
                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                    phases=[Phase.explicit, Phase.generate],
                )
                def check(case: Any) -> None:
                    case.call_and_validate(base_url=base_url, headers=headers, checks=CHECKS)

                try:
                    check()
                except Unsatisfiable:
                    # Nothing of the operation can be made invalid (no parameter, no body).
                    assert mode is GenerationMode.NEGATIVE, operation.label
        exercised += 1
    return exercised


async def test_schemathesis_finds_nothing_against_the_live_api(live: LiveFederation) -> None:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    assert opened.status == 201
    described = await live.call("stockholm", None, "GET", "/openapi.json")
    base_url = f"http://127.0.0.1:{live.api_ports['stockholm']}"
    exercised = await asyncio.to_thread(
        _fuzz, described.body, base_url, live.tokens["stockholm"]["anna"], opened.body["id"]
    )
    # openapi, list, open, read, the six case actions, three on documents, the balance report
    assert exercised == 14
    # The node is still whole afterwards: the case flow goes on.
    assert (await live.case("stockholm", "anna", opened.body["id"])).status == 200
