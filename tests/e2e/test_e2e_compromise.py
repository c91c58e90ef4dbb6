"""A member's identity key revoked and replaced by the others, under continuous traffic.

Three ``citynode serve`` processes over mutual TLS on loopback; a case worker at each city opens
inquiries to both other cities through the case API the whole time. Malmö's keys are taken to
be stolen: its operator and the others run **the commands of the runbook's procedure 4c, as the
runbook lists them** (parsed from its ``sh`` blocks, as ``tests/node/test_runbook.py`` parses
them; only the config, the time, the fingerprint and the file names are filled in):
``keys revoke`` next to the running node (Göteborg down for maintenance meanwhile, so Malmö has
a backlog for it dated on both sides of the compromise time), ``outbox status`` until nothing
waits, then with Malmö stopped ``keys replace`` and ``peers export``, ``peers import``/``verify``
at the others, ``agreement propose --replace-key``, ``sign`` by the threshold of the others,
``adopt`` at every node (next to the running nodes), and Malmö started again.

Checked: every message accepted for sending is processed exactly once, except what Malmö signed
with the revoked key from the compromise time on and had not delivered when the peer learnt the
revocation: that is refused (``revoked_key``) and shown ``failed`` by ``outbox status`` (the
runbook says to send it again), never silently lost. A peer coming back from an outage may take
such a backlog *before* it fetches Malmö's package (it cannot know sooner): those messages are
processed once, and the test counts both outcomes. Envelopes the thief signs with the stolen key
are refused by both peers: ``revoked_key`` before the agreement change; after it, the stolen
certificate gets ``403 unknown_peer`` and the stolen key ``unknown_key``. Malmö exchanges messages
with its new key after, and the peers deliver what they kept for it. Calls that block (the
commands, starting and stopping nodes) run in threads, so the traffic never pauses.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import secrets
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from e2e_support import UNITS, Sent, Tables, open_node, read, wait_until
from sqlalchemy import text
from test_e2e_rotation import Traffic, caseworker_tokens, header, peers_of
from yarl import URL

from node.federation import wire
from node.federation.tls import client_context_for
from node.keystore import Keystore
from node.localnet import LocalFederation
from node.secrets_source import OperatorSecret
from node.service import Node
from node.storage.database import Database
from node.storage.peer_store import PeerStore
from node.tls_material import TlsMaterial
from protocol.keys import identity_key_id
from protocol.messages import Inquiry, Need, ThreatLevel
from protocol.sealing import seal_envelope

CITIES = ("stockholm", "goteborg", "malmo")
COMPROMISED = "malmo"
OTHERS = ("stockholm", "goteborg")
RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "operator-runbook.md"
_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)  # as tests/node/test_runbook.py reads the runbook
WAIT_S = 45.0
COMPROMISED_FOR_S = 1  # the operator declares the key compromised since 1 s before the revoke
BACKLOG_S = 2.0  # seconds of traffic before a step (messages dated before the compromise time)
REJOINED = 5  # Malmö's messages signed by its new key and receipted, per peer, before the end


def procedure(section: str) -> list[list[str]]:
    """The ``citynode`` commands of one runbook section, in order, each as its argv."""
    doc = RUNBOOK.read_text(encoding="utf-8")
    start = doc.index(f"\n## {section}")
    end = doc.find("\n## ", start + 1)
    blocks = _BLOCK.findall(doc[start : end if end > 0 else None])
    lines = [line.strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("citynode ")]


@dataclass
class Operators:
    """Runs the runbook's commands at the federation, filling in what the runbook leaves open."""

    federation: LocalFederation
    since: str = ""
    fingerprint: str = ""

    async def run(self, argv: list[str]) -> dict[str, object]:
        """Run one runbook command at the city its ``--config`` names.

        The runbook's placeholders are filled in: ``--since`` (the compromise time),
        ``--fingerprint`` (what ``keys replace`` printed) and file names (under the
        federation's root: ``config/...`` as written, bare names in ``exchange/``).
        """
        filled = {"--since": self.since, "--fingerprint": self.fingerprint}
        args, city = [], ""
        words = iter(argv)
        for word in words:
            if word == "--config":
                city = Path(next(words)).stem
            elif word in filled:
                next(words)
                args += [word, filled[word]]
            elif word.endswith((".pkg", ".agreement", ".toml", ".tar")):
                args.append(str(self.federation.root / ("" if "/" in word else "exchange") / word))
            else:
                args.append(word)
        assert city in CITIES, f"runbook command without a city's config: {argv}"
        return await asyncio.to_thread(self.federation.citynode, city, *args)

    def steps(self, commands: list[list[str]], verb: str) -> list[list[str]]:
        """The commands of the procedure that start with ``verb`` (e.g. ``keys revoke``)."""
        return [c for c in commands if " ".join(c).startswith(verb)]


