"""The attack table against the node: inbox, TLS listener, agreement and attachment rows.

Each row of ``attack_table.CASES`` for these layers runs here as one test named after it; the row's
``run`` performs the attack and checks that it changed nothing, and the test checks that the
code observed is exactly the row's (see ``attack_support.py`` and ``docs/security-tests.md``).
"""

from __future__ import annotations

import pytest
from attack_support import Attack, World
from attack_table import CASES

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHARED = tuple(c for c in CASES if c.layer in ("inbox", "listener", "attachment"))
OWN_WORLD = tuple(c for c in CASES if c.layer == "agreement")


@pytest.mark.parametrize("case", SHARED, ids=[c.name for c in SHARED])
async def test_attack_gets_exactly_its_code_and_changes_nothing(case: Attack, world: World) -> None:
    assert await case.run(world) == (case.code, case.answer)


@pytest.mark.parametrize("case", OWN_WORLD, ids=[c.name for c in OWN_WORLD])
async def test_agreement_attack_gets_exactly_its_code_and_changes_nothing(
    case: Attack, fresh_world: World
) -> None:
    assert await case.run(fresh_world) == (case.code, case.answer)
