"""Fixtures of the case API tests: two live nodes per test module (provisioning costs ~1 s).

``tests/node`` (``node_fixtures``) and this directory (``api_fixtures``) are put on ``sys.path``
here, whatever the import mode. Each module shares one live federation (its event loop is the
module's): tests make their own cases, so they do not depend on each other's.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from api_fixtures import LiveFederation, live_federation  # noqa: E402


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LiveFederation]:
    """Stockholm and Göteborg, serving, with users of every role (quota: 2 per year)."""
    async with live_federation(tmp_path_factory.mktemp("live")) as running:
        yield running
