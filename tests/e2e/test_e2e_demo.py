"""``citynode demo`` as a test: the README's scenario, run as a real process, checked step by step.

The demo provisions three nodes by the operator procedure, starts three ``citynode serve``
processes with mutual TLS and drives the case flow through their case APIs. Here it runs once on
SQLite with ``--keep`` (then the kept nodes are used and stopped with ``--stop``) and once on
PostgreSQL (one database per node), and its JSON is checked against what the scenario must show:
each message receipted, the decline without identity, both rotations reaching both peers, the
quota refusal, the balance and its chart, and the identity-location table.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PG_URL_ENV

from node.localnet_support import citynode_argv

# The identity-location table the scenario must produce (node.demo's docstring).
IDENTITIES = {
    "case 1": {"stockholm": "decrypts", "goteborg": "decrypts", "malmo": "not a party"},
    "case 2": {"stockholm": "no identity", "goteborg": "not a party", "malmo": "no identity"},
    "case 3": {"stockholm": "decrypts", "goteborg": "not a party", "malmo": "decrypts"},
    "case 4": {"stockholm": "not a party", "goteborg": "decrypts", "malmo": "decrypts"},
    "case 5": {"stockholm": "no identity", "goteborg": "no identity", "malmo": "not a party"},
}


def _demo(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [*citynode_argv(), "demo", "--json", *args],
        capture_output=True,
        timeout=180,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("CITYNODE_SECRET")},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    doc: dict[str, Any] = json.loads(done.stdout)
    doc["_narration"] = done.stderr.decode()
    return doc


def _events(doc: dict[str, Any], case: str) -> list[tuple[str, str, str]]:
    return [(e["actor"], e["action"], e["outcome"]) for e in doc["events"] if e["case"] == case]


def _check_scenario(doc: dict[str, Any]) -> None:
    assert doc["identities"] == IDENTITIES
    assert doc["identities_decryptable"] == {"stockholm": 2, "goteborg": 2, "malmo": 2}

    first = _events(doc, "case 1")
    assert [action.split(" ")[0] for _, action, _ in first] == [
        "inquiry",
        "reply:",
        "document",
        "referral",
        "intake:",
        "progress",
        "closure:",
    ]
    assert all(
        outcome == "receipted" for _, action, outcome in first if action != "document attached"
    )
    assert first[0][0] == "stockholm/jarva"
    assert first[1][0] == "goteborg/hisingen"

    declined = _events(doc, "case 2")
    assert declined[1] == ("malmo/arbetsmarknad-social", "reply: decline", "receipted")
    assert len(declined) == 2  # no referral: the identity never travelled

    refused = [e for e in doc["events"] if e["outcome"] == "refused: quota_exceeded"]
    assert [e["case"] for e in refused] == ["case 5"]
    assert refused[0]["detail"]  # the reason is printed
    referrals = [e["detail"] for e in doc["events"] if e["action"].startswith("referral with")]
    assert referrals[0].startswith("relocation 1 of 2 for ")  # Stockholm's first, to Göteborg
    assert referrals[1].startswith("relocation 2 of 2 for ")  # Stockholm's second, to Malmö
    assert referrals[2].startswith("relocation 1 of 2 for ")  # Göteborg's first

    learned = [e["outcome"] for e in doc["events"] if e["action"].startswith("key update pushed")]
    assert sorted(o.split(" ")[0] for o in learned) == [
        "goteborg",
        "malmo",
        "stockholm",
        "stockholm",
    ]
    assert set(doc["rotations_s"]) == {"goteborg encryption", "malmo identity"}

    chart = Path(doc["chart"])
    assert b"<svg" in chart.read_bytes()[:2000]
    assert doc["balance"]["city"] == "stockholm"


def _get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


def _answers(api: str) -> bool:
    """Whether a node still answers on its case API listener."""
    try:
        _get(f"{api}/healthz")
    except OSError:
        return False
    return True


def test_demo_on_sqlite_runs_the_scenario_and_keeps_the_nodes_until_stopped(
    tmp_path: Path,
) -> None:
    root = tmp_path / "demo"
    doc = _demo("--root", str(root), "--keep")
    try:
        _check_scenario(doc)
        assert "Where each identity is stored" in doc["_narration"]
        for city, info in doc["cities"].items():
            assert set(info["tokens"]) >= {"coordinator"}
            assert info["cafile"] is None
            assert Path(info["data_dir"]).is_dir()
            assert _get(f"{info['api']}/api/v1/cases", info["tokens"]["coordinator"]) == 200
            assert _get(f"{info['api']}/api/v1/cases") == 401, city
        assert set(doc["cities"]["stockholm"]["tokens"]) == {
            "coordinator",
            "socialnamnden",
            "jarva",
            "farsta",
        }
        assert (root / "secret").stat().st_mode & 0o077 == 0
    finally:
        stopped = _demo("--root", str(root), "--stop")
    assert sorted(stopped["stopped"]) == ["goteborg", "malmo", "stockholm"]
    assert not any(_answers(info["api"]) for info in doc["cities"].values())


def test_demo_on_postgresql_runs_the_scenario_and_stops_every_node(tmp_path: Path) -> None:
    pg_url = os.environ.get(PG_URL_ENV)
    if not pg_url:
        pytest.skip(f"{PG_URL_ENV} is not set: no PostgreSQL server to run the demo on")
    root = tmp_path / "demo"
    try:
        doc = _demo("--root", str(root), "--database", "postgresql", "--pg-url", pg_url)
        _check_scenario(doc)
        assert all("tokens" not in info for info in doc["cities"].values())
        assert not any(_answers(info["api"]) for info in doc["cities"].values())
    finally:
        _demo("--root", str(root), "--stop", "--pg-url", pg_url)


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