@dataclass(frozen=True)
class Thief:
    """What was copied from Malmö before the replacement: its identity key and TLS pair."""

    node: Node

    def forge(self, recipient: str, agreement_version: int) -> bytes:
        """An inquiry to ``recipient`` signed by the stolen key, dated now."""
        now = int(time.time())
        today = datetime.datetime.now(datetime.UTC).date()
        return seal_envelope(
            sender=COMPROMISED,
            sender_identity=self.node.own.identity,
            recipient=recipient,
            recipient_key=self.node.trust().sealing_key(recipient, now),
            agreement_version=agreement_version,
            message=Inquiry(
                case_id=secrets.token_bytes(16),
                from_unit=UNITS[COMPROMISED],
                to_unit=UNITS[recipient],
                threat_level=ThreatLevel.MODERATE,
                police_consulted_on=today - datetime.timedelta(days=7),
                consent=True,
                needs=(Need.HOUSING,),
                summary="Förfalskad (testärende).",
                wished_start=today + datetime.timedelta(days=30),
            ),
            message_id=secrets.token_bytes(16),
            timestamp=now,
            ephemeral=secrets.token_bytes(32),
            limits=self.node.config.limits.protocol,
        )

    async def deliver(
        self, recipient: str, *, tls: TlsMaterial | None = None, agreement_version: int = 1
    ) -> str:
        """POST a forged envelope to ``recipient`` with the stolen TLS certificate (or ``tls``).

        Returns:
            The envelope's status, or the HTTP refusal's code.
        """
        peer = self.node.trust().peer(recipient)
        context = client_context_for(tls or self.node.tls, peer.certificates)
        url = URL(peer.endpoint).with_path(wire.INBOX_PATH)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
            session.post(
                url,
                data=wire.encode_batch([self.forge(recipient, agreement_version)]),
                headers={"Content-Type": wire.MSGPACK},
            ) as response,
        ):
            body = await response.read()
        if response.status != 200:
            error = wire.decode_error(body)
            return f"{response.status} {error.code if error else '?'}"
        (result,) = wire.decode_results(body, expected=1, limits=self.node.config.limits)
        return result.status


async def revocation_applied(federation: LocalFederation, city: str) -> int:
    """Whether ``city`` stored the compromised member's revocation (from its package)."""
    db = await Database.connect(federation.database_url(city))
    try:
        records = await PeerStore(db).all()
    finally:
        await db.close()
    return int(any(r.city == COMPROMISED and r.identity_revocations for r in records))


async def undelivered(tables: Tables, *, peer: str | None = None) -> int:
    where = "" if peer is None else " AND peer = :peer"
    query = f"SELECT count(*) FROM outbox WHERE state IN ('queued', 'sent'){where}"
    return await tables.scalar(query, peer=peer)


async def refusal_codes(tables: Tables, peer: str) -> dict[bytes, str]:
    """The failed rows' codes (``last_error``), by message id."""
    query = text("SELECT message_id, last_error FROM outbox WHERE peer = :p AND state = 'failed'")
    async with tables._db.reading() as session:
        return {row[0]: row[1] for row in (await session.execute(query, {"p": peer})).all()}


async def signed_by(tables: Tables, peer: str, key_id: bytes) -> int:
    """How many of the last receipted messages to ``peer`` the key ``key_id`` signed."""
    query = text(
        "SELECT envelope FROM outbox WHERE peer = :p AND state = 'receipted' "
        "ORDER BY seq DESC LIMIT 20"
    )
    async with tables._db.reading() as session:
        envelopes = (await session.execute(query, {"p": peer})).scalars().all()
    return sum(1 for e in envelopes if header(e).sender_key_id == key_id)


