"""The federation client: how this node reaches each peer's listener over mutual TLS.

Owns the sending side of the federation HTTP surface (:mod:`node.federation.wire`) and implements
:class:`node.delivery.PeerTransport`. Invariants:

* **One session per peer**, with its own SSL context trusting only that peer's certificates
  (:func:`node.federation.tls.client_context_for`), so the handshake pins the server. Connections
  are kept alive and reused; when a peer's endpoint or certificates change, or this node switches
  its own certificate (:meth:`FederationClient.use_certificate`, a TLS rotation), the session is
  rebuilt and the old one is closed once its requests in flight have ended (never under them).
* **Nothing is delivered on a claim alone.** A receipt counts only when ``verify_receipt``
  accepts it for the envelope sent (signature, envelope hash, sender and recipient); a result
  whose receipt is missing (for ``accepted``/``duplicate``) or does not verify becomes
  :data:`node.delivery.BAD_RECEIPT` with no receipt: not delivered, retried later, logged.
* **Every failure to deliver a whole batch is** :class:`node.delivery.PeerUnavailable`: a
  connection error, a handshake failure, a timeout, a 5xx, a 503 (its ``Retry-After`` is kept), a
  4xx refusal of the request (:class:`RequestRefused`, a configuration or version mismatch that
  an operator must see, but no reason to drop a message), or a response that does not decode.
  The outbox then retries with backoff; the receiver is idempotent, so resending is safe.
* Batches larger than ``batch_size`` envelopes or ``max_request_bytes`` are sent as several
  requests, one after the other (never two requests to a peer's inbox in flight from one call).
* Every response body is read with a cap; a peer cannot make us buffer more than a full batch of
  receipts, a key document, or one chunk of an attachment.
* Receipts are verified off the event loop, a large batch in parts on a small pool of threads
  (Ed25519 verification releases the GIL, and while the answer is checked the peer waits for our
  next batch, so a core is free): the loop keeps serving, and a batch costs less time.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final

import aiohttp
from yarl import URL

from node.config import NodeLimits
from node.delivery import (
    ACCEPTED,
    BAD_RECEIPT,
    DUPLICATE,
    DeliveryResult,
    OutgoingEnvelope,
    PeerUnavailable,
)
from node.federation import wire
from node.federation.tls import client_context_for
from node.metrics import NodeMetrics
from node.tls_material import TlsMaterial
from protocol.errors import DecodeError, ErrorCode

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S: Final = 5.0
DEFAULT_REQUEST_TIMEOUT_S: Final = 30.0
CONNECTIONS_PER_PEER: Final = 4
KEEPALIVE_S: Final = 60.0
VERIFY_THREADS: Final = 2
VERIFY_PART: Final = 16  # receipts checked per task of the pool (a smaller batch is one task)
# Codes a peer may put in our metric labels; anything else is counted as "other".
_KNOWN_CODES: Final = frozenset(ErrorCode) | {
    BAD_RECEIPT,
    "unknown_peer",
    "overloaded",
    "unsupported_media_type",
    "not_found",
    "method_not_allowed",
    "attachment_exists",
    "attachment_not_found",
}
_RETRYABLE_STATUSES: Final = frozenset({429, 503})


@dataclass(frozen=True, slots=True)
class PeerEndpoint:
    """Where a peer's federation listener is and which certificates it may present.

    Attributes:
        url: the listener's base URL, ``https://host:port`` (no path, query or fragment).
        certificates: the peer's PEM certificate(s) as the agreement pins them (two while it
            rotates).
    """

    url: str
    certificates: tuple[bytes, ...]

    def __post_init__(self) -> None:
        parsed = URL(self.url)
        if parsed.scheme != "https" or not parsed.host or parsed.path not in ("", "/"):
            raise ValueError("a peer URL must be https://host:port with no path")
        if parsed.query_string or parsed.fragment or parsed.user:
            raise ValueError("a peer URL may not carry a query, fragment or user")
        if not self.certificates:
            raise ValueError("a peer endpoint needs at least one certificate")


class RequestRefused(PeerUnavailable):
    """A peer refused the request as a whole (4xx): retried like an outage, but alerted.

    Attributes:
        status: the HTTP status.
        reason: the error code the peer gave, or ``"http_<status>"``.
    """

    code: ClassVar[str] = "request_refused"

    def __init__(
        self, message: str, *, status: int, reason: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after)
        self.status = status
        self.reason = reason


@dataclass(eq=False)  # identity: a replaced session waits in a set until it is idle
class _PeerSession:
    endpoint: PeerEndpoint
    own: TlsMaterial
    session: aiohttp.ClientSession
    base: URL = field(init=False)
    in_flight: int = 0
    replaced: bool = False

    def __post_init__(self) -> None:
        self.base = URL(self.endpoint.url)


class FederationClient:
    """Reaches peers' federation listeners; one keep-alive session per peer."""

    def __init__(
        self,
        *,
        own: TlsMaterial,
        peers: Callable[[str], PeerEndpoint | None],
        verify_receipt: Callable[[str, OutgoingEnvelope, bytes], bool],
        limits: NodeLimits,
        metrics: NodeMetrics,
        clock: Callable[[], float],
        scratch_dir: Path | None = None,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        """Create the client; sessions open lazily, inside the running event loop.

        Args:
            own: this node's TLS certificate and key (its client certificate).
            peers: the current endpoint of a city, or ``None`` when it is not a peer.
            verify_receipt: ``(peer, envelope, receipt) -> bool``: whether a signed receipt
                verifies under the peer's identity key and names exactly that envelope.
            limits: the node's limits.
            metrics: the node's metrics.
            clock: Unix seconds now (to read a ``Retry-After`` date).
            scratch_dir: private directory for the key file ``ssl`` reads (see ``tls``).
            connect_timeout_s: the longest wait for a TCP and TLS connection.
            request_timeout_s: the longest a whole inbox or keys request may take; for an
                attachment, the longest wait for the next read.
        """
        self._own = own
        self._peers = peers
        self._verify = verify_receipt
        self._limits = limits
        self._metrics = metrics
        self._clock = clock
        self._scratch_dir = scratch_dir
        self._timeout = aiohttp.ClientTimeout(
            total=request_timeout_s, sock_connect=connect_timeout_s
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=request_timeout_s
        )
        self._sessions: dict[str, _PeerSession] = {}
        self._draining: set[_PeerSession] = set()  # replaced, closed when their requests end
        self._sessions_lock = asyncio.Lock()  # one rebuild at a time, no session leaked
        self._verifiers = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="receipts")

    def use_certificate(self, own: TlsMaterial) -> None:
        """Present ``own`` from now on (a TLS rotation's switch).

        Each peer's session is rebuilt at its next request; the old sessions close once the
        requests they carry have ended, so nothing in flight is cut.
        """
        self._own = own

    def draining(self) -> bool:
        """Whether a replaced session still carries a request (its old certificate is in use)."""
        return bool(self._draining) or any(s.own is not self._own for s in self._sessions.values())

    # --- PeerTransport ---------------------------------------------------------------------

    async def deliver(
        self, peer: str, envelopes: Sequence[OutgoingEnvelope]
    ) -> Sequence[DeliveryResult]:
        """POST the batch to the peer's inbox; one verified result per envelope, in order.

        Args:
            peer: the recipient city.
            envelopes: the batch (split into several requests when it passes the limits).

        Returns:
            One result per envelope; ``delivered`` only with a receipt that verified.

        Raises:
            PeerUnavailable: the peer could not be reached, was overloaded, refused the
                request, or answered something that does not decode. Nothing is delivered.
        """
        results: list[DeliveryResult] = []
        for part in split_batch(envelopes, self._limits):
            results.extend(await self._deliver_part(peer, part))
        return results

    async def _deliver_part(
        self, peer: str, part: Sequence[OutgoingEnvelope]
    ) -> list[DeliveryResult]:
        body = wire.encode_batch([e.envelope for e in part])
        cap = wire.max_results_bytes(len(part), self._limits)
        raw = await self._exchange(
            peer, "POST", wire.INBOX_PATH, body=body, content_type=wire.MSGPACK, cap=cap
        )
        try:
            claims = wire.decode_results(raw, expected=len(part), limits=self._limits)
        except DecodeError as e:
            raise self._undecodable(peer, e) from e
        pairs = list(zip(part, claims, strict=True))
        size = max(VERIFY_PART, -(-len(pairs) // VERIFY_THREADS))
        loop = asyncio.get_running_loop()
        checked = await asyncio.gather(
            *(
                loop.run_in_executor(self._verifiers, self._check_all, peer, pairs[i : i + size])
                for i in range(0, len(pairs), size)
            )
        )
        return [result for results in checked for result in results]

    def _check_all(
        self, peer: str, pairs: Sequence[tuple[OutgoingEnvelope, wire.ClaimedResult]]
    ) -> list[DeliveryResult]:
        return [self._checked(peer, envelope, claim) for envelope, claim in pairs]

    def _checked(
        self, peer: str, envelope: OutgoingEnvelope, claim: wire.ClaimedResult
    ) -> DeliveryResult:
        if claim.receipt is None:
            if claim.status not in (ACCEPTED, DUPLICATE):
                return DeliveryResult(claim.status, None)
            reason = "is missing"
        elif self._verify(peer, envelope, claim.receipt):
            return DeliveryResult(claim.status, claim.receipt)
        else:
            reason = "does not verify"
        logger.warning("TX [%s] receipt for outbox #%d %s", peer, envelope.seq, reason)
        self._count_refusal(peer, BAD_RECEIPT)
        return DeliveryResult(BAD_RECEIPT, None)

    # --- keys and attachments ------------------------------------------------------------------

    async def fetch_keys(self, peer: str) -> bytes:
        """Fetch the peer's signed key bundle (unverified bytes, at most ``max_document_bytes``).

        Raises:
            PeerUnavailable: as for :meth:`deliver`.
        """
        cap = self._limits.protocol.max_document_bytes
        return await self._exchange(
            peer, "GET", wire.KEYS_PATH, body=None, content_type=None, cap=cap
        )

    async def post_exchange(
        self, peer: str, path: str, body: bytes, *, cap: int | None = None
    ) -> bytes:
        """POST a MessagePack request to one of the peer's exchanges (``server.PeerExchange``,
        e.g. the key-log checkpoints); the reply is at most ``cap`` bytes (default
        ``max_document_bytes``; a key log's ``max_keylog_bytes``), unverified.

        Raises:
            PeerUnavailable: as for :meth:`deliver`.
        """
        cap = cap or self._limits.protocol.max_document_bytes
        return await self._exchange(
            peer, "POST", path, body=body, content_type=wire.MSGPACK, cap=cap
        )

    async def upload_attachment(
        self, peer: str, attachment_id: bytes, chunks: AsyncIterator[bytes]
    ) -> None:
        """Stream an attachment to the peer, chunk by chunk (never whole in memory).

        Args:
            peer: the recipient city.
            attachment_id: the 16-byte attachment id.
            chunks: the stream's bytes, in order.

        Raises:
            PeerUnavailable: as for :meth:`deliver` (including :class:`RequestRefused`).
        """
        path = wire.ATTACHMENT_PATH.format(attachment_id=attachment_id.hex())
        await self._exchange(
            peer,
            "PUT",
            path,
            body=chunks,
            content_type=wire.OCTET_STREAM,
            cap=wire.MAX_ERROR_BODY_BYTES,
            timeout=self._stream_timeout,
        )
        logger.info("TX [%s] attachment uploaded", peer)

    async def download_attachment(
        self, peer: str, attachment_id: bytes, *, max_bytes: int
    ) -> AsyncIterator[bytes]:
        """Stream an attachment from the peer, chunk by chunk.

        Args:
            peer: the city holding it.
            attachment_id: the 16-byte attachment id.
            max_bytes: the most bytes accepted.

        Yields:
            The stream's chunks (unauthenticated: feed them to ``protocol.attachments``).

        Raises:
            PeerUnavailable: as for :meth:`deliver`, or the stream is longer than ``max_bytes``
                or ends early.
        """
        session = await self._session(peer)
        url = session.base.with_path(wire.ATTACHMENT_PATH.format(attachment_id=attachment_id.hex()))
        received = 0
        session.in_flight += 1
        try:
            async with session.session.get(url, timeout=self._stream_timeout) as response:
                if response.status != 200:
                    raise await self._refusal(peer, response)
                async for chunk in response.content.iter_chunked(wire.READ_CHUNK_BYTES):
                    received += len(chunk)
                    if received > max_bytes:
                        raise PeerUnavailable(f"{peer} sent an attachment over {max_bytes} bytes")
                    yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise self._unreachable(peer, e) from e
        finally:
            await self._release(session)

    async def close(self) -> None:
        """Close every peer session and its connections."""
        sessions, self._sessions = self._sessions, {}
        draining, self._draining = self._draining, set()
        for peer_session in [*sessions.values(), *draining]:
            await peer_session.session.close()
        self._verifiers.shutdown(wait=False)

    # --- one exchange ----------------------------------------------------------------------------

    async def _exchange(
        self,
        peer: str,
        method: str,
        path: str,
        *,
        body: bytes | AsyncIterator[bytes] | None,
        content_type: str | None,
        cap: int,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> bytes:
        session = await self._session(peer)
        headers = {"Content-Type": content_type} if content_type is not None else {}
        started = asyncio.get_running_loop().time()
        session.in_flight += 1
        try:
            async with session.session.request(
                method,
                session.base.with_path(path),
                data=body,
                headers=headers,
                timeout=timeout or self._timeout,
            ) as response:
                if response.status not in (200, 201, 204):
                    raise await self._refusal(peer, response)
                raw = await _read_capped(response, cap)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            raise self._unreachable(peer, e) from e
        except PeerUnavailable:
            self._mark_down(peer)
            raise
        finally:
            await self._release(session)
        self._metrics.peer_up.labels(peer=peer).set(1)
        elapsed_ms = (asyncio.get_running_loop().time() - started) * 1000
        logger.debug("TX [%s] %s %s: %d bytes in %.1f ms", peer, method, path, len(raw), elapsed_ms)
        return raw

    async def _refusal(self, peer: str, response: aiohttp.ClientResponse) -> PeerUnavailable:
        retry_after = self._retry_after(response.headers.get("Retry-After"))
        try:
            error = wire.decode_error(await _read_capped(response, wire.MAX_ERROR_BODY_BYTES))
        except PeerUnavailable:
            error = None
        reason = error.code if error is not None else f"http_{response.status}"
        if response.status >= 500 or response.status in _RETRYABLE_STATUSES:
            logger.warning("TX [%s] peer unavailable: %d %s", peer, response.status, reason)
            return PeerUnavailable(
                f"{peer} answered {response.status} ({reason})", retry_after=retry_after
            )
        logger.error("TX [%s] request refused: %d %s", peer, response.status, reason)
        self._count_refusal(peer, reason)
        return RequestRefused(
            f"{peer} refused the request: {response.status} ({reason})",
            status=response.status,
            reason=reason,
            retry_after=retry_after,
        )

    def _unreachable(self, peer: str, error: BaseException) -> PeerUnavailable:
        self._mark_down(peer)
        logger.warning("TX [%s] unreachable: %s", peer, type(error).__name__)
        return PeerUnavailable(f"{peer} could not be reached ({type(error).__name__})")

    def _undecodable(self, peer: str, error: DecodeError) -> PeerUnavailable:
        self._mark_down(peer)
        logger.error("TX [%s] inbox answer does not decode: %s", peer, error.code)
        return PeerUnavailable(f"{peer} answered an inbox batch with {error.code}")

    def _mark_down(self, peer: str) -> None:
        self._metrics.peer_up.labels(peer=peer).set(0)

    def _count_refusal(self, peer: str, code: str) -> None:
        label = code if code in _KNOWN_CODES else "other"
        self._metrics.refusals.labels(peer=peer, code=label).inc()

    def _retry_after(self, value: str | None) -> float | None:
        if value is None:
            return None
        cap = self._limits.retry_cap_s
        if value.strip().isdigit():
            return min(float(value.strip()), cap)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return min(max(0.0, when.timestamp() - self._clock()), cap)

    async def _session(self, peer: str) -> _PeerSession:
        endpoint = self._peers(peer)
        if endpoint is None:
            raise PeerUnavailable(f"{peer} has no known federation endpoint")
        current = self._sessions.get(peer)
        if current is not None and current.endpoint == endpoint and current.own is self._own:
            return current
        async with self._sessions_lock:
            current = self._sessions.get(peer)
            if current is not None and current.endpoint == endpoint and current.own is self._own:
                return current
            if current is not None:
                logger.info("TX [%s] endpoint or certificates changed: new session", peer)
                current.replaced = True
                self._draining.add(current)
                await self._release(current, ended=False)
            context = client_context_for(
                self._own, endpoint.certificates, scratch_dir=self._scratch_dir
            )
            connector = aiohttp.TCPConnector(
                ssl=context, limit_per_host=CONNECTIONS_PER_PEER, keepalive_timeout=KEEPALIVE_S
            )
            session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, raise_for_status=False
            )
            current = _PeerSession(endpoint, self._own, session)
            self._sessions[peer] = current
            return current

    async def _release(self, session: _PeerSession, *, ended: bool = True) -> None:
        """A request on ``session`` ended (or it was replaced): close it if replaced and idle."""
        if ended:
            session.in_flight -= 1
        if session.replaced and session.in_flight == 0 and session in self._draining:
            self._draining.discard(session)
            await session.session.close()


def split_batch(
    envelopes: Sequence[OutgoingEnvelope], limits: NodeLimits
) -> list[Sequence[OutgoingEnvelope]]:
    """Split a batch into requests of at most ``batch_size`` envelopes and ``max_request_bytes``.

    Args:
        envelopes: the batch, in order.
        limits: the limits (the configuration guarantees one envelope always fits).

    Returns:
        Consecutive parts, in order; none when ``envelopes`` is empty.
    """
    parts: list[Sequence[OutgoingEnvelope]] = []
    start, size = 0, 0
    for end, envelope in enumerate(envelopes):
        item = wire.envelope_item_bytes(len(envelope.envelope))
        full = end - start >= limits.batch_size
        # The array header is counted at its largest, so a part never passes the byte cap.
        if end > start and (
            full or wire.ARRAY_HEADER_MAX_BYTES + size + item > limits.max_request_bytes
        ):
            parts.append(envelopes[start:end])
            start, size = end, 0
        size += item
    if start < len(envelopes):
        parts.append(envelopes[start:])
    return parts


async def _read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    length = response.content_length
    if length is not None and length > cap:
        raise PeerUnavailable(f"the answer is larger than {cap} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(wire.READ_CHUNK_BYTES):
        if len(body) + len(chunk) > cap:
            raise PeerUnavailable(f"the answer is larger than {cap} bytes")
        body += chunk
    return bytes(body)
