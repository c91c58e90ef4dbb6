"""The federation listener: the aiohttp application peers reach over mutual TLS.

Owns the HTTP surface under ``/federation/v1/`` (wire format in :mod:`node.federation.wire`):

* ``POST /federation/v1/inbox`` — a batch of sealed envelopes → one ``[status, receipt]`` each,
  from the injected :class:`node.delivery.InboxHandler` (which opens and persists them);
* ``GET /federation/v1/keys`` — this node's signed key bundle, as given by ``key_state``;
* ``PUT|GET /federation/v1/attachments/{attachment_id}`` — an attachment stream (32 hex
  characters naming its 16-byte id), streamed in chunks to an :class:`AttachmentSink` or from an
  :class:`AttachmentSource`, never held whole in memory.
* ``POST`` on each path of ``exchanges`` — a MessagePack request answered by a MessagePack
  reply from the injected :class:`PeerExchange` (``/federation/v1/checkpoints``:
  ``node.checkpoints``); a request it refuses is ``400`` with the protocol error's code.

Invariants:

* **Every request is authenticated first.** The SSL context (``node.federation.tls``) makes the
  handshake require a trusted client certificate; the middleware then maps that certificate's
  pin to a city through the *current* :class:`~node.federation.tls.PinTable` (read at each
  request, so rotations apply without a restart) and refuses a pin not in it with
  ``403 unknown_peer`` and a closed connection. Nothing else runs for an unknown peer, not even
  routing errors. A known peer is reported to ``on_peer_seen`` (the outbox retries it at once).
* **Bounded before read.** A body whose ``Content-Length`` passes the cap is refused with
  ``413 oversized`` before a byte of it is read; a chunked body is read with a running count and
  refused as soon as it passes the cap. The connection is then closed (aiohttp discards, without
  buffering, what the peer still sends for at most its lingering time).
* **Every refusal** is a JSON ``{"error": {"code", "message"}}`` with a stable code, counted in
  ``citynode_refusals{peer, code}`` (``peer="unknown"`` before authentication), logged as
  ``RX [city] ...`` without any request content, and changes nothing. Overload
  (:class:`node.delivery.Overloaded`) is ``503`` with ``Retry-After`` and keeps nothing, and
  so is a database outage (:class:`node.storage.database.StorageError`) on any route.
* Metrics counted here: request-level refusals, and ``citynode_inbox_accepted`` per envelope the
  handler reports ``accepted``. Per-envelope refusals are the inbox handler's to count.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, Protocol

from aiohttp import web

from node.config import NodeLimits
from node.delivery import ACCEPTED, InboxHandler, Overloaded
from node.errors import NodeError
from node.federation import wire
from node.federation.tls import PinTable, pin_of_certificate_der
from node.metrics import NodeMetrics
from node.storage.database import StorageError
from protocol.errors import DecodeError, RemoteProtocolError

logger = logging.getLogger(__name__)

UNKNOWN_PEER: Final = "unknown_peer"
UNKNOWN_PEER_LABEL: Final = "unknown"  # metric label for refusals before authentication
OVERSIZED: Final = "oversized"
DEFAULT_MAX_ATTACHMENT_BYTES: Final = 256 * 1024 * 1024
DEFAULT_OVERLOAD_RETRY_AFTER_S: Final = 5

_ATTACHMENT_ID = re.compile(r"^[0-9a-f]{32}$")
_HTTP_CODES: Final[Mapping[int, str]] = {
    404: "not_found",
    405: "method_not_allowed",
    413: OVERSIZED,
}


class AttachmentError(NodeError):
    """An attachment sink or source refuses a request; ``status`` is the HTTP answer."""

    code: ClassVar[str] = "attachment_refused"
    status: ClassVar[int] = 409


class AttachmentExists(AttachmentError):
    """An attachment with that id was already stored (completely) for that peer."""

    code: ClassVar[str] = "attachment_exists"
    status: ClassVar[int] = 409


class AttachmentNotFound(AttachmentError):
    """No attachment with that id is available to that peer."""

    code: ClassVar[str] = "attachment_not_found"
    status: ClassVar[int] = 404


class PeerExchange(Protocol):
    """A request/reply exchange with an authenticated peer, registered under its own path."""

    async def __call__(self, peer: str, body: bytes) -> bytes:
        """Answer ``peer``'s request body (at most ``max_request_bytes``).

        Raises:
            DecodeError, RemoteProtocolError: the request is refused with the error's code.
        """
        ...


class AttachmentWriter(Protocol):
    """One attachment being received: chunks in order, then exactly one of commit or abort."""

    async def write(self, chunk: bytes) -> None:
        """Append a chunk (at most ``wire.READ_CHUNK_BYTES``)."""
        ...

    async def commit(self) -> None:
        """The stream is complete: make it durable and visible."""
        ...

    async def abort(self) -> None:
        """The stream failed or was refused: discard everything written."""
        ...


class AttachmentSink(Protocol):
    """Where attachment streams uploaded by peers go."""

    async def open(self, peer: str, attachment_id: bytes) -> AttachmentWriter:
        """Start receiving attachment ``attachment_id`` (16 bytes) from ``peer``.

        Raises:
            AttachmentError: it is refused (e.g. :class:`AttachmentExists`).
        """
        ...


class AttachmentSource(Protocol):
    """Where peers download attachment streams from."""

    async def open(self, peer: str, attachment_id: bytes) -> AsyncIterator[bytes]:
        """Return the stream's chunks, if ``peer`` may read that attachment.

        Raises:
            AttachmentNotFound: it does not exist or is not for ``peer`` (the two look alike).
        """
        ...


@dataclass(frozen=True, slots=True)
class _Federation:
    handler: InboxHandler
    key_state: Callable[[], Awaitable[bytes]]
    pins: Callable[[], PinTable]
    limits: NodeLimits
    metrics: NodeMetrics
    on_peer_seen: Callable[[str], None]
    sink: AttachmentSink | None
    source: AttachmentSource | None
    max_attachment_bytes: int
    overload_retry_after_s: int


FEDERATION: Final = web.AppKey("federation", _Federation)
PEER_CITY: Final = web.RequestKey("peer_city", str)


class _Refused(Exception):
    """Internal signal of a refusal; always turned into an error response by the middleware."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after_s: int | None = None,
        close: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.close = close


