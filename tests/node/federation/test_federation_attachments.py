"""Attachment streams through the federation listener: streamed in chunks, capped, refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from federation_support import Listener, peer_session, start_listener

from node.federation.tls import PinTable
from node.tls_material import TlsMaterial

ATTACHMENT_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
URL_PATH = "/federation/v1/attachments/" + ATTACHMENT_ID.hex()
OCTETS = {"Content-Type": "application/octet-stream"}
MIB = 1024 * 1024


def error_code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


async def test_20_mib_upload_is_streamed_to_the_sink_in_small_chunks(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    sent = hashlib.sha256()

    async def stream() -> AsyncIterator[bytes]:
        for i in range(20):
            if i == 19:
                # The sink must hold bytes before the upload ends: a server that buffered the
                # whole body before writing would never get here.
                await asyncio.wait_for(listener.sink.first_write.wait(), 5)
            chunk = bytes([i]) * MIB
            sent.update(chunk)
            yield chunk

    async with session.put(listener.url + URL_PATH, data=stream(), headers=OCTETS) as response:
        assert response.status == 204

    assert listener.sink.committed == {("goteborg", ATTACHMENT_ID): (20 * MIB, sent.digest())}
    assert 0 < listener.sink.max_chunk <= 64 * 1024
    assert listener.sink.aborted == []


async def test_upload_declaring_more_than_the_cap_is_refused_before_the_sink_opens(
    stockholm: TlsMaterial, goteborg: TlsMaterial
) -> None:
    pins = PinTable.from_certificates({"goteborg": [goteborg.certificate_pem]})
    listener = await start_listener(stockholm, [goteborg], pins, max_attachment_bytes=MIB)
    try:
        async with (
            peer_session(goteborg, stockholm) as session,
            session.put(listener.url + URL_PATH, data=b"\x00" * (MIB + 1), headers=OCTETS) as r,
        ):
            status, body = r.status, await r.read()
        assert (status, error_code(body)) == (413, "oversized")
        assert listener.sink.opened == 0
    finally:
        await listener.runner.cleanup()


async def test_streamed_upload_passing_the_cap_is_aborted_and_refused(
    stockholm: TlsMaterial, goteborg: TlsMaterial
) -> None:
    pins = PinTable.from_certificates({"goteborg": [goteborg.certificate_pem]})
    listener = await start_listener(stockholm, [goteborg], pins, max_attachment_bytes=MIB)

    async def stream() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"\x00" * (MIB // 2)

    try:
        async with peer_session(goteborg, stockholm) as session:
            async with session.put(listener.url + URL_PATH, data=stream(), headers=OCTETS) as r:
                status, body = r.status, await r.read()
            assert (status, error_code(body)) == (413, "oversized")
            assert listener.sink.committed == {}
            assert listener.sink.aborted == [("goteborg", ATTACHMENT_ID)]
            async with session.put(listener.url + URL_PATH, data=b"small", headers=OCTETS) as r:
                assert r.status == 204  # still serving, and the aborted id is free again
    finally:
        await listener.runner.cleanup()


async def test_upload_of_an_attachment_already_stored_is_refused_with_409(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    async with session.put(listener.url + URL_PATH, data=b"first", headers=OCTETS) as response:
        assert response.status == 204

    async with session.put(listener.url + URL_PATH, data=b"second", headers=OCTETS) as response:
        status, body = response.status, await response.read()

    assert (status, error_code(body)) == (409, "attachment_exists")
    assert listener.sink.committed[("goteborg", ATTACHMENT_ID)][0] == len(b"first")


@pytest.mark.parametrize(
    "attachment_id", ["00112233", "00112233445566778899AABBCCDDEEFF", "zz" * 16, "00" * 17]
)
async def test_attachment_id_that_is_not_32_lowercase_hex_digits_is_refused(
    listener: Listener, session: aiohttp.ClientSession, attachment_id: str
) -> None:
    url = listener.url + "/federation/v1/attachments/" + attachment_id

    async with session.put(url, data=b"x", headers=OCTETS) as response:
        status, body = response.status, await response.read()

    assert (status, error_code(body)) == (400, "invalid_field")
    assert listener.sink.opened == 0


async def test_upload_with_another_content_type_is_refused(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    headers = {"Content-Type": "text/plain"}
    async with session.put(listener.url + URL_PATH, data=b"x", headers=headers) as response:
        assert (response.status, error_code(await response.read())) == (
            415,
            "unsupported_media_type",
        )
    assert listener.sink.opened == 0


async def test_download_streams_the_attachment_to_the_peer_it_is_for(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    data = bytes(range(256)) * 1000
    listener.source.streams[("goteborg", ATTACHMENT_ID)] = data

    async with session.get(listener.url + URL_PATH) as response:
        assert response.status == 200
        assert await response.read() == data


async def test_download_of_an_attachment_for_another_peer_looks_like_not_found(
    listener: Listener, session: aiohttp.ClientSession
) -> None:
    listener.source.streams[("malmo", ATTACHMENT_ID)] = b"for malmo only"

    async with session.get(listener.url + URL_PATH) as response:
        assert (response.status, error_code(await response.read())) == (
            404,
            "attachment_not_found",
        )
