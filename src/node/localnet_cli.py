"""The command line of a local federation: ``python -m node.localnet_cli up|status|down``.

Owns the entry point behind ``deploy/local.sh``: the three city nodes as plain processes on this
machine, provisioned and run by :class:`~node.localnet.LocalFederation` (the operator procedure
through real ``citynode`` commands; nothing is provisioned here). Invariants:

* ``up`` provisions a federation under ``--root`` only when the root holds none yet (no
  ``localnet.json``), then starts every node that is not running, detached, so the nodes outlive
  this command; ``down`` stops them (SIGTERM, then SIGKILL after a timeout) and keeps every file;
  ``status`` reads pid files and ``/healthz`` and changes nothing.
* The operator secret is never printed. Given in the environment at the first ``up``
  (``CITYNODE_SECRET`` or ``CITYNODE_SECRET_FILE``, :mod:`node.secrets_source`) it is not
  stored, and later ``up`` runs need it again; otherwise a random one is generated and kept in
  :data:`SECRET_FILE` under the root, created ``0600`` in the ``0700`` root, and read back with
  the checks of :mod:`node.private_files`. ``status`` and ``down`` need no secret.
* Every wait is bounded (the timeouts of :mod:`node.localnet`); a failure is one line on stderr
  with a stable code and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from node.errors import NodeError
from node.keystore import KDF_PROFILES
from node.localnet import DEFAULT_CITIES, DEFAULT_DRAFT, MANIFEST, LocalFederation
from node.localnet_support import write_private
from node.secrets_source import (
    SECRET_ENV,
    SECRET_FILE_ENV,
    SecretUnavailable,
    read_operator_secret,
)

SECRET_FILE: Final = "operator-secret"  # noqa: S105  (a file name, not a secret)
DEFAULT_ROOT: Final = Path("var/localnet")
HEALTH_TIMEOUT_S: Final = 2.0
EXIT_NOT_RUNNING: Final = 3  # as `systemctl status`: some node is not running or not healthy


def secret_path(root: Path) -> Path:
    """Where ``up`` keeps the operator secret it generated for the federation under ``root``."""
    return root / SECRET_FILE


def _given_secret() -> str | None:
    """The secret given in the environment, or ``None`` when neither variable is set."""
    if not (os.environ.get(SECRET_ENV) or os.environ.get(SECRET_FILE_ENV)):
        return None
    secret = read_operator_secret(new=True, is_interactive=lambda: False)
    return secret.value.decode()


def _stored_secret(root: Path) -> str:
    """The federation's secret: the file ``up`` generated, else the environment's.

    Raises:
        SecretUnavailable: neither is there (or the file is open to others).
    """
    path = secret_path(root)
    if path.exists():
        return read_operator_secret(secret_file=path).value.decode()
    given = _given_secret()
    if given is None:
        raise SecretUnavailable(
            f"no {path}: this federation was created with a secret from the environment; "
            f"set {SECRET_ENV} or {SECRET_FILE_ENV} again"
        )
    return given


def _step(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def up(root: Path, *, kdf: str, draft: Path) -> LocalFederation:
    """Provision the federation under ``root`` if it has none, then start every node.

    Args:
        root: the federation's directory (absent or empty for a new one).
        kdf: the keystore's Argon2id profile of a new federation.
        draft: the agreement draft of a new federation.

    Returns:
        The running federation.

    Raises:
        LocalNetError: provisioning or a start failed; SecretUnavailable: no usable secret.
    """
    if (root / MANIFEST).exists():
        federation = LocalFederation.load(root, secret=_stored_secret(root), detach=True)
    else:
        given = _given_secret()
        print(f"Provisioning {', '.join(DEFAULT_CITIES)} in {root}:", file=sys.stderr)
        federation = LocalFederation.create(
            root, secret=given, kdf=kdf, draft=draft, on_step=_step, detach=True
        )
        if given is None:
            write_private(secret_path(root), federation.secret + "\n")
    federation.start_all()
    return federation


def health(url: str) -> str:
    """``/healthz``'s ``status`` at ``url`` (``ok``, ``degraded``), or ``unreachable``."""
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_TIMEOUT_S) as response:  # noqa: S310
            doc = json.loads(response.read())
    except urllib.error.HTTPError as e:  # 503 carries the document too
        try:
            doc = json.loads(e.read())
        except ValueError:
            return "unreachable"
    except (OSError, ValueError):
        return "unreachable"
    return str(doc.get("status", "unreachable")) if isinstance(doc, dict) else "unreachable"


