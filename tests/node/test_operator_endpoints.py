"""The operator endpoints of a running node: ``/healthz`` and ``/metrics``, from ``serve`` itself.

Nodes are provisioned afresh on free loopback ports (the agreement names their endpoints) and run
with :func:`node.serving.serve` in-process: real federation listeners over mutual TLS, real
sender loops and heartbeats, real databases. Malmö is a member that is not running, so
Stockholm's messages to it fail and are retried.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from node_fixtures import (
    CITIES,
    PERSONAL_STRINGS,
    Federation,
    fresh_federation,
    inquiry,
    new_case_id,
    open_case,
    operator_url,
    personal_data_in,
    referral,
    send,
    serving,
    stored,
    tls_session,
    wait_until,
)
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from node.delivery import DeliveryState
from node.federation import wire
from node.service import Node
from protocol.cases import CaseState

HOME, RECEIVING, DOWN = CITIES


@pytest.fixture(autouse=True)
def _capture_every_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


@pytest.fixture
async def fed(tmp_path: Path) -> AsyncIterator[Federation]:
    """The trio on SQLite, on free loopback ports."""
    async with fresh_federation(tmp_path / "fed", listening=True) as fed:
        yield fed


async def get_json(node: Node, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(operator_url(node, path)) as r:
        return r.status, await r.json()


async def get_text(node: Node, path: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(operator_url(node, path)) as r:
        assert r.status == 200
        return await r.text()


def sample(node: Node, name: str, **labels: str) -> float:
    return node.metrics.registry.get_sample_value(name, labels) or 0.0


def retries(node: Node, peer: str) -> float:
    """``citynode_delivery_retries_total{peer}``."""
    return sample(node, "citynode_delivery_retries_total", peer=peer)


def peer_up(node: Node, peer: str) -> float | None:
    """``citynode_peer_up{peer}``, or ``None`` before the first exchange with the peer."""
    return node.metrics.registry.get_sample_value("citynode_peer_up", {"peer": peer})


def metric(page: str, name: str, **labels: str) -> float:
    """The value of one sample of a Prometheus text page (labels in the page's sorted order)."""
    rendered = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in page.splitlines():
        series, _, value = line.rpartition(" ")
        if series == f"{name}{{{rendered}}}":
            return float(value)
    raise AssertionError(f"no sample {name}{{{rendered}}} in the metrics page")


_LABEL = re.compile(r'(\w+)="([^"]*)"')
_STATES = {state.value for state in DeliveryState}


def assert_labels_are_vocabulary(page: str) -> None:
    """Every label of every sample is a city, a delivery state, an error code or a bucket."""
    for labels in re.findall(r"\{([^}]*)\}", page):
        for key, value in _LABEL.findall(labels):
            if key == "peer":
                assert value in (*CITIES, "unknown"), value
            elif key == "state":
                assert value in _STATES, value
            elif key == "code":
                assert re.fullmatch(r"[a-z_]{1,40}", value), value
            else:
                assert key == "le", key
                float(value)


# --- /healthz -----------------------------------------------------------------------------------


async def test_healthz_reports_the_database_the_agreement_and_each_peer(fed: Federation) -> None:
    stockholm = await fed.open(HOME)
    goteborg = await fed.open(RECEIVING)
    await send(stockholm, goteborg, inquiry(new_case_id()))
    # A message for Malmö, which is down: its sender loop fails and backs off.
    await send(stockholm, await fed.open(DOWN), inquiry(new_case_id()))

    async with serving(stockholm, goteborg):

        async def malmo_failed() -> bool:
            _, body = await get_json(stockholm, "/healthz")
            return bool(body["peers"][DOWN]["failures"] >= 1)

        await wait_until(lambda: peer_up(stockholm, RECEIVING) == 1.0)
        await wait_until(malmo_failed)
        status, body = await get_json(stockholm, "/healthz")

    assert status == 200
    assert body["status"] == "ok"
    assert body["city"] == HOME
    assert body["database"] == "ok"
    assert body["agreement_version"] == 1
    assert body["peers"][RECEIVING] == {"up": True, "failures": 0}
    assert body["peers"][DOWN]["up"] is False
    assert body["peers"][DOWN]["failures"] >= 1


async def test_healthz_answers_503_when_the_sqlite_database_is_gone(fed: Federation) -> None:
    stockholm = await fed.open(HOME)
    database = stockholm.config.data_dir / "citynode.sqlite3"
    async with serving(stockholm):
        status, body = await get_json(stockholm, "/healthz")
        assert (status, body["database"]) == (200, "ok")

        await stockholm.db.engine.dispose()  # drop the pooled connections to the file
        shutil.move(database, database.with_suffix(".moved"))
        database.mkdir()  # a directory where the file was: nothing can open it

        status, body = await get_json(stockholm, "/healthz")
        assert status == 503
        assert body["status"] == "degraded"
        assert body["database"] == "storage_unavailable"
        assert body["agreement_version"] == 1
        database.rmdir()
        shutil.move(database.with_suffix(".moved"), database)


async def test_postgresql_pair_delivers_over_mutual_tls_then_reports_its_lost_database(
    tmp_path: Path,
) -> None:
    cities = (HOME, RECEIVING)
    pair = fresh_federation(tmp_path / "fed", cities, backend="postgresql", listening=True)
    async with pair as fed:
        stockholm, goteborg = await fed.open(HOME), await fed.open(RECEIVING)
        case_id = new_case_id()
        await send(stockholm, goteborg, inquiry(case_id))
        async with serving(stockholm, goteborg):
            await wait_until(lambda: case_exists(goteborg, case_id))
            status, body = await get_json(stockholm, "/healthz")
            assert (status, body["database"]) == (200, "ok")
            assert body["peers"][RECEIVING] == {"up": True, "failures": 0}

            await _drop_database(stockholm.config.database.url)

            status, body = await get_json(stockholm, "/healthz")
        assert status == 503
        assert body["status"] == "degraded"
        assert body["database"] == "storage_unavailable"


async def case_exists(node: Node, case_id: bytes) -> bool:
    return await node.cases.get(case_id) is not None


async def _drop_database(url: str) -> None:
    """Drop the node's database under it, closing its connections (what an outage looks like)."""
    parsed = make_url(url)
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE "{parsed.database}" WITH (FORCE)'))
    await admin.dispose()


# --- /metrics -----------------------------------------------------------------------------------


async def test_metrics_after_a_referral_show_the_delivery_and_no_id_or_personal_data(
    fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    stockholm = await fed.open(HOME)
    goteborg = await fed.open(RECEIVING)
    case_id = new_case_id()
    await open_case(stockholm, goteborg, case_id, accepted=True)
    await send(stockholm, goteborg, referral(case_id, year=stockholm.today().year))
    [queued] = await stockholm.outbox.next_batch(RECEIVING, 10, stockholm.clock())
    referral_id = queued.message_id
    malmo_case = new_case_id()
    await send(stockholm, await fed.open(DOWN), inquiry(malmo_case))

    async with serving(stockholm, goteborg):

        async def referral_receipted() -> bool:
            entry = await stockholm.outbox.entry(referral_id)
            return entry is not None and entry.state == DeliveryState.RECEIPTED

        await wait_until(referral_receipted)
        await wait_until(lambda: retries(stockholm, DOWN) >= 1)
        # A bad request at Göteborg's federation listener, from Stockholm's certificate.
        async with (
            tls_session(stockholm, goteborg) as session,
            session.post(
                f"https://127.0.0.1:{goteborg.config.federation.port}{wire.INBOX_PATH}",
                data=wire.encode_batch([b"\xc1 not an envelope"]),
                headers={"Content-Type": wire.MSGPACK},
            ) as response,
        ):
            assert response.status == 200
        home_text = await get_text(stockholm, "/metrics")
        receiving_text = await get_text(goteborg, "/metrics")

    record = await goteborg.cases.get(case_id)
    assert record is not None
    assert record.state == CaseState.REFERRED
    # Queue depth per peer and state, the latency histogram, retries, refusals by code.
    for peer in (RECEIVING, DOWN):
        for state in ("queued", "sent", "failed", "expired"):
            assert metric(home_text, "citynode_outbox_queue_depth", peer=peer, state=state) >= 0
    undelivered = [
        metric(home_text, "citynode_outbox_queue_depth", peer=DOWN, state=state)
        for state in ("queued", "sent")
    ]
    assert sum(undelivered) == 1
    assert metric(home_text, "citynode_delivery_latency_seconds_count", peer=RECEIVING) >= 1
    assert metric(home_text, "citynode_delivery_latency_seconds_bucket", le="+Inf", peer=RECEIVING)
    assert metric(home_text, "citynode_delivery_retries_total", peer=DOWN) >= 1
    refused = metric(receiving_text, "citynode_refusals_total", code="malformed", peer=HOME)
    assert refused == 1
    assert metric(receiving_text, "citynode_inbox_accepted_total", peer=HOME) >= 1
    # Nothing that names a case, a message or a person.
    received = await goteborg.inbox.messages_for_case(case_id)
    received += await stockholm.inbox.messages_for_case(case_id)
    forbidden = [case_id.hex(), malmo_case.hex(), referral_id.hex()]
    forbidden += [message.message_id.hex() for message in received]
    forbidden += PERSONAL_STRINGS
    for page in (home_text, receiving_text):
        for value in forbidden:
            assert value not in page
        assert_labels_are_vocabulary(page)
    assert personal_data_in(caplog.records) == []
    assert (await stored(goteborg)).inbox == 2  # the inquiry and the referral
