"""The federation client against the real listener (and against misbehaving peers), over mTLS."""

from __future__ import annotations

import email.utils
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from federation_support import (
    KEY_BUNDLE,
    LIMITS,
    Listener,
    certificate,
    fake_receipt,
    serve,
    start_listener,
)

from node.delivery import (
    ACCEPTED,
    BAD_RECEIPT,
    DUPLICATE,
    DeliveryResult,
    OutgoingEnvelope,
    PeerUnavailable,
)
from node.federation import wire
from node.federation.client import FederationClient, PeerEndpoint, RequestRefused
from node.federation.server import AttachmentExists
from node.federation.tls import PinTable, server_context
from node.metrics import NodeMetrics
from node.tls_material import TlsMaterial
from protocol.errors import RemoteProtocolError
from protocol.keys import KeyKind, VerifyKey, key_id
from protocol.sealing import Receipt, envelope_hash, sign_receipt, verify_receipt

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ATTACHMENT_ID = bytes.fromhex("0f" * 16)


def outgoing(seq: int, envelope: bytes) -> OutgoingEnvelope:
    return OutgoingEnvelope(
        seq=seq,
        peer="stockholm",
        case_id=None,
        message_id=seq.to_bytes(16, "big"),
        envelope=envelope,
        created_at=NOW,
        attempts=0,
    )


def fake_verify(peer: str, envelope: OutgoingEnvelope, receipt: bytes) -> bool:
    return peer == "stockholm" and receipt == fake_receipt(envelope.envelope)


class Peers:
    """The endpoints the client looks up; tests change them to move or rotate a peer."""

    def __init__(self, **endpoints: PeerEndpoint) -> None:
        self.endpoints = dict(endpoints)

    def __call__(self, city: str) -> PeerEndpoint | None:
        return self.endpoints.get(city)


def make_client(
    own: TlsMaterial,
    peers: Peers,
    *,
    verify: Callable[[str, OutgoingEnvelope, bytes], bool] = fake_verify,
    request_timeout_s: float = 5.0,
) -> FederationClient:
    return FederationClient(
        own=own,
        peers=peers,
        verify_receipt=verify,
        limits=LIMITS,
        metrics=NodeMetrics(),
        clock=lambda: NOW,
        connect_timeout_s=2.0,
        request_timeout_s=request_timeout_s,
    )


def endpoint(url: str, *servers: TlsMaterial) -> PeerEndpoint:
    return PeerEndpoint(url, tuple(s.certificate_pem for s in servers))


@pytest.fixture
async def client(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial
) -> AsyncIterator[FederationClient]:
    federation = make_client(goteborg, Peers(stockholm=endpoint(listener.url, stockholm)))
    yield federation
    await federation.close()


def metric(client: FederationClient, name: str, labels: dict[str, str]) -> float:
    value = client._metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# --- delivering batches --------------------------------------------------------------------


async def test_batch_is_delivered_and_each_receipt_checked_against_its_envelope(
    listener: Listener, client: FederationClient
) -> None:
    batch = [outgoing(1, b"sealed-a"), outgoing(2, b"sealed-b")]

    results = await client.deliver("stockholm", batch)

    assert results == [DeliveryResult(ACCEPTED, fake_receipt(e.envelope)) for e in batch]
    assert all(r.delivered for r in results)
    assert listener.inbox.batches == [("goteborg", (b"sealed-a", b"sealed-b"))]
    assert metric(client, "citynode_peer_up", {"peer": "stockholm"}) == 1


async def test_receipt_that_does_not_verify_is_not_counted_delivered(
    listener: Listener, client: FederationClient
) -> None:
    forged = b"receipt:" + bytes(32)
    listener.inbox.answer = lambda e: DeliveryResult(
        DUPLICATE, forged if e == b"forged" else fake_receipt(e)
    )

    results = await client.deliver("stockholm", [outgoing(1, b"good"), outgoing(2, b"forged")])

    assert results[0] == DeliveryResult(DUPLICATE, fake_receipt(b"good"))
    assert results[1] == DeliveryResult(BAD_RECEIPT, None)
    assert not results[1].delivered
    assert (
        metric(client, "citynode_refusals_total", {"peer": "stockholm", "code": BAD_RECEIPT}) == 1
    )


