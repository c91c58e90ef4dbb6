"""Shared plumbing of the ``citynode`` subcommands: options, config, secret, output.

Every subcommand takes ``--config`` and ``--json`` (and ``--data-dir``, ``--secret-file``);
output goes through :func:`emit` so ``--json`` always prints exactly one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from node.config import NodeConfig, load_config
from node.errors import NodeError
from node.secrets_source import read_operator_secret
from node.service import Node

T = TypeVar("T")


def add_common(parser: argparse.ArgumentParser) -> None:
    """Add the options every subcommand takes."""
    parser.add_argument("--config", type=Path, help="the node's TOML configuration file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--data-dir", type=Path, help="override the config's data directory")
    parser.add_argument(
        "--secret-file", type=Path, help="read the operator secret from this file (mode 0600)"
    )


def emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    """Print ``doc`` as JSON with ``--json``, else the human ``text``."""
    if args.json:
        print(json.dumps(doc, sort_keys=True, ensure_ascii=False))
    else:
        print(text)


def config_of(args: argparse.Namespace) -> NodeConfig:
    """Load the node's configuration named by ``--config`` (and ``--data-dir``).

    Raises:
        NodeError: no ``--config`` given; ConfigError: the file is wrong.
    """
    if args.config is None:
        raise NodeError("--config FILE is required")
    return load_config(args.config, data_dir_override=args.data_dir)


def with_node(args: argparse.Namespace, action: Callable[[Node], Awaitable[T]]) -> T:
    """Unlock the node named by the options, run ``action`` on it, and close it."""
    config = config_of(args)
    secret = read_operator_secret(secret_file=args.secret_file)

    async def run() -> T:
        node = await Node.open(config, secret)
        try:
            return await action(node)
        finally:
            await node.close()

    return asyncio.run(run())