def create_federation_app(
    *,
    handler: InboxHandler,
    key_state: Callable[[], Awaitable[bytes]],
    pins: Callable[[], PinTable],
    limits: NodeLimits,
    metrics: NodeMetrics,
    on_peer_seen: Callable[[str], None],
    attachments: AttachmentSink | None,
    attachment_source: AttachmentSource | None = None,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
    overload_retry_after_s: int = DEFAULT_OVERLOAD_RETRY_AFTER_S,
    exchanges: Mapping[str, PeerExchange] | None = None,
) -> web.Application:
    """Build the federation application (serve it with the context of ``tls.server_context``).

    Args:
        handler: opens, persists and receipts inbox batches.
        key_state: returns the signed key bundle bytes to serve.
        pins: returns the current pin table; called at every request.
        limits: the node's limits (request size, batch size, envelope size).
        metrics: the node's metrics.
        on_peer_seen: called with the city of every authenticated request.
        attachments: where uploaded attachment streams go; ``None`` refuses uploads (404).
        attachment_source: where downloads come from; ``None`` refuses downloads (404).
        max_attachment_bytes: the largest attachment stream accepted.
        overload_retry_after_s: the ``Retry-After`` sent with a 503.
        exchanges: path → request/reply exchange served with ``POST`` (the key-log checkpoints).

    Returns:
        The application.

    Raises:
        ValueError: a bound is not positive.
    """
    if max_attachment_bytes <= 0 or overload_retry_after_s <= 0:
        raise ValueError("max_attachment_bytes and overload_retry_after_s must be positive")
    app = web.Application(client_max_size=limits.max_request_bytes, middlewares=[_authenticate])
    app[FEDERATION] = _Federation(
        handler=handler,
        key_state=key_state,
        pins=pins,
        limits=limits,
        metrics=metrics,
        on_peer_seen=on_peer_seen,
        sink=attachments,
        source=attachment_source,
        max_attachment_bytes=max_attachment_bytes,
        overload_retry_after_s=overload_retry_after_s,
    )
    app.router.add_post(wire.INBOX_PATH, _inbox)
    app.router.add_get(wire.KEYS_PATH, _keys, allow_head=False)
    app.router.add_put(wire.ATTACHMENT_PATH, _put_attachment)
    app.router.add_get(wire.ATTACHMENT_PATH, _get_attachment, allow_head=False)
    for path, exchange in (exchanges or {}).items():
        app.router.add_post(path, _exchange_view(exchange))
    return app


