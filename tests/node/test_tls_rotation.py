"""TLS-certificate rotation with overlapping pins: add the new pin, switch, retire the old.

In-process nodes (``node_fixtures``) serving over real mutual TLS on loopback: while traffic
flows both ways, one node rotates its certificate; the peers accept both pins during the overlap,
the node switches only once every peer accepts the new certificate, then retires the old pin —
and no request is refused on the way. Afterwards the old certificate is refused
(``403 unknown_peer``), also when it was the pin the agreement listed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from node_fixtures import (
    CITIES,
    UNITS,
    Federation,
    error_code,
    fresh_federation,
    inquiry,
    new_case_id,
    refusals,
    serving,
    wait_until,
)
from sqlalchemy import text

from node.delivery import DeliveryState
from node.federation import wire
from node.federation.tls import client_context_for
from node.own_keys import announced_tls_pins
from node.peer_package import read_package
from node.rotation import TlsRotationPending
from node.service import Node
from node.tls_material import TlsMaterial
from protocol.keylog import EntryKind

HOME, RECEIVING = CITIES[0], CITIES[1]
REFUSAL_CODES = ("unknown_peer", "rejected", "unknown_key", "request_refused", "other")


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Federation]:
    """Stockholm and Göteborg on SQLite, on free loopback ports."""
    async with fresh_federation(tmp_path / "fed", (HOME, RECEIVING), listening=True) as fed:
        yield fed


async def get_keys(client: TlsMaterial, server: Node) -> tuple[int, str | None]:
    """``GET /federation/v1/keys`` at ``server`` presenting ``client``: (status, error code)."""
    context = client_context_for(client, [server.tls.certificate_pem])
    url = f"https://127.0.0.1:{server.config.federation.port}{wire.KEYS_PATH}"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session,
        session.get(url) as response,
    ):
        return response.status, error_code(await response.read())


async def column(node: Node, query: str, **params: object) -> list[object]:
    """One column of a query on the node's database."""
    async with node.db.reading() as session:
        return list((await session.execute(text(query), params)).scalars().all())


async def exactly_once(sender: Node, receiver: Node) -> int:
    """Every message ``sender`` queued for ``receiver`` (key updates too) was receipted and
    processed exactly once there; returns how many."""
    to, source = receiver.config.city, sender.config.city
    outbox = await column(sender, "SELECT message_id FROM outbox WHERE peer = :p", p=to)
    states = await column(sender, "SELECT DISTINCT state FROM outbox WHERE peer = :p", p=to)
    inbox = await column(receiver, "SELECT message_id FROM inbox WHERE sender = :s", s=source)
    assert states == ["receipted"]
    assert len(inbox) == len(set(inbox)), "a message was processed twice"
    assert sorted(inbox) == sorted(outbox)  # type: ignore[type-var]
    return len(outbox)


