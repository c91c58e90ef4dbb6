"""``citynode demo``: its options. The command itself is ``node.demo_command``, loaded only when
it runs, so that the other commands do not pay for the HTTP client and the scenario.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

from node.localnet import DEFAULT_DRAFT

DEFAULT_ROOT: Final = Path("var") / "demo"


def _cmd_demo(args: argparse.Namespace) -> int:
    from node.demo_command import run_command  # noqa: PLC0415 (see the module's docstring)

    return run_command(args)


def register(sub: Any) -> None:
    """Add ``citynode demo`` to the command parser."""
    demo = sub.add_parser(
        "demo", help="three city nodes on loopback and a whole case flow, end to end"
    )
    demo.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_DRAFT,
        help="the agreement draft the demo federation signs (default: config/agreement.toml)",
    )
    demo.add_argument("--json", action="store_true", help="print one JSON object at the end")
    demo.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="scratch directory (default: var/demo)"
    )
    demo.add_argument(
        "--keep", action="store_true", help="leave the nodes running and print their tokens"
    )
    demo.add_argument("--stop", action="store_true", help="stop the nodes a --keep run left")
    demo.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    demo.add_argument(
        "--pg-url", help="postgresql+asyncpg:// URL of a server where each node gets a database"
    )
    demo.set_defaults(handler=_cmd_demo)
