"""The ``citynode`` command: one entry point, one subcommand per operator task.

Every subcommand takes ``--config`` (the node's TOML file) and ``--json`` (machine-readable output
on stdout, one JSON object). Errors go to stderr as one sentence with a stable code and a non-zero
exit status; they never contain personal data.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from protocol.cases import Role, mermaid

Handler = Callable[[argparse.Namespace], int]


def _cmd_flow(args: argparse.Namespace) -> int:
    """Draw the case state machine from the transition table the code runs."""
    role = Role(args.role) if args.role else None
    source = mermaid(role)
    if args.json:
        print(json.dumps({"format": args.format, "role": args.role, "source": source}))
    else:
        sys.stdout.write(source)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="the node's TOML configuration file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``citynode`` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="citynode",
        description="City node for the Storstadsutbytet federation.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    flow = sub.add_parser("flow", help="draw the case state machine (Mermaid)")
    _common(flow)
    flow.add_argument("--format", choices=["mermaid"], default="mermaid")
    flow.add_argument(
        "--role",
        choices=[r.value for r in Role],
        help="draw what one end sends and receives (default: the flow with each sender)",
    )
    flow.set_defaults(handler=_cmd_flow)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``citynode`` with ``argv`` (default: the process arguments) and return its exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
