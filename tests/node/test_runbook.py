"""The operator runbook never describes a command or an option that does not exist.

Every ``citynode`` line in a shell block of docs/operator-runbook.md is parsed by the real
argument parser (nothing is run): a renamed command or a dropped option fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from node.cli import build_parser

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "operator-runbook.md"
_BLOCK = re.compile(r"```sh\n(.*?)```", re.S)


def _commands() -> list[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    lines = [line.strip() for block in _BLOCK.findall(text) for line in block.splitlines()]
    return [line for line in lines if line.startswith("citynode ")]


def test_runbook_has_the_procedures_of_a_first_setup() -> None:
    commands = " ".join(_commands())
    for step in (
        "init",
        "peers export",
        "peers import",
        "peers verify",
        "agreement propose",
        "agreement sign",
        "agreement adopt",
        "serve",
    ):
        assert f"citynode {step}" in commands


@pytest.mark.parametrize("line", _commands())
def test_runbook_command_parses_with_the_real_cli(line: str) -> None:
    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.handler)
    assert args.config is not None or "--file" in line
