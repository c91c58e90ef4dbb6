"""Real city nodes for node-level tests: provisioned, federated and wired as ``serve`` wires them.

Builds two or three :class:`~node.service.Node` objects in a temporary directory through the real
operator procedure, in-process: ``provision.create_node`` for each city (keys, TLS certificate,
database), then ``membership.import_peer`` + ``verify_peer`` of every other city's package, one
agreement draft proposed by the first city, signed by the others and adopted by all. Provisioning
costs about half a second per trio, so tests copy a federation provisioned once per session
(:func:`federation_template` + :func:`copy_federation`); a test that needs its own ports (a
running ``serve``) or PostgreSQL provisions afresh (:func:`provision`).

Also here: sealing envelopes as a peer would (the sender node's identity, the receiver's current
key from the sender's trust snapshot), forging the bad ones the issue lists, the inbox processor
and the federation listener built exactly as ``node.serving.serve`` builds them, delivering an
outbox in-process, counting what a node stored, and checking log records for personal data.

Imported by the test modules as ``from node_fixtures import ...`` (pytest puts ``tests/node`` on
``sys.path``; the name is unique among the test directories).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import secrets
import shutil
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import msgspec
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.pwhash import argon2id
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from node.config import NodeConfig, NodeLimits, load_config
from node.delivery import ACCEPTED, DeliveryResult, InboxHandler
from node.federation import wire
from node.federation.server import create_federation_app
from node.federation.tls import PinTable, client_context_for, server_context
from node.inbox import InboxProcessor
from node.keystore import KdfParams
from node.membership import (
    adopt_agreement,
    import_peer,
    propose_agreement,
    sign_agreement,
    verify_peer,
)
from node.provision import create_node
from node.secrets_source import OperatorSecret
from node.service import Node
from node.serving import serve
from node.storage.schema import CaseRow
from node.trust import TrustState
from protocol import codec, hpke, signing
from protocol.keys import EncryptionKey, VerifyKey, identity_key_id, public_bytes
from protocol.messages import (
    Closure,
    ClosureReason,
    Decision,
    Inquiry,
    Intake,
    Message,
    Need,
    Person,
    ProgressReport,
    QuotaCount,
    Referral,
    Reply,
    ThreatLevel,
)
from protocol.sealing import HPKE_INFO_PREFIX, Header, seal_envelope, signed_payload
from protocol.signing import Purpose

PG_URL_ENV: Final = "CITYNODE_TEST_PG_URL"
SECRET: Final = OperatorSecret(b"test operator secret, not for production")
FAST_KDF: Final = KdfParams(opslimit=argon2id.OPSLIMIT_MIN, memlimit=argon2id.MEMLIMIT_MIN)
CITIES: Final = ("stockholm", "goteborg", "malmo")
UNITS: Final[Mapping[str, str]] = {
    "stockholm": "socialnamnden",
    "goteborg": "nordost",
    "malmo": "arbetsmarknad-social",
}

# The fake person of every referral here: a Skatteverket test personnummer (valid checksum) and
# an obviously invented name. None of these strings may ever reach a log record or a metric.
PERSON_NAME: Final = "Testa Fiktiva Exempelsson"
PERSONNUMMER: Final = "191212121212"
PERSON_PHONE: Final = "070-000 00 00"
INQUIRY_SUMMARY: Final = "Behöver skyddat boende och öppenvård efter hot i Exempelby."
PERSONAL_STRINGS: Final = (
    PERSON_NAME,
    "Exempelsson",
    PERSONNUMMER,
    "19121212-1212",
    "121212-1212",
    "1212121212",
    PERSON_PHONE,
    INQUIRY_SUMMARY,
    "Exempelby",
)


# --- time -----------------------------------------------------------------------------------


@dataclass
class TestClock:
    """Wall-clock time plus an offset the test may move (TLS certificates need real time)."""

    __test__ = False  # not a test class, whatever its name
    offset: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


# --- provisioning -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for ``serve``'s configured ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Ports:
    """A city's two listener ports."""

    federation: int
    api: int