async def test_tls_rotation_under_traffic_switches_and_retires_without_a_refusal(
    pair: Federation,
) -> None:
    home, receiving = await pair.open(HOME), await pair.open(RECEIVING)
    old = receiving.tls
    agreement_pin = receiving.trust().agreement.member(RECEIVING).tls_pins[0]
    assert agreement_pin == old.pin()
    sent: dict[str, list[bytes]] = {HOME: [], RECEIVING: []}

    async def traffic(sender: Node, recipient: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            message = inquiry(new_case_id(), to_unit=UNITS[recipient])
            if sender.config.city != HOME:  # the other way: Göteborg's unit asks Stockholm's
                message = msgspec.structs.replace(message, from_unit=UNITS[sender.config.city])
            queued = await sender.outgoing(sender.wake_sender).send(recipient, message)
            sent[sender.config.city].append(queued.message_id)
            await asyncio.sleep(0.02)

    async with serving(home, receiving):
        stop = asyncio.Event()
        flows = [
            asyncio.create_task(traffic(home, RECEIVING, stop)),
            asyncio.create_task(traffic(receiving, HOME, stop)),
        ]
        await asyncio.sleep(0.3)
        new_pin = await receiving.rotate_tls()
        new = receiving.tls_next
        assert new is not None
        assert receiving.tls == old  # added, not switched yet
        with pytest.raises(TlsRotationPending):
            await receiving.rotate_tls()

        # overlap: the peer accepts both pins for the city
        await wait_until(lambda: home.trust().peer(RECEIVING).pins == {old.pin(), new_pin})
        # switch: once the peer accepts the new certificate
        await wait_until(lambda: receiving.tls.pin() == new_pin, timeout_s=10)
        assert receiving.tls_next is None
        # retire: the old pin leaves the bundle, and the peer's pin table
        await wait_until(lambda: home.trust().peer(RECEIVING).pins == {new_pin}, timeout_s=20)
        await asyncio.sleep(0.5)  # traffic over the new certificate only
        stop.set()
        await asyncio.gather(*flows)

        async def all_receipted() -> bool:
            for sender in (home, receiving):
                for message_id in sent[sender.config.city]:
                    if await sender.outbox.state_of(message_id) != DeliveryState.RECEIPTED:
                        return False
            return True

        await wait_until(all_receipted, timeout_s=20)
        assert await get_keys(old, home) == (403, "unknown_peer")
        assert (await get_keys(receiving.tls, home))[0] == 200

    for sender, receiver in ((home, receiving), (receiving, home)):
        assert await exactly_once(sender, receiver) >= len(sent[sender.config.city])
    for node, peer in ((home, RECEIVING), (receiving, HOME)):
        for code in REFUSAL_CODES:
            assert refusals(node, peer, code) == 0, (node.config.city, code)
    log = await receiving.history.load()
    kinds = [
        e.kind for e in log.entries if e.kind in (EntryKind.TLS_PIN, EntryKind.TLS_PIN_RETIRED)
    ]
    assert kinds == [EntryKind.TLS_PIN, EntryKind.TLS_PIN, EntryKind.TLS_PIN_RETIRED]
    assert announced_tls_pins(log) == (new_pin,)


async def test_tls_switch_waits_while_a_peer_cannot_be_reached(pair: Federation) -> None:
    home, receiving = await pair.open(HOME), await pair.open(RECEIVING)
    old = receiving.tls
    async with serving(receiving):  # Stockholm is down: it cannot accept the new certificate
        new_pin = await receiving.rotate_tls()
        await asyncio.sleep(1.5)
        assert receiving.tls == old
        assert receiving.tls_next is not None
    async with serving(home, receiving):  # back: it learns the new pin, then the node switches
        await wait_until(lambda: receiving.tls.pin() == new_pin, timeout_s=10)
    assert home.trust().peer(RECEIVING).pins >= {new_pin}


async def test_tls_rotation_survives_a_restart_before_the_switch(pair: Federation) -> None:
    receiving = await pair.open(RECEIVING)
    old = receiving.tls
    new_pin = await receiving.rotate_tls()
    receiving = await pair.restart(RECEIVING)
    assert receiving.tls == old
    assert receiving.tls_next is not None
    assert receiving.tls_next.pin() == new_pin
    assert announced_tls_pins(await receiving.history.load()) == (old.pin(), new_pin)


async def test_switch_and_retirement_survive_restarts(pair: Federation) -> None:
    receiving = await pair.open(RECEIVING)
    old = receiving.tls
    new_pin = await receiving.rotate_tls()
    await receiving.switch_tls()

    receiving = await pair.restart(RECEIVING)
    assert receiving.tls.pin() == new_pin
    assert receiving.tls_next is None
    assert receiving.retirable_tls_pins() == (old.pin(),)  # announced until retired
    assert set(read_package_pins(receiving)) == {old.pin(), new_pin}

    await receiving.retire_tls(receiving.retirable_tls_pins())
    receiving = await pair.restart(RECEIVING)
    assert receiving.retirable_tls_pins() == ()
    assert read_package_pins(receiving) == (new_pin,)


def read_package_pins(node: Node) -> tuple[bytes, ...]:
    """The TLS pins of the bundle the node serves."""
    package = read_package(
        node.package(),
        expected_identity=None,
        now=int(node.clock()),
        limits=node.config.limits.protocol,
    )
    return package.bundle.tls_pins
