"""Revocation by threshold: the other members replace a compromised member's identity key.

In-process, by the operators' procedure (``node_fixtures``): Malmö's keys are copied; Malmö
replaces every key (``keys replace``); Stockholm and Göteborg import its new package and verify
its fingerprint; Stockholm proposes version 2 naming Malmö's new key and revoking the old one,
Göteborg signs (Malmö does not), and all three adopt it. From then on what the old key signs is
refused everywhere, and Malmö exchanges messages again with its new keys. Between ``keys
revoke`` and ``keys replace`` a running Malmö signs nothing with its revoked key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from node_fixtures import (
    UNITS,
    Federation,
    accept,
    deliver_outbox,
    inbox_processor,
    inquiry,
    new_case_id,
    operator_url,
    seal,
    send,
    serving,
    statuses,
    stored,
    wait_until,
)
from sqlalchemy import func, select

from node.checkpoints import witness_for
from node.cli import main
from node.cli_keys import key_state
from node.delivery import ACCEPTED, DUPLICATE, Overloaded
from node.inbox import InboxProcessor
from node.key_replacement import IdentityRevoked, replace_compromised_keys
from node.membership import (
    MembershipError,
    adopt_agreement,
    import_peer,
    list_peers,
    propose_agreement,
    sign_agreement,
    verify_peer,
)
from node.service import Node
from node.storage.checkpoint_store import CheckpointStore
from node.storage.schema import OutboxRow
from protocol.agreement import AgreementRejected, add_signature
from protocol.errors import ErrorCode
from protocol.keys import public_bytes

STOCKHOLM, GOTEBORG, MALMO = "stockholm", "goteborg", "malmo"


async def exchange_checkpoints(client: Node, server: Node) -> None:
    """One checkpoint exchange, the server answering in-process as its federation route does."""
    answering = witness_for(server)

    async def post(peer: str, body: bytes) -> bytes:
        return await answering.answer(client.config.city, body)

    await witness_for(client).exchange(server.config.city, post)


def next_version_draft(fed: Federation) -> Path:
    """Version 2 of the federation's agreement draft, the same terms."""
    text = (fed.root / "agreement.toml").read_text(encoding="utf-8")
    path = fed.root / "agreement-v2.toml"
    path.write_text(text.replace("version = 1\n", "version = 2\n", 1), encoding="utf-8")
    return path


async def test_compromised_member_is_replaced_by_the_others_and_rejoins_with_its_new_key(
    fed: Federation,
) -> None:
    stockholm, goteborg = await fed.open(STOCKHOLM), await fed.open(GOTEBORG)
    malmo = await fed.open(MALMO)
    await exchange_checkpoints(malmo, stockholm)  # Malmö countersigns with its old key
    await exchange_checkpoints(malmo, goteborg)
    stolen = malmo.own.identity  # what the thief holds
    old_public = public_bytes(stolen)
    old_pin = malmo.tls.pin()
    # Stockholm's message, processed by Malmö just before its revocation took effect; the
    # receipt (by the key revoked since a minute ago) never reached Stockholm.
    early = seal(stockholm, MALMO, inquiry(new_case_id(), to_unit=UNITS[MALMO]))
    (first,) = await signing_inbox(malmo).handle_batch(STOCKHOLM, [early])
    assert first.status == ACCEPTED

    await malmo.revoke_identity(int(malmo.clock()) - 60)  # keys revoke, first
    replaced = await replace_compromised_keys(malmo)
    assert malmo.tls.pin() != old_pin
    assert public_bytes(malmo.identity_at(int(malmo.clock()))) != old_public

    draft = next_version_draft(fed)
    for node in (stockholm, goteborg):
        await import_peer(node, malmo.package())
        assert not (await list_peers(node, MALMO))[0].verified  # a new key is not trusted yet
    with pytest.raises(MembershipError):
        await propose_agreement(stockholm, draft, replace_keys=[MALMO])
    for node in (stockholm, goteborg):
        await verify_peer(node, MALMO, replaced.fingerprint)

    proposal = await propose_agreement(stockholm, draft, replace_keys=[MALMO])
    with pytest.raises(AgreementRejected) as caught:  # the thief's signature does not count
        await adopt_agreement(goteborg, add_signature(proposal, stolen))
    assert caught.value.code == ErrorCode.AGREEMENT_THRESHOLD
    signed = sign_agreement(goteborg, proposal)
    for node in (stockholm, goteborg, malmo):
        adopted = await adopt_agreement(node, signed)
        assert adopted.version == 2
        assert adopted.document.revoked_keys == (old_public,)

    for node in (stockholm, goteborg):
        peer = node.trust().peer(MALMO)
        assert [k.public_key for k in peer.identity] == [public_bytes(malmo.own.identity)]
        assert peer.pins == frozenset({malmo.tls.pin()})

    # What the stolen key signs is refused everywhere, with the unknown-key code.
    case_id = new_case_id()
    forged = seal(malmo, STOCKHOLM, accept(case_id, UNITS[MALMO]), identity=stolen)
    for node in (stockholm, goteborg):
        envelope = (
            forged
            if node is stockholm
            else seal(malmo, GOTEBORG, accept(case_id, UNITS[MALMO]), identity=stolen)
        )
        results = await inbox_processor(node).handle_batch(MALMO, [envelope])
        assert statuses(results) == [ErrorCode.UNKNOWN_KEY]

    # Stockholm sends the early message again: a duplicate, receipted afresh by the new key (the
    # original receipt's key is no longer Malmö's), and still processed only once.
    kept = await stored(malmo)
    (again,) = await signing_inbox(malmo).handle_batch(STOCKHOLM, [early])
    assert again.status == DUPLICATE
    assert again.receipt is not None
    assert again.receipt != first.receipt
    assert stockholm.receipt_checker()(MALMO, Posted(early), again.receipt)
    assert not stockholm.receipt_checker()(MALMO, Posted(early), first.receipt or b"")
    assert await stored(malmo) == kept

    # Malmö exchanges messages again, both ways, receipts checked against its new key.
    await send(stockholm, malmo, inquiry(case_id, to_unit=UNITS[MALMO]))
    assert statuses(await deliver_outbox(stockholm, malmo)) == [ACCEPTED]
    await send(malmo, stockholm, accept(case_id, UNITS[MALMO]))
    assert statuses(await deliver_outbox(malmo, stockholm)) == [ACCEPTED]

    # Key transparency goes on: views made with the old key are no longer relayed.
    await exchange_checkpoints(stockholm, malmo)
    await exchange_checkpoints(malmo, goteborg)
    malmo_log = await malmo.history.load()
    witnesses = await CheckpointStore(stockholm.db, stockholm.clock).latest_checkpoints()
    assert witnesses[MALMO] == (malmo_log.size, malmo_log.head)

    stockholm = await fed.restart(STOCKHOLM)  # the replacement is kept across a restart
    assert [k.public_key for k in stockholm.trust().peer(MALMO).identity] == [
        public_bytes(malmo.own.identity)
    ]


