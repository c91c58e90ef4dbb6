"""Alembic environment of the node's database, run only through ``Database.migrate``.

There is no ``alembic.ini``: :mod:`node.storage.database` builds the Alembic configuration in
code, points ``script_location`` at this directory inside the installed package, and hands over
an open connection (already inside a transaction) in ``config.attributes["connection"]``. The
migration therefore runs on the node's own engine, with its SQLite pragmas or PostgreSQL
``search_path``, and commits or rolls back as one transaction (SQLite and PostgreSQL both have
transactional DDL). Offline SQL generation is not supported.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from node.storage.schema import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things: later revisions use batch operations (copy and swap).
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline migrations are not supported: use Database.migrate()")
    connection: Connection | None = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run the migrations through node.storage.database.Database.migrate()")
    _run(connection)


_main()
