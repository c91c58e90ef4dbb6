"""How a running node keeps its peers' keys fresh and tells them about its own changes.

Owns the key traffic of ``serve`` (no listener of its own):

* the heartbeat fetches every peer's package every few seconds (fresh keys, a sign of life);
* a peer's ``KeyUpdate`` (a control message, sealed and receipted like any other) is applied as
  soon as the inbox committed it; a bundle pinning a TLS certificate we do not hold yet makes
  us fetch the peer's whole package instead;
* an ``unknown_key`` refusal from a peer makes us fetch its package at once;
* the rotation loop runs the key schedule (``Node.rotation_tick``) and, whenever our bundle
  changes — by schedule or by ``keys rotate`` — sends it to every peer as a ``KeyUpdate``
  through the outbox (at-least-once, like every message), so peers learn it in well under the
  heartbeat period and still learn it after an outage.

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

from node.errors import NodeError
from node.federation.client import FederationClient
from node.federation.tls import trust_peer_certificates
from node.outbox.dispatcher import OutboxDispatcher
from node.outgoing import Outgoing
from protocol.errors import ProtocolError
from protocol.messages import KeyUpdate, Message

if TYPE_CHECKING:
    from node.service import Node

logger = logging.getLogger(__name__)

HEARTBEAT_S: Final = 2.0
ROTATION_CHECK_S: Final = 2.0


@dataclass
class KeyExchange:
    """How the running node learns its peers' keys and tells them about its own.

    * ``refresh(peer)`` fetches the peer's package at once (heartbeat, ``unknown_key``, a pushed
      bundle that pins a certificate we do not have yet).
    * ``on_accepted`` applies a peer's pushed ``KeyUpdate`` after the inbox committed it.
    * ``rotation()`` runs the key schedule and pushes our new bundle as a ``KeyUpdate`` to every
      peer whenever it changes (after ``keys rotate`` too: ``Node.on_keys_changed`` wakes it).

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
        """Run the key schedule every few seconds (or when woken) and push each new bundle."""
        pushed = self.node.signed_bundle()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), ROTATION_CHECK_S)
            self.changed.clear()
            try:
                await self.node.rotation_tick()
                if self.node.signed_bundle() != pushed:
                    pushed = self.node.signed_bundle()
                    for city in list(self.node.trust().peers):
                        await outgoing.send(city, KeyUpdate(bundle=pushed))
            except (NodeError, ProtocolError) as e:
                logger.warning("keys [%s] rotation failed: %s", self.node.config.city, e.code)
            except Exception:  # the loop must not die; the reason is logged
                logger.exception("keys [%s] rotation failed", self.node.config.city)


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
