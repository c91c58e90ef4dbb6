"""Key-rotation benchmark: three real nodes under traffic while each key kind is rotated.

Three ``citynode serve`` processes (Stockholm, Göteborg, Malmö) are provisioned on loopback by the
operator procedure (:class:`node.localnet.LocalFederation`, SQLite). A case worker at each city
opens inquiries to both other cities through the case API (``POST /api/v1/cases``) at a steady
rate, so every node seals to, and is sealed to by, both its peers the whole time. Meanwhile the
operator command ``citynode keys rotate --kind KIND`` is run next to a running node, for each kind
(``encryption``, ``identity``, ``tls``) at each city (at Stockholm only with ``--quick``), one
after the other. Measured from the moment the command committed the rotation to the node's
key-history log (seen by polling its ``key_log`` table every 20 ms while the command runs;
``command_s`` is the command's whole run time, mostly Python start-up and unlocking the
keystore):

* ``encryption`` — until **both peers seal to the new key**: the first envelope in each peer's
  outbox whose header names the new current key id. ``propagation_s`` is the largest of these.
  Target: < 2 s (the running node notices the command's log entry within half a second and pushes
  its bundle as a ``KeyUpdate``).
* ``identity`` — until both peers hold the succession statement (their stored identity
  statements for the city changed); after the succession's ``effective_from`` (30 s later) the
  run goes on until envelopes signed by each new key have been delivered.
* ``tls`` — until both peers hold a bundle listing the new pin (``propagation``), until the node
  presents the new certificate (``switch``: every peer accepted it) and until the old pin is
  retired (``retire``: a ``tls_pin_retired`` entry in its key-history log).

When traffic stops and every outbox has drained, **lost** counts messages the API accepted that
are not processed exactly once at the receiver (outbox against inbox message ids, each direction,
key updates included) and **refused** every refusal the nodes counted
(``citynode_refusals_total`` of each node's ``/metrics``, all codes) plus outbox rows failed for
good. Target: both 0. As a baseline from the same run, ``latency_ms_p50`` is the ordinary
send-to-receipt time of the inquiries (outbox ``receipted_at - created_at``): a push cannot reach
a peer faster than a message does. ``load_1m_start`` and ``load_1m_end`` say how busy the
machine was.

Prints a Markdown table, or one JSON object with ``--json``; always exits 0 (it reports, it does
not judge).

Usage: ``python bench/bench_rotation.py [--quick] [--json] [--rate N] [--workdir DIR]``
(``make bench``, ``make bench-quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import text

from node.access import UserRole
from node.audit import AuditTrail
from node.localnet import LocalFederation
from node.storage.database import Database
from node.users import UserStore
from protocol import codec
from protocol.key_bundle import verify_bundle
from protocol.keylog import EntryKind, KeyLogEntry
from protocol.sealing import Header

CITIES = ("stockholm", "goteborg", "malmo")
UNITS = {"stockholm": "jarva", "goteborg": "hisingen", "malmo": "arbetsmarknad-social"}
KINDS = ("encryption", "identity", "tls")
CASEWORKER = "rotation.caseworker"
TARGET_PROPAGATION_S = 2.0
POLL_S = 0.02
STEP_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 60.0
IDENTITY_SWITCH_S = 30.0  # node.service.IDENTITY_SWITCH_S
TARGETS: dict[str, tuple[Callable[[float], bool], str]] = {
    "propagation_s": (lambda v: v < TARGET_PROPAGATION_S, f"< {TARGET_PROPAGATION_S:g}"),
    "lost": (lambda v: v == 0, "0"),
    "refused": (lambda v: v == 0, "0"),
}


# --- reading what the nodes stored -------------------------------------------------------------


class Stores:
    """Read access to every node's database while the nodes run."""

    def __init__(self, databases: dict[str, Database]) -> None:
        self._dbs = databases

    @classmethod
    async def open(cls, federation: LocalFederation) -> Stores:
        return cls({c: await Database.connect(federation.database_url(c)) for c in CITIES})

    async def close(self) -> None:
        for db in self._dbs.values():
            await db.close()

    async def rows(self, city: str, query: str, **params: object) -> list[Any]:
        async with self._dbs[city].reading() as session:
            return list((await session.execute(text(query), params)).all())

    async def sealed_to(
        self, sender: str, peer: str, key_id: bytes, after_seq: int
    ) -> float | None:
        """When ``sender`` first queued an envelope for ``peer`` sealed to ``key_id``."""
        rows = await self.rows(
            sender,
            "SELECT envelope, created_at FROM outbox WHERE peer = :p AND seq > :s ORDER BY seq",
            p=peer,
            s=after_seq,
        )
        for envelope, created_at in rows:
            if header(envelope).recipient_key_id == key_id:
                return float(created_at)
        return None

    async def last_seq(self, city: str) -> int:
        rows = await self.rows(city, "SELECT coalesce(max(seq), 0) FROM outbox")
        return int(rows[0][0])

    async def peer_state(self, city: str, peer: str) -> tuple[bytes | None, bytes | None]:
        """The bundle and identity statements ``city`` holds for ``peer``."""
        rows = await self.rows(
            city, "SELECT bundle, identity_statements FROM peers WHERE city = :c", c=peer
        )
        return (rows[0][0], rows[0][1]) if rows else (None, None)

    async def key_log(self, city: str) -> list[KeyLogEntry]:
        rows = await self.rows(city, 'SELECT entry FROM key_log ORDER BY "index"')
        return [codec.decode(r[0], KeyLogEntry, max_bytes=len(r[0]), what="entry") for r in rows]


