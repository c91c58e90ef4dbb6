"""Every key kind rotated at every node of a running federation, under continuous traffic.

Three ``citynode serve`` processes over mutual TLS on loopback. A case worker at each city opens
inquiries to both other cities through the case API the whole time, while the operators run
``citynode keys rotate --kind identity`` (new keys signing 10 s later), then ``--kind
encryption``, then ``--kind tls``, at the three nodes at once, next to the running nodes (the
runbook's procedures 4a, 4b and 4e). The test then waits until
every rotation has fully taken effect — peers seal to each new encryption key, each new identity
key signs delivered envelopes after its ``effective_from``, each node presents its new TLS
certificate and has retired the old pin — stops the traffic and checks what the nodes stored:
every message (inquiries and key updates) receipted at the sender and processed exactly once at
the receiver, a case for every inquiry, and not one refusal counted by any node.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from e2e_support import UNITS, Sent, Tables, read, wait_until
from sqlalchemy import text

from node.access import UserRole
from node.audit import AuditTrail
from node.localnet import LocalFederation
from node.storage.database import Database
from node.users import UserStore
from protocol import codec
from protocol.keylog import EntryKind, KeyLogEntry
from protocol.sealing import Header

CITIES = ("stockholm", "goteborg", "malmo")
CASEWORKER = "rotation.caseworker"
RATE_PER_S = 4.0  # inquiries a second in each of the six directions
SETTLE_TIMEOUT_S = 45.0
DRAIN_TIMEOUT_S = 30.0
SWITCH_AFTER_S = 10  # the new identity keys sign from 10 s after their succession


def peers_of(city: str) -> list[str]:
    return [c for c in CITIES if c != city]


def header(envelope: bytes) -> Header:
    header_bytes, _ = codec.decode(
        envelope, tuple[bytes, bytes], max_bytes=len(envelope), what="envelope"
    )
    return codec.decode(header_bytes, Header, max_bytes=1024, what="header")


async def caseworker_tokens(federation: LocalFederation) -> dict[str, str]:
    """A case worker of one unit at each stopped node, and a bearer token for it."""
    tokens = {}
    for city in CITIES:
        db = await Database.connect(federation.database_url(city))
        try:
            users = UserStore(db, time.time, audit=AuditTrail(db, time.time))
            await users.add(CASEWORKER, UserRole.CASEWORKER, UNITS[city], [UNITS[city]])
            tokens[city] = await users.issue_token(CASEWORKER, 3600.0)
        finally:
            await db.close()
    return tokens


def inquiry(
    recipient: str, summary: str = "Behöver boende och stöd (testärende)."
) -> dict[str, Any]:
    """The case API body of an inquiry to ``recipient``'s unit, dated today."""
    today = datetime.datetime.now(datetime.UTC).date()
    return {
        "to_city": recipient,
        "to_unit": UNITS[recipient],
        "threat_level": "moderate",
        "police_consulted_on": (today - datetime.timedelta(days=7)).isoformat(),
        "consent": True,
        "needs": ["housing", "treatment"],
        "summary": summary,
        "wished_start": (today + datetime.timedelta(days=30)).isoformat(),
    }


