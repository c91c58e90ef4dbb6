"""Documents travel with a referral, end to end, through the case API of two live nodes.

Stockholm's case worker attaches a document to an accepted case; the referral carries its sealed
reference; Göteborg fetches the stream from Stockholm in the background, verifies it, and its case
worker downloads it byte-identical, with a purpose. A stream changed at rest is refused; a
document above the limit is refused while it is read; a case worker of another unit is not told
the case exists; a 64 MiB upload is encrypted with flat memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from api_fixtures import API, LiveFederation, inquiry_body, referral_body
from sqlalchemy import select

from node.access import Principal, UserRole
from node.api.app import create_case_api
from node.audit import AuditTrail
from node.cases.document_service import DocumentService, DocumentTooLarge, Upload
from node.cases.service import CaseService
from node.storage.schema import AuditRow
from node.users import UserStore

pytestmark = pytest.mark.asyncio(loop_scope="module")

PURPOSE = {"purpose": "planering av insatser"}
# Not a multiple of the 64 KiB chunk: the final chunk is a short one.
DOCUMENT = hashlib.shake_256(b"fiktiv hotbedomning").digest(300_000)


async def _accepted_case(live: LiveFederation) -> str:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    assert opened.status == 201, opened.body
    case_id = str(opened.body["id"])
    await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    accepted = await live.call(
        "goteborg", "greta", "POST", f"/cases/{case_id}/reply", json={"decision": "accept"}
    )
    assert accepted.status == 200, accepted.body
    await live.wait_state("stockholm", "anna", case_id, "accepted")
    return case_id


async def _upload(live: LiveFederation, user: str, case_id: str, data: bytes, **params: str) -> Any:
    return await live.call(
        "stockholm",
        user,
        "POST",
        f"/cases/{case_id}/attachments",
        data=data,
        headers={"Content-Type": "application/pdf"},
        params={"filename": "Hotbedömning.pdf", **params},
    )


async def _wait_verified(live: LiveFederation, case_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20.0
    listed = None
    while time.monotonic() < deadline:
        listed = await live.call("goteborg", "greta", "GET", f"/cases/{case_id}/attachments")
        if listed.status == 200 and listed.body["documents"]:
            document = listed.body["documents"][0]
            if document["state"] == "verified":
                return dict(document)
        await asyncio.sleep(0.1)
    raise AssertionError(f"the document was never verified at goteborg: {listed}")


async def _download(live: LiveFederation, city: str, user: str, case_id: str, doc: str) -> Any:
    url = live.url(city, f"/cases/{case_id}/attachments/{doc}")
    headers = {"Authorization": f"Bearer {live.tokens[city][user]}"}
    async with live.session.get(url, headers=headers, params=PURPOSE) as response:
        return response.status, response.headers, await response.read()


async def test_a_document_travels_with_the_referral_and_arrives_byte_identical(
    live: LiveFederation,
) -> None:
    case_id = await _accepted_case(live)
    uploaded = await _upload(live, "anna", case_id, DOCUMENT)
    assert uploaded.status == 201, uploaded.body
    assert uploaded.body["size"] == len(DOCUMENT)
    assert uploaded.body["state"] == "offered"
    assert "key" not in uploaded.body
    doc = uploaded.body["id"]
    # Only the encrypted stream is on disk at home, offered to the case's peer alone.
    stream = live.nodes["stockholm"].attachments.outgoing_path("goteborg", bytes.fromhex(doc))
    assert DOCUMENT[:4096] not in stream.read_bytes()

    referred = await live.call(
        "stockholm", "anna", "POST", f"/cases/{case_id}/referral", json=referral_body()
    )
    assert referred.status == 200, referred.body
    late = await _upload(live, "anna", case_id, b"for sent")
    assert late.status == 409  # documents go with the referral, not after it

    document = await _wait_verified(live, case_id)
    assert document["id"] == doc
    assert document["filename"] == "Hotbedömning.pdf"
    assert document["media_type"] == "application/pdf"
    assert document["direction"] == "received"

    status, headers, body = await _download(live, "goteborg", "greta", case_id, doc)
    assert status == 200
    assert body == DOCUMENT
    assert headers["Content-Type"] == "application/pdf"
    assert "Hotbed%C3%B6mning.pdf" in headers["Content-Disposition"]
    async with live.nodes["goteborg"].db.reading() as s:
        reads = (await s.scalars(select(AuditRow).where(AuditRow.action == "read_document"))).all()
    assert any(r.purpose == PURPOSE["purpose"] and r.outcome == "ok" for r in reads)

    # The home case worker can read back what was sent too.
    status, _, body = await _download(live, "stockholm", "anna", case_id, doc)
    assert (status, body) == (200, DOCUMENT)

    # A byte flipped in the received stream at rest: refused before anything is sent.
    received = live.nodes["goteborg"].attachments.received("stockholm", bytes.fromhex(doc))
    data = bytearray(received.read_bytes())
    data[len(data) // 2] ^= 0x01
    received.write_bytes(bytes(data))
    refused = await live.call(
        "goteborg", "greta", "GET", f"/cases/{case_id}/attachments/{doc}", params=PURPOSE
    )
    assert refused.status == 409
    assert refused.code == "attachment_corrupt"
    # The receiving node fetches it again from home and verifies it anew.
    await _wait_verified(live, case_id)
    status, _, body = await _download(live, "goteborg", "greta", case_id, doc)
    assert (status, body) == (200, DOCUMENT)


async def test_a_document_read_needs_a_purpose_and_the_case_unit(live: LiveFederation) -> None:
    case_id = await _accepted_case(live)
    uploaded = await _upload(live, "anna", case_id, b"%PDF-1.7 fiktiv")
    assert uploaded.status == 201
    doc = uploaded.body["id"]
    path = f"/cases/{case_id}/attachments/{doc}"
    no_purpose = await live.call("stockholm", "anna", "GET", path)
    assert (no_purpose.status, no_purpose.code) == (422, "invalid_purpose")
    other_unit = await live.call("stockholm", "jonas", "GET", path, params=PURPOSE)
    assert (other_unit.status, other_unit.code) == (404, "unknown_case")
    other_upload = await _upload(live, "jonas", case_id, b"x")
    assert (other_upload.status, other_upload.code) == (404, "unknown_case")
    other_list = await live.call("stockholm", "jonas", "GET", f"/cases/{case_id}/attachments")
    assert other_list.status == 404
    auditor = await _upload(live, "rut", case_id, b"x")
    assert auditor.status == 403
    bad_name = await _upload(live, "anna", case_id, b"x", filename="../etc/passwd")
    assert (bad_name.status, bad_name.code) == (422, "invalid_field")
    listed = await live.call("stockholm", "anna", "GET", f"/cases/{case_id}/attachments")
    assert [d["id"] for d in listed.body["documents"]] == [doc]


async def _small_limit_api(live: LiveFederation, limit: int) -> AsyncIterator[str]:
    node = live.nodes["stockholm"]
    audit = AuditTrail(node.db, node.clock)
    documents = DocumentService(
        city="stockholm",
        records=node.documents,
        store=node.attachments,
        audit=audit,
        limits=node.config.limits.protocol,
        max_document_bytes=limit,
    )
    service = CaseService(
        city="stockholm",
        db=node.db,
        cases=node.cases,
        journal=node.journal,
        outgoing=node.outgoing(lambda _peer: None),
        audit=audit,
        trust=node.trust,
        clock=node.clock,
    )
    app = web.Application()
    app.add_subapp(
        API + "/",
        create_case_api(
            service,
            UserStore(node.db, node.clock, audit=audit),
            city="stockholm",
            max_body_bytes=1024,
            clock=node.clock,
            documents=documents,
        ),
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_document_above_the_limit_is_refused_while_it_is_read(
    live: LiveFederation,
) -> None:
    case_id = await _accepted_case(live)
    limit = 256 * 1024
    sent = 0

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        nonlocal sent
        piece = bytes(64 * 1024)
        for _ in range(8):  # 512 KiB against a 256 KiB limit
            sent += len(piece)
            yield piece

    async for base in _small_limit_api(live, limit):
        url = f"{base}{API}/cases/{case_id}/attachments"
        headers = {"Authorization": f"Bearer {live.tokens['stockholm']['anna']}"}
        try:
            async with live.session.post(
                url, data=body(), headers=headers, params={"filename": "stor.bin"}
            ) as response:
                assert response.status == 413
                assert (await response.json())["error"]["code"] == "oversized"
        except aiohttp.ClientError:
            pass  # the server may answer and close before the client has sent everything
    listed = await live.call("stockholm", "anna", "GET", f"/cases/{case_id}/attachments")
    assert listed.body["documents"] == []
    out = live.nodes["stockholm"].config.data_dir / "attachments" / "out" / "goteborg"
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp")]


async def test_a_declared_length_above_the_limit_is_refused_before_reading(
    live: LiveFederation,
) -> None:
    case_id = await _accepted_case(live)
    node = live.nodes["stockholm"]
    documents = DocumentService(
        city="stockholm",
        records=node.documents,
        store=node.attachments,
        audit=AuditTrail(node.db, node.clock),
        limits=node.config.limits.protocol,
        max_document_bytes=1024,
    )

    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    upload = Upload(filename="a.pdf", media_type="application/pdf", declared_bytes=2048,
                    pieces=never())  # fmt: skip
    anna = Principal("anna", UserRole.CASEWORKER, "socialnamnden")
    with pytest.raises(DocumentTooLarge):
        await documents.attach(anna, bytes.fromhex(case_id.replace("-", "")), upload)


async def test_a_64_mib_upload_is_encrypted_with_flat_memory(live: LiveFederation) -> None:
    case_id = await _accepted_case(live)
    piece = bytes(range(256)) * 256  # 64 KiB, reused: the client holds no copy of the whole

    async def body() -> AsyncIterator[bytes]:
        for _ in range(1024):
            yield piece

    tracemalloc.start()
    try:
        url = live.url("stockholm", f"/cases/{case_id}/attachments")
        headers = {"Authorization": f"Bearer {live.tokens['stockholm']['anna']}"}
        async with live.session.post(
            url, data=body(), headers=headers, params={"filename": "stor.bin"}
        ) as response:
            assert response.status == 201, await response.text()
            size = (await response.json())["size"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size == 64 * 1024 * 1024
    assert peak < 8 * 1024 * 1024, peak