def write_next_version_draft(federation: LocalFederation) -> None:
    """``config/agreement-v2.toml``: the adopted draft with ``version`` raised by one."""
    draft = (federation.root / "config" / "agreement.toml").read_text(encoding="utf-8")
    assert "version = 1\n" in draft
    (federation.root / "config" / "agreement-v2.toml").write_text(
        draft.replace("version = 1\n", "version = 2\n", 1), encoding="utf-8"
    )


async def compromise(
    federation: LocalFederation, operators: Operators, commands: list[list[str]]
) -> int:
    """Göteborg is down (maintenance) when Malmö's operator revokes its key: Malmö's messages to
    Göteborg wait, some dated after the compromise time. Göteborg comes back; Malmö's outbox is
    watched until nothing waits.

    Returns:
        The compromise time.
    """
    assert await asyncio.to_thread(federation.stop, "goteborg") == 0
    await asyncio.sleep(BACKLOG_S)  # a backlog for Göteborg, from before and after ``since``
    since = int(time.time()) - COMPROMISED_FOR_S
    operators.since = datetime.datetime.fromtimestamp(since, datetime.UTC).isoformat()
    for step in operators.steps(commands, "keys revoke"):
        assert (await operators.run(step))["since"] == since
    await wait_until(
        lambda: revocation_applied(federation, "stockholm"),
        bool,
        timeout_s=WAIT_S,
        what="revocation applied at stockholm",
    )
    federation.start("goteborg")  # Malmö stays degraded (its key is revoked): not start_all
    await asyncio.to_thread(federation.wait_healthy, "goteborg")
    await wait_until(
        lambda: revocation_applied(federation, "goteborg"),
        bool,
        timeout_s=WAIT_S,
        what="revocation applied at goteborg",
    )
    (status,) = operators.steps(commands, "outbox status")

    async def malmo_waiting() -> int:  # what the runbook's ``outbox status`` shows
        peers = (await operators.run(status))["peers"]
        assert isinstance(peers, list)
        return sum(p["counts"].get(s, 0) for p in peers for s in ("queued", "sent"))

    await wait_until(malmo_waiting, lambda n: n == 0, timeout_s=WAIT_S, what="malmo waiting")
    return since


async def replace(
    federation: LocalFederation, operators: Operators, commands: list[list[str]]
) -> bytes:
    """With Malmö stopped: the runbook's replacement, every node adopting, Malmö started again.

    Returns:
        Malmö's new identity key id.
    """
    (step,) = operators.steps(commands, "keys replace")
    replaced = await operators.run(step)
    operators.fingerprint = str(replaced["fingerprint"])
    for verb in (
        "peers export",
        "peers import",
        "peers verify",
        "agreement propose",
        "agreement sign",
        "agreement adopt",
    ):
        for step in operators.steps(commands, verb):
            await operators.run(step)
    await asyncio.to_thread(federation.start_all)
    for city in OTHERS:  # the running nodes take the adopted version up on their own
        await wait_until(
            lambda c=city: agreement_in_use(federation, c),  # type: ignore[misc]
            lambda version: version == 2,
            timeout_s=WAIT_S,
            what=f"agreement version in use at {city}",
        )
    return bytes.fromhex(str(replaced["new_key_id"]))


async def agreement_in_use(federation: LocalFederation, city: str) -> int:
    """The agreement version the running node uses, from its ``/healthz``."""
    url = f"{federation.api_url(city)}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return int((await response.json())["agreement_version"])