def fresh_ports(cities: Sequence[str]) -> dict[str, Ports]:
    """Two distinct free loopback ports per city, for nodes that ``serve``."""
    ports: set[int] = set()
    while len(ports) < 2 * len(cities):
        ports.add(free_port())
    ordered = sorted(ports)
    return {city: Ports(ordered[2 * i], ordered[2 * i + 1]) for i, city in enumerate(cities)}


def _placeholder_ports(cities: Sequence[str]) -> dict[str, Ports]:
    # Never bound: tests that copy a template do not listen on the configured ports.
    return {city: Ports(19443 + 2 * i, 19444 + 2 * i) for i, city in enumerate(cities)}


def write_config(
    root: Path,
    city: str,
    ports: Ports,
    *,
    database_url: str | None = None,
    limits: Mapping[str, int | float] | None = None,
) -> Path:
    """Write ``<root>/<city>.toml``; paths in it are relative, so a copied tree still works."""
    lines = [
        f'city = "{city}"',
        f'data_dir = "{city}"',
        'agreement = "agreement.toml"',
        'log_level = "debug"',
        "[federation]",
        'host = "127.0.0.1"',
        f"port = {ports.federation}",
        "[api]",
        'host = "127.0.0.1"',
        f"port = {ports.api}",
    ]
    if database_url is not None:
        lines += ["[database]", f'url = "{database_url}"']
    if limits:
        lines += ["[limits]"] + [f"{key} = {value}" for key, value in limits.items()]
    path = root / f"{city}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_draft(
    root: Path, cities: Sequence[str], ports: Mapping[str, Ports], today: datetime.date
) -> Path:
    """Write the agreement draft naming ``cities`` (valid around ``today``), 2 signatures needed."""
    threshold = len(cities) // 2 + 1
    lines = [
        "version = 1",
        'title = "Testavtal om samverkan för insatser till avhoppare"',
        f"valid_from = {today - datetime.timedelta(days=30)}",
        f"valid_until = {today + datetime.timedelta(days=365)}",
        "quota_per_home_city_per_year = 2",
        'eligible_threat_levels = ["low", "moderate"]',
        f"signing_threshold = {threshold}",
    ]
    for city in cities:
        lines += [
            "[[members]]",
            f'city = "{city}"',
            f'display_name = "{city.capitalize()}"',
            f'endpoint = "https://127.0.0.1:{ports[city].federation}"',
            "[[members.units]]",
            f'id = "{UNITS[city]}"',
            'display_name = "Socialnämnden"',
        ]
    path = root / "agreement.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def provision(
    root: Path,
    cities: Sequence[str] = CITIES,
    *,
    clock: Callable[[], float],
    ports: Mapping[str, Ports] | None = None,
    database_urls: Mapping[str, str] | None = None,
    limits: Mapping[str, int | float] | None = None,
) -> dict[str, NodeConfig]:
    """Provision and federate ``cities`` under ``root`` by the operators' procedure; nodes closed.

    Every city: ``create_node``; every city imports every other city's package and confirms its
    fingerprint; the first city proposes the agreement, the others sign it, all adopt it.

    Returns:
        Each city's configuration (its node can be opened with :meth:`Federation.open`).
    """
    root.mkdir(parents=True, exist_ok=True)
    ports = ports or _placeholder_ports(cities)
    urls = database_urls or {}
    configs: dict[str, NodeConfig] = {}
    fingerprints: dict[str, str] = {}
    for city in cities:
        path = write_config(root, city, ports[city], database_url=urls.get(city), limits=limits)
        configs[city] = load_config(path)
        fingerprints[city] = await create_node(
            configs[city], SECRET, kdf_params=FAST_KDF, clock=clock
        )
    today = datetime.datetime.fromtimestamp(clock(), tz=datetime.UTC).date()
    draft = write_draft(root, cities, ports, today)
    nodes = {city: await Node.open(configs[city], SECRET, clock=clock) for city in cities}
    try:
        packages = {city: node.package() for city, node in nodes.items()}
        for city, node in nodes.items():
            for other in cities:
                if other != city:
                    await import_peer(node, packages[other])
                    await verify_peer(node, other, fingerprints[other])
        signed = await propose_agreement(nodes[cities[0]], draft)
        for city in cities[1:]:
            signed = sign_agreement(nodes[city], signed)
        for node in nodes.values():
            await adopt_agreement(node, signed)
    finally:
        for node in nodes.values():
            await node.close()
    return configs


