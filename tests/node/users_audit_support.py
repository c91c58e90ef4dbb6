"""Helpers of the user-store and audit-trail tests: a migrated database on either backend, a clock.

Each test module migrates one database per backend (:func:`build_template`): SQLite, a file each
test copies; PostgreSQL (the server in ``CITYNODE_TEST_PG_URL``), a schema of the module's own,
emptied before each test and dropped after the module. Without the variable the PostgreSQL cases
are skipped, saying why.

Imported as ``from users_audit_support import ...`` (the name is unique among test directories).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from node.storage.database import Database

PG_URL_ENV: Final = "CITYNODE_TEST_PG_URL"
T0: Final = 1_767_225_600.0  # 2026-01-01T00:00:00Z
BACKENDS: Final = ["sqlite", "postgresql"]
WRITTEN_TABLES: Final = ("audit_log", "tokens", "users", "peers")


@dataclass
class FakeClock:
    """A clock the test moves by hand."""

    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Opened:
    """A migrated database, and how to open another connection pool to the same one."""

    db: Database
    url: str
    schema: str | None
    file: Path | None

    async def another(self) -> Database:
        """A second engine on the same database (as a second process would have)."""
        return await Database.connect(self.url, schema=self.schema)

    def raw_bytes(self) -> bytes:
        """Every byte of the SQLite file and its WAL: what a stolen copy would hold."""
        assert self.file is not None
        return b"".join(p.read_bytes() for p in sorted(self.file.parent.glob(self.file.name + "*")))


@dataclass(frozen=True)
class Template:
    """A database migrated once per test module; each test starts from a clean copy of it."""

    kind: str
    url: str
    schema: str | None
    file: Path | None


def build_template(kind: str, directory: Path) -> Template:
    """Create and migrate the module's database of ``kind`` (call outside an event loop).

    Skips, saying why, when ``kind`` is PostgreSQL and no server is configured.
    """
    if kind == "sqlite":
        file = directory / "template.sqlite3"
        template = Template(kind, f"sqlite+aiosqlite:///{file}", None, file)
    else:
        url = os.environ.get(PG_URL_ENV)
        if not url:
            pytest.skip(f"{PG_URL_ENV} is not set: the PostgreSQL cases need a server")
        template = Template(kind, url, f"citynode_test_{uuid.uuid4().hex[:16]}", None)

    async def migrate() -> None:
        db = await Database.connect(template.url, schema=template.schema)
        try:
            await db.migrate()
        finally:
            await db.close()  # on SQLite the last connection checkpoints the WAL into the file

    asyncio.run(migrate())
    return template


def drop_template(template: Template) -> None:
    """Drop the module's PostgreSQL schema (the SQLite file goes with its temporary directory)."""
    if template.schema is None:
        return

    async def drop() -> None:
        engine = create_async_engine(template.url)
        async with engine.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "{template.schema}" CASCADE'))
        await engine.dispose()

    asyncio.run(drop())


@contextlib.asynccontextmanager
async def fresh_database(template: Template, tmp_path: Path) -> AsyncIterator[Opened]:
    """A clean database at the newest schema: a copy of the SQLite file, or the module's
    PostgreSQL schema with the tables these tests write emptied."""
    url, file = template.url, None
    if template.file is not None:
        file = tmp_path / "node.sqlite3"
        shutil.copyfile(template.file, file)
        file.chmod(0o600)
        url = f"sqlite+aiosqlite:///{file}"
    db = await Database.connect(url, schema=template.schema)
    try:
        if template.schema is not None:
            async with db.engine.begin() as connection:
                await connection.execute(text(f"TRUNCATE {', '.join(WRITTEN_TABLES)} CASCADE"))
        yield Opened(db, url, template.schema, file)
    finally:
        await db.close()