# --- authentication and refusals -------------------------------------------------------------


@web.middleware
async def _authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    fed = request.app[FEDERATION]
    der = _client_certificate(request)
    city = fed.pins().city_for_certificate(der) if der is not None else None
    if city is None:
        pin = pin_of_certificate_der(der) if der is not None else None
        logger.warning(
            "RX [?] refused a client certificate not in the pin table (pin %s)",
            pin.hex()[:16] if pin is not None else "none",
        )
        refusal = _Refused(403, UNKNOWN_PEER, "client certificate is not pinned", close=True)
        return _refuse(fed, UNKNOWN_PEER_LABEL, request, refusal)
    request[PEER_CITY] = city
    fed.on_peer_seen(city)
    try:
        return await handler(request)
    except _Refused as refusal:
        return _refuse(fed, city, request, refusal)
    except StorageError as e:  # the database is away: the peer keeps what it sent and retries
        unavailable = _Refused(
            503, e.code, "storage unavailable", retry_after_s=fed.overload_retry_after_s
        )
        return _refuse(fed, city, request, unavailable)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = _HTTP_CODES.get(e.status, "refused")
        return _refuse(fed, city, request, _Refused(e.status, code, e.reason, close=True))


def _client_certificate(request: web.Request) -> bytes | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:  # not TLS: a misconfigured listener fails closed
        return None
    der: bytes | None = ssl_object.getpeercert(binary_form=True)
    return der or None


def _refuse(
    fed: _Federation, peer_label: str, request: web.Request, refusal: _Refused
) -> web.Response:
    fed.metrics.refusals.labels(peer=peer_label, code=refusal.code).inc()
    if peer_label != UNKNOWN_PEER_LABEL:
        logger.warning(
            "RX [%s] refused %s %s: %s %s",
            peer_label,
            request.method,
            _route(request),
            refusal.status,
            refusal.code,
        )
    headers = {}
    if refusal.retry_after_s is not None:
        headers["Retry-After"] = str(refusal.retry_after_s)
    response = web.Response(
        status=refusal.status,
        body=wire.encode_error(refusal.code, refusal.message),
        content_type=wire.JSON,
        headers=headers,
    )
    if refusal.close:
        response.force_close()
    return response


def _route(request: web.Request) -> str:
    # The route template, not the path: an attachment id stays out of the log.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def _require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        raise _Refused(415, "unsupported_media_type", f"the body must be {expected}")


def _check_length(request: web.Request, cap: int) -> None:
    length = request.content_length
    if length is not None and length > cap:
        raise _Refused(413, OVERSIZED, f"the body is larger than {cap} bytes", close=True)


async def _read_capped(request: web.Request, cap: int) -> bytes:
    _check_length(request, cap)
    body = bytearray()
    async for chunk in request.content.iter_chunked(wire.READ_CHUNK_BYTES):
        if len(body) + len(chunk) > cap:
            raise _Refused(413, OVERSIZED, f"the body is larger than {cap} bytes", close=True)
        body += chunk
    return bytes(body)


# --- inbox and keys --------------------------------------------------------------------------


