"""Live city nodes for the case API tests: provisioned, federated, serving, with users and tokens.

Stockholm and Göteborg are provisioned in a temporary directory by the operators' procedure
(``provision.create_node``, peer packages imported and their fingerprints confirmed, an agreement
proposed by Stockholm, signed by Göteborg, adopted by both), each with two units, so that a case
worker of *another* unit exists. Each node then runs ``node.serving.serve`` — the federation
listener over real mutual TLS and the API listener — in the test's event loop, and talks to the
other exactly as in production. Users of every role get a token through ``node.users``.

The building blocks (configuration files, the fast KDF, the clock, free ports, the fake person)
are those of ``tests/node/node_fixtures.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web
from node_fixtures import (
    FAST_KDF,
    PERSON_NAME,
    PERSON_PHONE,
    PERSONNUMMER,
    SECRET,
    Ports,
    TestClock,
    free_port,
    write_config,
)

from node.access import UserRole
from node.api.app import create_case_api
from node.audit import AuditTrail
from node.cases.service import CaseService
from node.config import load_config
from node.membership import (
    adopt_agreement,
    import_peer,
    propose_agreement,
    sign_agreement,
    verify_peer,
)
from node.provision import create_node
from node.service import Node
from node.serving import serve
from node.users import UserStore

CITIES: Final = ("stockholm", "goteborg")
UNITS: Final[Mapping[str, tuple[str, str]]] = {
    "stockholm": ("socialnamnden", "jarva"),
    "goteborg": ("nordost", "centrum"),
}
# Account names of each role at each city (account names, not people).
USERS: Final[Mapping[str, Mapping[str, tuple[UserRole, str | None]]]] = {
    "stockholm": {
        "anna": (UserRole.CASEWORKER, "socialnamnden"),
        "jonas": (UserRole.CASEWORKER, "jarva"),
        "karin": (UserRole.COORDINATOR, None),
        "olle": (UserRole.OPERATOR, None),
        "rut": (UserRole.AUDITOR, None),
    },
    "goteborg": {
        "greta": (UserRole.CASEWORKER, "nordost"),
        "hugo": (UserRole.CASEWORKER, "centrum"),
        "ines": (UserRole.COORDINATOR, None),
        "otto": (UserRole.OPERATOR, None),
    },
}
TOKEN_TTL_S: Final = 3600.0
API: Final = "/api/v1"


def inquiry_body(**overrides: Any) -> dict[str, Any]:
    """A valid new inquiry from Stockholm's socialnamnden to Göteborg's nordost."""
    body: dict[str, Any] = {
        "to_city": "goteborg",
        "to_unit": "nordost",
        "from_unit": "socialnamnden",
        "threat_level": "moderate",
        "police_consulted_on": "2026-01-15",
        "consent": True,
        "needs": ["housing", "treatment"],
        "summary": "Behöver boende och öppenvård efter hot.",
        "wished_start": "2026-12-15",
    }
    body.update(overrides)
    return body


def referral_body(**person: Any) -> dict[str, Any]:
    """A referral of the fake person (a Skatteverket test personnummer)."""
    return {
        "person": {
            "name": PERSON_NAME,
            "personnummer": "19121212-1212",
            "phone": PERSON_PHONE,
            **person,
        },
        "interventions": ["Boendestöd", "Öppenvårdsbehandling"],
        "payer": "socialnamnden",
    }


def write_draft(
    root: Path, ports: Mapping[str, Ports], today: datetime.date, *, quota: int
) -> Path:
    """The agreement draft: both cities with two units each, valid around ``today``."""
    lines = [
        "version = 1",
        'title = "Testavtal om samverkan för insatser till avhoppare"',
        f"valid_from = {today - datetime.timedelta(days=400)}",
        f"valid_until = {today + datetime.timedelta(days=400)}",
        f"quota_per_home_city_per_year = {quota}",
        'eligible_threat_levels = ["low", "moderate"]',
        "signing_threshold = 2",
    ]
    for city in CITIES:
        lines += [
            "[[members]]",
            f'city = "{city}"',
            f'display_name = "{city.capitalize()}"',
            f'endpoint = "https://127.0.0.1:{ports[city].federation}"',
        ]
        for unit in UNITS[city]:
            lines += ["[[members.units]]", f'id = "{unit}"', f'display_name = "Enhet {unit}"']
    path = root / "agreement.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Answer:
    """An API answer: the status, the decoded JSON body (or ``None``) and the headers."""

    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def code(self) -> str | None:
        """The error code of an error answer."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return code if isinstance(code, str) else None
        return None


