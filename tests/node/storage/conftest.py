"""Fixtures of the storage tests: every store test runs on SQLite and on PostgreSQL.

SQLite uses a file in ``tmp_path``. PostgreSQL uses the server in ``CITYNODE_TEST_PG_URL``, with a
fresh schema per test, dropped afterwards; without the variable those cases are skipped, saying
why. ``backend.open()`` opens the same database again, for restart tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from storage_fixtures import DATA_KEY, PG_URL_ENV, Backend, FakeClock  # noqa: E402

from node.storage.database import Database  # noqa: E402
from node.storage.vault import CaseVault  # noqa: E402


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once; each test starts from a copy (migrating costs ~0.1 s)."""
    path = tmp_path_factory.mktemp("template") / "node.sqlite3"

    async def build() -> None:
        database = await Database.connect(f"sqlite+aiosqlite:///{path}")
        await database.migrate()
        await database.close()  # the last connection checkpoints the WAL into the file

    asyncio.run(build())
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "node.sqlite3"
        shutil.copyfile(sqlite_template, path)
        path.chmod(0o600)
        chosen = Backend("sqlite", f"sqlite+aiosqlite:///{path}", files=path)
    else:
        url = os.environ.get(PG_URL_ENV)
        if not url:
            pytest.skip(f"{PG_URL_ENV} is not set: PostgreSQL storage tests need a server")
        chosen = Backend("postgresql", url, schema=f"citynode_test_{uuid.uuid4().hex[:16]}")
    yield chosen
    if chosen.schema is not None:
        await _drop_schema(chosen)
    for database in chosen.opened:
        await database.close()


async def _drop_schema(backend: Backend) -> None:
    drop = text(f'DROP SCHEMA IF EXISTS "{backend.schema}" CASCADE')
    if backend.opened:  # reuse an open pool: a new connection costs more than the drop
        async with backend.opened[-1].engine.begin() as connection:
            await connection.execute(drop)
        return
    engine = create_async_engine(backend.url)
    async with engine.begin() as connection:
        await connection.execute(drop)
    await engine.dispose()


@pytest.fixture
async def db(backend: Backend) -> Database:
    """The backend's database, at the newest schema (a copy of the template on SQLite)."""
    database = await backend.open()
    await database.migrate()
    return database


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def vault() -> CaseVault:
    return CaseVault(DATA_KEY)
