"""Fakes and helpers for the federation transport tests: real TLS on loopback, fake inbox.

The listener under test is the real aiohttp application served by ``web.TCPSite`` with the
real SSL context; only its collaborators (inbox handler, attachment sink and source) are fakes.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from node.config import NodeLimits
from node.delivery import ACCEPTED, DeliveryResult, Overloaded
from node.federation.server import (
    AttachmentExists,
    AttachmentNotFound,
    AttachmentWriter,
    create_federation_app,
)
from node.federation.tls import PinTable, client_context_for, server_context
from node.metrics import NodeMetrics
from node.tls_material import TlsMaterial, self_signed_certificate
from protocol.limits import Limits

KEY_BUNDLE = b"\x93\xa9stockholm\x01\xc4\x04sig!"  # opaque bytes: the listener never parses them

# Small limits so that every bound is cheap to reach.
LIMITS = NodeLimits(
    protocol=Limits(max_envelope_bytes=4096, max_receipt_bytes=256),
    max_request_bytes=16 * 1024,
    batch_size=8,
)


def certificate(city: str) -> TlsMaterial:
    """A fresh self-signed node certificate (ECDSA P-256), as ``citynode init`` makes."""
    return self_signed_certificate(city, now=datetime.datetime.now(datetime.UTC))


def fake_receipt(envelope: bytes) -> bytes:
    """A stand-in receipt naming the envelope by its hash (real signed receipts: client tests)."""
    return b"receipt:" + hashlib.sha256(envelope).digest()


class FakeInbox:
    """An inbox handler that records batches and answers as told."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, tuple[bytes, ...]]] = []
        self.overloaded = False
        self.delay_s = 0.0
        self.answer: Callable[[bytes], DeliveryResult] = lambda e: DeliveryResult(
            ACCEPTED, fake_receipt(e)
        )

    async def handle_batch(self, peer: str, envelopes: Sequence[bytes]) -> Sequence[DeliveryResult]:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.overloaded:
            raise Overloaded("replay store is full")
        self.batches.append((peer, tuple(envelopes)))
        return [self.answer(e) for e in envelopes]

    @property
    def envelopes(self) -> list[bytes]:
        return [e for _, batch in self.batches for e in batch]


@dataclass
class RecordingWriter:
    """An attachment writer that keeps only a hash, the size and the largest chunk seen."""

    sink: RecordingSink
    peer: str
    attachment_id: bytes
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    size: int = 0

    async def write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        self.sink.max_chunk = max(self.sink.max_chunk, len(chunk))
        self.sink.first_write.set()

    async def commit(self) -> None:
        self.sink.committed[(self.peer, self.attachment_id)] = (self.size, self.digest.digest())

    async def abort(self) -> None:
        self.sink.aborted.append((self.peer, self.attachment_id))


@dataclass
class RecordingSink:
    """An attachment sink recording what was committed and aborted, never the bytes."""

    committed: dict[tuple[str, bytes], tuple[int, bytes]] = field(default_factory=dict)
    aborted: list[tuple[str, bytes]] = field(default_factory=list)
    opened: int = 0
    max_chunk: int = 0
    first_write: asyncio.Event = field(default_factory=asyncio.Event)

    async def open(self, peer: str, attachment_id: bytes) -> AttachmentWriter:
        if (peer, attachment_id) in self.committed:
            raise AttachmentExists("that attachment is already stored")
        self.opened += 1
        return RecordingWriter(self, peer, attachment_id)


@dataclass
class MemorySource:
    """An attachment source serving streams from memory, only to the peer they are for."""

    streams: dict[tuple[str, bytes], bytes] = field(default_factory=dict)
    chunk_bytes: int = 10_000

    async def open(self, peer: str, attachment_id: bytes) -> AsyncIterator[bytes]:
        data = self.streams.get((peer, attachment_id))
        if data is None:
            raise AttachmentNotFound("no such attachment")
        return self._chunks(data)

    async def _chunks(self, data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), self.chunk_bytes):
            yield data[i : i + self.chunk_bytes]


class Pins:
    """The pin table the listener reads at each request; tests swap it to rotate."""

    def __init__(self, table: PinTable) -> None:
        self.table = table

    def __call__(self) -> PinTable:
        return self.table


@dataclass
class Listener:
    """A running federation listener on 127.0.0.1 and everything it was built with."""

    url: str
    port: int
    context: ssl.SSLContext
    inbox: FakeInbox
    pins: Pins
    metrics: NodeMetrics
    seen: list[str]
    sink: RecordingSink
    source: MemorySource
    runner: web.AppRunner

    def refusals(self, peer: str, code: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "citynode_refusals_total", {"peer": peer, "code": code}
        )
        return value or 0.0


async def serve(app: web.Application, context: ssl.SSLContext) -> tuple[web.AppRunner, int]:
    """Serve an app over TLS on an ephemeral loopback port; return the runner and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


async def start_listener(
    server_tls: TlsMaterial,
    trusted: Sequence[TlsMaterial],
    pins: PinTable,
    *,
    limits: NodeLimits = LIMITS,
    max_attachment_bytes: int = 64 * 1024 * 1024,
) -> Listener:
    """Start the real federation app with fakes behind it."""
    context = server_context(server_tls, [t.certificate_pem for t in trusted])
    inbox, holder, metrics = FakeInbox(), Pins(pins), NodeMetrics()
    seen: list[str] = []
    sink, source = RecordingSink(), MemorySource()

    async def key_state() -> bytes:
        return KEY_BUNDLE

    app = create_federation_app(
        handler=inbox,
        key_state=key_state,
        pins=holder,
        limits=limits,
        metrics=metrics,
        on_peer_seen=seen.append,
        attachments=sink,
        attachment_source=source,
        max_attachment_bytes=max_attachment_bytes,
    )
    runner, port = await serve(app, context)
    return Listener(
        f"https://127.0.0.1:{port}",
        port,
        context,
        inbox,
        holder,
        metrics,
        seen,
        sink,
        source,
        runner,
    )


def peer_session(own: TlsMaterial, server: TlsMaterial) -> aiohttp.ClientSession:
    """A plain aiohttp session presenting ``own`` and pinning ``server`` (raw HTTP tests)."""
    context = client_context_for(own, [server.certificate_pem])
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