@dataclass
class LiveFederation:
    """Two serving nodes and an HTTP client for their case APIs."""

    root: Path
    clock: TestClock
    nodes: dict[str, Node]
    api_ports: dict[str, int]
    tokens: dict[str, dict[str, str]]
    session: aiohttp.ClientSession
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def url(self, city: str, path: str, base: str | None = None) -> str:
        """The full URL of an API path (``/cases``) at ``city`` (or at the server ``base``)."""
        return f"{base or f'http://127.0.0.1:{self.api_ports[city]}'}{API}{path}"

    async def call(
        self,
        city: str,
        user: str | None,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        token: str | None = None,
        base: str | None = None,
    ) -> Answer:
        """Call ``city``'s API as ``user`` (``None``: no token); ``base``: another server of it."""
        sent = dict(headers or {})
        bearer = token or (self.tokens[city][user] if user is not None else None)
        if bearer is not None:
            sent["Authorization"] = f"Bearer {bearer}"
        async with self.session.request(
            method, self.url(city, path, base), json=json, data=data, headers=sent, params=params
        ) as response:
            raw = await response.read()
            body = await response.json() if raw and response.content_type.endswith("json") else None
            return Answer(response.status, body, dict(response.headers))

    async def case(self, city: str, user: str, case_id: str, **params: str) -> Answer:
        """``GET /cases/{id}`` at ``city`` as ``user``."""
        return await self.call(city, user, "GET", f"/cases/{case_id}", params=params or None)

    async def wait_state(
        self, city: str, user: str, case_id: str, state: str, *, timeout_s: float = 15.0
    ) -> dict[str, Any]:
        """Poll ``city`` until the case is there in ``state``; return its view."""
        deadline = time.monotonic() + timeout_s
        last: Answer | None = None
        while time.monotonic() < deadline:
            last = await self.case(city, user, case_id)
            if last.status == 200 and last.body["state"] == state:
                return dict(last.body)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{city} never showed the case in {state}: {last}")

    async def wait_receipted(self, city: str, user: str, case_id: str) -> dict[str, Any]:
        """Poll ``city`` until every message it sent for the case is receipted."""
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            view = (await self.case(city, user, case_id)).body
            sent = [e for e in view["timeline"] if e["direction"] == "sent"]
            if sent and all(e["delivery"] == "receipted" for e in sent):
                return dict(view)
            await asyncio.sleep(0.05)
        raise AssertionError(f"{city}: messages of the case never all receipted")


async def _add_users(node: Node, city: str) -> dict[str, str]:
    users = UserStore(node.db, node.clock)
    tokens = {}
    for name, (role, unit) in USERS[city].items():
        await users.add(name, role, unit, UNITS[city])
        tokens[name] = await users.issue_token(name, TOKEN_TTL_S)
    return tokens


async def _federate(
    root: Path, clock: TestClock, quota: int
) -> tuple[dict[str, Node], dict[str, Ports]]:
    ports = {city: Ports(free_port(), free_port()) for city in CITIES}
    configs = {}
    fingerprints = {}
    for city in CITIES:
        configs[city] = load_config(write_config(root, city, ports[city]))
        fingerprints[city] = await create_node(
            configs[city], SECRET, kdf_params=FAST_KDF, clock=clock
        )
    today = datetime.datetime.fromtimestamp(clock(), tz=datetime.UTC).date()
    draft = write_draft(root, ports, today, quota=quota)
    nodes = {city: await Node.open(configs[city], SECRET, clock=clock) for city in CITIES}
    packages = {city: node.package() for city, node in nodes.items()}
    for city, node in nodes.items():
        for other in CITIES:
            if other != city:
                await import_peer(node, packages[other])
                await verify_peer(node, other, fingerprints[other])
    signed = sign_agreement(nodes["goteborg"], await propose_agreement(nodes["stockholm"], draft))
    for node in nodes.values():
        await adopt_agreement(node, signed)
    return nodes, ports


@contextlib.asynccontextmanager
async def live_federation(root: Path, *, quota: int = 2) -> AsyncIterator[LiveFederation]:
    """Provision Stockholm and Göteborg under ``root`` and serve both until the block ends."""
    root.mkdir(parents=True, exist_ok=True)
    clock = TestClock()
    nodes, ports = await _federate(root, clock, quota)
    tokens = {city: await _add_users(node, city) for city, node in nodes.items()}
    session = aiohttp.ClientSession()
    live = LiveFederation(
        root=root,
        clock=clock,
        nodes=nodes,
        api_ports={city: p.api for city, p in ports.items()},
        tokens=tokens,
        session=session,
    )
    try:
        live.tasks = [asyncio.create_task(serve(node, live.stop)) for node in nodes.values()]
        await _until_serving(live)
        yield live
    finally:
        live.stop.set()
        await asyncio.gather(*live.tasks, return_exceptions=True)
        await session.close()
        for node in nodes.values():
            await node.close()


async def _until_serving(live: LiveFederation) -> None:
    deadline = time.monotonic() + 15.0
    for city, port in live.api_ports.items():
        while True:
            for task in live.tasks:
                if task.done():
                    task.result()  # serve failed: raise its error
            with contextlib.suppress(aiohttp.ClientError):
                async with live.session.get(f"http://127.0.0.1:{port}/healthz") as response:
                    if response.status in (200, 503):
                        break
            if time.monotonic() > deadline:
                raise AssertionError(f"{city} did not start serving")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def shifted_api(live: LiveFederation, city: str, *, days: float) -> AsyncIterator[str]:
    """A second case API of ``city``'s node whose rules see the date ``days`` away.

    Only the calendar rules move (the service's clock): messages are still sealed and sent at the
    node's real time, so the agreement's period can be tested without touching keys or TLS.
    Messages it queues wait for the node's sender loop to be woken by its next heartbeat.

    Yields:
        The base URL of that API server.
    """
    node = live.nodes[city]
    audit = AuditTrail(node.db, node.clock)
    service = CaseService(
        city=city,
        db=node.db,
        cases=node.cases,
        journal=node.journal,
        outgoing=node.outgoing(lambda _peer: None),
        audit=audit,
        trust=node.trust,
        clock=lambda: node.clock() + days * 86_400,
    )
    app = web.Application()
    api = create_case_api(
        service,
        UserStore(node.db, node.clock, audit=audit),
        city=city,
        max_body_bytes=node.config.limits.max_api_request_bytes,
        clock=node.clock,
    )
    app.add_subapp(API + "/", api)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def personal_strings() -> Sequence[str]:
    """What must never be found in a database of a node that was not sent the referral."""
    return (PERSON_NAME, PERSONNUMMER, "19121212-1212", PERSON_PHONE)
