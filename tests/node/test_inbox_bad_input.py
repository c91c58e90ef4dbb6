"""Every bad input of issue 3, delivered to a real node: answered with its code, nothing stored.

Göteborg receives; Stockholm is the authenticated peer that delivers. Each envelope goes through
the node's real :class:`~node.inbox.InboxProcessor` (built as ``serve`` builds it) onto real
stores (SQLite in the test's directory), and each test checks the same four things
(:func:`refused_alone`):

* the answer: the precise code, except the cryptographic failures, which the peer only sees as
  ``rejected``; the precise code is in the local log and in the ``citynode_refusals`` label;
* nothing stored: inbox rows, replay records and cases are exactly as before;
* no personal data in any log record, at any level, from any logger (every envelope here that
  could be opened carries the fake person's name, personnummer and phone, or an inquiry summary);
* the node still serving: a good envelope right after is accepted and receipted.

The bad inputs only the listener sees (the body bound, the client certificate) are at the end,
over the node's real federation app and real mutual TLS on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
from collections.abc import Sequence

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from node_fixtures import (
    PERSONNUMMER,
    Federation,
    Stored,
    case_state,
    client_ssl,
    error_code,
    federation_listener,
    forge,
    header_of,
    inbox_processor,
    inquiry,
    new_case_id,
    open_case,
    personal_data_in,
    referral,
    reframe,
    refusals,
    seal,
    split,
    stored,
    tls_session,
    verify_key_of,
    with_sender_keys,
)

from node.delivery import ACCEPTED, DUPLICATE, REJECTED, DeliveryResult
from node.federation import wire
from node.federation.tls import PinTable, client_context_for
from node.inbox import InboxProcessor
from node.service import Node
from node.tls_material import self_signed_certificate
from protocol import codec
from protocol.errors import ErrorCode
from protocol.keys import encryption_key
from protocol.messages import Referral
from protocol.sealing import verify_receipt

RECEIVER = "goteborg"
PEER = "stockholm"


@pytest.fixture
async def stockholm(fed: Federation) -> Node:
    return await fed.open(PEER)


@pytest.fixture
async def goteborg(fed: Federation) -> Node:
    return await fed.open(RECEIVER)


@pytest.fixture(autouse=True)
def _capture_every_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


def a_referral(sender: Node) -> Referral:
    """A referral of the fake person about a case the receiver does not hold."""
    return referral(new_case_id(), year=sender.today().year)


async def refused_alone(
    receiver: Node,
    sender: Node,
    envelope: bytes,
    *,
    answer: str,
    code: str,
    caplog: pytest.LogCaptureFixture,
    processor: InboxProcessor | None = None,
) -> None:
    """Deliver one bad envelope; check answer, log, metric and store; then a good one."""
    processor = processor or inbox_processor(receiver)
    before = await stored(receiver)
    counted = refusals(receiver, PEER, code)

    [result] = await processor.handle_batch(PEER, [envelope])

    assert result == DeliveryResult(answer, None)
    assert refusals(receiver, PEER, code) == counted + 1
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"RX [{PEER}] refused: {code}" in line for line in lines), lines
    assert await stored(receiver) == before
    assert personal_data_in(caplog.records) == []
    await still_serving(receiver, sender, processor)


async def still_serving(receiver: Node, sender: Node, processor: InboxProcessor) -> None:
    """A good envelope right after is accepted, and its receipt verifies."""
    good = seal(sender, receiver.config.city, inquiry(new_case_id()))
    [result] = await processor.handle_batch(PEER, [good])
    assert result.status == ACCEPTED
    assert result.receipt is not None
    keys = sender.trust().sender_keys(receiver.config.city)
    assert keys is not None
    verify_receipt(result.receipt, signer=receiver.config.city, verify_keys=keys)


# --- framing and header -------------------------------------------------------------------------


async def test_malformed_msgpack_is_refused_as_malformed(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    await refused_alone(
        goteborg,
        stockholm,
        b"\xc1\x92\xa3not msgpack",
        answer="malformed",
        code="malformed",
        caplog=caplog,
    )


async def test_truncated_envelope_is_refused_as_malformed(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm))
    await refused_alone(
        goteborg, stockholm, envelope[:-7], answer="malformed", code="malformed", caplog=caplog
    )


async def test_envelope_larger_than_the_envelope_bound_is_refused_as_oversized(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm))
    bound = goteborg.config.limits.protocol.max_envelope_bytes
    _, _, sealed = split(envelope)
    padded = reframe(envelope, sealed=sealed + b"\x00" * bound)
    await refused_alone(
        goteborg, stockholm, padded, answer="oversized", code="oversized", caplog=caplog
    )


async def test_envelope_of_an_unsupported_protocol_version_is_refused(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm))
    header = msgspec.structs.replace(header_of(envelope), version=2)
    await refused_alone(
        goteborg,
        stockholm,
        reframe(envelope, header=header),
        answer="unsupported_version",
        code="unsupported_version",
        caplog=caplog,
    )


async def test_envelope_of_an_unsupported_suite_is_refused(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm))
    header = msgspec.structs.replace(header_of(envelope), suite=2)
    await refused_alone(
        goteborg,
        stockholm,
        reframe(envelope, header=header),
        answer="unsupported_suite",
        code="unsupported_suite",
        caplog=caplog,
    )


# --- addressing ---------------------------------------------------------------------------------


async def test_envelope_sealed_to_another_city_is_refused_as_wrong_recipient(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    to_malmo = seal(stockholm, "malmo", a_referral(stockholm))
    await refused_alone(
        goteborg,
        stockholm,
        to_malmo,
        answer="wrong_recipient",
        code="wrong_recipient",
        caplog=caplog,
    )


async def test_envelope_claiming_to_come_from_the_receiver_itself_is_refused_as_reflected(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    genuine = seal(stockholm, RECEIVER, a_referral(stockholm))
    reflected = reframe(
        genuine, header=msgspec.structs.replace(header_of(genuine), sender=RECEIVER)
    )
    await refused_alone(
        goteborg, stockholm, reflected, answer="reflected", code="reflected", caplog=caplog
    )


async def test_envelope_from_a_city_outside_the_agreement_is_refused_as_unknown_sender(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    outsider = seal(
        stockholm,
        RECEIVER,
        a_referral(stockholm),
        identity=Ed25519PrivateKey.generate(),
        sender_city="uppsala",
    )
    await refused_alone(
        goteborg,
        stockholm,
        outsider,
        answer="unknown_sender",
        code="unknown_sender",
        caplog=caplog,
    )


async def test_member_envelope_relayed_over_another_peers_connection_is_refused(
    fed: Federation, goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    malmo = await fed.open("malmo")
    from_malmo = seal(malmo, RECEIVER, inquiry(new_case_id()))
    # Genuine and sealed to Göteborg, but the TLS connection is Stockholm's.
    await refused_alone(
        goteborg,
        stockholm,
        from_malmo,
        answer="unknown_sender",
        code="unknown_sender",
        caplog=caplog,
    )


# --- time ---------------------------------------------------------------------------------------


async def test_envelope_older_than_the_replay_window_is_refused_as_stale(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    window = goteborg.config.limits.protocol.max_message_age_s
    old = int(goteborg.clock()) - window - 60
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm), timestamp=old)
    await refused_alone(goteborg, stockholm, envelope, answer="stale", code="stale", caplog=caplog)


async def test_envelope_from_beyond_the_clock_skew_is_refused_as_from_future(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    skew = goteborg.config.limits.protocol.max_clock_skew_s
    ahead = int(goteborg.clock()) + skew + 60
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm), timestamp=ahead)
    await refused_alone(
        goteborg, stockholm, envelope, answer="from_future", code="from_future", caplog=caplog
    )


# --- replay -------------------------------------------------------------------------------------


async def test_same_envelope_again_is_answered_as_duplicate_with_the_original_receipt(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    processor = inbox_processor(goteborg)
    envelope = seal(stockholm, RECEIVER, inquiry(new_case_id()))
    [first] = await processor.handle_batch(PEER, [envelope])
    assert first.status == ACCEPTED
    after_first = await stored(goteborg)

    [again] = await processor.handle_batch(PEER, [envelope])

    assert again == DeliveryResult(DUPLICATE, first.receipt)
    assert await stored(goteborg) == after_first
    assert personal_data_in(caplog.records) == []
    await still_serving(goteborg, stockholm, processor)


async def test_same_message_id_with_other_bytes_is_refused_as_replayed(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    processor = inbox_processor(goteborg)
    case_id = new_case_id()
    original = seal(stockholm, RECEIVER, inquiry(case_id))
    [first] = await processor.handle_batch(PEER, [original])
    assert first.status == ACCEPTED
    # The same message id, freshly sealed (another HPKE ephemeral key): other bytes.
    twin = seal(stockholm, RECEIVER, inquiry(case_id), message_id=header_of(original).message_id)
    assert twin != original

    await refused_alone(
        goteborg,
        stockholm,
        twin,
        answer="replayed",
        code="replayed",
        caplog=caplog,
        processor=processor,
    )


async def test_envelope_replayed_after_a_restart_is_answered_as_duplicate(
    fed: Federation, goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    case_id = new_case_id()
    envelope = seal(stockholm, RECEIVER, inquiry(case_id))
    [first] = await inbox_processor(goteborg).handle_batch(PEER, [envelope])
    assert first.status == ACCEPTED
    after_first = await stored(goteborg)

    restarted = await fed.restart(RECEIVER)
    processor = inbox_processor(restarted)
    [again] = await processor.handle_batch(PEER, [envelope])

    assert again == DeliveryResult(DUPLICATE, first.receipt)
    assert await stored(restarted) == after_first
    twin = seal(stockholm, RECEIVER, inquiry(case_id), message_id=header_of(envelope).message_id)
    await refused_alone(
        restarted,
        stockholm,
        twin,
        answer="replayed",
        code="replayed",
        caplog=caplog,
        processor=processor,
    )


# --- tampering and keys -------------------------------------------------------------------------


async def test_tampered_header_is_rejected_opaquely_and_logged_as_decrypt_failed(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm))
    header = header_of(envelope)
    tampered = reframe(
        envelope, header=msgspec.structs.replace(header, timestamp=header.timestamp - 1)
    )
    await refused_alone(
        goteborg, stockholm, tampered, answer=REJECTED, code="decrypt_failed", caplog=caplog
    )


async def test_tampered_ciphertext_is_rejected_opaquely_and_logged_as_decrypt_failed(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm))
    _, _, sealed = split(envelope)
    flipped = sealed[:-20] + bytes([sealed[-20] ^ 0x01]) + sealed[-19:]
    await refused_alone(
        goteborg,
        stockholm,
        reframe(envelope, sealed=flipped),
        answer=REJECTED,
        code="decrypt_failed",
        caplog=caplog,
    )


async def test_signature_by_a_forger_under_the_peers_key_id_is_rejected_as_bad_signature(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    genuine = seal(stockholm, RECEIVER, a_referral(stockholm))
    header = header_of(genuine)  # names Stockholm's real identity key id
    recipient = stockholm.trust().sealing_key(RECEIVER, int(stockholm.clock()))
    forged = forge(
        header,
        a_referral(stockholm),
        signer=Ed25519PrivateKey.generate(),
        recipient_public=recipient.public_key,
    )
    await refused_alone(
        goteborg, stockholm, forged, answer=REJECTED, code="bad_signature", caplog=caplog
    )


async def test_signature_by_a_retired_identity_key_is_refused_as_expired_key(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(goteborg.clock())
    retired = Ed25519PrivateKey.generate()
    keys = (
        verify_key_of(retired, valid_from=now - 90 * 86400, valid_until=now - 3600),
        verify_key_of(stockholm.own.identity, valid_from=now - 3600),
    )
    trust = with_sender_keys(goteborg.trust(), PEER, keys)
    processor = inbox_processor(goteborg, trust=lambda: trust)
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm), identity=retired)
    await refused_alone(
        goteborg,
        stockholm,
        envelope,
        answer="expired_key",
        code="expired_key",
        caplog=caplog,
        processor=processor,
    )


async def test_signature_by_a_revoked_identity_key_is_refused_as_revoked_key(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(goteborg.clock())
    compromised = Ed25519PrivateKey.generate()
    keys = (
        verify_key_of(compromised, valid_from=now - 86400, revoked_since=now - 600),
        verify_key_of(stockholm.own.identity, valid_from=now - 600),
    )
    trust = with_sender_keys(goteborg.trust(), PEER, keys)
    processor = inbox_processor(goteborg, trust=lambda: trust)
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm), identity=compromised)
    await refused_alone(
        goteborg,
        stockholm,
        envelope,
        answer="revoked_key",
        code="revoked_key",
        caplog=caplog,
        processor=processor,
    )


async def test_envelope_sealed_to_an_encryption_key_we_never_had_is_refused_as_unknown_key(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    now = int(goteborg.clock())
    stranger = X25519PrivateKey.generate().public_key().public_bytes_raw()
    key = encryption_key(stranger, epoch=1, not_before=now - 60, not_after=now + 3600)
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm), recipient_key=key)
    await refused_alone(
        goteborg, stockholm, envelope, answer="unknown_key", code="unknown_key", caplog=caplog
    )


async def test_envelope_naming_our_key_id_with_another_epoch_is_refused_as_unknown_key(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    current = stockholm.trust().sealing_key(RECEIVER, int(stockholm.clock()))
    wrong_epoch = msgspec.structs.replace(current, epoch=current.epoch + 7)
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm), recipient_key=wrong_epoch)
    await refused_alone(
        goteborg, stockholm, envelope, answer="unknown_key", code="unknown_key", caplog=caplog
    )


async def test_signed_referral_with_an_invalid_personnummer_is_refused_without_logging_it(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    case_id = new_case_id()
    await open_case(stockholm, goteborg, case_id, accepted=True)
    genuine = seal(stockholm, RECEIVER, referral(case_id, year=stockholm.today().year))
    body = codec.encode(referral(case_id, year=stockholm.today().year))
    bad_number = "191212121213"  # the checksum digit is wrong
    assert body.count(PERSONNUMMER.encode()) == 1
    recipient = stockholm.trust().sealing_key(RECEIVER, int(stockholm.clock()))
    forged = forge(
        header_of(genuine),  # a header Stockholm signs below with its real key
        body.replace(PERSONNUMMER.encode(), bad_number.encode()),
        signer=stockholm.own.identity,
        recipient_public=recipient.public_key,
    )
    await refused_alone(
        goteborg,
        stockholm,
        forged,
        answer="invalid_personnummer",
        code="invalid_personnummer",
        caplog=caplog,
    )
    assert bad_number not in caplog.text
    assert await case_state(goteborg, case_id) == "accepted"


# --- through the real listener (mutual TLS on 127.0.0.1) ---------------------------------------


async def _post_partially(
    port: int, context: ssl.SSLContext, head: bytes, body_part: bytes, *, rest: bytes = b""
) -> tuple[bytes, bytes]:
    """Send a request head and only part of its body, read the answer, then send ``rest``.

    Returns:
        The response's head and body.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(head + body_part)
        await writer.drain()
        response_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        length = next(
            int(line.split(b":", 1)[1])
            for line in response_head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await asyncio.wait_for(reader.readexactly(length), timeout=5)
        writer.write(rest)  # lets the listener's lingering discard end at once
        await writer.drain()
        return response_head, body
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _inbox_request_head(**headers: str | int) -> bytes:
    lines = [f"POST {wire.INBOX_PATH} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {wire.MSGPACK}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_oversized_body_is_refused_with_413_before_it_is_read(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    cap = goteborg.config.limits.max_request_bytes
    before = await stored(goteborg)
    async with federation_listener(goteborg) as listener:
        # Only 64 KiB of the announced body is ever sent: an answer proves it was not awaited.
        response_head, body = await _post_partially(
            listener.port,
            client_ssl(stockholm, goteborg),
            _inbox_request_head(Content_Length=cap * 4),
            bytes(65536),
        )
        assert response_head.startswith(b"HTTP/1.1 413")
        assert b"Connection: close" in response_head
        assert error_code(body) == "oversized"

        posted = await listener.post(stockholm, [seal(stockholm, RECEIVER, inquiry(new_case_id()))])
        assert [status for status, _ in posted.results] == [ACCEPTED]
    assert refusals(goteborg, PEER, "oversized") == 1
    after = await stored(goteborg)
    assert (after.inbox, after.replay) == (before.inbox + 1, before.replay + 1)
    assert personal_data_in(caplog.records) == []


async def test_chunked_body_past_the_bound_is_refused_with_413_while_it_streams(
    goteborg: Node, stockholm: Node
) -> None:
    cap = goteborg.config.limits.max_request_bytes
    chunk = bytes(64 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    # No length announced: the listener counts as it reads, and must answer after the bound
    # while the sender holds the rest back (only the terminating chunk follows the answer).
    past_the_bound = framed * (cap // len(chunk) + 2)
    async with federation_listener(goteborg) as listener:
        response_head, body = await _post_partially(
            listener.port,
            client_ssl(stockholm, goteborg),
            _inbox_request_head(Transfer_Encoding="chunked"),
            past_the_bound,
            rest=b"0\r\n\r\n",
        )
    assert response_head.startswith(b"HTTP/1.1 413")
    assert error_code(body) == "oversized"
    assert refusals(goteborg, PEER, "oversized") == 1
    assert await stored(goteborg) == Stored(0, 0, ())


class CountingInbox:
    """The node's real inbox handler, counting the batches that reach it."""

    def __init__(self, inner: InboxProcessor) -> None:
        self.inner = inner
        self.batches = 0

    async def handle_batch(self, peer: str, envelopes: Sequence[bytes]) -> Sequence[DeliveryResult]:
        self.batches += 1
        return await self.inner.handle_batch(peer, envelopes)


async def test_client_certificate_trusted_by_tls_but_not_pinned_is_refused_with_403(
    goteborg: Node, stockholm: Node
) -> None:
    # Stockholm's certificate is still in the listener's TLS trust store, but its pin has been
    # withdrawn (as when a pin is retired): the handshake succeeds, the pin check refuses.
    pins = goteborg.trust().pin_table()
    unpinned = PinTable({city: pins.pins_of(city) for city in pins.cities if city != PEER})
    inbox = CountingInbox(inbox_processor(goteborg))
    async with federation_listener(goteborg, handler=inbox, pins=lambda: unpinned) as listener:
        posted = await listener.post(stockholm, [seal(stockholm, RECEIVER, inquiry(new_case_id()))])
    assert (posted.status, posted.error) == (403, "unknown_peer")
    assert inbox.batches == 0
    assert listener.seen == []
    assert refusals(goteborg, "unknown", "unknown_peer") == 1
    assert await stored(goteborg) == Stored(0, 0, ())


async def test_client_certificate_nobody_pinned_fails_the_handshake(
    goteborg: Node, stockholm: Node
) -> None:
    outsider = self_signed_certificate(PEER, now=datetime.datetime.now(datetime.UTC))
    context = client_context_for(outsider, [goteborg.tls.certificate_pem])
    envelope = seal(stockholm, RECEIVER, inquiry(new_case_id()))
    async with federation_listener(goteborg) as listener:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.post(
                    listener.url + wire.INBOX_PATH,
                    data=wire.encode_batch([envelope]),
                    headers={"Content-Type": wire.MSGPACK},
                ) as response:
                    await response.read()
        assert listener.seen == []
        assert await stored(goteborg) == Stored(0, 0, ())
        # The node still serves its real peer.
        posted = await listener.post(stockholm, [envelope])
        assert [status for status, _ in posted.results] == [ACCEPTED]
    assert listener.seen == [PEER]


async def test_malformed_batch_body_is_refused_with_400_and_nothing_stored(
    goteborg: Node, stockholm: Node
) -> None:
    async with (
        federation_listener(goteborg) as listener,
        tls_session(stockholm, goteborg) as session,
        session.post(
            listener.url + wire.INBOX_PATH,
            data=b"\x92\xc4\x01",
            headers={"Content-Type": wire.MSGPACK},
        ) as response,
    ):
        assert response.status == 400
        assert error_code(await response.read()) == "malformed"
    assert await stored(goteborg) == Stored(0, 0, ())
    assert refusals(goteborg, PEER, "malformed") == 1


async def test_tampered_envelope_over_the_listener_is_answered_rejected_and_counted_precisely(
    goteborg: Node, stockholm: Node, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = seal(stockholm, RECEIVER, a_referral(stockholm))
    _, _, sealed = split(envelope)
    tampered = reframe(envelope, sealed=sealed[:-1] + bytes([sealed[-1] ^ 0x80]))
    async with federation_listener(goteborg) as listener:
        posted = await listener.post(stockholm, [tampered])
    assert (posted.status, posted.results) == (200, [(REJECTED, None)])
    assert refusals(goteborg, PEER, ErrorCode.DECRYPT_FAILED) == 1
    assert await stored(goteborg) == Stored(0, 0, ())
    assert personal_data_in(caplog.records) == []