async def test_accepted_without_a_receipt_is_not_counted_delivered(
    listener: Listener, client: FederationClient
) -> None:
    listener.inbox.answer = lambda e: DeliveryResult(ACCEPTED, None)

    results = await client.deliver("stockholm", [outgoing(1, b"x")])

    assert results == [DeliveryResult(BAD_RECEIPT, None)]


async def test_envelope_refused_by_the_peer_keeps_its_code(
    listener: Listener, client: FederationClient
) -> None:
    listener.inbox.answer = lambda e: (
        DeliveryResult("bad_signature", None)
        if e == b"bad"
        else DeliveryResult(ACCEPTED, fake_receipt(e))
    )

    results = await client.deliver("stockholm", [outgoing(1, b"ok"), outgoing(2, b"bad")])

    assert [r.status for r in results] == [ACCEPTED, "bad_signature"]
    assert results[1].receipt is None


async def test_real_signed_receipts_verify_and_forged_or_misdirected_ones_do_not(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial
) -> None:
    identity, impostor = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    public = identity.public_key().public_bytes_raw()
    trusted = VerifyKey(key_id=key_id(KeyKind.IDENTITY, public), public_key=public, valid_from=0)

    def sign(envelope: bytes, key: Ed25519PrivateKey) -> bytes:
        receipt = Receipt(
            envelope_hash=envelope_hash(envelope),
            message_id=bytes(16),
            sender="goteborg",
            recipient="stockholm",
            received_at=int(NOW),
            status=ACCEPTED,
        )
        signer = key_id(KeyKind.IDENTITY, key.public_key().public_bytes_raw())
        return sign_receipt(receipt, key, signer)

    answers = {
        b"honest": sign(b"honest", identity),
        b"forged": sign(b"forged", impostor),
        b"misdirected": sign(b"another envelope", identity),
    }
    listener.inbox.answer = lambda e: DeliveryResult(ACCEPTED, answers[e])

    def verify(peer: str, envelope: OutgoingEnvelope, data: bytes) -> bool:
        try:
            receipt = verify_receipt(data, signer=peer, verify_keys=[trusted])
        except RemoteProtocolError:
            return False
        return receipt.envelope_hash == envelope_hash(envelope.envelope)

    federation = make_client(
        goteborg, Peers(stockholm=endpoint(listener.url, stockholm)), verify=verify
    )
    try:
        results = await federation.deliver(
            "stockholm", [outgoing(i, e) for i, e in enumerate(answers, 1)]
        )
    finally:
        await federation.close()

    assert [r.status for r in results] == [ACCEPTED, BAD_RECEIPT, BAD_RECEIPT]
    assert results[0].receipt == answers[b"honest"]


async def test_batch_over_the_count_and_byte_limits_is_sent_as_several_requests_in_order(
    listener: Listener, client: FederationClient
) -> None:
    small = [outgoing(i, b"s%d" % i) for i in range(19)]
    large = [outgoing(100 + i, bytes([i]) * 4096) for i in range(5)]  # 3 fit in 16 KiB

    results = await client.deliver("stockholm", small + large)

    # 8 + 8 by count; then 3 small and 3 large fill the byte cap; then the last 2 large.
    assert [len(batch) for _, batch in listener.inbox.batches] == [8, 8, 6, 2]
    assert all(wire.batch_bytes(b) <= LIMITS.max_request_bytes for _, b in listener.inbox.batches)
    assert listener.inbox.envelopes == [e.envelope for e in small + large]
    assert [r.receipt for r in results] == [fake_receipt(e.envelope) for e in small + large]


async def test_empty_batch_sends_nothing(listener: Listener, client: FederationClient) -> None:
    assert await client.deliver("stockholm", []) == []
    assert listener.inbox.batches == []


# --- the peer cannot take it now -------------------------------------------------------------


async def test_overloaded_peer_raises_peer_unavailable_with_its_retry_after(
    listener: Listener, client: FederationClient
) -> None:
    listener.inbox.overloaded = True

    with pytest.raises(PeerUnavailable) as raised:
        await client.deliver("stockholm", [outgoing(1, b"x")])

    assert raised.value.retry_after == 5.0
    assert not isinstance(raised.value, RequestRefused)
    assert metric(client, "citynode_peer_up", {"peer": "stockholm"}) == 0


