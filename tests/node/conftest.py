"""Fixtures shared by the node tests that run on a copy of the three-city federation.

``template`` provisions Stockholm, Göteborg and Malmö once (``node_fixtures.federation_template``)
and ``fed`` gives each test its own copy, closed afterwards. A module that needs other cities or
a backend parameter defines its own ``template``/``fed``, which then take precedence.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from node_fixtures import Federation, copy_federation, federation_template


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return federation_template(tmp_path_factory)


@pytest.fixture
async def fed(template: Path, tmp_path: Path) -> AsyncIterator[Federation]:
    federation = copy_federation(template, tmp_path / "fed")
    try:
        yield federation
    finally:
        await federation.close()
