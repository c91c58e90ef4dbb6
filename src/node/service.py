"""One city node, assembled: what ``citynode serve`` runs and what operator commands open.

Owns the wiring of the node's parts (no part reaches for another through a global):

* :class:`Node` — everything opened for one data directory: the keystore (unlocked by the
  operator secret), the database (migrated to the current schema), the stores, the node's own
  keys and key-history log, and the current :class:`~node.trust.TrustState`. Operator commands
  use it without listening on any port.
* :func:`serve` — the running node: the federation listener (mutual TLS, pinned peers), the
  API listener (``/healthz``, ``/metrics`` and the case API under ``/api/v1``, bearer tokens),
  one sender loop per peer, and a heartbeat that fetches each peer's key package every few
  seconds — which keeps the peers' keys fresh and tells a peer that comes back that we are here
  (its sender loop then retries at once).

Nothing is served before an agreement has been adopted: without one the node has no peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from node.api.app import create_case_api
from node.api.openapi import PREFIX as API_PREFIX
from node.attachment_store import AttachmentStore
from node.audit import AuditTrail
from node.case_ledger import CaseLedger
from node.cases.journal import CaseJournal
from node.cases.rules import CaseRules
from node.cases.service import CaseService
from node.config import NodeConfig
from node.errors import NodeError
from node.federation.client import FederationClient, PeerEndpoint
from node.federation.server import create_federation_app
from node.federation.tls import PinTable, server_context, trust_peer_certificates
from node.inbox import InboxProcessor
from node.key_history import KeyHistory
from node.keystore import Keystore
from node.metrics import NodeMetrics
from node.outbox.backoff import Backoff
from node.outbox.dispatcher import OutboxDispatcher
from node.outbox.sender import OutboxSettings
from node.outgoing import Outgoing
from node.own_keys import OwnKeys, decryption_keys, ensure_next_key, load_own_keys, own_bundle
from node.peer_package import encode_package, read_package
from node.secrets_source import OperatorSecret
from node.storage.case_store import CaseStore
from node.storage.database import Database
from node.storage.inbox_store import InboxStore
from node.storage.outbox_store import OutboxStore
from node.storage.peer_store import PeerStore
from node.storage.schema import AgreementRow
from node.storage.vault import CaseVault
from node.tls_material import TlsMaterial
from node.trust import TrustState
from node.users import UserStore
from protocol.agreement import VerifiedAgreement, verify_chain
from protocol.errors import ProtocolError
from protocol.key_bundle import VerifiedKeyBundle, verify_bundle
from protocol.keylog import EntryKind
from protocol.sealing import DecryptionKey, envelope_hash, verify_receipt

logger = logging.getLogger(__name__)

HEARTBEAT_S: Final = 2.0
HOUSEKEEPING_S: Final = 60.0


class NoAgreement(NodeError):
    """The node has not adopted an agreement yet: it has no peers to talk to."""

    code = "no_agreement"


@dataclass
class Node:
    """Everything opened for one node's data directory (no listener yet).

    Build with :meth:`open`; close with :meth:`close`.
    """

    config: NodeConfig
    keystore: Keystore
    db: Database
    metrics: NodeMetrics
    clock: Callable[[], float]
    own: OwnKeys
    tls: TlsMaterial
    cases: CaseStore
    inbox: InboxStore
    outbox: OutboxStore
    peers: PeerStore
    history: KeyHistory
    journal: CaseJournal
    attachments: AttachmentStore
    ledger: CaseLedger = field(init=False)
    _trust: TrustState | None = None
    _bundle: bytes | None = None
    _decryption: Mapping[bytes, DecryptionKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rules = CaseRules(
            city=self.config.city, agreement=lambda: self.trust().agreement, today=self.today
        )
        self.ledger = CaseLedger(
            city=self.config.city, cases=self.cases, journal=self.journal, rules=rules
        )

    @classmethod
    async def open(
        cls, config: NodeConfig, secret: OperatorSecret, *, clock: Callable[[], float] = time.time
    ) -> Node:
        """Unlock the keystore, migrate the database and load the node's state.

        Raises:
            KeystoreError: no keystore, wrong secret, unsafe permissions, corrupt key files.
            StorageError: the database cannot be reached or migrated.
        """
        keystore = Keystore.open(config.data_dir, secret, clock=clock)
        db = await Database.connect(config.database.url)
        try:
            await db.migrate()
        except BaseException:
            await db.close()
            raise
        vault = CaseVault(keystore.load_data_key())
        cases = CaseStore(db, vault, clock)
        limits = config.limits
        node = cls(
            config=config,
            keystore=keystore,
            db=db,
            metrics=NodeMetrics(),
            clock=clock,
            own=load_own_keys(keystore),
            tls=keystore.load_tls(),
            cases=cases,
            inbox=InboxStore(db, vault, clock, limits=limits),
            outbox=OutboxStore(db, clock, limits=limits),
            peers=PeerStore(db),
            history=KeyHistory(db, limits.protocol),
            journal=CaseJournal(db, vault, limits.protocol),
            attachments=AttachmentStore(config.data_dir / "attachments"),
        )
        await node.reload_keys()
        await node.reload_trust()
        return node

    async def close(self) -> None:
        """Close the database."""
        await self.db.close()

    # --- own keys ---------------------------------------------------------------------------

    async def reload_keys(self) -> None:
        """Make sure a next encryption key exists, then rebuild the bundle and the key maps."""
        now = int(self.clock())
        if ensure_next_key(self.keystore, self.config.keys, now):
            self.own = load_own_keys(self.keystore)
        log = await self.history.load()
        self._decryption = decryption_keys(self.keystore, self.own.encryption)
        bundle = own_bundle(
            self.own,
            city=self.config.city,
            schedule=self.config.keys,
            tls_pins=(self.tls.pin(),),
            key_log=log.head_record(),
            now=now,
            limits=self.config.limits.protocol,
        )
        self._bundle = encode_package(bundle, (self.tls.certificate_pem,))

    def package(self) -> bytes:
        """This node's public package (signed bundle + TLS certificate), as peers fetch it."""
        assert self._bundle is not None  # built by open()
        return self._bundle

    def decryption(self) -> Mapping[bytes, DecryptionKey]:
        """Our encryption private keys still held, by key id."""
        return self._decryption

    # --- trust ------------------------------------------------------------------------------

    def trust(self) -> TrustState:
        """The current trust snapshot.

        Raises:
            NoAgreement: no agreement adopted yet.
        """
        if self._trust is None:
            raise NoAgreement("no agreement adopted yet: adopt one before serving")
        return self._trust

    def has_agreement(self) -> bool:
        """Whether an agreement has been adopted."""
        return self._trust is not None

    async def reload_trust(self) -> None:
        """Rebuild the trust snapshot from the stored agreement versions and peer packages."""
        agreement = await self._load_agreement()
        if agreement is None:
            self._trust = None
            return
        bundles: dict[str, VerifiedKeyBundle] = {}
        certificates: dict[str, tuple[bytes, ...]] = {}
        for record in await self.peers.all():
            member = next((m for m in agreement.document.members if m.city == record.city), None)
            if member is None or record.bundle is None:
                continue
            try:
                bundles[record.city] = verify_bundle(
                    record.bundle,
                    member.identity_key,
                    int(self.clock()),
                    self.config.limits.protocol,
                )
            except ProtocolError as e:
                logger.warning(
                    "keys [%s] stored bundle no longer verifies: %s", record.city, e.code
                )
                continue
            certificates[record.city] = tuple(record.tls_certificates)
        self._trust = TrustState.build(self.config.city, agreement, bundles, certificates)

    async def _load_agreement(self) -> VerifiedAgreement | None:
        async with self.db.reading() as s:
            rows = (await s.execute(AgreementRow.__table__.select())).all()
        if not rows:
            return None
        signed = [row.signed for row in sorted(rows, key=lambda r: r.version)]
        return verify_chain(signed[0], signed[1:], self.today(), limits=self.config.limits.protocol)

    def today(self) -> datetime.date:
        """The current date (UTC), for the agreement's calendar rules."""
        return datetime.datetime.fromtimestamp(self.clock(), tz=datetime.UTC).date()

    async def accept_package(self, city: str, data: bytes) -> bool:
        """Store a peer's package fetched from it, if it verifies against the member's key.

        Returns:
            True when it changed what we hold (the trust snapshot is rebuilt).
        """
        trust = self.trust()
        member = trust.agreement.member(city)
        package = read_package(
            data,
            expected_identity=member.identity_key,
            now=int(self.clock()),
            limits=self.config.limits.protocol,
        )
        current = trust.peers[city].bundle
        if current is not None and current.signed_bytes == package.bundle.signed_bytes:
            return False
        await self.peers.upsert_peer(city, member.endpoint)
        await self.peers.store_bundle(
            city, package.bundle.signed_bytes, package.bundle.sequence, package.certificates
        )
        await self.reload_trust()
        logger.info("keys [%s] new key package stored (sequence %d)", city, package.bundle.sequence)
        return True

    async def record_initial_keys(self) -> None:
        """Append the node's first keys to its key-history log (``citynode init``)."""
        changes = [(EntryKind.IDENTITY_KEY, self.own.identity_stored.public_key)]
        changes += [(EntryKind.ENCRYPTION_KEY, key.public_key) for key in self.own.encryption]
        changes.append((EntryKind.TLS_PIN, self.tls.pin()))
        await self.history.append(changes, int(self.clock()))
        await self.reload_keys()

    # --- sending ----------------------------------------------------------------------------

    def outgoing(self, notify: Callable[[str], None]) -> Outgoing:
        """The sender of protocol messages, waking ``notify(peer)`` after each commit."""
        return Outgoing(
            city=self.config.city,
            identity=self.own.identity,
            trust=self.trust,
            db=self.db,
            outbox=self.outbox,
            ledger=self.ledger,
            notify=notify,
            clock=self.clock,
            limits=self.config.limits.protocol,
        )

    def receipt_checker(self) -> Callable[[str, object, bytes], bool]:
        """Checks that a receipt is signed by the peer and names the envelope we sent."""

        def check(peer: str, sent: object, receipt: bytes) -> bool:
            keys = self.trust().sender_keys(peer)
            envelope = getattr(sent, "envelope", None)
            if keys is None or not isinstance(envelope, bytes):
                return False
            try:
                verified = verify_receipt(
                    receipt, signer=peer, verify_keys=keys, limits=self.config.limits.protocol
                )
            except ProtocolError:
                return False
            return verified.envelope_hash == envelope_hash(envelope)

        return check


