"""Helpers of the end-to-end tests: queue case streams, read what nodes stored, wait, assert.

Imported by ``conftest.py`` and the test modules (``from e2e_support import ...``). Messages are
queued the way the node itself queues them (``Node.outgoing().send``) while the sender is stopped;
what the nodes stored is read from the non-secret columns of their ``outbox``, ``inbox`` and
``cases`` tables. No test-only endpoint exists in the product.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import text

from node.config import load_config
from node.localnet import LocalFederation
from node.secrets_source import OperatorSecret
from node.service import Node
from node.storage.database import Database
from protocol.messages import Closure, ClosureReason, Inquiry, Need, ThreatLevel

PG_URL_ENV = "CITYNODE_TEST_PG_URL"
SECRET = "e2e operator secret, loopback only"
# One unit of each city, as in config/agreement.toml.
UNITS = {"stockholm": "jarva", "goteborg": "hisingen", "malmo": "arbetsmarknad-social"}
POLL_S = 0.02


@dataclass(frozen=True)
class Loaded:
    """A stopped federation with case streams queued and not yet sent."""

    federation: LocalFederation
    streams: dict[tuple[str, str], list[bytes]]  # (sender, recipient) -> case ids in order


@dataclass(frozen=True)
class Sent:
    """A row of a sender's outbox (non-secret columns)."""

    seq: int
    peer: str
    case_id: bytes
    message_id: bytes
    state: str
    attempts: int
    envelope: bytes
    receipt: bytes | None
    created_at: float


@dataclass(frozen=True)
class Received:
    """A row of a receiver's inbox (non-secret columns), in arrival order by ``id``."""

    id: int
    sender: str
    case_id: bytes
    message_id: bytes


async def open_node(federation: LocalFederation, city: str) -> Node:
    """Open a stopped node of the federation in this process, as operator commands do."""
    config = load_config(federation.config_path(city))
    return await Node.open(config, OperatorSecret(federation.secret.encode()))


async def queue_cases(
    federation: LocalFederation, sender: str, recipient: str, cases: int
) -> list[bytes]:
    """Queue an inquiry and its withdrawal (a closure) for each of ``cases`` new cases.

    The receiving node refuses a closure for a case it has not seen the inquiry of, so a stream
    delivered out of order per case would show up as refusals.

    Returns:
        The case ids, in the order queued.
    """
    today = datetime.datetime.now(datetime.UTC).date()
    node = await open_node(federation, sender)
    case_ids = []
    try:
        outgoing = node.outgoing(lambda peer: None)
        for _ in range(cases):
            case_id = secrets.token_bytes(16)
            await outgoing.send(
                recipient,
                Inquiry(
                    case_id=case_id,
                    from_unit=UNITS[sender],
                    to_unit=UNITS[recipient],
                    threat_level=ThreatLevel.MODERATE,
                    police_consulted_on=today - datetime.timedelta(days=7),
                    consent=True,
                    needs=(Need.HOUSING, Need.TREATMENT),
                    summary="Behöver boende och stöd i öppenvård (testärende).",
                    wished_start=today + datetime.timedelta(days=30),
                ),
            )
            await outgoing.send(
                recipient,
                Closure(
                    case_id=case_id,
                    unit=UNITS[sender],
                    reason=ClosureReason.ABORTED,
                    closed_on=today,
                    note="Återkallad (testärende).",
                ),
            )
            case_ids.append(case_id)
    finally:
        await node.close()
    return case_ids


class Tables:
    """Read access to one node's database while it runs (or not)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    @classmethod
    async def open(cls, federation: LocalFederation, city: str) -> Tables:
        return cls(await Database.connect(federation.database_url(city)))

    async def close(self) -> None:
        await self._db.close()

    async def scalar(self, query: str, **params: object) -> int:
        async with self._db.reading() as session:
            return int((await session.execute(text(query), params)).scalar_one())

    async def outbox(self, peer: str) -> list[Sent]:
        query = text(
            "SELECT seq, peer, case_id, message_id, state, attempts, envelope, receipt, "
            "created_at FROM outbox WHERE peer = :peer ORDER BY seq"
        )
        async with self._db.reading() as session:
            rows = (await session.execute(query, {"peer": peer})).all()
        return [Sent(*row) for row in rows]

    async def inbox(self, sender: str) -> list[Received]:
        query = text(
            "SELECT id, sender, case_id, message_id FROM inbox WHERE sender = :sender ORDER BY id"
        )
        async with self._db.reading() as session:
            rows = (await session.execute(query, {"sender": sender})).all()
        return [Received(*row) for row in rows]

    async def cases(self, peer: str) -> dict[bytes, tuple[str, str]]:
        query = text("SELECT case_id, role, state FROM cases WHERE peer = :peer")
        async with self._db.reading() as session:
            rows = (await session.execute(query, {"peer": peer})).all()
        return {row[0]: (row[1], row[2]) for row in rows}


async def read(federation: LocalFederation, city: str) -> Tables:
    """Open ``city``'s tables (close them after use)."""
    return await Tables.open(federation, city)