@dataclass
class Federation:
    """Provisioned cities under one root, their nodes opened on demand and closed by the test."""

    root: Path
    clock: TestClock
    configs: dict[str, NodeConfig]
    nodes: dict[str, Node] = field(default_factory=dict)

    async def open(self, city: str, *, limits: NodeLimits | None = None) -> Node:
        """Open (or return the open) node of ``city``; ``limits`` replaces its configured ones."""
        if city in self.nodes and limits is None:
            return self.nodes[city]
        if city in self.nodes:
            await self.nodes.pop(city).close()
        config = self.configs[city]
        if limits is not None:
            config = dataclasses.replace(config, limits=limits)
        node = await Node.open(config, SECRET, clock=self.clock)
        self.nodes[city] = node
        return node

    async def restart(self, city: str) -> Node:
        """Close the city's node and open it again from its data directory (a process restart)."""
        node = self.nodes.pop(city)
        limits = node.config.limits
        await node.close()
        return await self.open(city, limits=limits)

    async def close(self) -> None:
        """Close every open node."""
        for node in self.nodes.values():
            await node.close()
        self.nodes.clear()


_TEMPLATES: dict[tuple[str, ...], Path] = {}


def federation_template(
    tmp_path_factory: pytest.TempPathFactory, cities: Sequence[str] = CITIES
) -> Path:
    """A federation of ``cities`` on SQLite, provisioned once per test session (run outside a loop).

    Returns:
        Its root directory, to be copied with :func:`copy_federation`, never used in place.
    """
    key = tuple(cities)
    if key not in _TEMPLATES:
        root = tmp_path_factory.mktemp("federation-template") / "fed"
        asyncio.run(provision(root, cities, clock=TestClock()))
        _TEMPLATES[key] = root
    return _TEMPLATES[key]


def copy_federation(
    template: Path, destination: Path, cities: Sequence[str] = CITIES
) -> Federation:
    """Copy a provisioned federation (keys, databases, configs) to ``destination``."""
    shutil.copytree(template, destination, symlinks=True)
    configs = {city: load_config(destination / f"{city}.toml") for city in cities}
    return Federation(destination, TestClock(), configs)


# --- PostgreSQL ---------------------------------------------------------------------------------


def pg_url_or_skip() -> str:
    """The test PostgreSQL server's URL; skips the test, saying why, when it is not set."""
    url = os.environ.get(PG_URL_ENV)
    if not url:
        pytest.skip(f"{PG_URL_ENV} is not set: the PostgreSQL node tests need a server")
    return url


@contextlib.asynccontextmanager
async def pg_databases(cities: Sequence[str]) -> AsyncIterator[dict[str, str]]:
    """A fresh database per city on the test server, dropped afterwards; yields their URLs."""
    base = make_url(pg_url_or_skip())
    run = uuid.uuid4().hex[:12]
    names = {city: f"citynode_t_{run}_{city}" for city in cities}
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            for name in names.values():
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield {
            city: base.set(database=name).render_as_string(hide_password=False)
            for city, name in names.items()
        }
    finally:
        async with admin.connect() as connection:
            for name in names.values():
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


