"""The running node: what ``citynode serve`` runs over an opened :class:`~node.service.Node`.

Owns the listeners and the background work of a serving node (``service.Node`` owns what is
opened for a data directory, which operator commands use without listening on any port):

* the federation listener (mutual TLS, pinned peers) and the API listener (``/healthz``,
  ``/metrics`` and the case API under ``/api/v1``, bearer tokens);
* one sender loop per peer, and a heartbeat that fetches each peer's key package every few
  seconds — which keeps the peers' keys fresh and tells a peer that comes back that we are here
  (its sender loop then retries at once);
* the key-log checkpoint exchange with every peer (``node.checkpoints``:
  ``POST /federation/v1/checkpoints`` and its gossip loop), the housekeeping (replay records,
  retention), the balance statements and the fetching of received documents.

Kept apart from ``node.service`` so that operator commands do not load the web application,
the federation client and the case service they never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final

from aiohttp import web

from node.api.app import create_case_api
from node.api.openapi import PREFIX as API_PREFIX
from node.audit import AuditTrail
from node.balance import BalanceAnnouncer
from node.balance_report import BalanceService
from node.cases.document_fetch import DocumentFetcher
from node.cases.document_service import DocumentService
from node.cases.service import CaseService
from node.checkpoints import CHECKPOINTS_PATH, KEYLOGS_PATH, gossip, witness_for
from node.errors import NodeError
from node.federation.client import FederationClient, PeerEndpoint
from node.federation.server import create_federation_app
from node.federation.tls import (
    PinTable,
    server_context,
)
from node.inbox import InboxProcessor
from node.key_exchange import KeyExchange, heartbeat, no_sender
from node.outbox.backoff import Backoff
from node.outbox.dispatcher import OutboxDispatcher
from node.outbox.sender import OutboxSettings
from node.retention import CaseRetention
from node.service import Node
from node.users import UserStore

logger = logging.getLogger(__name__)

HOUSEKEEPING_S: Final = 60.0
BALANCE_S: Final = 30.0


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
        revoked = node.identity_revoked_since() is not None
        healthy = database == "ok" and node.has_agreement() and not revoked
        body = {
            "status": "ok" if healthy else "degraded",
            "city": node.config.city,
            "database": database,
            "agreement_version": node.trust().agreement.version if node.has_agreement() else None,
            "keys": "identity_revoked" if revoked else "ok",
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


async def _housekeeping(node: Node) -> None:
    """Once a minute: forget replay records whose timestamp has left the window, and shred the
    ended cases whose retention period has run out (``node.retention``)."""
    retention = CaseRetention(
        db=node.db,
        cases=node.cases,
        audit=AuditTrail(node.db, node.clock),
        after_days=node.config.retention.shred_case_key_after_days,
        clock=node.clock,
        attachments=node.attachments,
    )
    while True:
        try:
            purged = await node.inbox.purge_replay(node.clock())
            if purged:
                logger.info("node [%s] %d expired replay records purged", node.config.city, purged)
            await retention.shred_due()
        except NodeError as e:
            logger.warning("node [%s] replay purge failed: %s", node.config.city, e.code)
        except Exception:  # the loop must not die; the reason is logged
            logger.exception("node [%s] housekeeping failed", node.config.city)
        await asyncio.sleep(HOUSEKEEPING_S)


async def _balance_statements(announcer: BalanceAnnouncer, every_s: float) -> None:
    """State this node's relocation counts to its peers (``node.balance``): first ``every_s``
    after the start (the peers' keys are fetched by then), then whenever they changed."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await announcer.announce()
        except NodeError as e:
            logger.warning("balance statements failed: %s", e.code)
        except Exception:  # the loop must not die; the reason is logged
            logger.exception("balance statements failed")


def _document_fetcher(node: Node, client: FederationClient) -> DocumentFetcher:
    """The fetcher of received referrals' documents (``node.cases.document_fetch``)."""
    return DocumentFetcher(
        records=node.documents,
        store=node.attachments,
        root=node.config.data_dir / "attachments",
        download=client.download_attachment,
        clock=node.clock,
        limits=node.config.limits.protocol,
    )


def case_api(node: Node, wake: Callable[[str], None]) -> web.Application:
    """The case API over this node: its users' tokens, its audit trail; ``wake`` wakes the
    sender loop of a peer a message was queued for (the dispatcher's ``notify``)."""
    audit = AuditTrail(node.db, node.clock)
    service = CaseService(
        city=node.config.city,
        db=node.db,
        cases=node.cases,
        journal=node.journal,
        outgoing=node.outgoing(wake),
        audit=audit,
        trust=node.trust,
        clock=node.clock,
        documents=node.documents,
    )
    documents = DocumentService(
        city=node.config.city,
        records=node.documents,
        store=node.attachments,
        audit=audit,
        limits=node.config.limits.protocol,
        max_document_bytes=node.config.limits.max_case_document_bytes,
    )
    balance = BalanceService(
        city=node.config.city,
        db=node.db,
        audit=audit,
        members=lambda: [m.city for m in node.trust().agreement.document.members],
        clock=node.clock,
    )
    return create_case_api(
        service,
        UserStore(node.db, node.clock, audit=audit),
        city=node.config.city,
        max_body_bytes=node.config.limits.max_api_request_bytes,
        clock=node.clock,
        documents=documents,
        balance=balance,
    )


async def serve(node: Node, stop: asyncio.Event, *, balance_every_s: float = BALANCE_S) -> None:
    """Run the node until ``stop`` is set: listeners, sender loops and the heartbeat.

    ``balance_every_s``: how often the node checks its relocation counts and states them to its
    peers when they changed (``node.balance``).

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
        on_unknown_key=lambda city: keys.refresh(city),  # noqa: PLW0108 (bound below)
    )
    ssl_context = server_context(node.tls, trust.all_peer_certificates())
    keys = KeyExchange(node, client, dispatcher, ssl_context)
    handler = InboxProcessor(
        city=config.city,
        identity=node.identity_at,
        decryption_keys=node.decryption,
        trust=node.trust,
        inbox=node.inbox,
        ledger=node.ledger,
        metrics=node.metrics,
        clock=node.clock,
        limits=config.limits.protocol,
        on_accepted=keys.on_accepted,
        own_keys=node.own_verify_keys,
    )

    async def key_state() -> bytes:
        return node.package()

    def pins() -> PinTable:
        return node.trust().pin_table()

    witness = witness_for(node)  # key transparency (node.checkpoints)

    federation = create_federation_app(
        handler=handler,
        key_state=key_state,
        pins=pins,
        limits=config.limits,
        metrics=node.metrics,
        on_peer_seen=dispatcher.peer_seen,
        attachments=node.attachments,
        attachment_source=node.attachments.source(),
        exchanges={CHECKPOINTS_PATH: witness.answer, KEYLOGS_PATH: witness.serve_log},
    )
    runners = [
        web.AppRunner(federation, access_log=None),
        web.AppRunner(
            _operator_app(node, dispatcher, case_api(node, dispatcher.notify)), access_log=None
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
        node.on_keys_changed = keys.changed.set
        node.wake_sender = dispatcher.notify
        background.append(asyncio.create_task(heartbeat(keys)))
        background.append(asyncio.create_task(keys.rotation(node.outgoing(dispatcher.notify))))
        background.append(asyncio.create_task(_housekeeping(node)))
        background.append(
            asyncio.create_task(
                gossip(
                    witness,
                    lambda peer, body: client.post_exchange(peer, CHECKPOINTS_PATH, body),
                    lambda: list(node.trust().peers),
                    fetch=lambda peer, body: client.post_exchange(
                        peer, KEYLOGS_PATH, body, cap=config.limits.protocol.max_keylog_bytes
                    ),
                )
            )
        )
        announcer = BalanceAnnouncer(
            city=config.city,
            db=node.db,
            outgoing=node.outgoing(dispatcher.notify),
            peers=lambda: list(node.trust().peers),
            clock=node.clock,
        )
        background.append(asyncio.create_task(_balance_statements(announcer, balance_every_s)))
        background.append(asyncio.create_task(_document_fetcher(node, client).run()))
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
        node.on_keys_changed = None
        node.wake_sender = no_sender
        for task in [*background, *keys.tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await dispatcher.stop()
        await client.close()
        for runner in runners:
            await runner.cleanup()
        logger.info("node [%s] stopped", config.city)
