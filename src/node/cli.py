"""The ``citynode`` command: one entry point, one subcommand per operator task.

Every subcommand takes ``--config`` (the node's TOML file) and ``--json`` (machine-readable output
on stdout, one JSON object). Errors go to stderr as one sentence with a stable code and a non-zero
exit status; they never contain personal data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from node.cli_backup import register_backup
from node.cli_demo import register as register_demo
from node.cli_keys import register as register_keys
from node.cli_membership import register as register_membership
from node.cli_report import register as register_report
from node.cli_resend import register_resend
from node.cli_support import add_common, config_of, emit
from node.cli_users import register as register_users
from node.errors import NodeError
from node.keystore import KDF_PROFILES
from node.logs import configure_logging
from node.provision import create_node
from node.secrets_source import read_operator_secret
from node.service import Node
from node.storage.database import Database
from node.storage.outbox_store import OutboxStore
from protocol.cases import Role, mermaid
from protocol.errors import ProtocolError

Handler = Callable[[argparse.Namespace], int]


def _cmd_flow(args: argparse.Namespace) -> int:
    """Draw the case state machine from the transition table the code runs."""
    # matplotlib costs ~40 MiB of every node process: load it only when drawing.
    from node.flowchart import flow_svg  # noqa: PLC0415

    role = Role(args.role) if args.role else None
    source = flow_svg(role) if args.format == "svg" else mermaid(role)
    if args.out is not None:
        args.out.write_text(source, encoding="utf-8")
    if args.json:
        print(json.dumps({"format": args.format, "role": args.role, "source": source}))
    elif args.out is not None:
        print(f"Case flow ({args.format}) written to {args.out}")
    else:
        sys.stdout.write(source)
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    """Create the node: data directory, keys, database, first key-history entries."""
    config = config_of(args)
    secret = read_operator_secret(secret_file=args.secret_file, new=True)
    digits = asyncio.run(create_node(config, secret, kdf_params=KDF_PROFILES[args.kdf]))
    emit(
        args,
        {"city": config.city, "data_dir": str(config.data_dir), "fingerprint": digits},
        f"Initialised {config.city} in {config.data_dir}\nFingerprint (read it out to the "
        f"other operators): {digits}",
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    """Run the node until SIGTERM or SIGINT."""
    from node.serving import serve  # noqa: PLC0415 (the other commands never load the server)

    config = config_of(args)
    secret = read_operator_secret(secret_file=args.secret_file)

    async def run() -> None:
        node = await Node.open(config, secret)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await serve(node, stop)
        finally:
            await node.close()

    asyncio.run(run())
    return 0


def _cmd_outbox_status(args: argparse.Namespace) -> int:
    """Show the outbox per peer (reads the database only; no secret needed)."""
    config = config_of(args)

    async def load() -> list[dict[str, Any]]:
        db = await Database.connect(config.database.url)
        try:
            store = OutboxStore(db, time.time, limits=config.limits)
            return [
                {
                    "peer": st.peer,
                    "counts": {state.value: n for state, n in st.counts.items()},
                    "oldest_undelivered_age_s": st.oldest_undelivered_age_s,
                    "overdue": st.overdue,
                }
                for st in await store.status()
            ]
        finally:
            await db.close()

    peers = asyncio.run(load())
    lines = [
        f"{p['peer']}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(p["counts"].items()))
        + (f" (overdue {p['overdue']})" if p["overdue"] else "")
        for p in peers
    ] or ["outbox empty"]
    emit(args, {"peers": peers}, "\n".join(lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``citynode`` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="citynode",
        description="City node for the Storstadsutbytet federation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    flow = sub.add_parser("flow", help="draw the case state machine (Mermaid or SVG)")
    add_common(flow)
    flow.add_argument("--format", choices=["mermaid", "svg"], default="mermaid")
    flow.add_argument("--out", type=Path, metavar="FILE", help="write it to FILE, not stdout")
    flow.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="draw what one end sends and receives (default: the flow with each sender)",
    )
    flow.set_defaults(handler=_cmd_flow)

    init = sub.add_parser("init", help="create the node: keys, database, fingerprint")
    add_common(init)
    init.add_argument(
        "--kdf",
        choices=sorted(KDF_PROFILES),
        default="moderate",
        help="Argon2id cost protecting the keystore (moderate: production; interactive: demos)",
    )
    init.set_defaults(handler=_cmd_init)

    serve_cmd = sub.add_parser("serve", help="run the node")
    add_common(serve_cmd)
    serve_cmd.set_defaults(handler=_cmd_serve)

    register_keys(sub)

    outbox = sub.add_parser("outbox", help="the outgoing queue")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    status = outbox_sub.add_parser("status", help="messages per peer and delivery state")
    add_common(status)
    status.set_defaults(handler=_cmd_outbox_status)
    register_resend(outbox_sub)

    register_membership(sub)
    register_users(sub)
    register_report(sub)
    register_backup(sub)
    register_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``citynode`` with ``argv`` (default: the process arguments) and return its exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":  # other commands keep Python's default: warnings to stderr
        configure_logging(logging.INFO)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (NodeError, ProtocolError) as e:
        print(f"citynode: {e.code}: {e.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
