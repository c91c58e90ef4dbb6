"""Helpers of the fault tests: settings, network namespaces, a throwaway PostgreSQL, a tmpfs.

Owns the machinery that breaks things on purpose and always puts it back:

* :class:`Settings` — the size of a run, from the environment (``CITYNODE_CHAOS_ROUNDS``,
  ``CITYNODE_CHAOS_MESSAGES``, ``CITYNODE_CHAOS_SEED``); CI uses the small defaults, ``make
  chaos`` the full run.
* :class:`Topology` — one network namespace per node, each joined by a veth pair to a bridge in
  a hub namespace of its own; addresses exist only inside these namespaces (``10.231.N.x/24``).
  Nothing is configured in the host's own namespace, and :meth:`Topology.remove` deletes every
  namespace (with it every veth and the bridge), also after a failure.
* :class:`PgCluster` — a PostgreSQL cluster of our own (``initdb`` in a temporary directory, its
  own port, trust on loopback), stopped with ``pg_ctl stop -m immediate`` to make the database
  disappear; the shared server on port 5432 is never touched.
* :class:`Tmpfs` — a small tmpfs mounted over a node's data directory (the data copied in), to
  fill the disk under the node.

Invariants: every command has a timeout; every helper that creates something removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

COMMAND_TIMEOUT_S = 60.0
T = TypeVar("T")
_CLONE_NEWNET = 0x40000000  # linux/sched.h


def env_int(name: str, default: int) -> int:
    """An integer setting from the environment, or ``default`` when unset or empty."""
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    """How big a chaos run is.

    Attributes:
        rounds: rounds of the kill -9 test (each: receiver, sender and both killed once).
        messages: messages in the stream (two per case: an inquiry and its closure).
        seed: the seed of every random choice; printed so that a run can be repeated.
        hold_s: how long a partition, a database outage or a full disk lasts (at least; up to
            half as long again). Past the sender's 30 s request timeout a partition also makes
            it give up on batches in flight and send them again.
    """

    rounds: int
    messages: int
    seed: int
    hold_s: float

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this run: CI's small defaults unless the environment says more."""
        seed = env_int("CITYNODE_CHAOS_SEED", random.SystemRandom().randrange(1 << 31))
        rounds = env_int("CITYNODE_CHAOS_ROUNDS", 1)
        messages = env_int("CITYNODE_CHAOS_MESSAGES", 400)
        hold_s = float(os.environ.get("CITYNODE_CHAOS_HOLD_S", "").strip() or 1.5)
        return cls(
            rounds=max(1, rounds),
            messages=max(20, messages - messages % 2),
            seed=seed,
            hold_s=max(0.5, hold_s),
        )

    @property
    def cases(self) -> int:
        """The cases of the stream."""
        return self.messages // 2


def run(argv: Sequence[str], *, check: bool = True, user: str | None = None) -> str:
    """Run a command (as ``user`` if given, via ``runuser``); return its stdout.

    Raises:
        RuntimeError: it failed (with its stderr) and ``check`` is set.
    """
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    done = subprocess.run(
        full, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


# --- network namespaces ----------------------------------------------------------------------


def netns_unavailable() -> str | None:
    """Why namespaces cannot be used here, or ``None`` if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"chaos-probe-{os.getpid()}"
    try:
        run(["ip", "netns", "add", probe])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return f"ip netns add failed: {e}"
    run(["ip", "netns", "del", probe], check=False)
    return None


class Topology:
    """Each city in its own network namespace, all on one bridge in a hub namespace.

    Node ``i`` (from 0) gets ``10.231.<net>.<i + 2>/24`` on ``eth0`` in namespace
    ``chaos-<tag>-<i>``; the other end of its veth is a port of bridge ``br0`` in namespace
    ``chaos-<tag>-hub``. Cutting a node's link sets that port down.
    """

    def __init__(self, cities: Sequence[str], *, net: int) -> None:
        self.tag = f"{os.getpid() % 100000}"
        self.hub = f"chaos-{self.tag}-hub"
        self.namespaces = {city: f"chaos-{self.tag}-{i}" for i, city in enumerate(cities)}
        self.hosts = {city: f"10.231.{net}.{i + 2}" for i, city in enumerate(cities)}
        self._ports = {city: f"p{i}" for i, city in enumerate(cities)}

    def build(self) -> None:
        """Create the namespaces, veth pairs and bridge (call :meth:`remove` even on failure)."""
        hub = self.hub
        run(["ip", "netns", "add", hub])
        self._in(hub, "ip", "link", "add", "br0", "type", "bridge")
        self._in(hub, "ip", "link", "set", "br0", "up")
        for city, ns in self.namespaces.items():
            port = self._ports[city]
            run(["ip", "netns", "add", ns])
            self._in(hub, "ip", "link", "add", port, "type", "veth", "peer", "name", "eth0")
            self._in(hub, "ip", "link", "set", "eth0", "netns", ns)
            self._in(hub, "ip", "link", "set", port, "master", "br0", "up")
            self._in(ns, "ip", "addr", "add", f"{self.hosts[city]}/24", "dev", "eth0")
            self._in(ns, "ip", "link", "set", "eth0", "up")
            self._in(ns, "ip", "link", "set", "lo", "up")

    def remove(self) -> None:
        """Delete every namespace made (their interfaces go with them); never raises."""
        for ns in [*self.namespaces.values(), self.hub]:
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                run(["ip", "netns", "del", ns], check=False)

    def prefix(self, city: str) -> list[str]:
        """The command prefix that runs a node inside its namespace."""
        return ["ip", "netns", "exec", self.namespaces[city]]

    def cut(self, city: str) -> None:
        """Take ``city``'s link down: nothing in or out."""
        self._in(self.hub, "ip", "link", "set", self._ports[city], "down")

    def join(self, city: str) -> None:
        """Bring ``city``'s link back up."""
        self._in(self.hub, "ip", "link", "set", self._ports[city], "up")

    def drop_egress(self, city: str) -> None:
        """Drop every packet ``city`` sends (one direction): a zero-length FIFO on its eth0."""
        self._in(
            self.namespaces[city],
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "pfifo",
            "limit",
            "0",
        )

    def allow_egress(self, city: str) -> None:
        """Undo :meth:`drop_egress`."""
        self._in(self.namespaces[city], "tc", "qdisc", "del", "dev", "eth0", "root")

    def call_in(self, city: str, work: Callable[[], T]) -> T:
        """Run ``work`` in a thread that joined ``city``'s namespace (e.g. an HTTP probe)."""
        path = f"/var/run/netns/{self.namespaces[city]}"

        def enter() -> None:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)

        with ThreadPoolExecutor(max_workers=1, initializer=enter) as pool:
            return pool.submit(work).result()

    def _in(self, ns: str, *argv: str) -> None:
        run(["ip", "netns", "exec", ns, *argv])


