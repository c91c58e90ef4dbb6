"""``citynode demo`` as a test: the README's scenario, run as a real process, checked step by step.

The demo provisions three nodes by the operator procedure, starts three ``citynode serve``
processes with mutual TLS and drives the case flow through their case APIs. Its JSON is checked
against what the scenario must show (``demo_support.check_scenario``): each message receipted,
the decline without identity, both rotations reaching both peers, the quota refusal, the balance
and its chart, and the identity-location table. It runs on SQLite with ``--keep`` (stopped with
``--stop`` at the end of the session) and on PostgreSQL (one database per node) as ``make demo``
runs it, which must leave no node running (``conftest.demo_runs``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from demo_support import DemoRun, answers, call, check_scenario

from node.demo_api import DemoError
from node.demo_command import clear
from node.localnet_support import citynode_argv


def test_the_demo_shows_every_step_of_the_scenario(demo_run: DemoRun) -> None:
    check_scenario(demo_run.doc)
    output = demo_run.doc["_output"].decode()
    assert "Where each identity is stored" in output  # the table is printed too
    assert "No node can decrypt every identity" in output


def test_kept_nodes_serve_the_printed_tokens_and_nothing_without_one(
    demo_runs: dict[str, DemoRun],
) -> None:
    run = demo_runs["sqlite"]
    for city, info in run.doc["cities"].items():
        assert info["cafile"] is None
        assert Path(info["data_dir"]).is_dir()
        status, _ = call(f"{info['api']}/api/v1/cases", info["tokens"]["coordinator"])
        assert status == 200, city
        assert call(f"{info['api']}/api/v1/cases")[0] == 401, city
    assert set(run.doc["cities"]["stockholm"]["tokens"]) == {
        "coordinator",
        "socialnamnden",
        "jarva",
        "farsta",
    }
    assert set(run.doc["cities"]["goteborg"]["tokens"]) == {
        "coordinator",
        "nordost",
        "centrum",
        "hisingen",
    }
    assert (run.root / "secret").stat().st_mode & 0o077 == 0


def test_a_plain_demo_leaves_no_node_running_and_the_next_run_replaces_it(
    demo_runs: dict[str, DemoRun],
) -> None:
    if "postgresql" not in demo_runs:
        pytest.skip("the plain demo run is the PostgreSQL one: CITYNODE_TEST_PG_URL is not set")
    run = demo_runs["postgresql"]
    assert all("tokens" not in info for info in run.doc["cities"].values())
    assert not any(answers(info["api"]) for info in run.doc["cities"].values())
    scratch = Path(run.doc["cities"]["stockholm"]["data_dir"]).parents[1]
    assert scratch == run.root.resolve()
    assert (scratch / "logs" / "stockholm.log").stat().st_size > 0  # kept for reading


def test_the_next_demo_replaces_a_stopped_one_and_refuses_a_running_one(
    demo_runs: dict[str, DemoRun], tmp_path: Path
) -> None:
    running = demo_runs["sqlite"]
    with pytest.raises(DemoError, match="citynode demo --stop"):
        clear(running.root, None)
    assert (running.root / "localnet.json").exists()
    stopped = tmp_path / "stopped"
    (stopped / "logs").mkdir(parents=True)
    shutil.copy(running.root / "localnet.json", stopped / "localnet.json")
    clear(stopped, None)  # a manifest, no node running: the stopped demo's scratch goes
    assert not stopped.exists()


def test_demo_refuses_a_directory_that_holds_something_else(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    done = subprocess.run(
        [*citynode_argv(), "demo", "--root", str(tmp_path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert b"demo_failed" in done.stderr
    assert (tmp_path / "notes.txt").read_text() == "mine"
