"""`citynode flow` draws the state machine from the very table the code runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from node.cli import main
from protocol.cases import TRANSITIONS, CaseState


def test_flow_prints_every_state_of_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flow"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("stateDiagram-v2\n")
    for (_role, state, _event), new in TRANSITIONS.items():
        assert f"{state} --> {new}" in out
    assert {s.value for s in CaseState} <= set(out.replace(":", " ").split())


def test_flow_json_carries_the_mermaid_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flow", "--json", "--role", "home"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "mermaid"
    assert doc["role"] == "home"
    assert doc["source"].startswith("stateDiagram-v2")


def test_flow_unknown_role_is_refused_with_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["flow", "--role", "police"])
    assert exc.value.code == 2


def test_citynode_console_script_runs_as_a_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "node.cli", "flow"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "awaiting_reply" in done.stdout
