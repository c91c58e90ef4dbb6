"""`citynode flow` draws the state machine from the very table the code runs.

Mermaid and SVG alike; ``docs/case-flow.md`` and ``docs/case-flow.svg`` must show what it draws.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from node.cli import main
from node.flowchart import START, flow_edges, flow_picture, flow_svg, layout
from protocol.cases import TERMINAL_STATES, TRANSITIONS, CaseState, Role


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


# --- the picture, and the docs drawn from the same table ------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs"
_MERMAID_BLOCK = re.compile(r"```mermaid\n(.*?)```", re.DOTALL)


def _texts(svg: str) -> list[str]:
    """Every text line of an SVG drawn by matplotlib (text is kept as ``<text>``)."""
    root = ElementTree.fromstring(svg)
    found = [element.text or "" for element in root.iter("{http://www.w3.org/2000/svg}text")]
    return sorted(found)


def test_flow_svg_draws_every_state_and_every_step_of_the_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["flow", "--format", "svg"]) == 0
    texts = _texts(capsys.readouterr().out)
    for state in CaseState:
        assert state.value in texts
    for edge in flow_edges():
        for label in edge.labels:
            assert label in texts or f"\u21bb {label}" in texts


@pytest.mark.parametrize("role", [None, Role.HOME, Role.RECEIVING])
def test_the_arrows_of_the_picture_are_the_transitions_of_the_table(role: Role | None) -> None:
    table = {(str(s), str(new)) for (r, s, _), new in TRANSITIONS.items() if role in (None, r)}
    drawn = {(e.source, e.target) for e in flow_edges(role) if START not in (e.source, e.target)}
    assert drawn == table


def test_layout_places_every_state_once_with_open_states_on_the_main_line() -> None:
    placed = layout(flow_edges())
    assert sorted([*placed.cells, *placed.bars]) == sorted(s.value for s in CaseState)
    assert placed.main[0] == CaseState.NEW
    assert not {CaseState(s) for s in placed.main} & TERMINAL_STATES
    assert len(set(placed.cells.values())) == len(placed.cells)  # no two boxes on one spot


def test_flow_svg_out_writes_the_file_and_a_png_can_be_drawn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "flow.svg"
    assert main(["flow", "--format", "svg", "--role", "receiving", "--out", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    assert out.read_text("utf-8") == flow_svg(Role.RECEIVING)
    assert flow_picture("png").startswith(b"\x89PNG\r\n\x1a\n")


def test_docs_case_flow_embeds_exactly_what_citynode_flow_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocks = _MERMAID_BLOCK.findall((DOCS / "case-flow.md").read_text("utf-8"))
    printed = []
    for role in ([], ["--role", "home"], ["--role", "receiving"]):
        assert main(["flow", *role]) == 0
        printed.append(capsys.readouterr().out)
    assert blocks == printed, "regenerate docs/case-flow.md with citynode flow"


def test_docs_case_flow_svg_shows_what_citynode_flow_draws() -> None:
    on_disk = (DOCS / "case-flow.svg").read_text("utf-8")
    assert _texts(on_disk) == _texts(flow_svg()), (
        "regenerate it: citynode flow --format svg --out docs/case-flow.svg"
    )
