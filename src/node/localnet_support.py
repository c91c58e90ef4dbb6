"""The parts of a local federation (:mod:`node.localnet`): processes, files, ports, databases.

Owns the small mechanisms the federation is built from, each bounded and each testable alone:

* :class:`NodeProcess` — one node's ``citynode serve`` process: start with its output appended to
  a log file, SIGTERM then SIGKILL after a timeout, SIGKILL for a crash, a pid file that another
  process may use to stop it (a pid counts only while ``/proc/<pid>/cmdline`` still names this
  node's config, so a reused pid is never signalled).
* :func:`run_citynode` — one operator command, with ``--json``, a timeout, and its output logged.
* the files: :func:`config_text` (a node's config in the layout of ``config/<city>.toml``),
  :func:`agreement_draft` (``config/agreement.toml`` with other members and loopback endpoints),
  a minimal TOML writer for both; private files are created 0600.
* :func:`free_ports` — listener ports free on loopback, chosen *below* the kernel's ephemeral range
  so that a node restarted later never finds its port taken by an outgoing connection.
* :func:`pg_execute` — ``CREATE``/``DROP DATABASE`` on a PostgreSQL server, outside a transaction,
  from sync code or from inside a running event loop.

Messages never carry the operator secret or a database password.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar, Final

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from node.errors import NodeError

HOST: Final = "127.0.0.1"
COMMAND_TIMEOUT_S: Final = 120.0
KILL_TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.1
PORT_FLOOR: Final = 20000
DATABASE_TIMEOUT_S: Final = 60.0
_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h
_FALLBACK_UNIT: Final = {"id": "socialnamnden", "display_name": "Socialnämnden"}


class LocalNetError(NodeError):
    """A local federation could not be created, started, reached or stopped as asked."""

    code: ClassVar[str] = "localnet"


def citynode_argv() -> list[str]:
    """How to run ``citynode``: the console script beside this interpreter, else ``-m``."""
    script = Path(sys.executable).parent / "citynode"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "node.cli"]


# --- processes -------------------------------------------------------------------------------


class NodeProcess:
    """One node's ``citynode serve`` process.

    Args:
        city: the node (for messages).
        config: its configuration file.
        log: the file its output is appended to.
        pid_file: where its pid is written while it runs.
        env: the environment it runs with (holds the operator secret).
        detach: run it in its own session, to outlive this process (``demo --keep``). By
            default it stays in our process group (Ctrl-C reaches it) and, on Linux, gets
            SIGTERM when the thread that started it dies, so a killed test run leaves no node
            behind.
    """

    def __init__(
        self,
        city: str,
        *,
        config: Path,
        log: Path,
        pid_file: Path,
        env: Mapping[str, str],
        detach: bool = False,
    ) -> None:
        self.city = city
        self.config = config
        self.log = log
        self.pid_file = pid_file
        self.detach = detach
        self._env = dict(env)
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def start(self, prefix: Sequence[str] = ()) -> None:
        """Start ``citynode serve`` (returns at once), run by ``prefix`` if given.

        Args:
            prefix: a command that execs its arguments in place (``ip netns exec NS``), so
                the pid and ``/proc/<pid>/cmdline`` end up the node's own.

        Raises:
            LocalNetError: it runs already.
        """
        if self.pid() is not None:
            raise LocalNetError(f"{self.city} is running already")
        with self.log.open("ab") as log:
            child = subprocess.Popen(  # noqa: S603 (our own command, no shell)
                [*prefix, *citynode_argv(), "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=self.detach,
                # One prctl call through a function pointer loaded before the fork: no lock
                # another thread could hold is taken in the child.
                preexec_fn=None if self.detach else _die_with_parent(),  # noqa: PLW1509
            )
        with self._lock:
            self._child = child
        self.pid_file.write_text(f"{child.pid}\n")

    def pid(self) -> int | None:
        """The live process: our child, or the one the pid file names; ``None`` if not running."""
        with self._lock:
            child = self._child
        if child is not None:
            return child.pid if child.poll() is None else None
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        # Only a process that still runs this very node's config counts: pids are reused.
        if b"serve" in cmdline and str(self.config).encode() in cmdline:
            return pid
        return None

    def terminate(self) -> int | None:
        """Send SIGTERM; return the pid signalled, or ``None`` if it was not running."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        return pid

    def finish(self, pid: int, timeout_s: float) -> int:
        """Wait for ``pid`` (already sent SIGTERM); SIGKILL it after ``timeout_s``.

        Returns:
            Its exit status (negative: the signal that ended it; 0 when not our child).

        Raises:
            LocalNetError: it survived SIGKILL.
        """
        status = self._reap(pid, timeout_s)
        if status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            status = self._reap(pid, KILL_TIMEOUT_S)
        if status is None:
            raise LocalNetError(f"{self.city} (pid {pid}) survived SIGKILL")
        return status

    def kill(self) -> None:
        """SIGKILL (a crash) and wait until it is gone.

        Raises:
            LocalNetError: it was not running, or did not die.
        """
        pid = self.pid()
        if pid is None:
            raise LocalNetError(f"{self.city} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if self._reap(pid, KILL_TIMEOUT_S) is None:
            raise LocalNetError(f"{self.city} (pid {pid}) survived SIGKILL")

    def _reap(self, pid: int, timeout_s: float) -> int | None:
        with self._lock:
            child = self._child
        if child is not None and child.pid == pid:
            try:
                status = child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return None
            self.pid_file.unlink(missing_ok=True)
            return status
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pid() is None:
                self.pid_file.unlink(missing_ok=True)
                return 0  # not our child: its exit status is its parent's to read
            time.sleep(POLL_S)
        return None


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent thread ends."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, in the parent: nothing to import
    prctl = libc.prctl

    def request() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return request


def run_citynode(
    args: Sequence[str], *, config: Path, env: Mapping[str, str], log: Path, lock: threading.Lock
) -> dict[str, Any]:
    """Run one ``citynode`` command with ``--config`` and ``--json``; return what it printed.

    Args:
        args: the subcommand and its arguments (``["peers", "verify", "malmo", ...]``).
        config: the node's configuration file.
        env: the environment (holds the operator secret).
        log: the file the command line, status and output are appended to.
        lock: serialises writes to ``log`` between threads.

    Raises:
        LocalNetError: it failed, timed out or printed no JSON (its stderr is in the message).
    """
    argv = [*citynode_argv(), *args, "--config", str(config), "--json"]
    shown = f"citynode {' '.join(args[:2])} ({config.stem})"
    try:
        done = subprocess.run(  # noqa: S603 (our own command, no shell)
            argv,
            capture_output=True,
            env=dict(env),
            timeout=COMMAND_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise LocalNetError(f"{shown} timed out after {COMMAND_TIMEOUT_S:g} s") from e
    out = done.stdout.decode(errors="replace")
    err = done.stderr.decode(errors="replace")
    with lock, log.open("a") as f:
        f.write(f"[{config.stem}] citynode {' '.join(args)} -> {done.returncode}\n{out}{err}")
    if done.returncode != 0:
        raise LocalNetError(f"{shown} failed with status {done.returncode}: {err.strip()}")
    try:
        doc: dict[str, Any] = json.loads(out)
    except ValueError as e:
        raise LocalNetError(f"{shown} printed no JSON") from e
    return doc


# --- ports -----------------------------------------------------------------------------------


def free_ports(count: int, *, rng: random.Random | None = None) -> list[int]:
    """``count`` distinct TCP ports free on ``127.0.0.1``, below the ephemeral range.

    Raises:
        LocalNetError: not enough free ports found.
    """
    rng = rng or random.Random()  # noqa: S311 (choosing ports, not secrets)
    low = _ephemeral_low()
    chosen: list[int] = []
    for _ in range(200 * count):
        if len(chosen) == count:
            break
        port = rng.randrange(PORT_FLOOR, low)
        if port not in chosen and _bindable(port):
            chosen.append(port)
    if len(chosen) < count:
        raise LocalNetError(f"found only {len(chosen)} of {count} free ports below {low}")
    return chosen


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, PORT_FLOOR + 1000)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


# --- files -----------------------------------------------------------------------------------


def write_private(path: Path, content: str) -> None:
    """Write ``content`` to ``path``, created ``0600``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)


def config_text(
    city: str,
    *,
    federation_port: int,
    api_port: int,
    data_dir: str,
    database_url: str | None,
    limits: Mapping[str, int | float],
    log_level: str,
    host: str = HOST,
) -> str:
    """A node's configuration file, in the layout of ``config/<city>.toml``.

    Args:
        city: the node's city.
        federation_port: its mTLS listener on ``host``.
        api_port: its case API listener on ``host``.
        data_dir: its data directory, relative to the config file.
        database_url: a PostgreSQL URL, or ``None`` for SQLite in the data directory.
        limits: ``[limits]`` settings (the others keep their defaults).
        log_level: the node's log level.
        host: the address both listeners bind to (default: loopback).
    """
    lines = [
        f"# citynode configuration for the {city} node of a local federation on loopback",
        "# (written by node.localnet; config/stockholm.toml explains every setting).",
        f"city = {toml_value(city)}",
        f"data_dir = {toml_value(data_dir)}",
        'agreement = "agreement.toml"',
        f"log_level = {toml_value(log_level)}",
        "",
        "[federation]",
        f"host = {toml_value(host)}",
        f"port = {federation_port}",
        "",
        "[api]",
        f"host = {toml_value(host)}",
        f"port = {api_port}",
        "",
        "[database]",
        "# SQLite (WAL) at <data_dir>/citynode.sqlite3"
        if database_url is None
        else f"url = {toml_value(database_url)}",
        "",
        "[limits]",
        *(f"{key} = {toml_value(value)}" for key, value in limits.items()),
    ]
    return "\n".join(lines) + "\n"


def agreement_draft(source: Path, endpoints: Mapping[str, str]) -> tuple[str, int]:
    """The agreement draft ``source`` with exactly the members of ``endpoints``, at those URLs.

    Members named in ``source`` keep their display names and units; a city it does not name
    gets one unit, ``socialnamnden``. The signing threshold becomes a strict majority of the
    members (or the draft's, if higher).

    Args:
        source: a draft in the format of ``config/agreement.toml``.
        endpoints: city → federation URL, in member order.

    Returns:
        The draft as TOML, and its signing threshold.

    Raises:
        LocalNetError: ``source`` cannot be read.
    """
    try:
        with source.open("rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LocalNetError(f"cannot read the agreement draft {source}") from e
    known = {member["city"]: member for member in doc.get("members", [])}
    members = []
    for city, url in endpoints.items():
        fallback = {"city": city, "display_name": city.capitalize(), "units": [_FALLBACK_UNIT]}
        members.append({**known.get(city, fallback), "endpoint": url})
    doc["members"] = members
    majority = len(members) // 2 + 1
    threshold = min(len(members), max(majority, int(doc.get("signing_threshold", 1))))
    doc["signing_threshold"] = threshold
    header = (
        "# Agreement draft of a local federation on loopback, made by node.localnet from\n"
        f"# {source.name}: the same terms, with these members at their loopback endpoints.\n"
    )
    return header + toml_document(doc), threshold


def toml_value(value: object) -> str:
    """One TOML value: a string, integer, float, boolean, date, or a list of those.

    Raises:
        LocalNetError: any other type.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise LocalNetError(f"cannot write a {type(value).__name__} as TOML")


def toml_document(doc: Mapping[str, Any], prefix: str = "") -> str:
    """A TOML document of values and arrays of tables (the shape of the agreement draft)."""
    lines = []
    tables = []
    for key, value in doc.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for key, items in tables:
        for item in items:
            lines += ["", f"[[{prefix}{key}]]", toml_document(item, f"{prefix}{key}.").rstrip()]
    return "\n".join(lines) + "\n"


# --- PostgreSQL ------------------------------------------------------------------------------


def pg_database_name(tag: str, city: str) -> str:
    """The name of a node's own database: ``citynode_<tag>_<city>``."""
    return f"citynode_{tag}_{city.replace('-', '_')}"


def pg_url_for(server_url: str, name: str) -> str:
    """``server_url`` pointing at database ``name`` instead (keeps user, password, host)."""
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def pg_execute(server_url: str, statements: Sequence[str]) -> None:
    """Run statements outside a transaction (``CREATE``/``DROP DATABASE``), bounded in time.

    Runs its own event loop in a worker thread, so it works from sync code and from inside a
    running loop alike.

    Raises:
        LocalNetError: the server refused or did not answer in time (the URL is not shown).
    """

    async def run() -> None:
        engine = create_async_engine(
            server_url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 10}
        )
        try:
            async with engine.connect() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    async def bounded() -> None:
        async with asyncio.timeout(DATABASE_TIMEOUT_S):
            await run()

    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            pool.submit(asyncio.run, bounded()).result()
        except (SQLAlchemyError, OSError, TimeoutError) as e:
            raise LocalNetError(f"PostgreSQL refused ({type(e).__name__})") from e