async def wait_until(
    probe: Callable[[], Awaitable[int]],
    done: Callable[[int], bool],
    *,
    timeout_s: float,
    what: str,
) -> int:
    """Poll ``probe`` until ``done(value)``; return that value.

    Raises:
        AssertionError: ``timeout_s`` passed (with the last value).
    """
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while not done(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: still {value} after {timeout_s:g} s")
        await asyncio.sleep(POLL_S)
        value = await probe()
    return value


async def wait_drained(
    federation: LocalFederation, sender: str, recipient: str, total: int, timeout_s: float
) -> float:
    """Wait until ``sender`` holds a receipt for all ``total`` messages to ``recipient``.

    Returns:
        The seconds it took.

    Raises:
        AssertionError: a message failed for good, or the time ran out (with the sender's log).
    """
    started = time.monotonic()
    tables = await read(federation, sender)
    try:
        query = "SELECT count(*) FROM outbox WHERE peer = :peer AND state = :state"

        async def receipted() -> int:
            failed = await tables.scalar(query, peer=recipient, state="failed")
            assert failed == 0, f"{failed} messages to {recipient} refused for good"
            return await tables.scalar(query, peer=recipient, state="receipted")

        try:
            await wait_until(
                receipted, lambda n: n >= total, timeout_s=timeout_s, what=f"{sender} receipts"
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- {sender} log ---\n{federation.log_tail(sender)}") from e
    finally:
        await tables.close()
    return time.monotonic() - started


def assert_exactly_once_in_order(
    sent: Sequence[Sent], received: Sequence[Received], case_ids: Sequence[bytes]
) -> None:
    """Every sent message was processed once, each case's messages in the order sent.

    Args:
        sent: the sender's outbox rows for the receiver, by ``seq``.
        received: the receiver's inbox rows from the sender, by arrival.
        case_ids: the cases queued.
    """
    assert all(row.state == "receipted" and row.receipt for row in sent), "outbox not drained"
    received_ids = [row.message_id for row in received]
    assert len(received_ids) == len(set(received_ids)), "a message was processed twice"
    assert sorted(received_ids) == sorted(row.message_id for row in sent), "inbox != outbox"
    assert len(sent) == 2 * len(case_ids)
    by_case_sent: dict[bytes, list[bytes]] = {}
    by_case_received: dict[bytes, list[bytes]] = {}
    for row in sent:
        by_case_sent.setdefault(row.case_id, []).append(row.message_id)
    for got in received:
        by_case_received.setdefault(got.case_id, []).append(got.message_id)
    assert set(by_case_sent) == set(case_ids)
    out_of_order = [c for c in case_ids if by_case_received.get(c) != by_case_sent[c]]
    assert not out_of_order, f"{len(out_of_order)} cases arrived out of order"


async def assert_stream_delivered(
    federation: LocalFederation, sender: str, recipient: str, case_ids: Sequence[bytes]
) -> list[Sent]:
    """Check a whole stream end to end (nodes may run or not); return the sender's rows."""
    source = await read(federation, sender)
    target = await read(federation, recipient)
    try:
        sent = await source.outbox(recipient)
        received = await target.inbox(sender)
        cases = await target.cases(sender)
    finally:
        await source.close()
        await target.close()
    assert_exactly_once_in_order(sent, received, case_ids)
    # The receiver's case machine ran once per message, in order: every case is closed there.
    assert {case_id: cases.get(case_id) for case_id in case_ids} == dict.fromkeys(
        case_ids, ("receiving", "closed")
    )
    return sent