@contextlib.asynccontextmanager
async def fresh_federation(
    root: Path,
    cities: Sequence[str] = CITIES,
    *,
    backend: str = "sqlite",
    listening: bool = False,
) -> AsyncIterator[Federation]:
    """Provision ``cities`` afresh under ``root``; nodes are closed (and databases dropped) after.

    Args:
        root: where the configurations and data directories go.
        cities: the members.
        backend: ``"sqlite"`` (a file in each data directory) or ``"postgresql"`` (a database
            per city on the test server; skipped when there is none).
        listening: give each city free loopback ports, for nodes that ``serve``.
    """
    clock = TestClock()
    databases = pg_databases(cities) if backend == "postgresql" else contextlib.nullcontext(None)
    async with databases as urls:
        ports = fresh_ports(cities) if listening else None
        configs = await provision(root, cities, clock=clock, ports=ports, database_urls=urls)
        federation = Federation(root, clock, configs)
        try:
            yield federation
        finally:
            await federation.close()


# --- what a node holds --------------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """What a node has kept from its peers: inbox rows, replay records, cases and their states."""

    inbox: int
    replay: int
    cases: tuple[tuple[bytes, str], ...]


async def stored(node: Node) -> Stored:
    """Count what ``node`` stored."""
    async with node.db.reading() as s:
        cases = (await s.execute(select(CaseRow.case_id, CaseRow.state))).all()
        case_count = await s.scalar(select(func.count()).select_from(CaseRow))
    assert case_count == len(cases)
    return Stored(
        inbox=await node.inbox.count(),
        replay=await node.inbox.replay_count(),
        cases=tuple(sorted((bytes(c), str(state)) for c, state in cases)),
    )


async def case_state(node: Node, case_id: bytes) -> str | None:
    """The state of ``case_id`` at ``node``, or ``None`` when it holds no such case."""
    record = await node.cases.get(case_id)
    return None if record is None else record.state.value


def refusals(node: Node, peer: str, code: str) -> float:
    """``citynode_refusals_total{peer, code}`` of the node's metrics."""
    value = node.metrics.registry.get_sample_value(
        "citynode_refusals_total", {"peer": peer, "code": code}
    )
    return value or 0.0


def personal_data_in(records: Iterable[logging.LogRecord]) -> list[str]:
    """The log messages (formatted, with any traceback) that carry one of the personal strings."""
    leaks = []
    for record in records:
        texts = [record.getMessage(), str(record.exc_info[1]) if record.exc_info else ""]
        if any(s in t for s in PERSONAL_STRINGS for t in texts):
            leaks.append(record.getMessage())
    return leaks


# --- the receiving side, as serve wires it -----------------------------------------------------


def inbox_processor(node: Node, *, trust: Callable[[], TrustState] | None = None) -> InboxProcessor:
    """The node's inbox handler, built as ``serve`` builds it (``trust`` may stand in)."""
    return InboxProcessor(
        city=node.config.city,
        identity=node.own.identity,
        decryption_keys=node.decryption,
        trust=trust or node.trust,
        inbox=node.inbox,
        ledger=node.ledger,
        metrics=node.metrics,
        clock=node.clock,
        limits=node.config.limits.protocol,
    )


def with_sender_keys(trust: TrustState, city: str, keys: Sequence[VerifyKey]) -> TrustState:
    """The same snapshot, but trusting ``keys`` as ``city``'s identity keys."""
    peers = dict(trust.peers)
    peers[city] = dataclasses.replace(peers[city], identity=tuple(keys))
    return dataclasses.replace(trust, peers=peers)


@dataclass(frozen=True)
class Posted:
    """The listener's answer to one inbox request.

    Attributes:
        status: the HTTP status.
        results: ``(status, receipt)`` per envelope on a 200, else empty.
        error: the error code of a refused request, else ``None``.
        retry_after: the ``Retry-After`` header, if any.
    """

    status: int
    results: list[tuple[str, bytes | None]]
    error: str | None
    retry_after: str | None