async def test_connection_refused_raises_peer_unavailable(
    goteborg: TlsMaterial, stockholm: TlsMaterial
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    federation = make_client(
        goteborg, Peers(stockholm=endpoint(f"https://127.0.0.1:{port}", stockholm))
    )
    try:
        with pytest.raises(PeerUnavailable) as raised:
            await federation.deliver("stockholm", [outgoing(1, b"x")])
    finally:
        await federation.close()

    assert raised.value.retry_after is None


async def test_peer_slower_than_the_timeout_raises_peer_unavailable(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial
) -> None:
    listener.inbox.delay_s = 1.0
    federation = make_client(
        goteborg, Peers(stockholm=endpoint(listener.url, stockholm)), request_timeout_s=0.2
    )
    try:
        with pytest.raises(PeerUnavailable):
            await federation.deliver("stockholm", [outgoing(1, b"x")])
    finally:
        await federation.close()


async def test_unknown_peer_raises_peer_unavailable(client: FederationClient) -> None:
    with pytest.raises(PeerUnavailable):
        await client.deliver("uppsala", [outgoing(1, b"x")])


async def test_server_presenting_a_certificate_not_pinned_for_that_peer_is_not_trusted(
    listener: Listener, goteborg: TlsMaterial, malmo: TlsMaterial
) -> None:
    federation = make_client(goteborg, Peers(stockholm=endpoint(listener.url, malmo)))
    try:
        with pytest.raises(PeerUnavailable):
            await federation.deliver("stockholm", [outgoing(1, b"x")])
    finally:
        await federation.close()

    assert listener.inbox.batches == []


async def test_client_certificate_the_peer_does_not_pin_is_a_request_refusal(
    listener: Listener, malmo: TlsMaterial, stockholm: TlsMaterial
) -> None:
    federation = make_client(malmo, Peers(stockholm=endpoint(listener.url, stockholm)))
    try:
        with pytest.raises(RequestRefused) as raised:
            await federation.deliver("stockholm", [outgoing(1, b"x")])
    finally:
        await federation.close()

    assert (raised.value.status, raised.value.reason) == (403, "unknown_peer")
    assert isinstance(raised.value, PeerUnavailable)  # retried, never dropped


# --- misbehaving peers -----------------------------------------------------------------------


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def rogue_peer(
    stockholm: TlsMaterial, goteborg: TlsMaterial
) -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    """Start a TLS peer (Stockholm's certificate) whose inbox answers as the test says."""
    runners: list[web.AppRunner] = []

    async def start(answer: Answer) -> str:
        app = web.Application()
        app.router.add_post(wire.INBOX_PATH, answer)
        runner, port = await serve(app, server_context(stockholm, [goteborg.certificate_pem]))
        runners.append(runner)
        return f"https://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def fixed(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Answer:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=status, body=body, headers=headers, content_type=wire.MSGPACK)

    return answer


@pytest.mark.parametrize(
    ("answer", "retry_after"),
    [
        (fixed(500), None),
        (fixed(502, b"<html>bad gateway</html>"), None),
        (fixed(503, headers={"Retry-After": "17"}), 17.0),
        (fixed(503, headers={"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}), 30.0),
        (fixed(503, headers={"Retry-After": "soon"}), None),
        (fixed(200, b"\xc1"), None),  # not MessagePack
        (fixed(200, wire.encode_results([DeliveryResult(ACCEPTED, b"r")])), None),  # 1 for 2
        (fixed(200, b"\x92" + b"\xc6" + (10**6).to_bytes(4, "big")), None),  # too large
        (fixed(200, wire.encode_results([DeliveryResult("Not A Code!", None)] * 2)), None),
    ],
    ids=[
        "500",
        "502",
        "503-seconds",
        "503-date",
        "503-garbage",
        "garbage",
        "count",
        "huge",
        "status",
    ],
)
async def test_peer_answer_that_is_not_a_valid_result_raises_peer_unavailable(
    rogue_peer: Callable[[Answer], Awaitable[str]],
    goteborg: TlsMaterial,
    stockholm: TlsMaterial,
    answer: Answer,
    retry_after: float | None,
) -> None:
    url = await rogue_peer(answer)
    federation = make_client(goteborg, Peers(stockholm=endpoint(url, stockholm)))
    try:
        with pytest.raises(PeerUnavailable) as raised:
            await federation.deliver("stockholm", [outgoing(1, b"a"), outgoing(2, b"b")])
    finally:
        await federation.close()

    assert raised.value.retry_after == retry_after


async def test_connections_to_a_peer_are_kept_alive_and_reused(
    rogue_peer: Callable[[Answer], Awaitable[str]], goteborg: TlsMaterial, stockholm: TlsMaterial
) -> None:
    clients: list[object] = []

    async def answer(request: web.Request) -> web.StreamResponse:
        envelopes = wire.decode_batch(await request.read(), LIMITS)
        clients.append(request.transport.get_extra_info("peername") if request.transport else None)
        results = [DeliveryResult(ACCEPTED, fake_receipt(e)) for e in envelopes]
        return web.Response(body=wire.encode_results(results), content_type=wire.MSGPACK)

    url = await rogue_peer(answer)
    federation = make_client(goteborg, Peers(stockholm=endpoint(url, stockholm)))
    try:
        for i in range(5):
            await federation.deliver("stockholm", [outgoing(i, b"e%d" % i)])
    finally:
        await federation.close()

    assert len(clients) == 5
    assert len(set(clients)) == 1


async def test_peer_moving_to_a_new_endpoint_and_certificate_gets_a_new_session(
    listener: Listener, client: FederationClient, goteborg: TlsMaterial
) -> None:
    await client.deliver("stockholm", [outgoing(1, b"before")])
    rotated = certificate("stockholm")
    pins = PinTable.from_certificates({"goteborg": [goteborg.certificate_pem]})
    moved = await start_listener(rotated, [goteborg], pins)
    try:
        peers = client._peers
        assert isinstance(peers, Peers)
        peers.endpoints["stockholm"] = endpoint(moved.url, rotated)

        await client.deliver("stockholm", [outgoing(2, b"after")])
    finally:
        await moved.runner.cleanup()

    assert listener.inbox.envelopes == [b"before"]
    assert moved.inbox.envelopes == [b"after"]


async def test_client_trusts_either_certificate_of_a_peer_during_its_rotation(
    goteborg: TlsMaterial, stockholm: TlsMaterial
) -> None:
    new_stockholm = certificate("stockholm")  # same subject name as the old one
    pins = PinTable.from_certificates({"goteborg": [goteborg.certificate_pem]})
    listener = await start_listener(new_stockholm, [goteborg], pins)
    federation = make_client(
        goteborg, Peers(stockholm=endpoint(listener.url, stockholm, new_stockholm))
    )
    try:
        results = await federation.deliver("stockholm", [outgoing(1, b"x")])
    finally:
        await federation.close()
        await listener.runner.cleanup()

    assert results[0].delivered


# --- keys and attachments ----------------------------------------------------------------------


async def test_fetch_keys_returns_the_peer_key_bundle_bytes(client: FederationClient) -> None:
    assert await client.fetch_keys("stockholm") == KEY_BUNDLE


async def test_attachment_upload_streams_to_the_peer_sink(
    listener: Listener, client: FederationClient
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(8):
            yield bytes([i]) * 100_000

    await client.upload_attachment("stockholm", ATTACHMENT_ID, chunks())

    size, _ = listener.sink.committed[("goteborg", ATTACHMENT_ID)]
    assert size == 800_000
    assert listener.sink.max_chunk <= 64 * 1024


async def test_attachment_upload_refused_by_the_peer_is_a_request_refusal(
    listener: Listener, client: FederationClient
) -> None:
    async def once() -> AsyncIterator[bytes]:
        yield b"attachment stream"

    await client.upload_attachment("stockholm", ATTACHMENT_ID, once())
    with pytest.raises(RequestRefused) as raised:
        await client.upload_attachment("stockholm", ATTACHMENT_ID, once())

    assert (raised.value.status, raised.value.reason) == (409, AttachmentExists.code)


async def test_attachment_download_streams_and_enforces_its_cap(
    listener: Listener, client: FederationClient
) -> None:
    data = bytes(range(256)) * 400
    listener.source.streams[("goteborg", ATTACHMENT_ID)] = data

    received = b"".join(
        [
            c
            async for c in client.download_attachment(
                "stockholm", ATTACHMENT_ID, max_bytes=len(data)
            )
        ]
    )
    assert received == data

    with pytest.raises(PeerUnavailable):
        async for _ in client.download_attachment("stockholm", ATTACHMENT_ID, max_bytes=1000):
            pass
