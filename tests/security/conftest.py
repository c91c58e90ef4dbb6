"""Fixtures of the attack table: the worlds the attacks run in.

``tests/node`` (``node_fixtures``), ``tests/node/api`` (``api_fixtures``) and this directory are
put on ``sys.path`` here, whatever pytest's import mode. Each test module shares one world (its
event loop is the module's); an attack that changes the federation's agreement gets its own copy.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent / "node", _HERE.parent / "node" / "api"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from attack_support import World  # noqa: E402
from node_fixtures import copy_federation, federation_template  # noqa: E402


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stockholm, Göteborg and Malmö provisioned once per session (copied, never used in place)."""
    return federation_template(tmp_path_factory)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(template: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """One copy of the three cities for the module's attacks, every node open."""
    fed = copy_federation(template, tmp_path_factory.mktemp("world") / "fed")
    try:
        yield await World(fed).open()
    finally:
        await fed.close()


@pytest_asyncio.fixture(loop_scope="module")
async def fresh_world(
    template: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    """A copy of its own, for an attack that first changes the agreement."""
    fed = copy_federation(template, tmp_path_factory.mktemp("fresh") / "fed")
    try:
        yield await World(fed).open()
    finally:
        await fed.close()
