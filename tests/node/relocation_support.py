"""Relocations between real nodes, in-process, for the balance and retention tests.

A relocation is a case run from the inquiry to the referral between two of the provisioned trio
(``node_fixtures``: Stockholm, Göteborg, Malmö, one unit each), every message sealed by the
sender, queued in its outbox and delivered to the receiver's inbox as a sender loop would. The
``backend_federation`` context gives the trio on SQLite (a copy of the session's template) or on
PostgreSQL (provisioned afresh; skipped without a server); ``sqlite_template`` must be called by
a synchronous, module-scoped fixture (provisioning runs its own event loop).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from node_fixtures import (
    UNITS,
    Federation,
    accept,
    closure,
    copy_federation,
    deliver_outbox,
    federation_template,
    fresh_federation,
    inquiry,
    intake,
    new_case_id,
    referral,
    send,
    statuses,
)

from node.delivery import ACCEPTED
from node.service import Node
from protocol.messages import ClosureReason, Message, QuotaCount

BACKENDS = ("sqlite", "postgresql")


def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's trio on SQLite (provisioned once; call it outside an event loop)."""
    return federation_template(tmp_path_factory)


@contextlib.asynccontextmanager
async def backend_federation(
    backend: str, template: Path, tmp_path: Path
) -> AsyncIterator[Federation]:
    """The trio on ``backend`` (SQLite: a copy of ``template``); nodes are closed afterwards."""
    if backend == "sqlite":
        federation = copy_federation(template, tmp_path / "fed")
        try:
            yield federation
        finally:
            await federation.close()
        return
    async with fresh_federation(tmp_path / "fed", backend="postgresql") as federation:
        yield federation


async def deliver(sender: Node, receiver: Node, message: Message) -> None:
    """Queue ``message`` at the sender and deliver it (with anything queued before it); the
    receiver must accept them all."""
    await send(sender, receiver, message)
    assert set(statuses(await deliver_outbox(sender, receiver))) == {ACCEPTED}


async def relocation(home: Node, receiving: Node, *, index: int, year: int | None = None) -> bytes:
    """Run a case from ``home`` to ``receiving`` up to the delivered referral; return its id.

    Args:
        home: the home city's node.
        receiving: the receiving city's node.
        index: the referral's slot in the home city's quota of ``year`` (1 or 2).
        year: the quota year (default: the home node's current year).
    """
    h, r = home.config.city, receiving.config.city
    case_id = new_case_id()
    ask = msgspec.structs.replace(inquiry(case_id, to_unit=UNITS[r]), from_unit=UNITS[h])
    await deliver(home, receiving, ask)
    await deliver(receiving, home, accept(case_id, UNITS[r]))
    quota = QuotaCount(year=year or home.today().year, index=index, total=2)
    refer = referral(case_id, year=quota.year)
    refer = msgspec.structs.replace(refer, from_unit=UNITS[h], payer=UNITS[h], quota=quota)
    await deliver(home, receiving, refer)
    return case_id


async def end_relocation(home: Node, receiving: Node, case_id: bytes) -> None:
    """The person arrives, then the receiving city closes the case (both ends see it closed)."""
    r = receiving.config.city
    today = receiving.today()
    await deliver(receiving, home, intake(case_id, today, UNITS[r]))
    await deliver(receiving, home, closure(case_id, UNITS[r], today, ClosureReason.COMPLETED))