@dataclass
class RunningListener:
    """The node's real federation app, served over real mutual TLS on 127.0.0.1."""

    node: Node
    url: str
    port: int
    runner: web.AppRunner
    seen: list[str]

    async def post(self, client: Node, envelopes: Sequence[bytes]) -> Posted:
        """POST a batch presenting ``client``'s certificate."""
        async with (
            tls_session(client, self.node) as session,
            session.post(
                self.url + wire.INBOX_PATH,
                data=wire.encode_batch(envelopes),
                headers={"Content-Type": wire.MSGPACK},
            ) as response,
        ):
            body = await response.read()
            retry_after = response.headers.get("Retry-After")
        if response.status == 200:
            results = [(str(status), receipt) for status, receipt in msgspec.msgpack.decode(body)]
            return Posted(200, results, None, retry_after)
        return Posted(response.status, [], error_code(body), retry_after)


def error_code(body: bytes) -> str | None:
    """The code of a refused request's JSON error body, or ``None`` when it is not one."""
    error = wire.decode_error(body)
    return None if error is None else error.code


def tls_session(client: Node, server: Node) -> aiohttp.ClientSession:
    """An HTTPS session presenting ``client``'s certificate and trusting ``server``'s."""
    context = client_context_for(client.tls, [server.tls.certificate_pem])
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))


@contextlib.asynccontextmanager
async def federation_listener(
    node: Node,
    *,
    handler: InboxHandler | None = None,
    pins: Callable[[], PinTable] | None = None,
) -> AsyncIterator[RunningListener]:
    """Serve the node's federation app (as ``serve`` builds it) on an ephemeral loopback port."""
    seen: list[str] = []

    async def key_state() -> bytes:
        return node.package()

    app = create_federation_app(
        handler=handler or inbox_processor(node),
        key_state=key_state,
        pins=pins or (lambda: node.trust().pin_table()),
        limits=node.config.limits,
        metrics=node.metrics,
        on_peer_seen=seen.append,
        attachments=None,
    )
    context = server_context(node.tls, node.trust().all_peer_certificates())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        yield RunningListener(node, f"https://127.0.0.1:{port}", port, runner, seen)
    finally:
        await runner.cleanup()


def client_ssl(client: Node, server: Node) -> ssl.SSLContext:
    """The client context of ``client`` towards ``server`` (for raw socket tests)."""
    return client_context_for(client.tls, [server.tls.certificate_pem])


# --- messages -----------------------------------------------------------------------------------


def new_case_id() -> bytes:
    """A fresh 16-byte case id."""
    return secrets.token_bytes(16)


def inquiry(case_id: bytes, *, to_unit: str | None = "nordost") -> Inquiry:
    """An anonymous inquiry from Stockholm's unit."""
    return Inquiry(
        case_id=case_id,
        from_unit=UNITS["stockholm"],
        to_unit=to_unit,
        threat_level=ThreatLevel.MODERATE,
        police_consulted_on=datetime.date(2026, 1, 15),  # the receiving node checks it too
        consent=True,
        needs=(Need.HOUSING, Need.TREATMENT),
        summary=INQUIRY_SUMMARY,
        wished_start=None,
    )


def accept(case_id: bytes, unit: str = "nordost") -> Reply:
    """The receiving city's acceptance."""
    return Reply(case_id=case_id, unit=unit, decision=Decision.ACCEPT, reason="Plats finns.")


def referral(case_id: bytes, *, year: int) -> Referral:
    """The referral of the fake person, with no documents."""
    return Referral(
        case_id=case_id,
        from_unit=UNITS["stockholm"],
        person=Person(
            name=PERSON_NAME,
            personnummer=PERSONNUMMER,
            protected_identity=True,
            phone=PERSON_PHONE,
            address=None,
        ),
        documents=(),
        interventions=("Boendestöd", "Öppenvårdsbehandling"),
        payer=UNITS["stockholm"],
        quota=QuotaCount(year=year, index=1, total=2),
    )


def decline(case_id: bytes, unit: str = "nordost") -> Reply:
    """The receiving city's decline."""
    return Reply(case_id=case_id, unit=unit, decision=Decision.DECLINE, reason="Ingen plats.")


