"""Fixtures of the end-to-end tests: real ``citynode`` processes, real mTLS on loopback.

Provisioning a federation runs the operator procedure through ~20 ``citynode`` commands, which
costs tens of seconds, so it is done once per session and backend, the backends side by side (a
*template*); each test gets a :meth:`~node.localnet.LocalFederation.clone` of it (SQLite data
directories copied, PostgreSQL databases made with ``CREATE DATABASE ... TEMPLATE``) and destroys
it afterwards. A *loaded* template also carries a backlog of queued case streams, so the stream
and crash tests do not each pay for sealing a thousand messages.

PostgreSQL tests use the server in ``CITYNODE_TEST_PG_URL`` (one database per node) and are
skipped, saying why, when it is unset. Clones listen on their template's ports (the ports are
signed into the agreement), so these tests must not run in parallel with each other.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from demo_support import DemoRun  # noqa: E402
from e2e_support import PG_URL_ENV, SECRET, Loaded, queue_cases  # noqa: E402

from node.localnet import Backend, LocalFederation  # noqa: E402

# The backlog of a loaded template: (sender, recipient, cases); two messages per case.
BACKLOG = (("stockholm", "goteborg", 500), ("goteborg", "malmo", 40), ("malmo", "stockholm", 40))


def _pg_url() -> str:
    url = os.environ.get(PG_URL_ENV)
    if not url:
        pytest.skip(f"{PG_URL_ENV} is not set: PostgreSQL end-to-end tests need a server")
    return url


def _build(root: Path, backend: Backend) -> tuple[LocalFederation, Loaded]:
    """Provision a template federation, then a loaded copy of it."""
    pg_url = os.environ.get(PG_URL_ENV) if backend == "postgresql" else None
    template = LocalFederation.create(
        root / "template", database=backend, pg_url=pg_url, secret=SECRET
    )
    try:
        loaded = template.clone(root / "loaded")
        try:
            streams = {
                (sender, recipient): asyncio.run(queue_cases(loaded, sender, recipient, cases))
                for sender, recipient, cases in BACKLOG
            }
        except BaseException:
            loaded.destroy()
            raise
    except BaseException:
        template.destroy()
        raise
    return template, Loaded(loaded, streams)


def _parameters(item: pytest.Item) -> list[object]:
    callspec = getattr(item, "callspec", None)
    return list(callspec.params.values()) if callspec is not None else []


def _backends_needed(session: pytest.Session) -> list[Backend]:
    """SQLite always; PostgreSQL when a selected test runs on it and a server is given."""
    wanted: list[Backend] = ["sqlite"]
    uses_pg = any("postgresql" in _parameters(item) for item in session.items)
    if uses_pg and os.environ.get(PG_URL_ENV):
        wanted.append("postgresql")
    return wanted


@pytest.fixture(scope="session")
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[LocalFederation, Loaded]]]:
    """Every backend the selected tests need, provisioned at the same time (one thread each).

    Provisioning is a chain of short processes with gaps between them; two chains side by side
    fill each other's gaps.
    """
    backends = _backends_needed(request.session)
    root = tmp_path_factory.mktemp("e2e")
    with ThreadPoolExecutor(max_workers=len(backends)) as pool:
        futures = {b: pool.submit(_build, root / b, b) for b in backends}
        wait(futures.values())
    done: dict[str, tuple[LocalFederation, Loaded]] = {
        b: f.result() for b, f in futures.items() if f.exception() is None
    }
    try:
        for future in futures.values():
            error = future.exception()
            if error is not None:
                raise error
        yield done
    finally:
        for template, loaded in done.values():
            loaded.federation.destroy()
            template.destroy()


@pytest.fixture(scope="session")
def sqlite_template(built: dict[str, tuple[LocalFederation, Loaded]]) -> LocalFederation:
    return built["sqlite"][0]


@pytest.fixture(scope="session")
def sqlite_loaded(built: dict[str, tuple[LocalFederation, Loaded]]) -> Loaded:
    return built["sqlite"][1]


@pytest.fixture(scope="session")
def postgresql_loaded(built: dict[str, tuple[LocalFederation, Loaded]]) -> Loaded:
    _pg_url()
    return built["postgresql"][1]


@pytest.fixture
def federation(sqlite_template: LocalFederation, tmp_path: Path) -> Iterator[LocalFederation]:
    """A fresh copy of the provisioned SQLite federation, every node stopped, nothing queued."""
    copy = sqlite_template.clone(tmp_path / "federation")
    yield copy
    copy.destroy()


@pytest.fixture
def loaded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Loaded]:
    """A fresh copy of the loaded template of the backend given by ``indirect`` parametrize."""
    backend = getattr(request, "param", "sqlite")
    template: Loaded = request.getfixturevalue(f"{backend}_loaded")
    copy = template.federation.clone(tmp_path / "federation")
    yield Loaded(copy, template.streams)
    copy.destroy()


@pytest.fixture(scope="session")
def demo_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DemoRun]]:
    """``citynode demo`` on SQLite with ``--keep``, and as ``make demo`` runs it on PostgreSQL
    (when a server is given), side by side.

    At the end ``citynode demo --stop`` must stop the three kept nodes (and drops the PostgreSQL
    demo's databases); no node of either run may answer after.
    """
    pg_url = os.environ.get(PG_URL_ENV)
    runs = {"sqlite": DemoRun("sqlite", tmp_path_factory.mktemp("demo-sqlite") / "demo", None)}
    if pg_url:
        root = tmp_path_factory.mktemp("demo-postgresql") / "demo"
        runs["postgresql"] = DemoRun("postgresql", root, pg_url)
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        futures = {name: pool.submit(run.start) for name, run in runs.items()}
        wait(futures.values())
    try:
        for future in futures.values():
            future.result()
        yield runs
    finally:
        for run in runs.values():
            run.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def demo_run(request: pytest.FixtureRequest, demo_runs: dict[str, DemoRun]) -> DemoRun:
    """One backend's demo run (PostgreSQL skipped, saying why, without a server)."""
    if request.param not in demo_runs:
        _pg_url()
    return demo_runs[request.param]