async def test_member_key_revoked_and_replaced_by_the_others_under_traffic_loses_nothing(
    federation: LocalFederation,
) -> None:
    commands = procedure("4c.")
    operators = Operators(federation)
    write_next_version_draft(federation)
    tokens = await caseworker_tokens(federation)
    federation.start_all()
    tables = {city: await read(federation, city) for city in CITIES}
    traffic = Traffic(federation, tokens)
    thief: Thief | None = None
    try:
        traffic.start()
        await asyncio.sleep(BACKLOG_S)  # traffic in every direction before the compromise
        since = await compromise(federation, operators, commands)
        assert await asyncio.to_thread(federation.stop, COMPROMISED) == 0
        thief = Thief(await open_node(federation, COMPROMISED))  # what the thief copied
        for city in OTHERS:  # before the agreement change: refused for the revoked key
            assert await thief.deliver(city) == "revoked_key"
        new_key_id = await replace(federation, operators, commands)
        # After it: the stolen certificate no longer gets in, and the stolen key's signature is
        # refused even over a connection made with Malmö's new certificate.
        secret = OperatorSecret(federation.secret.encode())
        new_tls = Keystore.open(federation.data_dir(COMPROMISED), secret).load_tls()
        for city in OTHERS:
            assert await thief.deliver(city) == "403 unknown_peer"
            assert await thief.deliver(city, tls=new_tls, agreement_version=2) == "unknown_key"
        for city in OTHERS:
            await wait_until(
                lambda c=city: signed_by(tables[COMPROMISED], c, new_key_id),  # type: ignore[misc]
                lambda n: n >= REJOINED,
                timeout_s=WAIT_S,
                what=f"malmo's new key delivering to {city}",
            )
        await traffic.stop()

        async def waiting() -> int:
            return sum([await undelivered(tables[c]) for c in CITIES])

        await wait_until(waiting, lambda n: n == 0, timeout_s=WAIT_S, what="undelivered")
    finally:
        await traffic.stop()
        if thief is not None:
            await thief.node.close()
    assert federation.stop_all() == dict.fromkeys(CITIES, 0)
    old_key_id = identity_key_id(thief.node.own.identity)
    (status,) = operators.steps(commands, "outbox status")
    shown = {p["peer"]: p["counts"] for p in (await operators.run(status))["peers"]}  # type: ignore[attr-defined]
    try:
        assert traffic.errors == []
        at_stake: list[Sent] = []  # Malmö's messages signed by the revoked key since ``since``
        for sender in CITIES:
            for recipient in peers_of(sender):
                sent = await tables[sender].outbox(recipient)
                received = [row.message_id for row in await tables[recipient].inbox(sender)]
                codes = await refusal_codes(tables[sender], recipient)
                refused = account(sent, received, codes, since, old_key_id, sender)
                inquiries = sum(1 for r in sent if r.case_id is not None)
                assert inquiries == traffic.opened[sender, recipient]
                if sender == COMPROMISED:
                    assert shown[recipient].get("failed", 0) == len(refused)
                    at_stake += [
                        r
                        for r in sent
                        if header(r.envelope).sender_key_id == old_key_id
                        and header(r.envelope).timestamp >= since
                    ]
    finally:
        for table in tables.values():
            await table.close()
    assert at_stake, "no message signed by the revoked key after the compromise time was sent"
    refused_count = sum(1 for r in at_stake if r.state == "failed")
    print(
        f"\n{sum(traffic.opened.values())} inquiries accepted around a key compromise; "
        f"{len(at_stake)} signed by the revoked key after the compromise time: "
        f"{len(at_stake) - refused_count} processed once (before the peer learnt of it), "
        f"{refused_count} refused (revoked_key, failed in outbox status); "
        f"not accepted meanwhile: {traffic.unavailable}"
    )


def account(
    sent: list[Sent],
    received: list[bytes],
    codes: dict[bytes, str],
    since: int,
    old_key_id: bytes,
    sender: str,
) -> list[Sent]:
    """Check one direction: each message processed once or refused for the revoked key.

    Returns:
        The refused messages (only the compromised member's, signed by its old key since the
        compromise time, none of them processed).
    """
    assert len(received) == len(set(received)), "a message was processed twice"
    refused = [row for row in sent if row.state == "failed"]
    assert all(row.state in ("receipted", "failed") for row in sent), "a message not settled"
    assert all(row.receipt for row in sent if row.state == "receipted")
    assert sorted(received) == sorted(r.message_id for r in sent if r.state == "receipted")
    if sender != COMPROMISED:
        assert refused == []
    for row in refused:
        assert codes[row.message_id] == "revoked_key"
        assert header(row.envelope).sender_key_id == old_key_id
        assert header(row.envelope).timestamp >= since
    return refused