def header(envelope: bytes) -> Header:
    header_bytes, _ = codec.decode(
        envelope, tuple[bytes, bytes], max_bytes=len(envelope), what="envelope"
    )
    return codec.decode(header_bytes, Header, max_bytes=1024, what="header")


async def until(probe: Callable[[], Awaitable[float | None]], what: str) -> float:
    """Poll ``probe`` until it returns a time; return it."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not seen after {STEP_TIMEOUT_S:g} s")
        await asyncio.sleep(POLL_S)


# --- traffic -----------------------------------------------------------------------------------


async def caseworker_tokens(federation: LocalFederation) -> dict[str, str]:
    """A case worker and a token at each (stopped) node, written straight to its database."""
    tokens = {}
    for city in CITIES:
        db = await Database.connect(federation.database_url(city))
        try:
            users = UserStore(db, time.time, audit=AuditTrail(db, time.time))
            await users.add(CASEWORKER, UserRole.CASEWORKER, UNITS[city], [UNITS[city]])
            tokens[city] = await users.issue_token(CASEWORKER, 24 * 3600.0)
        finally:
            await db.close()
    return tokens


def inquiry_body(to_city: str) -> bytes:
    today = datetime.datetime.now(datetime.UTC).date()
    return json.dumps(
        {
            "to_city": to_city,
            "to_unit": UNITS[to_city],
            "threat_level": "moderate",
            "police_consulted_on": (today - datetime.timedelta(days=7)).isoformat(),
            "consent": True,
            "needs": ["housing", "treatment"],
            "summary": "Behöver boende och stöd i öppenvård (fiktivt testärende).",
            "wished_start": (today + datetime.timedelta(days=30)).isoformat(),
        }
    ).encode()


@dataclass
class Traffic:
    """Inquiries from every city to both others through the case API, ``rate`` a second each."""

    federation: LocalFederation
    tokens: dict[str, str]
    rate: float
    accepted: int = 0
    api_errors: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        for sender in CITIES:
            for recipient in CITIES:
                if recipient != sender:
                    self._tasks.append(asyncio.create_task(self._flow(sender, recipient)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _flow(self, sender: str, recipient: str) -> None:
        url = f"{self.federation.api_url(sender)}/api/v1/cases"
        headers = {
            "Authorization": f"Bearer {self.tokens[sender]}",
            "Content-Type": "application/json",
        }
        body = inquiry_body(recipient)
        async with aiohttp.ClientSession() as session:
            while not self._stop.is_set():
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status == 201:
                            self.accepted += 1
                        else:
                            self.api_errors += 1
                except aiohttp.ClientError:
                    self.api_errors += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 1 / self.rate)


# --- rotations ---------------------------------------------------------------------------------


async def rotate(
    federation: LocalFederation, stores: Stores, city: str, kind: str
) -> tuple[dict[str, Any], float]:
    """Run ``citynode keys rotate --kind KIND`` next to the running node.

    Returns:
        What it printed, and when its key-history entries were committed (wall clock, seen by
        polling the node's ``key_log`` table while the command runs).
    """
    query = "SELECT count(*) FROM key_log"
    size = (await stores.rows(city, query))[0][0]
    started = time.monotonic()
    command = asyncio.create_task(
        asyncio.to_thread(federation.citynode, city, "keys", "rotate", "--kind", kind)
    )

    async def committed() -> float | None:
        grown = (await stores.rows(city, query))[0][0] > size
        return time.time() if grown else None

    at = await until(committed, f"{city}'s {kind} rotation committed")
    doc = await command
    doc["command_s"] = round(time.monotonic() - started, 3)
    return doc, at


def peers_of(city: str) -> list[str]:
    return [c for c in CITIES if c != city]


async def encryption_step(federation: LocalFederation, stores: Stores, city: str) -> dict:
    marks = {peer: await stores.last_seq(peer) for peer in peers_of(city)}
    doc, done = await rotate(federation, stores, city, "encryption")
    new = next(k for k in doc["after"]["encryption_keys"] if k["use"] == "current")
    key_id = bytes.fromhex(new["key_id"])
    seen = [
        await until(
            lambda peer=peer: stores.sealed_to(peer, city, key_id, marks[peer]),
            f"{peer} sealing to {city}'s new key",
        )
        for peer in peers_of(city)
    ]
    return {"command_s": doc["command_s"], "propagation_s": max(seen) - done}


async def identity_step(federation: LocalFederation, stores: Stores, city: str) -> dict:
    before = {peer: (await stores.peer_state(peer, city))[1] for peer in peers_of(city)}
    doc, done = await rotate(federation, stores, city, "identity")

    async def followed(peer: str) -> float | None:
        statements = (await stores.peer_state(peer, city))[1]
        return time.time() if statements != before[peer] else None

    seen = [
        await until(lambda p=peer: followed(p), f"{peer} following {city}'s succession")
        for peer in peers_of(city)
    ]
    return {
        "command_s": doc["command_s"],
        "propagation_s": max(seen) - done,
        "new_key_id": doc["after"]["identity_key_id"],
        "effective_from": doc["effective_from"],
    }


async def tls_step(federation: LocalFederation, stores: Stores, city: str) -> dict:
    doc, done = await rotate(federation, stores, city, "tls")
    new_pin = bytes.fromhex(doc["after"]["tls_pins"][-1]["pin"])

    async def pinned(peer: str) -> float | None:
        bundle = (await stores.peer_state(peer, city))[0]
        if bundle is None:
            return None
        verified = verify_bundle(bundle, None, int(time.time()))
        return time.time() if new_pin in verified.tls_pins else None

    seen = [
        await until(lambda p=peer: pinned(p), f"{peer} holding {city}'s new pin")
        for peer in peers_of(city)
    ]
    next_file = federation.data_dir(city) / "keys" / "tls-next.key"

    async def switched() -> float | None:
        return None if next_file.exists() else time.time()

    switch = await until(switched, f"{city} switching to its new certificate")

    async def retired() -> float | None:
        entries = await stores.key_log(city)
        kinds = [e.kind for e in entries]
        return time.time() if EntryKind.TLS_PIN_RETIRED in kinds else None

    retire = await until(retired, f"{city} retiring its old pin")
    return {
        "command_s": doc["command_s"],
        "propagation_s": max(seen) - done,
        "switch_s": switch - done,
        "retire_s": retire - done,
    }


STEPS = {"encryption": encryption_step, "identity": identity_step, "tls": tls_step}


async def signed_by_new_keys(stores: Stores, identities: dict[str, dict]) -> float:
    """Wait until each city has had an envelope signed by its new identity key receipted."""
    started = time.monotonic()
    for city, step in identities.items():
        key_id = bytes.fromhex(step["new_key_id"])

        async def receipted(city: str = city, key_id: bytes = key_id) -> float | None:
            rows = await stores.rows(
                city, "SELECT envelope FROM outbox WHERE state = 'receipted' ORDER BY seq DESC"
            )
            signed = any(header(row[0]).sender_key_id == key_id for row in rows[:200])
            return time.time() if signed else None

        wait_s = step["effective_from"] - time.time()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        await until(receipted, f"{city} delivering under its new identity key")
    return time.monotonic() - started


# --- accounting --------------------------------------------------------------------------------


async def drained(stores: Stores) -> None:
    """Wait until no outbox holds an undelivered message."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    query = "SELECT count(*) FROM outbox WHERE state IN ('queued', 'sent')"
    while True:
        pending = sum([(await stores.rows(c, query))[0][0] for c in CITIES])
        if pending == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pending} messages still undelivered after {DRAIN_TIMEOUT_S:g} s")
        await asyncio.sleep(0.1)