def intake(case_id: bytes, on: datetime.date, unit: str = "nordost") -> Intake:
    """The receiving city confirms the person arrived."""
    return Intake(case_id=case_id, unit=unit, arrived_on=on, contact="Mottagningen, vardagar.")


def progress_report(case_id: bytes, on: datetime.date, unit: str = "nordost") -> ProgressReport:
    """A progress report for the month up to ``on``."""
    start = on - datetime.timedelta(days=30)
    return ProgressReport(
        case_id=case_id, unit=unit, period_start=start, period_end=on, text="Insatserna pågår."
    )


def closure(
    case_id: bytes, unit: str, on: datetime.date, reason: ClosureReason = ClosureReason.ABORTED
) -> Closure:
    """A closure of the case by ``unit``."""
    return Closure(case_id=case_id, unit=unit, reason=reason, closed_on=on, note="Avslutat.")


# --- sealing and forging ------------------------------------------------------------------------


def seal(
    sender: Node,
    recipient: str,
    message: Message,
    *,
    timestamp: int | None = None,
    message_id: bytes | None = None,
    recipient_key: EncryptionKey | None = None,
    identity: Ed25519PrivateKey | None = None,
    sender_city: str | None = None,
) -> bytes:
    """Seal ``message`` as ``sender`` to ``recipient``'s current key in the sender's trust snapshot.

    Args:
        sender: the sending node (its identity key signs, its agreement version is named).
        recipient: the receiving city.
        message: the message.
        timestamp: the header's timestamp (default: now by the sender's clock); the key's
            sealing window is widened to it, so a stale or future envelope can be made.
        message_id: the header's message id (default: fresh).
        recipient_key: seal to this key instead.
        identity: sign with this key instead of the node's identity.
        sender_city: claim this sender instead of the node's city.
    """
    trust = sender.trust()
    now = int(sender.clock())
    key = recipient_key or trust.sealing_key(recipient, now)
    stamp = now if timestamp is None else timestamp
    if not key.not_before <= stamp <= key.not_after:
        key = msgspec.structs.replace(
            key, not_before=min(stamp, key.not_before), not_after=max(stamp, key.not_after)
        )
    return seal_envelope(
        sender=sender_city or sender.config.city,
        sender_identity=identity or sender.own.identity,
        recipient=recipient,
        recipient_key=key,
        agreement_version=trust.agreement.version,
        message=message,
        message_id=message_id or secrets.token_bytes(16),
        timestamp=stamp,
        ephemeral=secrets.token_bytes(32),
        limits=sender.config.limits.protocol,
    )


def split(envelope: bytes) -> tuple[Header, bytes, bytes]:
    """An envelope's typed header, header bytes and sealed part."""
    header_bytes, sealed = codec.decode(
        envelope, tuple[bytes, bytes], max_bytes=len(envelope), what="envelope"
    )
    return codec.decode(header_bytes, Header, max_bytes=1024, what="header"), header_bytes, sealed


def reframe(envelope: bytes, *, header: Header | None = None, sealed: bytes | None = None) -> bytes:
    """The envelope with its header replaced (re-encoded) or its sealed part replaced."""
    _, header_bytes, old_sealed = split(envelope)
    new_header = codec.encode(header) if header is not None else header_bytes
    return codec.encode((new_header, old_sealed if sealed is None else sealed))


def forge(
    header: Header,
    body: Message | bytes,
    *,
    signer: Ed25519PrivateKey,
    recipient_public: bytes,
) -> bytes:
    """An envelope built by hand: any header and body (a message or raw bytes), signed by
    ``signer`` and sealed to the public key given."""
    header_bytes = codec.encode(header)
    body_bytes = body if isinstance(body, bytes) else codec.encode(body)
    signature = signing.sign(signer, Purpose.ENVELOPE, signed_payload(header_bytes, body_bytes))
    sealed = hpke.seal(
        recipient_public,
        HPKE_INFO_PREFIX + header_bytes,
        codec.encode((body_bytes, signature)),
        secrets.token_bytes(32),
    )
    return codec.encode((header_bytes, sealed))