async def test_replacing_a_key_that_was_not_reimported_is_refused(fed: Federation) -> None:
    stockholm = await fed.open(STOCKHOLM)
    with pytest.raises(MembershipError):
        await propose_agreement(stockholm, next_version_draft(fed), replace_keys=[MALMO])
    with pytest.raises(MembershipError):
        await propose_agreement(stockholm, next_version_draft(fed), replace_keys=["uppsala"])


def signing_inbox(node: Node) -> InboxProcessor:
    """The node's inbox handler with its receipts signed as ``serve`` signs them."""
    return InboxProcessor(
        city=node.config.city,
        identity=node.identity_at,
        decryption_keys=node.decryption,
        trust=node.trust,
        inbox=node.inbox,
        ledger=node.ledger,
        metrics=node.metrics,
        clock=node.clock,
        limits=node.config.limits.protocol,
        own_keys=node.own_verify_keys,
    )


@dataclass(frozen=True)
class Posted:
    """An envelope as the sender's outbox holds it (what the receipt checker reads)."""

    envelope: bytes


async def outbox_rows(node: Node) -> int:
    """Every message the node ever queued, whatever its state."""
    async with node.db.reading() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxRow)) or 0)


async def test_running_node_with_a_revoked_identity_key_signs_nothing_until_replaced(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    stockholm, malmo = await fed.open(STOCKHOLM), await fed.open(MALMO)
    goteborg = await fed.open(GOTEBORG)  # down: Malmö's message to it waits in the outbox
    case_id = new_case_id()
    await send(stockholm, malmo, inquiry(case_id, to_unit=UNITS[MALMO]))
    await send(malmo, goteborg, inquiry(new_case_id(), to_unit=UNITS[GOTEBORG]))
    envelope = (await stockholm.outbox.next_batch(MALMO, 10, stockholm.clock()))[0].envelope
    caplog.set_level(logging.INFO)
    async with serving(stockholm, malmo):
        queued_before = await outbox_rows(malmo)
        since = int(malmo.clock()) - 60
        await malmo.revoke_identity(since)  # ``keys revoke`` (the CLI in another process)

        def stockholm_applied() -> bool:
            return stockholm.trust().peer(MALMO).identity[-1].revoked_since == since

        await wait_until(stockholm_applied)
        async with (
            aiohttp.ClientSession() as session,
            session.get(operator_url(malmo, "/healthz")) as response,
        ):
            health = await response.json()
        assert response.status == 503
        assert health["keys"] == "identity_revoked"
        assert (await key_state(malmo))["identity_revoked_since"] == since
        # No KeyUpdate push: the new bundle (with the revocation) is only served, never pushed.
        assert await outbox_rows(malmo) == queued_before
    with pytest.raises(IdentityRevoked):
        await send(malmo, stockholm, accept(case_id, UNITS[MALMO]))
    assert await outbox_rows(malmo) == queued_before  # nothing queued
    kept = await stored(malmo)
    with pytest.raises(Overloaded):  # no receipt: the listener answers 503, the peer retries
        await signing_inbox(malmo).handle_batch(STOCKHOLM, [envelope])
    assert await stored(malmo) == kept
    with pytest.raises(IdentityRevoked):  # no checkpoint signed either
        await witness_for(malmo).offer(STOCKHOLM)
    # What the key signed after ``since`` and still waits is refused for good, and shown failed.
    assert await goteborg.accept_package(MALMO, malmo.package())
    assert statuses(await deliver_outbox(malmo, goteborg)) == [ErrorCode.REVOKED_KEY]
    (shown,) = [p for p in await malmo.outbox.status() if p.peer == GOTEBORG]
    assert {state.value: n for state, n in shown.counts.items() if n} == {"failed": 1}
    alerts = [r for r in caplog.records if "ALERT identity key revoked" in r.getMessage()]
    assert [r.levelno for r in alerts if r.name == "node.service"][:1] == [logging.ERROR]
    assert not [r for r in caplog.records if "rotation failed" in r.getMessage()]

    await replace_compromised_keys(malmo)  # ``keys replace``: signing again, with the new key
    assert malmo.identity_revoked_since() is None
    assert (await key_state(malmo))["identity_revoked_since"] is None
    await send(malmo, stockholm, accept(case_id, UNITS[MALMO]))
    assert await outbox_rows(malmo) == queued_before + 1


def test_keys_replace_refuses_without_yes() -> None:
    assert main(["keys", "replace", "--config", "x.toml"]) == 1