def describe(federation: LocalFederation) -> dict[str, Any]:
    """Per city: pid, health and where to reach and find it (never the secret).

    Returns:
        ``{"root": ..., "secret_file": PATH or None, "cities": {city: {...}}}``.
    """
    cities: dict[str, Any] = {}
    for city in federation.nodes:
        pid = federation.pid(city)
        cities[city] = {
            "pid": pid,
            "health": health(f"{federation.api_url(city)}/healthz") if pid else "stopped",
            "federation": federation.federation_url(city),
            "api": federation.api_url(city),
            "data_dir": str(federation.data_dir(city)),
            "config": str(federation.config_path(city)),
            "log": str(federation.log_path(city)),
        }
    stored = secret_path(federation.root)
    return {
        "root": str(federation.root),
        "secret_file": str(stored) if stored.exists() else None,
        "cities": cities,
    }


def _print(doc: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, sort_keys=True))
        return
    for city, node in doc["cities"].items():
        state = f"pid {node['pid']}, {node['health']}" if node["pid"] else "stopped"
        print(f"{city}: {state}")
        print(f"  federation  {node['federation']}")
        print(f"  case API    {node['api']}  (/healthz, /metrics, /api/v1/)")
        print(f"  data dir    {node['data_dir']}")
        print(f"  config      {node['config']}")
        print(f"  log         {node['log']}")
    where = doc["secret_file"] or f"not stored: the one given in {SECRET_ENV}/{SECRET_FILE_ENV}"
    print(f"operator secret: {where}")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m node.localnet_cli``."""
    parser = argparse.ArgumentParser(
        prog="python -m node.localnet_cli",
        description="Run Stockholm, Göteborg and Malmö as plain processes on loopback.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("up", "provision (the first time) and start the three nodes"),
        ("status", "show whether each node runs and is healthy (exit 3 if not all are)"),
        ("down", "stop the three nodes, keeping their data"),
    ):
        command = sub.add_parser(name, help=text)
        command.add_argument(
            "--root",
            type=Path,
            default=DEFAULT_ROOT,
            help=f"the directory (default {DEFAULT_ROOT})",
        )
        command.add_argument("--json", action="store_true", help="print one JSON object")
        if name == "up":
            command.add_argument(
                "--kdf",
                choices=sorted(KDF_PROFILES),
                default="interactive",
                help="Argon2id cost of new keystores (interactive: local; moderate: production)",
            )
            command.add_argument(
                "--draft", type=Path, default=DEFAULT_DRAFT, help="the agreement draft"
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``up``, ``status`` or ``down`` and return the exit status.

    Args:
        argv: the arguments (default: the process's).

    Returns:
        0 on success; 1 on an error; 3 from ``status`` when a node is stopped or not healthy.
    """
    args = build_parser().parse_args(argv)
    root: Path = args.root.resolve()
    try:
        if args.command == "up":
            federation = up(root, kdf=args.kdf, draft=args.draft.resolve())
        else:
            federation = LocalFederation.load(root, secret="", detach=True)  # no secret needed
            if args.command == "down":
                federation.stop_all()
        doc = describe(federation)
    except NodeError as e:
        print(f"localnet_cli: {e.code}: {e.message}", file=sys.stderr)
        return 1
    _print(doc, as_json=args.json)
    healthy = all(node["health"] == "ok" for node in doc["cities"].values())
    return EXIT_NOT_RUNNING if args.command == "status" and not healthy else 0


if __name__ == "__main__":
    raise SystemExit(main())
