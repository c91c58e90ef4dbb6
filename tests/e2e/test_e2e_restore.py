"""A node restored from a backup after its disk died: its keys taken back, nothing it received lost.

Three ``citynode serve`` processes over mutual TLS on loopback, case workers opening inquiries
through the case API. Göteborg's operator takes a backup while it serves; afterwards its peers
keep sending to it, one of its own case workers opens a case, and its encryption key is rotated
(the key-history log grows past the backup, and the peers fetch the longer log). Then Göteborg is
killed and its data directory deleted. The operators run **the commands of the runbook's
section 8, as the runbook lists them** (parsed from its ``sh`` blocks): ``restore``, ``keys
recover``, and ``outbox resend`` at both peers. The test checks what the runbook promises:

* the restored node refuses to start before ``keys recover`` (``restore_pending``);
* ``keys recover`` takes back the entries made since the backup, unchanged (Göteborg's log
  extends the copies its peers hold: no fork, no equivocation alarm anywhere) and replaces the
  encryption key whose private half was lost; the peers then seal to a key Göteborg holds;
* every case message the peers sent to Göteborg — before the backup, after it, and during the
  outage — is processed by the restored node exactly once;
* what Göteborg itself did after the backup is lost with it: the case its case worker opened is
  at Malmö (which received it) and not at Göteborg.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import uuid
from typing import Any

import aiohttp
import pytest
from e2e_support import wait_until
from sqlalchemy import text
from test_e2e_compromise import Operators, procedure
from test_e2e_rotation import CITIES, Traffic, caseworker_tokens, header, inquiry

from node.localnet import LocalFederation, LocalNetError
from node.storage.database import Database
from protocol import codec
from protocol.keylog import KeyLog, KeyLogEntry

RESTORED = "goteborg"
PEERS = ("stockholm", "malmo")
TRAFFIC_S = 3.0  # seconds of traffic before the backup, after it, and during the outage
RESEND_MARGIN_S = 60  # the runbook: resend from a little before the backup's time
WAIT_S = 60.0
TOWARDS_RESTORED = (
    ("stockholm", RESTORED),
    ("malmo", RESTORED),
    ("stockholm", "malmo"),
    ("malmo", "stockholm"),
)


async def scalar_rows(
    federation: LocalFederation, city: str, query: str, **params: object
) -> list[Any]:
    db = await Database.connect(federation.database_url(city))
    try:
        async with db.reading() as session:
            return list((await session.execute(text(query), params)).all())
    finally:
        await db.close()


async def held_log(federation: LocalFederation, city: str, of: str) -> KeyLog:
    """The copy of ``of``'s key-history log that ``city`` keeps (fetched through the keylogs
    route), or the empty log."""
    rows = await scalar_rows(federation, city, "SELECT log FROM peer_keylogs WHERE city = :c", c=of)
    if not rows:
        return KeyLog()
    data = rows[0][0]
    return KeyLog(codec.decode(data, tuple[KeyLogEntry, ...], max_bytes=len(data), what="log"))


async def held_size(federation: LocalFederation, city: str, of: str) -> int:
    return (await held_log(federation, city, of)).size


async def count_case(federation: LocalFederation, city: str, case_id: bytes) -> int:
    rows = await scalar_rows(
        federation, city, "SELECT count(*) FROM cases WHERE case_id = :c", c=case_id
    )
    return int(rows[0][0])


def field(doc: object, *path: str) -> object:
    """``doc[path[0]][path[1]]...`` of a command's JSON."""
    for key in path:
        assert isinstance(doc, dict), doc
        doc = doc[key]
    return doc


def number(value: object) -> int:
    assert isinstance(value, (int, float)), value
    return int(value)


async def own_log(federation: LocalFederation, city: str) -> KeyLog:
    rows = await scalar_rows(federation, city, 'SELECT entry FROM key_log ORDER BY "index"')
    return KeyLog(
        tuple(codec.decode(r[0], KeyLogEntry, max_bytes=len(r[0]), what="entry") for r in rows)
    )


async def case_messages_sent(federation: LocalFederation, sender: str, peer: str) -> set[bytes]:
    rows = await scalar_rows(
        federation,
        sender,
        "SELECT message_id FROM outbox WHERE peer = :p AND case_id IS NOT NULL",
        p=peer,
    )
    return {bytes(r[0]) for r in rows}


async def case_messages_received(
    federation: LocalFederation, city: str, sender: str
) -> list[bytes]:
    rows = await scalar_rows(
        federation,
        city,
        "SELECT message_id FROM inbox WHERE sender = :s AND case_id IS NOT NULL",
        s=sender,
    )
    return [bytes(r[0]) for r in rows]


async def undelivered(federation: LocalFederation, sender: str, peer: str) -> int:
    rows = await scalar_rows(
        federation,
        sender,
        "SELECT count(*) FROM outbox WHERE peer = :p AND state IN ('queued', 'sent')",
        p=peer,
    )
    return int(rows[0][0])


async def open_case(federation: LocalFederation, token: str, sender: str, recipient: str) -> bytes:
    """One inquiry through the case API; its case id."""
    body = inquiry(recipient, "Behöver boende (testärende efter säkerhetskopian).")
    url = f"{federation.api_url(sender)}/api/v1/cases"
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as response,
    ):
        assert response.status == 201, await response.text()
        return uuid.UUID(str((await response.json())["id"])).bytes