async def delivery(stores: Stores, accepted: int) -> dict[str, Any]:
    """Lost, duplicated and failed messages, and the inquiries' send-to-receipt latency."""
    lost = duplicates = failed = inquiries = 0
    latencies: list[float] = []
    for sender in CITIES:
        failed += (await stores.rows(sender, "SELECT count(*) FROM outbox WHERE state = 'failed'"))[
            0
        ][0]
        for recipient in peers_of(sender):
            sent = await stores.rows(
                sender,
                "SELECT message_id, case_id, receipted_at - created_at FROM outbox WHERE peer = :p",
                p=recipient,
            )
            got = await stores.rows(
                recipient, "SELECT message_id FROM inbox WHERE sender = :s", s=sender
            )
            received = [row[0] for row in got]
            duplicates += len(received) - len(set(received))
            lost += len({row[0] for row in sent} - set(received))
            inquiries += sum(1 for row in sent if row[1] is not None)
            latencies += [row[2] for row in sent if row[1] is not None and row[2] is not None]
    return {
        "messages": inquiries,
        "lost": lost + max(0, accepted - inquiries),
        "duplicates": duplicates,
        "failed": failed,
        "latency_ms_p50": round(1000 * statistics.median(latencies), 1) if latencies else None,
    }


async def refusals(federation: LocalFederation) -> dict[str, float]:
    """Every refusal each node counted (``citynode_refusals_total``), by node."""
    counted = {}
    async with aiohttp.ClientSession() as session:
        for city in CITIES:
            async with session.get(f"{federation.api_url(city)}/metrics") as response:
                body = await response.text()
            counted[city] = sum(
                float(line.rsplit(" ", 1)[1])
                for line in body.splitlines()
                if line.startswith("citynode_refusals_total{")
            )
    return counted


