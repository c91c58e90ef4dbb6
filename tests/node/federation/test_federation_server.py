"""The federation listener over real mutual TLS on loopback: who gets in, and every refusal.

Each refusal test also checks that nothing reached the inbox and that the listener still serves
a good request afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from federation_support import (
    KEY_BUNDLE,
    LIMITS,
    Listener,
    certificate,
    fake_receipt,
    peer_session,
)

from node.federation import wire
from node.federation.tls import PinTable, client_context_for, trust_peer_certificates
from node.tls_material import TlsMaterial

MSGPACK = {"Content-Type": "application/msgpack"}
INBOX = "/federation/v1/inbox"


async def post_batch(
    session: aiohttp.ClientSession, listener: Listener, body: bytes, headers: dict[str, str]
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with session.post(listener.url + INBOX, data=body, headers=headers) as response:
        return response.status, await response.read(), response


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


async def assert_still_serving(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial
) -> None:
    async with peer_session(goteborg, stockholm) as fresh:
        status, _, _ = await post_batch(
            fresh, listener, wire.encode_batch([b"still-serving"]), MSGPACK
        )
    assert status == 200
    assert listener.inbox.envelopes[-1] == b"still-serving"


# --- who gets in ---------------------------------------------------------------------------------


async def test_pinned_peer_gets_through_and_is_named_by_its_certificate(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    envelopes = [b"sealed-1", b"sealed-2"]

    status, body, response = await post_batch(
        session, listener, wire.encode_batch(envelopes), MSGPACK
    )

    assert (status, response.content_type) == (200, "application/msgpack")
    assert listener.inbox.batches == [("goteborg", tuple(envelopes))]
    claims = wire.decode_results(body, expected=2, limits=LIMITS)
    assert [(c.status, c.receipt) for c in claims] == [
        ("accepted", fake_receipt(e)) for e in envelopes
    ]
    assert listener.seen == ["goteborg"]
    assert (
        listener.metrics.registry.get_sample_value(
            "citynode_inbox_accepted_total", {"peer": "goteborg"}
        )
        == 2
    )


async def test_every_request_of_a_known_peer_reports_it_seen(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    async with session.get(listener.url + "/federation/v1/keys") as response:
        assert response.status == 200
    async with session.get(listener.url + "/federation/v1/no-such-thing") as response:
        assert response.status == 404
        assert error_code(await response.read()) == "not_found"

    assert listener.seen == ["goteborg", "goteborg"]


async def test_client_without_certificate_fails_the_handshake(
    listener: Listener, stockholm: TlsMaterial
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=stockholm.certificate_pem.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as anonymous:
        with pytest.raises(aiohttp.ClientError):
            await post_batch(anonymous, listener, wire.encode_batch([b"x"]), MSGPACK)

    assert listener.inbox.batches == []
    assert listener.seen == []


async def test_certificate_outside_the_trust_store_fails_the_handshake(
    listener: Listener, outsider: TlsMaterial, stockholm: TlsMaterial
) -> None:
    async with peer_session(outsider, stockholm) as stranger:
        with pytest.raises(aiohttp.ClientError):
            await post_batch(stranger, listener, wire.encode_batch([b"x"]), MSGPACK)

    assert listener.inbox.batches == []
    assert listener.seen == []


async def test_trusted_certificate_whose_pin_is_not_in_the_table_is_refused_as_unknown_peer(
    listener: Listener, malmo: TlsMaterial, stockholm: TlsMaterial, goteborg: TlsMaterial
) -> None:
    async with peer_session(malmo, stockholm) as retired:
        status, body, response = await post_batch(
            retired, listener, wire.encode_batch([b"x"]), MSGPACK
        )
        async with retired.get(listener.url + "/federation/v1/keys") as keys:
            keys_status = keys.status

    assert (status, error_code(body)) == (403, "unknown_peer")
    assert response.headers.get("Connection", "").lower() == "close"
    assert keys_status == 403
    assert listener.inbox.batches == []
    assert listener.seen == []
    assert listener.refusals("unknown", "unknown_peer") == 2
    await assert_still_serving(listener, goteborg, stockholm)


async def test_pin_retired_while_connected_applies_to_the_next_request(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    status, _, _ = await post_batch(session, listener, wire.encode_batch([b"one"]), MSGPACK)
    assert status == 200

    listener.pins.table = PinTable({})  # the agreement retired Göteborg's pin
    status, body, _ = await post_batch(session, listener, wire.encode_batch([b"two"]), MSGPACK)

    assert (status, error_code(body)) == (403, "unknown_peer")
    assert listener.inbox.envelopes == [b"one"]


async def test_rotated_client_certificate_is_accepted_once_trusted_and_pinned(
    listener: Listener, stockholm: TlsMaterial, goteborg: TlsMaterial
) -> None:
    rotated = certificate("goteborg")
    trust_peer_certificates(listener.context, [rotated.certificate_pem])  # live context
    listener.pins.table = PinTable.from_certificates(
        {"goteborg": [goteborg.certificate_pem, rotated.certificate_pem]}
    )

    async with peer_session(rotated, stockholm) as new_key:
        status, _, _ = await post_batch(new_key, listener, wire.encode_batch([b"new"]), MSGPACK)

    assert status == 200
    assert listener.inbox.batches == [("goteborg", (b"new",))]
    await assert_still_serving(listener, goteborg, stockholm)


# --- TLS versions and ciphers ----------------------------------------------------------------


def legacy_client(
    own: TlsMaterial, server: TlsMaterial, tmp_path: Path, *, maximum: ssl.TLSVersion, ciphers: str
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=server.certificate_pem.decode())
    own.load_into(context, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = maximum
    context.set_ciphers(ciphers)
    return context


async def legacy_server_accepts(
    context: ssl.SSLContext, server: TlsMaterial, tmp_path: Path
) -> str | None:
    """Control: a permissive server completes a handshake with this client context."""
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_into(permissive, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    permissive.set_ciphers("ALL:@SECLEVEL=0")

    async def close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    control = await asyncio.start_server(close, "127.0.0.1", 0, ssl=permissive)
    try:
        port = control.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        version: str | None = writer.get_extra_info("ssl_object").version()
        writer.close()
        return version
    finally:
        control.close()


async def handshake(listener: Listener, context: ssl.SSLContext) -> str | None:
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", listener.port, ssl=context), 5
    )
    ssl_object = writer.get_extra_info("ssl_object")
    version: str | None = ssl_object.version()
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()
    return version


@pytest.mark.skipif(not ssl.HAS_TLSv1_1, reason="this OpenSSL cannot even offer TLS 1.1")
async def test_tls_1_1_client_is_refused(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial, tmp_path: Path
) -> None:
    context = legacy_client(
        goteborg, stockholm, tmp_path, maximum=ssl.TLSVersion.TLSv1_1, ciphers="ALL:@SECLEVEL=0"
    )
    assert await legacy_server_accepts(context, stockholm, tmp_path) == "TLSv1.1"  # control

    with pytest.raises((ssl.SSLError, ConnectionError)):  # an alert, or a reset
        await handshake(listener, context)

    await assert_still_serving(listener, goteborg, stockholm)


async def test_tls_1_2_client_with_ecdhe_aead_is_accepted(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial, tmp_path: Path
) -> None:
    context = legacy_client(
        goteborg, stockholm, tmp_path, maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE+AESGCM"
    )

    assert await handshake(listener, context) == "TLSv1.2"


async def test_tls_1_2_client_offering_only_cbc_ciphers_is_refused(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial, tmp_path: Path
) -> None:
    context = legacy_client(
        goteborg,
        stockholm,
        tmp_path,
        maximum=ssl.TLSVersion.TLSv1_2,
        ciphers="ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384",
    )

    with pytest.raises((ssl.SSLError, ConnectionError)):  # an alert, or a reset
        await handshake(listener, context)


# --- bounded bodies --------------------------------------------------------------------------


async def raw_request(
    listener: Listener, own: TlsMaterial, server: TlsMaterial, head: str
) -> tuple[int, dict[str, str], bytes]:
    """Send only a request head over TLS and read the answer: the body is never sent."""
    context = client_context_for(own, [server.certificate_pem])
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.port, ssl=context)
    try:
        writer.write(head.encode())
        await writer.drain()
        head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        lines = head_bytes.decode().split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        body = await asyncio.wait_for(reader.readexactly(int(headers["Content-Length"])), 2)
        return status, headers, body
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()


async def test_declared_oversized_body_is_refused_before_it_is_sent(
    listener: Listener, goteborg: TlsMaterial, stockholm: TlsMaterial
) -> None:
    head = (
        f"POST {INBOX} HTTP/1.1\r\nHost: stockholm\r\nContent-Type: application/msgpack\r\n"
        f"Content-Length: {LIMITS.max_request_bytes + 1}\r\n\r\n"
    )

    status, headers, body = await raw_request(listener, goteborg, stockholm, head)

    assert (status, error_code(body)) == (413, "oversized")
    assert headers["Connection"] == "close"
    assert listener.inbox.batches == []
    assert listener.refusals("goteborg", "oversized") == 1
    await assert_still_serving(listener, goteborg, stockholm)


async def test_chunked_body_passing_the_cap_is_refused(
    listener: Listener,
    session: aiohttp.ClientSession,
    goteborg: TlsMaterial,
    stockholm: TlsMaterial,
) -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 4x the cap, sent without a Content-Length
            sent += 1024
            yield b"\x00" * 1024

    async with session.post(listener.url + INBOX, data=endless(), headers=MSGPACK) as response:
        status, body = response.status, await response.read()

    assert (status, error_code(body)) == (413, "oversized")
    assert listener.inbox.batches == []
    await assert_still_serving(listener, goteborg, stockholm)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\xc1", "malformed"),  # a reserved MessagePack byte
        (b"\x92\xc4\x01a", "malformed"),  # truncated: two items announced, one sent
        (wire.encode_batch([b"a"]) + b"\x00", "malformed"),  # trailing bytes
        (msgspec.msgpack.encode(["text, not bin"]), "bad_type"),
        (msgspec.msgpack.encode({"envelopes": []}), "bad_type"),
        (wire.encode_batch([b"e"] * (LIMITS.batch_size + 1)), "oversized"),  # batch too long
        (wire.encode_batch([b"e" * (LIMITS.protocol.max_envelope_bytes + 1)]), "oversized"),
    ],
    ids=["reserved-byte", "truncated", "trailing", "str-item", "map", "too-many", "too-large"],
)
async def test_malformed_batch_is_refused_with_its_code(
    listener: Listener,
    session: aiohttp.ClientSession,
    goteborg: TlsMaterial,
    stockholm: TlsMaterial,
    body: bytes,
    code: str,
) -> None:
    status, answer, _ = await post_batch(session, listener, body, MSGPACK)

    assert (status, error_code(answer)) == (400, code)
    assert listener.inbox.batches == []
    assert listener.refusals("goteborg", code) == 1
    await assert_still_serving(listener, goteborg, stockholm)


async def test_batch_without_the_msgpack_content_type_is_refused(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    status, body, _ = await post_batch(
        session, listener, wire.encode_batch([b"x"]), {"Content-Type": "application/json"}
    )

    assert (status, error_code(body)) == (415, "unsupported_media_type")
    assert listener.inbox.batches == []


async def test_overloaded_inbox_answers_503_with_retry_after_and_keeps_nothing(
    listener: Listener,
    session: aiohttp.ClientSession,
    goteborg: TlsMaterial,
    stockholm: TlsMaterial,
) -> None:
    listener.inbox.overloaded = True

    status, body, response = await post_batch(session, listener, wire.encode_batch([b"x"]), MSGPACK)

    assert (status, error_code(body)) == (503, "overloaded")
    assert response.headers["Retry-After"] == "5"
    assert listener.inbox.batches == []
    listener.inbox.overloaded = False
    await assert_still_serving(listener, goteborg, stockholm)


async def test_keys_endpoint_serves_the_signed_key_bundle_bytes(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    async with session.get(listener.url + "/federation/v1/keys") as response:
        assert (response.status, response.content_type) == (200, "application/msgpack")
        assert await response.read() == KEY_BUNDLE


async def test_wrong_method_is_refused_with_a_code(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    async with session.get(listener.url + INBOX) as response:
        assert (response.status, error_code(await response.read())) == (405, "method_not_allowed")


async def test_plain_http_without_tls_never_reaches_the_app(listener: Listener) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.post(
                f"http://127.0.0.1:{listener.port}{INBOX}", data=b"\x90", headers=MSGPACK
            ) as response:
                await response.read()

    assert listener.seen == []


async def test_batch_of_full_size_envelopes_within_the_cap_is_taken(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    envelope = b"e" * LIMITS.protocol.max_envelope_bytes
    body = wire.encode_batch([envelope] * 3)
    assert len(body) <= LIMITS.max_request_bytes

    status, _, _ = await post_batch(session, listener, body, MSGPACK)

    assert status == 200
    assert listener.inbox.envelopes == [envelope] * 3