# --- serving ---------------------------------------------------------------------------------


def _peer_endpoint(node: Node) -> Callable[[str], PeerEndpoint | None]:
    def endpoint(city: str) -> PeerEndpoint | None:
        peer = node.trust().peers.get(city)
        if peer is None or not peer.certificates:
            return None
        return PeerEndpoint(url=peer.endpoint, certificates=peer.certificates)

    return endpoint


def _operator_app(
    node: Node, dispatcher: OutboxDispatcher, api: web.Application
) -> web.Application:
    """``/healthz``, ``/metrics`` and the case API (mounted at ``/api/v1/``)."""

    async def healthz(request: web.Request) -> web.Response:
        try:
            await node.db.check()
            database = "ok"
        except NodeError as e:
            database = e.code
        peers = {
            status.peer: {"up": status.failures == 0, "failures": status.failures}
            for status in dispatcher.status()
        }
        healthy = database == "ok" and node.has_agreement()
        body = {
            "status": "ok" if healthy else "degraded",
            "city": node.config.city,
            "database": database,
            "agreement_version": node.trust().agreement.version if node.has_agreement() else None,
            "keys": "ok",
            "peers": peers,
        }
        return web.json_response(body, status=200 if healthy else 503)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=node.metrics.render(), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.add_subapp(API_PREFIX + "/", api)
    return app


