"""Fixtures of the fault tests: provisioned federations with a queued stream, and fault machinery.

Reuses the end-to-end helpers (``tests/e2e/e2e_support.py``: queueing case streams, reading the
nodes' tables, waiting for a drain, the exactly-once-in-order check) by import, not by copy.

* One SQLite *template* per session: two nodes provisioned by the operator procedure with a
  stream of :attr:`Settings.messages` messages queued at the sender (stockholm → goteborg). When
  network namespaces are usable (root), the nodes' listeners are on addresses inside a
  :class:`~chaos_support.Topology` and every test runs them there; otherwise on loopback, and
  the partition tests are skipped. Each test gets a clone of the template.
* A PostgreSQL template on a throwaway cluster of our own (:class:`~chaos_support.PgCluster`),
  made only when a selected test needs it; skipped, saying why, when the binaries are missing.

Every fixture that creates something (namespaces, a cluster, databases, mounts) removes it, also
after a failure. The seed and size of the run are printed in the report header.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent / "e2e"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from chaos_nodes import BATCH_SIZE, RECEIVER, SENDER, Nodes  # noqa: E402
from chaos_support import PgCluster, Settings, Topology, netns_unavailable, pg_bin  # noqa: E402
from e2e_support import SECRET, queue_cases  # noqa: E402

from node.localnet import LocalFederation  # noqa: E402
from node.localnet_support import free_ports  # noqa: E402

CITIES = (SENDER, RECEIVER)
SETTINGS = Settings.from_env()


def pytest_report_header() -> str:
    return (
        f"chaos: seed {SETTINGS.seed} (CITYNODE_CHAOS_SEED), {SETTINGS.rounds} rounds "
        f"(CITYNODE_CHAOS_ROUNDS), {SETTINGS.messages} messages (CITYNODE_CHAOS_MESSAGES)"
    )


@pytest.fixture(scope="session")
def settings() -> Settings:
    return SETTINGS


@pytest.fixture(scope="session")
def topology() -> Iterator[Topology | None]:
    """The namespaces the nodes run in, or ``None`` (loopback) where they cannot be made."""
    if netns_unavailable() is not None:
        yield None
        return
    topology = Topology(CITIES, net=1)
    try:
        topology.build()
        yield topology
    finally:
        topology.remove()


@pytest.fixture
def namespaces(topology: Topology | None) -> Iterator[Topology]:
    """The namespaces, for the partition tests; every link restored after each test."""
    if topology is None:
        pytest.skip(f"no network namespaces: {netns_unavailable()}")
    yield topology
    for city in CITIES:
        topology.join(city)
        with contextlib.suppress(RuntimeError):  # nothing was dropped
            topology.allow_egress(city)


def _template(root: Path, **create: Any) -> LocalFederation:
    """Provision a two-node federation and queue the stream at the sender."""
    limits = {"batch_size": BATCH_SIZE}
    federation = LocalFederation.create(root, CITIES, secret=SECRET, limits=limits, **create)
    try:
        asyncio.run(queue_cases(federation, SENDER, RECEIVER, SETTINGS.cases))
    except BaseException:
        federation.destroy()
        raise
    return federation


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL cluster of our own (never the shared server), removed afterwards."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin")
    # Not under pytest's 0700 temporary root: the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="citynode-chaos-pg-"))
    cluster = PgCluster(bin_dir, root, free_ports(1)[0])
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def templates(
    request: pytest.FixtureRequest,
    topology: Topology | None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, LocalFederation]]:
    """The templates the selected tests need, provisioned side by side (one thread each).

    Provisioning is a chain of short processes with gaps between them; two chains side by side
    fill each other's gaps.
    """
    uses = {name for item in request.session.items for name in getattr(item, "fixturenames", ())}
    wanted: dict[str, dict[str, Any]] = {}
    if "sqlite_nodes" in uses:
        wanted["sqlite"] = {"hosts": topology.hosts if topology is not None else None}
    if "pg_nodes" in uses and pg_bin() is not None:
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        wanted["postgresql"] = {"database": "postgresql", "pg_url": cluster.url}
    root = tmp_path_factory.mktemp("chaos")
    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        futures = {name: pool.submit(_template, root / name, **kw) for name, kw in wanted.items()}
        wait(futures.values())
    done = {name: f.result() for name, f in futures.items() if f.exception() is None}
    try:
        for future in futures.values():
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        yield done
    finally:
        for template in done.values():
            template.destroy()


@pytest.fixture
def sqlite_template(templates: dict[str, LocalFederation]) -> LocalFederation:
    """The provisioned SQLite federation with the stream queued (every node stopped)."""
    return templates["sqlite"]


@pytest.fixture
def sqlite_nodes(
    sqlite_template: LocalFederation, topology: Topology | None, tmp_path: Path
) -> Iterator[Nodes]:
    """A fresh copy of the SQLite template (stream queued, nodes stopped)."""
    copy = sqlite_template.clone(tmp_path / "federation")
    yield Nodes(copy, topology)
    copy.destroy()


@pytest.fixture
def pg_nodes(
    pg_cluster: PgCluster, templates: dict[str, LocalFederation], tmp_path: Path
) -> Iterator[Nodes]:
    """A fresh copy of the PostgreSQL template; the cluster runs again afterwards."""
    copy = templates["postgresql"].clone(tmp_path / "federation")
    yield Nodes(copy, None)
    copy.stop_all()
    with contextlib.suppress(RuntimeError):  # it runs already
        pg_cluster.start()
    copy.destroy()