@dataclass
class Traffic:
    """Inquiries from every city to both others through the case API, ``RATE_PER_S`` each.

    Refusals by a node that cannot take them now (503: revoked key, peer's keys not fetched yet)
    and a stopped node are counted in ``unavailable``, other answers in ``errors``: a test says
    which of them it allows.
    """

    federation: LocalFederation
    tokens: dict[str, str]
    opened: dict[tuple[str, str], int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, directions: tuple[tuple[str, str], ...] = ()) -> None:
        """Start the flows: ``directions`` (sender, recipient), or all six."""
        every = tuple((s, r) for s in CITIES for r in peers_of(s))
        for sender, recipient in directions or every:
            self.opened.setdefault((sender, recipient), 0)
            self._tasks.append(asyncio.create_task(self._flow(sender, recipient)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._tasks.clear()
        self._stop.clear()

    async def _flow(self, sender: str, recipient: str) -> None:
        body = inquiry(recipient)
        url = f"{self.federation.api_url(sender)}/api/v1/cases"
        headers = {"Authorization": f"Bearer {self.tokens[sender]}"}
        async with aiohttp.ClientSession() as session:
            while not self._stop.is_set():
                try:
                    async with session.post(url, json=body, headers=headers) as response:
                        answer = await response.text()
                        if response.status == 201:
                            self.opened[sender, recipient] += 1
                        elif response.status == 503:
                            code = (await response.json())["error"]["code"]
                            self.unavailable[code] = self.unavailable.get(code, 0) + 1
                        else:
                            self.errors.append(f"{sender}: {response.status} {answer}")
                except aiohttp.ClientConnectionError:
                    self.unavailable["stopped"] = self.unavailable.get("stopped", 0) + 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1 / RATE_PER_S)


async def rotate_everywhere(federation: LocalFederation, *args: str) -> dict[str, dict[str, Any]]:
    """``citynode keys rotate ARGS`` at every city at once, next to its running node."""
    done = await asyncio.gather(
        *(asyncio.to_thread(federation.citynode, city, "keys", "rotate", *args) for city in CITIES)
    )
    return dict(zip(CITIES, done, strict=True))


async def tls_pins_retired(federation: LocalFederation, city: str) -> int:
    """How many ``tls_pin_retired`` entries the city's key-history log holds."""
    db = await Database.connect(federation.database_url(city))
    try:
        async with db.reading() as session:
            rows = (await session.execute(text("SELECT entry FROM key_log"))).scalars().all()
    finally:
        await db.close()
    entries = [codec.decode(r, KeyLogEntry, max_bytes=len(r), what="entry") for r in rows]
    return sum(1 for e in entries if e.kind == EntryKind.TLS_PIN_RETIRED)


@dataclass(frozen=True)
class Rotated:
    """What the rotations at one city made, as the commands printed it."""

    encryption_key_id: bytes
    identity_key_id: bytes
    effective_from: int


async def settled(
    federation: LocalFederation, tables: dict[str, Tables], rotated: dict[str, Rotated]
) -> bool:
    """Whether every rotation has taken effect everywhere."""
    for city in CITIES:
        mine = rotated[city]
        if (federation.data_dir(city) / "keys" / "tls-next.key").exists():
            return False  # not switched to the new certificate yet
        if await tls_pins_retired(federation, city) != 1:
            return False
        if time.time() < mine.effective_from:
            return False
        sent = await tables[city].outbox(peers_of(city)[0])
        signed = [header(row.envelope).sender_key_id for row in sent if row.receipt][-20:]
        if mine.identity_key_id not in signed:
            return False  # nothing signed by the new identity key delivered yet
        for peer in peers_of(city):  # both peers seal to the new encryption key
            to_city = await tables[peer].outbox(city)
            if header(to_city[-1].envelope).recipient_key_id != mine.encryption_key_id:
                return False
    return True


async def refusals(federation: LocalFederation, city: str) -> dict[str, float]:
    """``citynode_refusals_total`` of the node's metrics, by label set."""
    url = f"{federation.api_url(city)}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body = await response.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("citynode_refusals_total{")
    }


def assert_exactly_once(sent: list[Sent], received: list[bytes], opened: int) -> None:
    """The sender's rows for one peer were each receipted and processed once there."""
    assert all(row.state == "receipted" and row.receipt for row in sent), "outbox not drained"
    assert len(received) == len(set(received)), "a message was processed twice"
    assert sorted(received) == sorted(row.message_id for row in sent), "inbox != outbox"
    assert sum(1 for row in sent if row.case_id is not None) == opened


async def test_every_key_kind_rotated_at_every_node_under_traffic_loses_and_refuses_nothing(
    federation: LocalFederation,
) -> None:
    tokens = await caseworker_tokens(federation)
    federation.start_all()
    tables = {city: await read(federation, city) for city in CITIES}
    traffic = Traffic(federation, tokens)
    try:
        traffic.start()
        await asyncio.sleep(1.0)
        rotated: dict[str, Rotated] = {}
        identity = await rotate_everywhere(
            federation, "--kind", "identity", "--switch-after", str(SWITCH_AFTER_S)
        )
        encryption = await rotate_everywhere(federation, "--kind", "encryption")
        tls = await rotate_everywhere(federation, "--kind", "tls")
        for city in CITIES:
            assert [p["use"] for p in tls[city]["after"]["tls_pins"]] == ["current", "next"]
        for city in CITIES:
            current = next(
                k for k in encryption[city]["after"]["encryption_keys"] if k["use"] == "current"
            )
            rotated[city] = Rotated(
                encryption_key_id=bytes.fromhex(current["key_id"]),
                identity_key_id=bytes.fromhex(identity[city]["after"]["identity_key_id"]),
                effective_from=int(identity[city]["effective_from"]),
            )

        async def all_settled() -> int:
            return int(await settled(federation, tables, rotated))

        await wait_until(all_settled, bool, timeout_s=SETTLE_TIMEOUT_S, what="rotations settled")
        await traffic.stop()

        async def undelivered() -> int:
            query = "SELECT count(*) FROM outbox WHERE state IN ('queued', 'sent', 'failed')"
            return sum([await tables[c].scalar(query) for c in CITIES])

        await wait_until(
            undelivered, lambda n: n == 0, timeout_s=DRAIN_TIMEOUT_S, what="undelivered"
        )
        counted = {city: await refusals(federation, city) for city in CITIES}
    finally:
        await traffic.stop()
    assert federation.stop_all() == dict.fromkeys(CITIES, 0)

    try:
        assert traffic.errors == []
        assert traffic.unavailable == {}  # no node refused or was away
        for sender in CITIES:
            for recipient in peers_of(sender):
                sent = await tables[sender].outbox(recipient)
                received = [row.message_id for row in await tables[recipient].inbox(sender)]
                assert_exactly_once(sent, received, traffic.opened[sender, recipient])
                cases = await tables[recipient].cases(sender)
                inquiries = {row.case_id for row in sent if row.case_id is not None}
                assert inquiries <= set(cases), "an inquiry did not open its case"
        assert all(sum(c.values()) == 0 for c in counted.values()), counted
    finally:
        for table in tables.values():
            await table.close()
    total = sum(traffic.opened.values())
    print(f"\n{total} inquiries through 9 rotations: each processed once, none refused")
