"""The database layer: migrations on both backends, durability settings, errors without secrets."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from storage_fixtures import Backend

from node.storage.database import (
    Database,
    StorageConflict,
    StorageError,
    alembic_config,
    head_revision,
    known_revisions,
)
from node.storage.schema import Base, PeerRow


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _step(connection: Connection, direction: str, revision: str) -> None:
    config = alembic_config(connection)
    if direction == "up":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)


async def test_every_migration_runs_up_and_down_and_head_matches_the_models(
    backend: Backend,
) -> None:
    database = await backend.open()
    if backend.schema is not None:
        async with database.engine.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{backend.schema}"'))
    if backend.files is not None:  # SQLite starts as a copy of the migrated template: empty it
        async with database.engine.begin() as connection:
            await connection.run_sync(_step, "down", "base")
        assert await database.current_revision() is None
    script = ScriptDirectory.from_config(alembic_config(None))
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert revisions[-1] == head_revision()
    assert known_revisions() == frozenset(revisions)  # read without Alembic, the same answer

    for revision in revisions:  # up, one revision at a time
        async with database.engine.begin() as connection:
            await connection.run_sync(_step, "up", revision)
        assert await database.current_revision() == revision
    async with database.engine.connect() as connection:
        assert await connection.run_sync(_schema_diff) == []
        assert set(Base.metadata.tables) <= await connection.run_sync(_tables)

    for previous in [*reversed(revisions[:-1]), "base"]:  # and down again
        async with database.engine.begin() as connection:
            await connection.run_sync(_step, "down", previous)
    assert await database.current_revision() is None
    async with database.engine.connect() as connection:
        assert await connection.run_sync(_tables) <= {"alembic_version"}

    assert await database.migrate() == (None, head_revision())  # and up again, in one go


async def test_migrate_on_an_up_to_date_database_changes_nothing(db: Database) -> None:
    assert await db.migrate() == (head_revision(), head_revision())


async def test_schema_survives_a_restart(backend: Backend, db: Database) -> None:
    async with db.transaction() as s:
        s.add(PeerRow(city="malmo", endpoint="https://malmo.example:8443"))
    await db.close()
    backend.opened.remove(db)

    reopened = await backend.open()
    assert await reopened.current_revision() == head_revision()
    async with reopened.reading() as s:
        row = await s.get(PeerRow, "malmo")
    assert row is not None
    assert row.endpoint == "https://malmo.example:8443"


async def test_a_failed_transaction_keeps_nothing(db: Database) -> None:
    async def fail_after_writing() -> None:
        async with db.transaction() as s:
            s.add(PeerRow(city="malmo", endpoint="https://malmo.example:8443"))
            await s.flush()
            raise RuntimeError("the caller's own failure")

    with pytest.raises(RuntimeError):
        await fail_after_writing()
    async with db.reading() as s:
        assert await s.get(PeerRow, "malmo") is None


async def test_a_duplicate_key_is_a_storage_conflict_not_a_library_error(db: Database) -> None:
    async with db.transaction() as s:
        s.add(PeerRow(city="malmo", endpoint="https://a.example"))
    with pytest.raises(StorageConflict) as caught:
        async with db.transaction() as s:
            s.add(PeerRow(city="malmo", endpoint="https://b.example"))
    assert caught.value.code == "storage_conflict"
    assert "https://b.example" not in caught.value.message
    assert "https://b.example" not in str(caught.value.__cause__)  # hide_parameters


async def test_health_check_answers(db: Database) -> None:
    await db.check()


async def test_sqlite_database_is_private_durable_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "node.sqlite3"
    database = await Database.connect(f"sqlite+aiosqlite:///{path}")
    try:
        await database.migrate()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        async with database.engine.connect() as connection:
            pragmas = {
                name: (await connection.exec_driver_sql(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        assert pragmas["journal_mode"] == "wal"
        assert pragmas["synchronous"] == 2  # FULL
        assert pragmas["foreign_keys"] == 1
        assert pragmas["busy_timeout"] >= 1000
    finally:
        await database.close()


async def test_concurrent_sqlite_writers_wait_for_each_other_instead_of_failing(
    tmp_path: Path,
) -> None:
    database = await Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'node.sqlite3'}")
    try:
        await database.migrate()

        async def read_then_write(n: int) -> None:
            async with database.transaction() as s:
                await s.get(PeerRow, f"city-{n}")  # read first: a deferred BEGIN would fail here
                await asyncio.sleep(0)
                s.add(PeerRow(city=f"city-{n}", endpoint="https://x.example"))

        await asyncio.gather(*(read_then_write(n) for n in range(12)))
        async with database.reading() as s:
            count = (await s.execute(text("SELECT count(*) FROM peers"))).scalar()
        assert count == 12
    finally:
        await database.close()


async def test_unreachable_postgres_is_a_storage_error_without_the_password() -> None:
    url = "postgresql+asyncpg://citynode:Hemligt-L0senord@127.0.0.1:1/citynode"
    with pytest.raises(StorageError) as caught:
        await Database.connect(url)
    assert caught.value.code == "storage_unavailable"
    assert "Hemligt-L0senord" not in caught.value.message
    assert "Hemligt-L0senord" not in repr(caught.value)
    assert "***" in caught.value.message


async def test_missing_sqlite_directory_is_a_clear_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="database file"):
        await Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'node.sqlite3'}")


@pytest.mark.parametrize(
    "url",
    ["mysql+aiomysql://u:p@h/db", "sqlite:///tmp/sync-driver.sqlite3", "not a url"],
)
async def test_unsupported_database_urls_are_refused(url: str) -> None:
    with pytest.raises(StorageError):
        await Database.connect(url)


async def test_a_schema_name_that_could_inject_sql_is_refused() -> None:
    with pytest.raises(StorageError, match="schema name"):
        await Database.connect("postgresql+asyncpg://u@127.0.0.1/db", schema='x"; DROP TABLE y')
