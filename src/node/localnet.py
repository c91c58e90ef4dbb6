"""A local federation on loopback: city nodes provisioned exactly as operators do it.

Owns a few city nodes on one machine, for the end-to-end tests, the benchmarks, ``citynode demo``
and ``deploy/local.sh``. Invariants:

* **Provisioning is the operator procedure, run through the real commands** as subprocesses,
  never by calling into the node: ``citynode init`` (the fingerprint read from its ``--json``),
  ``peers export``, ``peers import`` and ``peers verify`` with that fingerprint at every other
  node, ``agreement propose`` by the first city from a draft made of ``config/agreement.toml``
  with the chosen loopback endpoints, ``agreement sign`` by as many further members as the
  threshold needs, and ``agreement adopt`` at every node. Independent nodes' commands run in
  parallel; one node's commands run in order.
* Everything lives under one root directory (:data:`LAYOUT`). Configs follow the layout of
  ``config/<city>.toml`` with paths relative to the config file; files are 0600 in 0700
  directories. On PostgreSQL each node gets **its own database** on the server, created here and
  dropped by :meth:`LocalFederation.destroy`; no two nodes share one.
* Every wait is bounded: a command, a start, a stop, a health check each have a timeout and raise
  :class:`LocalNetError` (with the tail of the node's log) rather than hang.
* The ports are chosen when the federation is created and are signed into its agreement, so a
  :meth:`LocalFederation.clone` (a cheap copy for one test) listens on its template's ports:
  run one copy at a time. Listeners are on ``127.0.0.1`` unless ``create`` got ``hosts``
  (addresses inside network namespaces, for ``tests/chaos``; ``start`` then takes a ``prefix``).
* ``serve`` output goes to ``logs/<city>.log``, command output to ``logs/provision.log``. The
  operator secret is passed in the environment only; the manifest holds no secret and no URL.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

from node.localnet_support import (
    HOST,
    POLL_S,
    LocalNetError,
    NodeProcess,
    agreement_draft,
    config_text,
    free_ports,
    pg_database_name,
    pg_execute,
    pg_url_for,
    run_citynode,
    write_private,
)

__all__ = ["DEFAULT_CITIES", "LocalFederation", "LocalNetError", "LocalNode"]

DEFAULT_CITIES: Final = ("stockholm", "goteborg", "malmo")
DEFAULT_DRAFT: Final = Path(__file__).resolve().parents[2] / "config" / "agreement.toml"
MANIFEST: Final = "localnet.json"
LAYOUT: Final = {
    "config": "config/<city>.toml, and the agreement draft config/agreement.toml",
    "data": "data/<city>/: each node's data directory (keys, SQLite database)",
    "exchange": "exchange/: the packages and the signed agreement the operators pass around",
    "logs": "logs/<city>.log (serve) and logs/provision.log (the commands)",
    "run": "run/<city>.pid while a node runs",
}
STOP_TIMEOUT_S: Final = 15.0
START_TIMEOUT_S: Final = 30.0
LOG_TAIL_CHARS: Final = 2000

Backend = Literal["sqlite", "postgresql"]
Stage = Literal["init", "peers", "agreement"]
_STAGES: Final[tuple[Stage, ...]] = ("init", "peers", "agreement")


@dataclass(frozen=True, slots=True)
class LocalNode:
    """One node of a local federation, as recorded in the manifest.

    Attributes:
        city: the node's city.
        federation_port: its mTLS listener on :attr:`host` (signed into the agreement).
        api_port: its case API and operator listener on :attr:`host`.
        fingerprint: its numeric fingerprint, as ``citynode init`` printed it.
        database_name: its own PostgreSQL database, or ``None`` on SQLite.
        host: the address both listeners bind to: ``127.0.0.1`` unless the federation was
            created with ``hosts`` (e.g. an address inside a network namespace).
    """

    city: str
    federation_port: int
    api_port: int
    fingerprint: str = ""
    database_name: str | None = None
    host: str = HOST


class LocalFederation:
    """Several city nodes on loopback under one root directory.

    Build with :meth:`create`, :meth:`clone` (of a stopped federation) or :meth:`load` (one made
    by another process). As a context manager it stops every node and removes what it created.
    """

    def __init__(
        self,
        root: Path,
        nodes: Sequence[LocalNode],
        *,
        backend: Backend,
        pg_url: str | None,
        secret: str,
        limits: Mapping[str, int | float] | None = None,
        log_level: str = "info",
        owns_root: bool = False,
        detach: bool = False,
    ) -> None:
        """Describe a federation whose files are (or will be) under ``root``.

        ``detach``: nodes run in their own sessions and outlive this process (see
        :class:`~node.localnet_support.NodeProcess`); by default they die with it.
        """
        self.root = root.resolve()
        self.nodes = {node.city: node for node in nodes}
        self.backend: Backend = backend
        self.secret = secret
        self._pg_url = pg_url
        self._limits = dict(limits or {})
        self._log_level = log_level
        self._owns_root = owns_root
        self._detach = detach
        self._lock = threading.Lock()
        self._processes = {
            city: NodeProcess(
                city,
                config=self.config_path(city),
                log=self.log_path(city),
                pid_file=self.root / "run" / f"{city}.pid",
                env=self._env(),
                detach=detach,
            )
            for city in self.nodes
        }

    # --- building --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        cities: Sequence[str] = DEFAULT_CITIES,
        *,
        database: Backend = "sqlite",
        pg_url: str | None = None,
        secret: str | None = None,
        kdf: str = "interactive",
        limits: Mapping[str, int | float] | None = None,
        log_level: str = "info",
        draft: Path = DEFAULT_DRAFT,
        until: Stage = "agreement",
        on_step: Callable[[str], None] | None = None,
        detach: bool = False,
        hosts: Mapping[str, str] | None = None,
    ) -> LocalFederation:
        """Create and provision a federation of ``cities`` under ``root`` (absent or empty).

        Args:
            root: where everything goes.
            cities: the members; the first proposes the agreement, the next ones sign it.
            database: ``sqlite`` (a file in each data directory) or ``postgresql``.
            pg_url: PostgreSQL only: a ``postgresql+asyncpg://`` URL on the server where one
                database per node is created (its role needs CREATEDB).
            secret: every node's operator secret (default: a fresh random one, see
                :attr:`secret`).
            kdf: the keystore's Argon2id profile (``interactive`` is fast; production uses
                ``moderate``).
            limits: ``[limits]`` settings for every node (e.g. ``batch_size``).
            log_level: the nodes' log level.
            draft: the agreement draft whose members and endpoints are replaced.
            until: the last stage to run: ``init``, ``peers`` (exchanged and verified) or
                ``agreement`` (version 1 adopted everywhere).
            on_step: called with a one-line description of each operator step as it starts.
            detach: started nodes outlive this process (else they die with it).
            hosts: city → the address its listeners bind to and the agreement names (default
                ``127.0.0.1``). For nodes run in network namespaces (``tests/chaos``): the
                address must exist where the node is started (see :meth:`start`'s ``prefix``);
                the ports are still chosen free on loopback.

        Returns:
            The federation, every node stopped.

        Raises:
            LocalNetError: a bad argument, a failed command or database; what was created is
                removed again.
        """
        if not cities or len(set(cities)) != len(cities):
            raise LocalNetError("give one or more distinct cities")
        if database == "postgresql" and not pg_url:
            raise LocalNetError("a PostgreSQL federation needs pg_url")
        owns_root = _claim(root)
        ports = free_ports(2 * len(cities))
        tag = secrets.token_hex(4)
        nodes = [
            LocalNode(
                city=city,
                federation_port=ports[2 * i],
                api_port=ports[2 * i + 1],
                database_name=pg_database_name(tag, city) if database == "postgresql" else None,
                host=(hosts or {}).get(city, HOST),
            )
            for i, city in enumerate(cities)
        ]
        federation = cls(
            root,
            nodes,
            backend=database,
            pg_url=pg_url,
            secret=secret or secrets.token_urlsafe(24),
            limits=limits,
            log_level=log_level,
            owns_root=owns_root,
            detach=detach,
        )
        try:
            federation._lay_out()
            federation._create_databases()
            federation._write_configs()
            federation._provision(kdf, draft, until, on_step or (lambda _: None))
        except BaseException:
            federation.destroy()
            raise
        return federation

    @classmethod
    def load(
        cls, root: Path, *, secret: str, pg_url: str | None = None, detach: bool = False
    ) -> LocalFederation:
        """Reopen a federation another process created, e.g. to stop it (by its pid files).

        Raises:
            LocalNetError: no manifest under ``root``.
        """
        try:
            doc = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError) as e:
            raise LocalNetError(f"no local federation manifest in {root}") from e
        return cls(
            root,
            [LocalNode(**node) for node in doc["nodes"]],
            backend=doc["backend"],
            pg_url=pg_url,
            secret=secret,
            limits=doc.get("limits"),
            log_level=doc.get("log_level", "info"),
            detach=detach,
        )

    def clone(
        self, root: Path, *, limits: Mapping[str, int | float] | None = None
    ) -> LocalFederation:
        """Copy this stopped federation to ``root``: the same keys, agreement, queues and ports.

        SQLite data directories are copied; PostgreSQL databases are made with this
        federation's as templates (``CREATE DATABASE ... TEMPLATE``).

        Args:
            root: where the copy goes (absent or empty).
            limits: ``[limits]`` settings for the copy's configs (default: this one's).

        Raises:
            LocalNetError: a node of this federation runs, or ``root`` is not empty.
        """
        if any(process.pid() is not None for process in self._processes.values()):
            raise LocalNetError("stop the federation before cloning it")
        owns_root = _claim(root)
        tag = secrets.token_hex(4)
        nodes = [
            replace(node, database_name=pg_database_name(tag, node.city))
            if node.database_name
            else node
            for node in self.nodes.values()
        ]
        copy = LocalFederation(
            root,
            nodes,
            backend=self.backend,
            pg_url=self._pg_url,
            secret=self.secret,
            limits=self._limits if limits is None else limits,
            log_level=self._log_level,
            owns_root=owns_root,
            detach=self._detach,
        )
        try:
            copy._lay_out()
            for city in self.nodes:
                shutil.copytree(self.data_dir(city), copy.data_dir(city), dirs_exist_ok=True)
            for name in ("config", "exchange"):
                shutil.copytree(self.root / name, copy.root / name, dirs_exist_ok=True)
            copy._create_databases(template=self)
            copy._write_configs()
        except BaseException:
            copy.destroy()
            raise
        return copy

    # --- where things are ------------------------------------------------------------------

    def config_path(self, city: str) -> Path:
        """The node's configuration file."""
        return self.root / "config" / f"{self._node(city).city}.toml"

    def data_dir(self, city: str) -> Path:
        """The node's data directory."""
        return self.root / "data" / self._node(city).city

    def log_path(self, city: str) -> Path:
        """The file ``citynode serve`` writes to."""
        return self.root / "logs" / f"{self._node(city).city}.log"

    def api_url(self, city: str) -> str:
        """The node's case API and operator listener (``/healthz``, ``/metrics``)."""
        node = self._node(city)
        return f"http://{node.host}:{node.api_port}"

    def federation_url(self, city: str) -> str:
        """The node's federation listener, as the agreement names it."""
        node = self._node(city)
        return f"https://{node.host}:{node.federation_port}"

    def database_url(self, city: str) -> str:
        """The node's database URL (it may carry the server's password: do not log it)."""
        node = self._node(city)
        if node.database_name is None:
            return f"sqlite+aiosqlite:///{self.data_dir(city) / 'citynode.sqlite3'}"
        if not self._pg_url:
            raise LocalNetError("this federation was opened without its PostgreSQL URL")
        return pg_url_for(self._pg_url, node.database_name)

    def fingerprint(self, city: str) -> str:
        """The node's fingerprint as ``citynode init`` printed it."""
        return self._node(city).fingerprint

    def signed_agreement(self) -> Path:
        """The signed agreement version 1 that every node adopted."""
        return self.root / "exchange" / "agreement-v1.signed"

    # --- processes -------------------------------------------------------------------------

    def start(self, city: str, *, prefix: Sequence[str] = ()) -> None:
        """Start ``citynode serve`` for ``city``; returns at once (see :meth:`wait_healthy`).

        Args:
            city: the node.
            prefix: a command that execs the rest in place, e.g. ``ip netns exec NS`` to run
                the node in a network namespace (the pid stays the node's).

        Raises:
            LocalNetError: it runs already.
        """
        self._process(city).start(prefix)

    def start_all(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start every node that is not running and wait until each one is healthy.

        Raises:
            LocalNetError: a node exited or was not healthy in time.
        """
        for city in self.nodes:
            if not self.is_running(city):
                self.start(city)
        deadline = time.monotonic() + timeout_s
        for city in self.nodes:
            self.wait_healthy(city, max(0.1, deadline - time.monotonic()))

    def is_running(self, city: str) -> bool:
        """Whether the node's ``serve`` process is alive."""
        return self._process(city).pid() is not None

    def pid(self, city: str) -> int | None:
        """The node's ``serve`` process id, or ``None`` when it does not run."""
        return self._process(city).pid()

    def stop(self, city: str, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop the node with SIGTERM and wait (SIGKILL after ``timeout_s``).

        Returns:
            Its exit status (0 after a clean stop, ``-9`` if it had to be killed), or ``None``
            if it was not running.
        """
        process = self._process(city)
        pid = process.terminate()
        return None if pid is None else process.finish(pid, timeout_s)

    def kill(self, city: str) -> None:
        """Kill the node with SIGKILL, as a crash would, and wait until it is gone.

        Raises:
            LocalNetError: it was not running, or did not die.
        """
        self._process(city).kill()

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, int | None]:
        """Stop every node: SIGTERM to all first, then wait for each.

        Returns:
            Each city's exit status, ``None`` for those that were not running.
        """
        pids = {city: process.terminate() for city, process in self._processes.items()}
        return {
            city: None if pid is None else self._processes[city].finish(pid, timeout_s)
            for city, pid in pids.items()
        }

    def wait_healthy(self, city: str, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the node's ``/healthz`` answers ``"status": "ok"``.

        Returns:
            The health document.

        Raises:
            LocalNetError: the process exited, or ``timeout_s`` passed (with the log's tail).
        """
        deadline = time.monotonic() + timeout_s
        url = f"{self.api_url(city)}/healthz"
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.is_running(city):
                raise LocalNetError(f"{city} exited while starting:\n{self.log_tail(city)}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:  # noqa: S310
                    doc: dict[str, Any] = json.loads(response.read())
                if doc.get("status") == "ok":
                    return doc
                last = f"status {doc.get('status')}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except (OSError, ValueError) as e:
                last = type(e).__name__
            time.sleep(POLL_S)
        raise LocalNetError(
            f"{city} not healthy after {timeout_s:g} s ({last}):\n{self.log_tail(city)}"
        )

    def log_tail(self, city: str, chars: int = LOG_TAIL_CHARS) -> str:
        """The end of the node's log, for error messages."""
        try:
            return self.log_path(city).read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def citynode(self, city: str, *args: str) -> dict[str, Any]:
        """Run an operator command for ``city`` (``--config`` and ``--json`` added).

        Returns:
            What the command printed.

        Raises:
            LocalNetError: it failed or timed out.
        """
        return run_citynode(
            args,
            config=self.config_path(city),
            env=self._env(),
            log=self.root / "logs" / "provision.log",
            lock=self._lock,
        )

    # --- teardown --------------------------------------------------------------------------

    def destroy(self) -> None:
        """Stop every node, drop its PostgreSQL databases and remove the files created."""
        with contextlib.suppress(LocalNetError):
            self.stop_all()
        names = [node.database_name for node in self.nodes.values() if node.database_name]
        if names and self._pg_url:
            drops = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names]
            pg_execute(self._pg_url, drops)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for part in LAYOUT:
            shutil.rmtree(self.root / part, ignore_errors=True)
        (self.root / MANIFEST).unlink(missing_ok=True)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # --- provisioning ----------------------------------------------------------------------

    def _lay_out(self) -> None:
        for part in LAYOUT:
            (self.root / part).mkdir(mode=0o700, exist_ok=True)
        self._write_manifest()

    def _write_manifest(self) -> None:
        doc = {
            "backend": self.backend,
            "nodes": [asdict(node) for node in self.nodes.values()],
            "limits": self._limits,
            "log_level": self._log_level,
            "layout": LAYOUT,
        }
        write_private(self.root / MANIFEST, json.dumps(doc, indent=2) + "\n")

    def _write_configs(self) -> None:
        for city, node in self.nodes.items():
            content = config_text(
                city,
                federation_port=node.federation_port,
                api_port=node.api_port,
                host=node.host,
                data_dir=f"../data/{city}",
                database_url=self.database_url(city) if node.database_name else None,
                limits=self._limits,
                log_level=self._log_level,
            )
            write_private(self.config_path(city), content)

    def _create_databases(self, template: LocalFederation | None = None) -> None:
        statements = []
        for city, node in self.nodes.items():
            if node.database_name is None:
                continue
            source = template.nodes[city].database_name if template else None
            suffix = f' TEMPLATE "{source}"' if source else ""
            statements.append(f'CREATE DATABASE "{node.database_name}"{suffix}')
        if statements and self._pg_url:
            pg_execute(self._pg_url, statements)

    def _provision(self, kdf: str, draft: Path, until: Stage, step: Callable[[str], None]) -> None:
        cities = list(self.nodes)
        step(f"init: {', '.join(cities)} create their keys and databases")
        inits = self._each(lambda city: [self.citynode(city, "init", "--kdf", kdf)])
        for city, (doc,) in inits.items():
            self.nodes[city] = replace(self.nodes[city], fingerprint=str(doc["fingerprint"]))
        self._write_manifest()
        if _STAGES.index(until) < _STAGES.index("peers"):
            return
        exchange = self.root / "exchange"
        step("peers export: each node writes its signed package")
        self._each(
            lambda city: [
                self.citynode(city, "peers", "export", "--out", str(exchange / f"{city}.pkg"))
            ]
        )
        step("peers import + verify: each operator checks the others' fingerprints")
        self._each(self._import_and_verify)
        if _STAGES.index(until) < _STAGES.index("agreement"):
            return
        draft_path = self.root / "config" / "agreement.toml"
        content, threshold = agreement_draft(draft, {c: self.federation_url(c) for c in cities})
        write_private(draft_path, content)
        signed = str(self.signed_agreement())
        step(f"agreement propose: {cities[0]} proposes version 1")
        self.citynode(cities[0], "agreement", "propose", str(draft_path), "--out", signed)
        for city in cities[1:threshold]:
            step(f"agreement sign: {city} signs")
            self.citynode(city, "agreement", "sign", signed, "--yes")
        step("agreement adopt: every node adopts version 1")
        self._each(lambda city: [self.citynode(city, "agreement", "adopt", signed)])

    def _import_and_verify(self, city: str) -> list[dict[str, Any]]:
        done = []
        for other in self.nodes:
            if other != city:
                package = self.root / "exchange" / f"{other}.pkg"
                done.append(self.citynode(city, "peers", "import", str(package)))
                digits = self.nodes[other].fingerprint
                done.append(self.citynode(city, "peers", "verify", other, "--fingerprint", digits))
        return done

    def _each(self, work: Callable[[str], list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        """Run ``work`` for every node at once (one node's commands stay in order)."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            futures = {city: pool.submit(work, city) for city in self.nodes}
            return {city: future.result() for city, future in futures.items()}

    # --- internals -------------------------------------------------------------------------

    def _node(self, city: str) -> LocalNode:
        node = self.nodes.get(city)
        if node is None:
            raise LocalNetError(f"{city} is not a node of this federation")
        return node

    def _process(self, city: str) -> NodeProcess:
        return self._processes[self._node(city).city]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CITYNODE_SECRET_FILE"}
        env["CITYNODE_SECRET"] = self.secret
        env["PYTHONUNBUFFERED"] = "1"
        return env


def _claim(root: Path) -> bool:
    """Make ``root`` (0700) if absent; return whether we made it. Refuse a non-empty one."""
    root = root.resolve()
    if root.exists() and any(root.iterdir()):
        raise LocalNetError(f"{root} is not empty: refusing to put a federation in it")
    made = not root.exists()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return made