async def _heartbeat(
    node: Node, client: FederationClient, dispatcher: OutboxDispatcher, context: ssl.SSLContext
) -> None:
    """Fetch every peer's package every few seconds: fresh keys, and a sign of life to each peer."""
    while True:
        for city in list(node.trust().peers):
            try:
                data = await client.fetch_keys(city)
                if await node.accept_package(city, data):
                    trust_peer_certificates(context, node.trust().peer(city).certificates)
                dispatcher.peer_seen(city)
            except (NodeError, ProtocolError) as e:
                logger.debug("keys [%s] heartbeat failed: %s", city, e.code)
            except Exception:  # the loop must not die; the reason is logged
                logger.exception("keys [%s] heartbeat failed", city)
        await asyncio.sleep(HEARTBEAT_S)


async def _housekeeping(node: Node) -> None:
    """Forget replay records whose timestamp has left the window, once a minute."""
    while True:
        try:
            purged = await node.inbox.purge_replay(node.clock())
            if purged:
                logger.info("node [%s] %d expired replay records purged", node.config.city, purged)
        except NodeError as e:
            logger.warning("node [%s] replay purge failed: %s", node.config.city, e.code)
        except Exception:  # the loop must not die; the reason is logged
            logger.exception("node [%s] housekeeping failed", node.config.city)
        await asyncio.sleep(HOUSEKEEPING_S)


