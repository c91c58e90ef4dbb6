"""Federation transport: how city nodes talk to each other over mutual TLS.

Layout of the package:

* :mod:`~node.federation.tls` — the SSL contexts and the :class:`PinTable`; the two-layer rule
  (the SSL trust store makes the handshake possible, the pin table authorises).
* :mod:`~node.federation.wire` — paths, media types, the strict inbox batch codec, error bodies.
* :mod:`~node.federation.server` — the listener (aiohttp app factory): authenticates each
  request by its client certificate's pin, bounds bodies before reading them, and hands inbox
  batches to an injected :class:`node.delivery.InboxHandler`.
* :mod:`~node.federation.client` — :class:`FederationClient`, the
  :class:`node.delivery.PeerTransport` the outbox sends through; it verifies every receipt.

What is NOT here: opening envelopes and persisting them (the inbox handler), the durable outbox
and its sender loops, and where pins and endpoints come from (the agreement).
"""

from node.federation.client import FederationClient, PeerEndpoint, RequestRefused
from node.federation.server import (
    AttachmentSink,
    AttachmentSource,
    AttachmentWriter,
    create_federation_app,
)
from node.federation.tls import PinTable, client_context_for, server_context

__all__ = [
    "AttachmentSink",
    "AttachmentSource",
    "AttachmentWriter",
    "FederationClient",
    "PeerEndpoint",
    "PinTable",
    "RequestRefused",
    "client_context_for",
    "create_federation_app",
    "server_context",
]