# --- the run -----------------------------------------------------------------------------------


async def run_rotations(
    federation: LocalFederation, stores: Stores, cities: tuple[str, ...]
) -> tuple[list[dict], dict[str, dict]]:
    rotations: list[dict] = []
    identities: dict[str, dict] = {}
    for kind in KINDS:
        for city in cities:
            step = await STEPS[kind](federation, stores, city)
            rotations.append({"kind": kind, "city": city, **step})
            if kind == "identity":
                identities[city] = step
    return rotations, identities


def summarise(rotations: list[dict]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "propagation_s_by_kind": {
            kind: round(max(r["propagation_s"] for r in rotations if r["kind"] == kind), 3)
            for kind in KINDS
        },
        "command_s": round(max(r["command_s"] for r in rotations), 3),
    }
    result["propagation_s"] = result["propagation_s_by_kind"]["encryption"]
    tls = [r for r in rotations if r["kind"] == "tls"]
    result["tls_switch_s"] = round(max(r["switch_s"] for r in tls), 3)
    result["tls_retire_s"] = round(max(r["retire_s"] for r in tls), 3)
    for row in rotations:
        for key, value in list(row.items()):
            if isinstance(value, float):
                row[key] = round(value, 3)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cities = CITIES[:1] if args.quick else CITIES
    root = Path(tempfile.mkdtemp(prefix="citynode-bench-rotation-", dir=args.workdir))
    result: dict[str, Any] = {"quick": args.quick, "rate_per_direction": args.rate}
    result["load_1m_start"] = round(os.getloadavg()[0], 2)
    try:
        federation = LocalFederation.create(root / "federation", CITIES)
        try:
            tokens = await caseworker_tokens(federation)
            federation.start_all()
            stores = await Stores.open(federation)
            traffic = Traffic(federation, tokens, args.rate)
            try:
                traffic.start()
                await asyncio.sleep(2.0)  # every direction flowing
                started = time.monotonic()
                rotations, identities = await run_rotations(federation, stores, cities)
                result["identity_switch_wait_s"] = round(
                    await signed_by_new_keys(stores, identities), 1
                )
                result["duration_s"] = round(time.monotonic() - started, 1)
                await traffic.stop()
                await drained(stores)
                result.update(summarise(rotations))
                result["rotations"] = rotations
                result.update(await delivery(stores, traffic.accepted))
                by_node = await refusals(federation)
                result["refused_by_node"] = by_node
                result["refused"] = int(sum(by_node.values())) + result["failed"]
                result["api_errors"] = traffic.api_errors
            finally:
                await traffic.stop()
                await stores.close()
        finally:
            federation.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result["targets"] = {
        key: met(result[key]) for key, (met, _) in TARGETS.items() if key in result
    }
    result["load_1m_end"] = round(os.getloadavg()[0], 2)
    result["python"] = sys.version.split()[0]
    result["cpus"] = os.cpu_count()
    return result


