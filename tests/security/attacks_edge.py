"""Attack rows at the edges of the inbox: the TLS listener, the agreement, attachment streams.

* ``listener`` — Göteborg's real federation app over real mutual TLS on 127.0.0.1. The TLS
  refusals have no protocol code: the code is the TLS alert the client receives (``tls:`` and
  OpenSSL's reason). After each: nothing stored, and Stockholm's next batch is accepted.
* ``agreement`` — a new version made by the operators' procedure (``propose_agreement``,
  ``sign_agreement``, ``adopt_agreement``) and then the attack; each runs in a world of its own.
  After each: the adopted version is unchanged.
* ``attachment`` — streams from ``encrypt_attachment`` with their frames moved, cut or mixed,
  read by ``AttachmentReader`` as the node reads a downloaded attachment. After each: the reader
  released only the authentic chunks before the fault and refuses every later call.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import socket
import ssl
from typing import Final

import pytest
from attack_support import Observed, World, attack
from node_fixtures import (
    Ports,
    federation_listener,
    inquiry,
    new_case_id,
    seal,
    stored,
    tls_session,
    write_draft,
)

from node.federation import wire
from node.federation.tls import PinTable, client_context_for
from node.membership import adopt_agreement, propose_agreement, sign_agreement
from node.tls_material import self_signed_certificate
from protocol import attachments
from protocol.errors import AgreementRejected, AttachmentRejected

# --- the TLS listener -------------------------------------------------------------------------


def _tls_attempt(port: int, context: ssl.SSLContext) -> str:
    """Connect with ``context`` (a blocking socket: asyncio hides the TLS alert) and send a
    request; return how the server refused it."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as tls,
        ):
            tls.sendall(f"GET {wire.INBOX_PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            answer = tls.recv(1024)
    except ssl.SSLError as e:
        return f"tls:{(e.reason or 'ssl_error').lower()}"
    except ConnectionError:
        return "tls:connection_reset"
    return "tls:closed" if not answer else f"http:{answer.split(b' ')[1].decode()}"


class _HandshakeFailures(logging.Handler):
    """The listener's TLS handshake failures, as asyncio logs them in debug mode."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, ssl.SSLError):
            self.reasons.append(str(error.reason or "ssl_error").lower())


async def _tls_refusal(port: int, context: ssl.SSLContext) -> str:
    """The server's reason for refusing the handshake, ``tls:<OpenSSL reason>``.

    The client only sees the connection closed (``tls:closed``); asyncio logs the listener's
    reason in debug mode, which is switched on for the attempt alone.
    """
    loop, log = asyncio.get_running_loop(), logging.getLogger("asyncio")
    failures, level, debug = _HandshakeFailures(), log.level, loop.get_debug()
    log.addHandler(failures)
    log.setLevel(logging.DEBUG)
    loop.set_debug(True)
    try:
        client_view = await asyncio.to_thread(_tls_attempt, port, context)
        for _ in range(500):  # up to 5 s for the listener to log its reason
            if failures.reasons:
                break
            await asyncio.sleep(0.01)
    finally:
        loop.set_debug(debug)
        log.setLevel(level)
        log.removeHandler(failures)
    assert client_view in ("tls:closed", "tls:connection_reset"), client_view
    assert len(set(failures.reasons)) == 1, failures.reasons  # asyncio may log it twice
    return f"tls:{failures.reasons[0]}"


async def _listener_unchanged(world: World, attempt: object) -> Observed:
    """Run ``attempt(listener)``; check nothing stored and Stockholm still gets through."""
    goteborg, stockholm = world.goteborg, world.stockholm
    before = await stored(goteborg)
    async with federation_listener(goteborg) as listener:
        code = await attempt(listener)  # type: ignore[operator]
        assert await stored(goteborg) == before
        if code.startswith("tls:"):  # refused before any request reached the app
            assert listener.seen == []
        posted = await listener.post(
            stockholm, [seal(stockholm, "goteborg", inquiry(new_case_id()))]
        )
        assert [status for status, _ in posted.results] == ["accepted"]
    return code, "connection closed in the handshake" if code.startswith("tls:") else code


@attack(
    "tls_client_without_certificate",
    "listener",
    "Connect to the federation listener presenting no client certificate.",
    "tls:peer_did_not_return_a_certificate",
    "connection closed in the handshake",
)
async def tls_client_without_certificate(world: World) -> Observed:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=world.goteborg.tls.certificate_pem.decode())

    async def attempt(listener: object) -> str:
        return await _tls_refusal(listener.port, context)  # type: ignore[attr-defined]

    return await _listener_unchanged(world, attempt)


@attack(
    "tls_client_certificate_nobody_trusts",
    "listener",
    "Present a self-signed certificate claiming to be Stockholm, pinned by nobody.",
    "tls:certificate_verify_failed",
    "connection closed in the handshake",
)
async def tls_client_certificate_nobody_trusts(world: World) -> Observed:
    outsider = self_signed_certificate("stockholm", now=datetime.datetime.now(datetime.UTC))
    context = client_context_for(outsider, [world.goteborg.tls.certificate_pem])

    async def attempt(listener: object) -> str:
        return await _tls_refusal(listener.port, context)  # type: ignore[attr-defined]

    return await _listener_unchanged(world, attempt)


@attack(
    "tls_client_certificate_unpinned",
    "listener",
    "Present Stockholm's certificate, still in the TLS trust store, after its pin was withdrawn.",
    "unknown_peer",
    "403 unknown_peer",
)
async def tls_client_certificate_unpinned(world: World) -> Observed:
    goteborg, stockholm = world.goteborg, world.stockholm
    pins = goteborg.trust().pin_table()
    unpinned = PinTable({city: pins.pins_of(city) for city in pins.cities if city != "stockholm"})
    before = await stored(goteborg)
    async with federation_listener(goteborg, pins=lambda: unpinned) as listener:
        posted = await listener.post(
            stockholm, [seal(stockholm, "goteborg", inquiry(new_case_id()))]
        )
    assert await stored(goteborg) == before
    assert listener.seen == []
    return str(posted.error), f"{posted.status} {posted.error}"


async def _post_raw(world: World, body: bytes) -> Observed:
    async def attempt(listener: object) -> str:
        url = listener.url + wire.INBOX_PATH  # type: ignore[attr-defined]
        headers = {"Content-Type": wire.MSGPACK}
        async with (
            tls_session(world.stockholm, world.goteborg) as session,
            session.post(url, data=body, headers=headers) as response,
        ):
            error = wire.decode_error(await response.read())
            return f"{response.status} {error.code if error else None}"

    answer, _ = await _listener_unchanged(world, attempt)
    return answer.split(" ")[1], answer


@attack(
    "oversized_request_body",
    "listener",
    "POST an inbox batch one byte larger than the request bound.",
    "oversized",
    "413 oversized",
)
async def oversized_request_body(world: World) -> Observed:
    cap = world.goteborg.config.limits.max_request_bytes
    return await _post_raw(world, b"\xc6" + (cap - 4).to_bytes(4, "big") + bytes(cap - 4))


@attack(
    "deeply_nested_batch",
    "listener",
    "POST an inbox batch of 100,000 nested MessagePack arrays.",
    "bad_type",
    "400 bad_type",
)
async def deeply_nested_batch(world: World) -> Observed:
    return await _post_raw(world, b"\x91" * 100_000 + b"\xc0")


@attack(
    "invalid_utf8_batch",
    "listener",
    "POST an inbox batch whose one element is a string of invalid UTF-8 instead of bytes.",
    "bad_type",
    "400 bad_type",
)
async def invalid_utf8_batch(world: World) -> Observed:
    return await _post_raw(world, b"\x91\xa2\xc3\x28")


LISTENER_CASES: Final = (
    tls_client_without_certificate,
    tls_client_certificate_nobody_trusts,
    tls_client_certificate_unpinned,
    oversized_request_body,
    deeply_nested_batch,
    invalid_utf8_batch,
)


# --- the agreement ------------------------------------------------------------------------------


async def _next_version(world: World, cities: tuple[str, ...], title: str) -> bytes:
    """Version 2 naming ``cities``, proposed by Stockholm (at version 1), signed by Göteborg."""
    folder = world.fed.root / f"draft-{title}"
    folder.mkdir()
    ports = {
        c: Ports(world.node(c).config.federation.port, world.node(c).config.api.port)
        for c in cities
    }
    path = write_draft(folder, cities, ports, world.stockholm.today())
    text = path.read_text(encoding="utf-8").replace("version = 1", "version = 2", 1)
    path.write_text(text.replace("Testavtal", f"Testavtal {title}", 1), encoding="utf-8")
    return sign_agreement(world.goteborg, await propose_agreement(world.stockholm, path))


async def _refused_agreement(world: World, signed: bytes) -> Observed:
    adopted = world.goteborg.trust().agreement
    try:
        await adopt_agreement(world.goteborg, signed)
    except AgreementRejected as e:
        code = str(e.code)
    else:
        raise AssertionError("the agreement was adopted")
    after = world.goteborg.trust().agreement
    assert (after.version, after.document_hash) == (adopted.version, adopted.document_hash)
    await world.still_serving()
    return code, code


@attack(
    "agreement_rollback",
    "agreement",
    "After Göteborg adopted version 2, present version 1 again, fully signed.",
    "agreement_rollback",
)
async def agreement_rollback(world: World) -> Observed:
    version_1 = world.goteborg.trust().agreement.signed_bytes
    await adopt_agreement(
        world.goteborg, await _next_version(world, ("stockholm", "goteborg", "malmo"), "a")
    )
    return await _refused_agreement(world, version_1)


@attack(
    "agreement_fork",
    "agreement",
    "After Göteborg adopted version 2, present another version 2 signed by the same threshold.",
    "agreement_fork",
)
async def agreement_fork(world: World) -> Observed:
    cities = ("stockholm", "goteborg", "malmo")
    first, other = await _next_version(world, cities, "a"), await _next_version(world, cities, "b")
    await adopt_agreement(world.goteborg, first)
    return await _refused_agreement(world, other)


@attack(
    "removed_member",
    "agreement",
    "Malmö, removed by version 2, delivers a genuine envelope over its own connection.",
    "unknown_sender",
)
async def removed_member(world: World) -> Observed:
    await adopt_agreement(
        world.goteborg, await _next_version(world, ("stockholm", "goteborg"), "c")
    )
    assert "malmo" not in world.goteborg.trust().peers
    envelope = seal(world.malmo, "goteborg", inquiry(new_case_id()))
    return await world.refused(envelope, peer="malmo")


AGREEMENT_CASES: Final = (agreement_rollback, agreement_fork, removed_member)


# --- attachment streams --------------------------------------------------------------------------

KEY: Final = bytes.fromhex("5f" * 32)
ID: Final = bytes.fromhex("11" * 16)
OTHER_ID: Final = bytes.fromhex("22" * 16)
CHUNK: Final = 64
DOCUMENT: Final = b"Hotbildsbedomning (testdokument): fiktiv person.\n" * 5  # 4 chunks
OTHER_DOCUMENT: Final = b"Annan bilaga (testdokument), lika lang som den forsta.\n"[:50] * 5


def _frames(stream: bytes) -> tuple[bytes, list[bytes]]:
    """A stream's header and its frames, each with its prefix."""
    header, rest, frames = (
        stream[: attachments.HEADER_BYTES],
        stream[attachments.HEADER_BYTES :],
        [],
    )
    while rest:
        size = attachments.FRAME_PREFIX_BYTES + int.from_bytes(rest[1:5], "big")
        frames.append(rest[:size])
        rest = rest[size:]
    return header, frames


def _stream(document: bytes, attachment_id: bytes = ID) -> tuple[bytes, list[bytes], bytes]:
    stream, summary = attachments.encrypt_attachment(KEY, attachment_id, document, chunk_size=CHUNK)
    header, frames = _frames(stream)
    return header, frames, summary.digest


async def _read(stream: bytes, *, authentic: bytes, digest: bytes | None = None) -> Observed:
    """Read ``stream``; check only an authentic prefix was released and the reader stays shut."""
    reader = attachments.AttachmentReader(KEY, ID, expected_digest=digest)
    released = bytearray()
    try:
        for piece in reader.feed(stream):
            released += piece
        reader.finish()
    except AttachmentRejected as e:
        code = str(e.code)
    else:
        raise AssertionError("the stream was accepted")
    assert authentic.startswith(bytes(released))
    for later in (lambda: reader.feed(b"\x00"), reader.finish):
        with pytest.raises(AttachmentRejected) as refused_again:
            later()
        assert refused_again.value.code.value == "attachment_corrupt"
    return code, code


@attack(
    "attachment_chunks_reordered",
    "attachment",
    "Swap the second and third frames of a four-chunk attachment stream.",
    "attachment_corrupt",
)
async def attachment_chunks_reordered(_: object) -> Observed:
    header, frames, _digest = _stream(DOCUMENT)
    assert len(frames) == 4
    return await _read(header + frames[0] + frames[2] + frames[1] + frames[3], authentic=DOCUMENT)


@attack(
    "attachment_truncated",
    "attachment",
    "Drop the final frame of an attachment stream.",
    "attachment_truncated",
)
async def attachment_truncated(_: object) -> Observed:
    header, frames, _digest = _stream(DOCUMENT)
    return await _read(header + b"".join(frames[:-1]), authentic=DOCUMENT)


@attack(
    "attachment_spliced_from_another_attachment",
    "attachment",
    "Replace the second frame by the second frame of another attachment under the same key.",
    "attachment_corrupt",
)
async def attachment_spliced_from_another_attachment(_: object) -> Observed:
    header, frames, _digest = _stream(DOCUMENT)
    _, others, _ = _stream(OTHER_DOCUMENT, OTHER_ID)
    return await _read(header + frames[0] + others[1] + b"".join(frames[2:]), authentic=DOCUMENT)


@attack(
    "attachment_spliced_same_id_caught_by_digest",
    "attachment",
    "Mix the frames of two streams made under the same key and id; the reference's digest "
    "catches it at the end.",
    "attachment_corrupt",
)
async def attachment_spliced_same_id_caught_by_digest(_: object) -> Observed:
    header, frames, digest = _stream(DOCUMENT)
    _, others, _ = _stream(OTHER_DOCUMENT)
    spliced = header + frames[0] + others[1] + b"".join(frames[2:])
    mixed = DOCUMENT[:CHUNK] + OTHER_DOCUMENT[CHUNK : 2 * CHUNK] + DOCUMENT[2 * CHUNK :]
    return await _read(spliced, authentic=mixed, digest=digest)


ATTACHMENT_CASES: Final = (
    attachment_chunks_reordered,
    attachment_truncated,
    attachment_spliced_from_another_attachment,
    attachment_spliced_same_id_caught_by_digest,
)
