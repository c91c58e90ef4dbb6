"""Helpers of the storage tests: a hand-moved clock, backends, ids and envelopes.

Imported by ``conftest.py`` and the test modules (``from storage_fixtures import ...``); the
name is unique so that it cannot clash with another test directory's helpers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from node.storage.database import Database
from node.storage.inbox_store import AcceptOutcome, ApplyInTransaction, InboxStore
from node.storage.schema import Base
from protocol import codec
from protocol.keys import KEY_ID_BYTES
from protocol.messages import Inquiry, KeyUpdate, Need, ThreatLevel
from protocol.sealing import MESSAGE_ID_BYTES, PROTOCOL_VERSION, SUITE_V1, Header, OpenedEnvelope

PG_URL_ENV = "CITYNODE_TEST_PG_URL"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, the start of the extended agreement period
DATA_KEY = bytes(range(32))


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """One database backend under test, able to (re)open the same database."""

    name: str
    url: str
    schema: str | None = None
    files: Path | None = None
    opened: list[Database] = field(default_factory=list)

    async def open(self) -> Database:
        database = await Database.connect(self.url, schema=self.schema)
        self.opened.append(database)
        return database

    def raw_bytes(self) -> bytes:
        """Every byte of the SQLite database and its WAL (what a stolen dump would hold)."""
        assert self.files is not None
        return b"".join(
            p.read_bytes() for p in sorted(self.files.parent.glob(self.files.name + "*"))
        )


def case_id(n: int) -> bytes:
    """A recognisable 16-byte case id."""
    return n.to_bytes(2, "big") * 8


def message_id(n: int) -> bytes:
    """A recognisable 16-byte message id."""
    return b"M" + n.to_bytes(MESSAGE_ID_BYTES - 1, "big")


def inquiry(case: bytes, summary: str = "Behöver boende och stöd i öppenvård.") -> Inquiry:
    return Inquiry(
        case_id=case,
        from_unit="socialnamnden",
        to_unit=None,
        threat_level=ThreatLevel.MODERATE,
        police_consulted_on=None,
        consent=True,
        needs=(Need.HOUSING, Need.TREATMENT),
        summary=summary,
        wished_start=None,
    )


def key_update() -> KeyUpdate:
    return KeyUpdate(bundle=b"signed key bundle bytes")


def opened_envelope(
    message: Inquiry | KeyUpdate,
    *,
    sender: str = "stockholm",
    mid: bytes | None = None,
    timestamp: float = T0,
) -> OpenedEnvelope:
    """An envelope as ``open_envelope`` would return it (the store never re-verifies it)."""
    header = Header(
        version=PROTOCOL_VERSION,
        suite=SUITE_V1,
        sender=sender,
        recipient="goteborg",
        sender_key_id=b"\x01" * KEY_ID_BYTES,
        recipient_key_id=b"\x02" * KEY_ID_BYTES,
        recipient_key_epoch=1,
        agreement_version=3,
        message_id=mid or message_id(1),
        timestamp=int(timestamp),
    )
    header_bytes = codec.encode(header)
    body_bytes = codec.encode(message)
    signature = hashlib.sha512(header_bytes + body_bytes).digest()  # 64 bytes, stands in
    return OpenedEnvelope(
        header=header,
        header_bytes=header_bytes,
        body_bytes=body_bytes,
        signature=signature,
        message=message,
        envelope_hash=hashlib.sha256(header_bytes + body_bytes + signature).digest(),
    )


def receipt_for_test(opened: OpenedEnvelope) -> bytes:
    """Stands in for the signed receipt (the inbox stores it as given)."""
    return b"receipt:" + opened.header.message_id


async def inbox_accept(
    inbox: InboxStore,
    opened: OpenedEnvelope,
    *,
    received_at: float = T0,
    apply: ApplyInTransaction | None = None,
) -> AcceptOutcome:
    """Accept an envelope with a stand-in receipt."""
    return await inbox.accept(
        opened, receipt=receipt_for_test(opened), received_at=received_at, apply=apply
    )


async def logical_dump(db: Database) -> bytes:
    """Every value of every table, concatenated: what a database dump reveals."""
    parts: list[bytes] = []
    async with db.reading() as s:
        for table in Base.metadata.sorted_tables:
            for row in (await s.execute(table.select())).all():
                for value in row:
                    if isinstance(value, bytes):
                        parts.append(value)
                    elif value is not None:
                        parts.append(str(value).encode())
    return b"\n".join(parts)