# --- a PostgreSQL cluster of our own ---------------------------------------------------------


def pg_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` holding ``initdb`` and ``pg_ctl``, if any."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    found = [b for b in found if (b / "pg_ctl").exists()]
    return max(found, key=lambda b: int(b.parent.name), default=None)


class PgCluster:
    """A throwaway cluster: data in ``root``, port ``port`` on 127.0.0.1, trust auth.

    Runs as the ``postgres`` user when we are root (``initdb`` refuses root).
    """

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin = bin_dir
        self.root = root
        self.data = root / "data"
        self.port = port
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """The server URL for :class:`~node.localnet.LocalFederation` (role ``postgres``)."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        """``initdb`` the cluster (trust on loopback, no fsync: it is thrown away)."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        argv = [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres"]
        run([*argv, "-A", "trust", "--no-sync"], user=self.user)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
            "-c max_connections=60"
        )
        log = self.root / "server.log"
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(log), "-o", options]
        run([*argv, "-w", "-t", "30", "start"], user=self.user)

    def stop_immediately(self) -> None:
        """``pg_ctl stop -m immediate``: the database disappears, as in a crash."""
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"]
        run(argv, user=self.user)

    def remove(self) -> None:
        """Stop the server if it runs and delete its files; never raises."""
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
            run(argv, check=False, user=self.user)
        shutil.rmtree(self.root, ignore_errors=True)


# --- a small disk ----------------------------------------------------------------------------


class Tmpfs:
    """A tmpfs of ``size`` mounted over ``directory``, keeping what was in it."""

    def __init__(self, directory: Path, size: str) -> None:
        self.directory = directory
        self.size = size
        self.mounted = False

    def mount(self) -> None:
        """Move the directory's files aside, mount the tmpfs, copy them back in (same modes)."""
        aside = self.directory.with_name(self.directory.name + ".aside")
        self.directory.rename(aside)
        self.directory.mkdir(mode=0o700)
        run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.size},mode=0700",
                "tmpfs",
                str(self.directory),
            ]
        )
        self.mounted = True
        shutil.copytree(aside, self.directory, dirs_exist_ok=True)
        shutil.rmtree(aside)

    def fill(self, name: str = "filler") -> int:
        """Write zeros to a file until the disk is full; return the bytes written."""
        written = 0
        chunk = b"\0" * (1 << 16)
        with (self.directory / name).open("wb") as f:
            try:
                while True:
                    f.write(chunk)
                    f.flush()
                    written += len(chunk)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                os.fsync(f.fileno())
        return written

    def free(self, name: str = "filler") -> None:
        """Delete the filler file."""
        (self.directory / name).unlink(missing_ok=True)

    def unmount(self) -> None:
        """Unmount (lazily, so a straggling process cannot block it); never raises.

        Stop the node first: what it wrote goes away with the tmpfs.
        """
        if self.mounted:
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                run(["umount", "-l", str(self.directory)], check=False)
            self.mounted = False
