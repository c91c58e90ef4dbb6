"""The attack table against the case API: tokens of the wrong unit or city, hostile text.

Each ``api`` row of ``attack_table.CASES`` runs here as one test named after it, against
Stockholm and Göteborg serving (one live federation for the module).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from api_fixtures import LiveFederation, live_federation
from attack_support import Attack
from attack_table import CASES

pytestmark = pytest.mark.asyncio(loop_scope="module")

API = tuple(c for c in CASES if c.layer == "api")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveFederation]:
    """Stockholm and Göteborg, serving, with users of every role."""
    async with live_federation(tmp_path_factory.mktemp("live")) as running:
        yield running


@pytest.mark.parametrize("case", API, ids=[c.name for c in API])
async def test_api_attack_gets_exactly_its_code_and_changes_nothing(
    case: Attack, live: LiveFederation
) -> None:
    assert await case.run(live) == (case.code, case.answer)