def table(r: dict[str, Any]) -> str:
    lines = ["| measure | value | target | met |", "|---|---:|---|---|"]
    shown = [
        (
            "encryption: both peers seal to the new key (s)",
            r["propagation_s_by_kind"]["encryption"],
        ),
        ("identity: both peers hold the succession (s)", r["propagation_s_by_kind"]["identity"]),
        ("tls: both peers hold the new pin (s)", r["propagation_s_by_kind"]["tls"]),
        ("tls: switched to the new certificate (s)", r["tls_switch_s"]),
        ("tls: old pin retired (s)", r["tls_retire_s"]),
        ("`keys rotate` command run time (s)", r["command_s"]),
        ("inquiries sent during the rotations", r["messages"]),
        ("lost", r["lost"]),
        ("refused", r["refused"]),
        ("send-to-receipt p50, same run (ms)", r["latency_ms_p50"]),
    ]
    keys = {0: "propagation_s", 6: None, 7: "lost", 8: "refused"}
    for i, (label, value) in enumerate(shown):
        key = keys.get(i)
        target = TARGETS[key][1] if key else ""
        met = ("yes" if r["targets"][key] else "NO") if key else ""
        lines.append(f"| {label} | {value} | {target} | {met} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="rotate at Stockholm only")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rate", type=float, default=5.0, help="inquiries/s per direction")
    parser.add_argument("--workdir", help="where the federation's files go (default: $TMPDIR)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(table(result))
        print()
        print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
