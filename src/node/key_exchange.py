"""How a running node keeps its peers' keys fresh and tells them about its own changes.

Owns the key traffic of ``serve`` (no listener of its own):

* the heartbeat fetches every peer's package every few seconds (fresh keys, a sign of life);
* a peer's ``KeyUpdate`` (a control message, sealed and receipted like any other) is applied as
  soon as the inbox committed it; a bundle pinning a TLS certificate we do not hold yet makes
  us fetch the peer's whole package instead;
* an ``unknown_key`` refusal from a peer makes us fetch its package at once;
* the rotation loop runs the key schedule (``Node.rotation_tick``, every ``ROTATION_CHECK_S``:
  a cheap read that also notices a ``keys rotate`` made by another process) and, whenever our
  bundle
  changes — by schedule or by ``keys rotate`` — sends it to every peer as a ``KeyUpdate``
  through the outbox (at-least-once, like every message), so peers learn it in well under the
  heartbeat period and still learn it after an outage — but not while our identity key is
  revoked (``keys revoke``): the push would be signed by it (``node.key_replacement``);
* it takes up an agreement version adopted next to it (``agreement adopt`` by the operator,
  e.g. a member's key replaced after a compromise) within ``ROTATION_CHECK_S``;
* it also carries a TLS rotation through (``node.rotation``): while a new certificate waits, it
  asks every peer for its package over a connection that presents the new certificate; when
  every peer answers, each has stored the new pin and certificate, so the node **switches** (the
  listener and the client present the new certificate from the next handshake on). Once the
  client's connections made with the old certificate have ended and ``TLS_RETIRE_AFTER_S`` has
  passed, the old pin is **retired**. A peer that cannot be reached holds the switch back: no
  peer ever meets a certificate it does not accept.

Invariant: a pushed bundle is only stored when it verifies against the peer's trusted identity
key and supersedes what we hold (``check_bundle_update``: no rollback by a late retry).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import aiohttp
from yarl import URL

from node.errors import NodeError
from node.federation import wire
from node.federation.client import FederationClient
from node.federation.tls import client_context_for, present_certificate, trust_peer_certificates
from node.outbox.dispatcher import OutboxDispatcher
from node.outgoing import Outgoing
from node.tls_material import TlsMaterial
from protocol.errors import ProtocolError
from protocol.messages import KeyUpdate, Message

if TYPE_CHECKING:
    from node.service import Node

logger = logging.getLogger(__name__)

HEARTBEAT_S: Final = 2.0
ROTATION_CHECK_S: Final = 0.5
"""How often the key schedule runs: how soon a ``keys rotate`` next to the node is taken up."""
TLS_CHECK_S: Final = 0.25
"""How often a pending TLS switch or retirement is checked."""
TLS_RETIRE_AFTER_S: Final = 5.0
"""Least time between a TLS switch (or the node's start) and the retirement of the old pin."""
TLS_PROBE_TIMEOUT_S: Final = 5.0
"""The longest a peer may take to answer the request made with the new certificate."""


@dataclass
class KeyExchange:
    """How the running node learns its peers' keys and tells them about its own.

    * ``refresh(peer)`` fetches the peer's package at once (heartbeat, ``unknown_key``, a pushed
      bundle that pins a certificate we do not have yet).
    * ``on_accepted`` applies a peer's pushed ``KeyUpdate`` after the inbox committed it.
    * ``rotation()`` runs the key schedule and pushes our new bundle as a ``KeyUpdate`` to every
      peer whenever it changes (after ``keys rotate`` too: ``Node.on_keys_changed`` wakes it).
    * ``tls_step()`` carries a TLS rotation on: switch, then retire.

    Args:
        node: the running node.
        client: the federation client (fetches packages).
        dispatcher: the sender loops (told when a peer is seen).
        context: the federation listener's TLS context (trusts each peer's new certificates).
    """

    node: Node
    client: FederationClient
    dispatcher: OutboxDispatcher
    context: ssl.SSLContext
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _switched_at: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    _presented: bytes = b""  # the pin of the certificate the listener and the client present

    def __post_init__(self) -> None:
        self._presented = self.node.tls.pin()  # ``serve`` built both from ``node.tls``

    async def refresh(self, city: str) -> None:
        """Fetch ``city``'s package now and store it if it changed.

        Raises:
            NodeError: the peer cannot be reached; ProtocolError: its package does not verify.
        """
        data = await self.client.fetch_keys(city)
        if await self.node.accept_package(city, data):
            trust_peer_certificates(self.context, self.node.trust().peer(city).certificates)
        self.dispatcher.peer_seen(city)

    def on_accepted(self, peer: str, message: Message) -> None:
        """Inbox hook: apply a peer's ``KeyUpdate`` once its envelope is committed."""
        if isinstance(message, KeyUpdate):
            task = asyncio.create_task(self._apply_update(peer, message.bundle))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _apply_update(self, peer: str, bundle: bytes) -> None:
        try:
            if await self.node.accept_bundle(peer, bundle) is None:
                await self.refresh(peer)
        except (NodeError, ProtocolError) as e:
            logger.warning("keys [%s] pushed key update not applied: %s", peer, e.code)

    async def rotation(self, outgoing: Outgoing) -> None:
        """Run the key schedule every ``ROTATION_CHECK_S`` (or when woken), carry a TLS
        rotation on, and push each new bundle."""
        pushed = self.node.signed_bundle()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), self._check_every())
            self.changed.clear()
            try:
                if await self.node.notice_adoption():  # e.g. a member's key replaced (4c)
                    for peer in self.node.trust().peers.values():
                        trust_peer_certificates(self.context, peer.certificates)
                await self.node.rotation_tick()
                await self.tls_step()
                if (
                    self.node.signed_bundle() != pushed
                    and self.node.identity_revoked_since() is None  # it would sign the push
                ):
                    pushed = self.node.signed_bundle()
                    for city in list(self.node.trust().peers):
                        await outgoing.send(city, KeyUpdate(bundle=pushed))
            except (NodeError, ProtocolError) as e:
                logger.warning("keys [%s] rotation failed: %s", self.node.config.city, e.code)
            except Exception:  # the loop must not die; the reason is logged
                logger.exception("keys [%s] rotation failed", self.node.config.city)

    def _check_every(self) -> float:
        pending = self.node.tls_next is not None or self.node.retirable_tls_pins()
        return TLS_CHECK_S if pending else ROTATION_CHECK_S

    async def tls_step(self) -> None:
        """Carry a TLS rotation one step on: switch when every peer accepts the new
        certificate, retire the old pin once nothing uses it."""
        node, now = self.node, asyncio.get_running_loop().time()
        if node.tls_next is not None and await self._peers_accept(node.tls_next):
            await node.switch_tls()
        if node.tls.pin() != self._presented:  # switched (here, or by another process)
            present_certificate(self.context, node.tls)
            self.client.use_certificate(node.tls)
            self._presented, self._switched_at = node.tls.pin(), now
            return
        if node.tls_next is not None:
            return
        retirable = node.retirable_tls_pins()
        if (
            retirable
            and not self.client.draining()
            and now - self._switched_at >= TLS_RETIRE_AFTER_S
        ):
            await node.retire_tls(retirable)

    async def _peers_accept(self, material: TlsMaterial) -> bool:
        """Whether every peer serves us its package over a connection made with ``material``.

        A refusal is the expected answer until the peer has stored the new pin, so it is not
        counted or logged as a peer failure (the federation client would do both).
        """
        trust = self.node.trust()
        timeout = aiohttp.ClientTimeout(total=TLS_PROBE_TIMEOUT_S)
        for city, peer in trust.peers.items():
            if not peer.certificates:
                return False
            context = client_context_for(material, peer.certificates)
            try:
                async with (
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(ssl=context), timeout=timeout
                    ) as session,
                    session.get(URL(peer.endpoint).with_path(wire.KEYS_PATH)) as response,
                ):
                    await response.read()
                    accepted = response.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                logger.debug("keys [%s] new TLS certificate not accepted yet: %r", city, e)
                return False
            if not accepted:
                logger.debug("keys [%s] new TLS certificate refused: %d", city, response.status)
                return False
        return True


def no_sender(peer: str) -> None:
    """Outside ``serve`` no sender loop runs: queued messages wait for the next start."""


async def heartbeat(keys: KeyExchange) -> None:
    """Fetch every peer's package every few seconds: fresh keys, and a sign of life to each peer."""
    while True:
        for city in list(keys.node.trust().peers):
            try:
                await keys.refresh(city)
            except (NodeError, ProtocolError) as e:
                logger.debug("keys [%s] heartbeat failed: %s", city, e.code)
            except Exception:  # the loop must not die; the reason is logged
                logger.exception("keys [%s] heartbeat failed", city)
        await asyncio.sleep(HEARTBEAT_S)