async def test_node_restored_from_backup_takes_its_keys_back_and_loses_no_message_sent_to_it(
    federation: LocalFederation,
) -> None:
    commands = procedure("8.")
    operators = Operators(federation)
    tokens = await caseworker_tokens(federation)
    federation.start_all()
    traffic = Traffic(federation, tokens)
    try:
        traffic.start()
        await asyncio.sleep(TRAFFIC_S)
        (backup,) = operators.steps(commands, "backup")
        taken = await operators.run(backup)
        taken_at = number(taken["taken_at"])
        taken_size = number(field(taken, "key_log", "size"))
        assert taken_size == (await own_log(federation, RESTORED)).size

        # After the backup Göteborg's case workers stop, but one case is opened there (it will
        # be lost with the disk); its peers go on sending to it; its encryption key is rotated.
        await traffic.stop()
        traffic.start(TOWARDS_RESTORED)
        lost_case = await open_case(federation, tokens[RESTORED], RESTORED, "malmo")
        await asyncio.to_thread(
            federation.citynode, RESTORED, "keys", "rotate", "--kind", "encryption"
        )
        grown = await own_log(federation, RESTORED)
        assert grown.size > taken_size
        for peer in PEERS:  # the peers fetch the longer log as their checkpoints show it
            await wait_until(
                lambda p=peer: held_size(federation, p, RESTORED),  # type: ignore[misc]
                lambda size: size >= grown.size,
                timeout_s=WAIT_S,
                what=f"{peer} holding Göteborg's grown key log",
            )
        await wait_until(
            lambda: count_case(federation, "malmo", lost_case),
            lambda n: n == 1,
            timeout_s=WAIT_S,
            what="malmo receiving the case opened after the backup",
        )
        await asyncio.sleep(TRAFFIC_S)

        # The disk dies; the peers queue for Göteborg meanwhile.
        federation.kill(RESTORED)
        shutil.rmtree(federation.data_dir(RESTORED))
        await asyncio.sleep(TRAFFIC_S)

        for step in operators.steps(commands, "restore"):
            restored = await operators.run(step)
            assert restored["taken_at"] == taken["taken_at"]
        federation.start(RESTORED)
        with pytest.raises(LocalNetError, match="restore_pending"):
            await asyncio.to_thread(federation.wait_healthy, RESTORED, 30.0)

        (recover,) = operators.steps(commands, "keys recover")
        recovered = await operators.run(recover)
        assert number(recovered["restored_size"]) == taken_size
        assert number(recovered["size"]) >= grown.size
        assert number(recovered["taken_back"]) == number(recovered["size"]) - taken_size
        assert recovered["encryption_replaced"] is True
        after = await own_log(federation, RESTORED)
        assert after.entries[: grown.size] == grown.entries  # taken back unchanged: no fork

        await asyncio.to_thread(federation.start_all)
        since = taken_at - RESEND_MARGIN_S
        operators.since = datetime.datetime.fromtimestamp(since, datetime.UTC).isoformat()
        for step in operators.steps(commands, "outbox resend"):
            await operators.run(step)
        await asyncio.sleep(TRAFFIC_S)  # traffic to the restored node, sealed to its new key
        await traffic.stop()
        for peer in PEERS:
            await wait_until(
                lambda p=peer: undelivered(federation, p, RESTORED),  # type: ignore[misc]
                lambda n: n == 0,
                timeout_s=WAIT_S,
                what=f"{peer}'s outbox to Göteborg drained",
            )
    finally:
        await traffic.stop()

    # Every case message the peers sent to Göteborg, processed there exactly once.
    for peer in PEERS:
        sent = await case_messages_sent(federation, peer, RESTORED)
        received = await case_messages_received(federation, RESTORED, peer)
        assert len(received) == len(set(received)), f"a message from {peer} processed twice"
        assert set(received) == sent, f"messages from {peer} lost or unknown"
        assert traffic.opened[peer, RESTORED] > 0
    # What Göteborg did after the backup is lost with it (the runbook says so).
    assert await count_case(federation, RESTORED, lost_case) == 0
    # No fork: Göteborg's log extends what its peers hold, and nobody raised an alarm.
    final = await own_log(federation, RESTORED)
    for peer in PEERS:
        copy = await held_log(federation, peer, RESTORED)
        assert final.entries[: copy.size] == copy.entries
    for city in CITIES:
        shown = await asyncio.to_thread(federation.citynode, city, "keys", "show")
        assert field(shown, "key_transparency", "status") == "ok", city
    # The peers seal to an encryption key the restored Göteborg holds.
    shown = await asyncio.to_thread(federation.citynode, RESTORED, "keys", "show")
    held = {str(k["key_id"]) for k in shown["encryption_keys"]}
    for peer in PEERS:
        rows = await scalar_rows(
            federation,
            peer,
            "SELECT envelope FROM outbox WHERE peer = :p ORDER BY seq DESC LIMIT 1",
            p=RESTORED,
        )
        assert header(bytes(rows[0][0])).recipient_key_id.hex() in held