def _case_api(node: Node, dispatcher: OutboxDispatcher) -> web.Application:
    """The case API over this node: its users' tokens, its audit trail, its sender."""
    audit = AuditTrail(node.db, node.clock)
    service = CaseService(
        city=node.config.city,
        db=node.db,
        cases=node.cases,
        journal=node.journal,
        outgoing=node.outgoing(dispatcher.notify),
        audit=audit,
        trust=node.trust,
        clock=node.clock,
    )
    return create_case_api(
        service,
        UserStore(node.db, node.clock, audit=audit),
        city=node.config.city,
        max_body_bytes=node.config.limits.max_api_request_bytes,
        clock=node.clock,
    )


async def serve(node: Node, stop: asyncio.Event) -> None:
    """Run the node until ``stop`` is set: listeners, sender loops and the heartbeat.

    Raises:
        NoAgreement: no agreement adopted yet.
        OSError: a listener's port cannot be bound.
    """
    trust = node.trust()
    config = node.config
    client = FederationClient(
        own=node.tls,
        peers=_peer_endpoint(node),
        verify_receipt=node.receipt_checker(),
        limits=config.limits,
        metrics=node.metrics,
        clock=node.clock,
    )
    dispatcher = OutboxDispatcher(
        node.outbox,
        client,
        settings=OutboxSettings.from_limits(config.limits),
        backoff=Backoff.from_limits(config.limits),
        metrics=node.metrics,
        clock=node.clock,
    )
    handler = InboxProcessor(
        city=config.city,
        identity=node.own.identity,
        decryption_keys=node.decryption,
        trust=node.trust,
        inbox=node.inbox,
        ledger=node.ledger,
        metrics=node.metrics,
        clock=node.clock,
        limits=config.limits.protocol,
    )

    async def key_state() -> bytes:
        return node.package()

    def pins() -> PinTable:
        return node.trust().pin_table()

    federation = create_federation_app(
        handler=handler,
        key_state=key_state,
        pins=pins,
        limits=config.limits,
        metrics=node.metrics,
        on_peer_seen=dispatcher.peer_seen,
        attachments=node.attachments,
        attachment_source=node.attachments.source(),
    )
    ssl_context = server_context(node.tls, trust.all_peer_certificates())
    runners = [
        web.AppRunner(federation, access_log=None),
        web.AppRunner(
            _operator_app(node, dispatcher, _case_api(node, dispatcher)), access_log=None
        ),
    ]
    for runner in runners:
        await runner.setup()
    sites = [
        web.TCPSite(
            runners[0], config.federation.host, config.federation.port, ssl_context=ssl_context
        ),
        web.TCPSite(runners[1], config.api.host, config.api.port),
    ]
    background: list[asyncio.Task[None]] = []
    try:
        for site in sites:
            await site.start()
        dispatcher.start(trust.peers)
        background.append(asyncio.create_task(_heartbeat(node, client, dispatcher, ssl_context)))
        background.append(asyncio.create_task(_housekeeping(node)))
        logger.info(
            "node [%s] serving: federation %s:%d, api %s:%d",
            config.city,
            config.federation.host,
            config.federation.port,
            config.api.host,
            config.api.port,
        )
        await stop.wait()
    finally:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await dispatcher.stop()
        await client.close()
        for runner in runners:
            await runner.cleanup()
        logger.info("node [%s] stopped", config.city)