def header_of(envelope: bytes) -> Header:
    """The typed header of a well-formed envelope."""
    return split(envelope)[0]


def verify_key_of(identity: Ed25519PrivateKey, **validity: int | None) -> VerifyKey:
    """The :class:`VerifyKey` of a private key, with the validity fields given."""
    return VerifyKey(
        key_id=identity_key_id(identity),
        public_key=public_bytes(identity),
        valid_from=int(validity.get("valid_from") or 0),
        valid_until=validity.get("valid_until"),
        revoked_since=validity.get("revoked_since"),
    )


# --- delivering in-process ----------------------------------------------------------------------


async def deliver_outbox(sender: Node, receiver: Node) -> list[DeliveryResult]:
    """Hand the sender's queued envelopes for the receiver to its inbox, as a sender loop would.

    Every receipt is checked as the sender's transport checks it; results are stored in the
    sender's outbox (receipts, and permanent refusals as failed).

    Returns:
        The receiver's results, in order.
    """
    peer = receiver.config.city
    now = sender.clock()
    batch = await sender.outbox.next_batch(peer, sender.config.limits.batch_size, now)
    await sender.outbox.mark_sent([e.seq for e in batch], now)
    envelopes = [e.envelope for e in batch]
    results = list(await inbox_processor(receiver).handle_batch(sender.config.city, envelopes))
    check = sender.receipt_checker()
    for envelope, result in zip(batch, results, strict=True):
        if result.delivered:
            assert result.receipt is not None
            assert check(peer, envelope, result.receipt)
    await sender.outbox.record_results(batch, results, sender.clock())
    return results


def statuses(results: Iterable[DeliveryResult]) -> list[str]:
    """The status of each result."""
    return [result.status for result in results]


async def send(sender: Node, recipient: Node, message: Message) -> None:
    """Queue ``message`` at the sender as its case workers would (case moved, outbox row)."""
    await sender.outgoing(lambda _: None).send(recipient.config.city, message)


async def open_case(home: Node, receiving: Node, case_id: bytes, *, accepted: bool) -> None:
    """Run the start of the case flow between two nodes: inquiry (and acceptance) delivered."""
    await send(home, receiving, inquiry(case_id))
    assert statuses(await deliver_outbox(home, receiving)) == [ACCEPTED]
    if accepted:
        await send(receiving, home, accept(case_id, UNITS[receiving.config.city]))
        assert statuses(await deliver_outbox(receiving, home)) == [ACCEPTED]


@contextlib.asynccontextmanager
async def serving(*nodes: Node) -> AsyncIterator[None]:
    """Run ``serve`` for each node until the block ends; waits until each answers /healthz."""
    stops = [asyncio.Event() for _ in nodes]
    tasks = [
        asyncio.create_task(serve(node, stop)) for node, stop in zip(nodes, stops, strict=True)
    ]
    try:
        async with aiohttp.ClientSession() as session:
            for node, task in zip(nodes, tasks, strict=True):
                await wait_until(functools.partial(_answers, session, node, task))
        yield
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks)


async def _answers(session: aiohttp.ClientSession, node: Node, task: asyncio.Task[None]) -> bool:
    if task.done():
        task.result()  # raises what stopped serve
        raise AssertionError("serve returned before it was asked to stop")
    try:
        async with session.get(operator_url(node, "/healthz")) as response:
            await response.read()
            return True
    except aiohttp.ClientConnectionError:
        return False


def operator_url(node: Node, path: str) -> str:
    """The URL of ``path`` on the node's operator listener (``/healthz``, ``/metrics``)."""
    return f"http://{node.config.api.host}:{node.config.api.port}{path}"


async def wait_until(condition: Callable[[], object], *, timeout_s: float = 10.0) -> None:
    """Poll a condition (sync or returning an awaitable) until it holds; fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