async def _inbox(request: web.Request) -> web.Response:
    fed = request.app[FEDERATION]
    peer = request[PEER_CITY]
    _check_length(request, fed.limits.max_request_bytes)
    _require_content_type(request, wire.MSGPACK)
    body = await _read_capped(request, fed.limits.max_request_bytes)
    try:
        envelopes = wire.decode_batch(body, fed.limits)
    except DecodeError as e:
        # Structure errors of the batch are the request's fault (400), even ``oversized`` for
        # too many or too large envelopes; 413 is kept for a body over the byte cap.
        raise _Refused(400, e.code, e.message) from e
    try:
        results = await fed.handler.handle_batch(peer, envelopes)
    except Overloaded as e:  # also ``identity_revoked``: we cannot sign a receipt now
        raise _Refused(503, e.code, e.message, retry_after_s=fed.overload_retry_after_s) from e
    if len(results) != len(envelopes):
        raise RuntimeError("the inbox handler did not return one result per envelope")
    accepted = sum(1 for r in results if r.status == ACCEPTED)
    if accepted:
        fed.metrics.received.labels(peer=peer).inc(accepted)
    logger.debug("RX [%s] batch of %d, %d accepted", peer, len(envelopes), accepted)
    return web.Response(body=wire.encode_results(results), content_type=wire.MSGPACK)


async def _keys(request: web.Request) -> web.Response:
    fed = request.app[FEDERATION]
    return web.Response(body=await fed.key_state(), content_type=wire.MSGPACK)


def _exchange_view(
    exchange: PeerExchange,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def view(request: web.Request) -> web.Response:
        fed = request.app[FEDERATION]
        _require_content_type(request, wire.MSGPACK)
        body = await _read_capped(request, fed.limits.max_request_bytes)
        try:
            answer = await exchange(request[PEER_CITY], body)
        except (DecodeError, RemoteProtocolError) as e:
            raise _Refused(400, e.code, e.message) from e
        except Overloaded as e:  # e.g. our identity key is revoked: nothing can be signed now
            raise _Refused(503, e.code, e.message, retry_after_s=fed.overload_retry_after_s) from e
        return web.Response(body=answer, content_type=wire.MSGPACK)

    return view


# --- attachments -----------------------------------------------------------------------------


def _attachment_id(request: web.Request) -> bytes:
    text = request.match_info["attachment_id"]
    if not _ATTACHMENT_ID.match(text):
        raise _Refused(400, "invalid_field", "the attachment id must be 32 lowercase hex digits")
    return bytes.fromhex(text)


async def _put_attachment(request: web.Request) -> web.Response:
    fed = request.app[FEDERATION]
    peer = request[PEER_CITY]
    if fed.sink is None:
        raise _Refused(404, "not_found", "this node does not take attachments")
    attachment_id = _attachment_id(request)
    _check_length(request, fed.max_attachment_bytes)
    _require_content_type(request, wire.OCTET_STREAM)
    try:
        writer = await fed.sink.open(peer, attachment_id)
    except AttachmentError as e:
        raise _Refused(e.status, e.code, e.message) from e
    try:
        received = await _stream_into(request, writer, fed.max_attachment_bytes)
    except BaseException:
        await writer.abort()
        raise
    await writer.commit()
    logger.info("RX [%s] attachment stored (%d bytes)", peer, received)
    return web.Response(status=204)


async def _stream_into(request: web.Request, writer: AttachmentWriter, cap: int) -> int:
    received = 0
    try:
        async for chunk in request.content.iter_chunked(wire.READ_CHUNK_BYTES):
            received += len(chunk)
            if received > cap:
                raise _Refused(
                    413, OVERSIZED, f"the attachment is larger than {cap} bytes", close=True
                )
            await writer.write(chunk)
    except RemoteProtocolError as e:  # the sink checks the stream as it goes
        raise _Refused(400, e.code, e.message, close=True) from e
    length = request.content_length
    if length is not None and received != length:
        raise _Refused(400, "attachment_truncated", "the body ended early", close=True)
    return received


async def _get_attachment(request: web.Request) -> web.StreamResponse:
    fed = request.app[FEDERATION]
    peer = request[PEER_CITY]
    if fed.source is None:
        raise _Refused(404, AttachmentNotFound.code, "no such attachment")
    attachment_id = _attachment_id(request)
    try:
        chunks = await fed.source.open(peer, attachment_id)
    except AttachmentError as e:
        raise _Refused(e.status, e.code, e.message) from e
    response = web.StreamResponse()
    response.content_type = wire.OCTET_STREAM
    await response.prepare(request)
    try:
        async for chunk in chunks:
            await response.write(chunk)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    await response.write_eof()
    return response
