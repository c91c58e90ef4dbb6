"""Running ``citynode demo`` as a process, and what its JSON must show (``node.demo``).

Shared by ``test_e2e_demo.py`` and ``test_e2e_no_leak.py`` through the session fixture
``demo_runs`` in ``conftest.py``: the demo runs once on SQLite with ``--keep`` (stopped with
``--stop`` at the end of the session) and once on PostgreSQL as ``make demo`` runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.localnet_support import citynode_argv

# The identity-location table the scenario must produce (node.demo's docstring).
IDENTITIES = {
    "case 1": {"stockholm": "decrypts", "goteborg": "decrypts", "malmo": "not a party"},
    "case 2": {"stockholm": "no identity", "goteborg": "not a party", "malmo": "no identity"},
    "case 3": {"stockholm": "decrypts", "goteborg": "not a party", "malmo": "decrypts"},
    "case 4": {"stockholm": "not a party", "goteborg": "decrypts", "malmo": "decrypts"},
    "case 5": {"stockholm": "no identity", "goteborg": "no identity", "malmo": "not a party"},
}


def run_demo(*args: str) -> dict[str, Any]:
    """Run ``citynode demo --json ARGS``; return its JSON, with ``_output`` (stdout + stderr)."""
    done = subprocess.run(
        [*citynode_argv(), "demo", "--json", *args],
        capture_output=True,
        timeout=240,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("CITYNODE_SECRET")},
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    doc: dict[str, Any] = json.loads(done.stdout)
    doc["_output"] = done.stdout + done.stderr
    return doc


@dataclass
class DemoRun:
    """One run of the demo on a backend: ``--keep`` on SQLite, plain on PostgreSQL."""

    backend: str
    root: Path
    pg_url: str | None
    doc: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        """Whether its nodes still run (until :meth:`stop`)."""
        return self.pg_url is None

    def start(self) -> None:
        """Run the demo."""
        extra = (
            ["--keep"] if self.kept else ["--database", "postgresql", "--pg-url", str(self.pg_url)]
        )
        self.doc = run_demo("--root", str(self.root), *extra)

    def stop(self) -> None:
        """``--stop`` it: the kept nodes must stop; no node may answer after."""
        if not self.doc:
            return
        extra = [] if self.pg_url is None else ["--pg-url", self.pg_url]
        stopped = run_demo("--root", str(self.root), "--stop", *extra)
        expected = ["goteborg", "malmo", "stockholm"] if self.kept else []
        assert sorted(stopped["stopped"]) == expected
        assert not any(answers(info["api"]) for info in self.doc["cities"].values())


def call(url: str, token: str | None = None, body: Any = None) -> tuple[int, bytes]:
    """One HTTP request to a node (JSON body if given); its status and body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def answers(api: str) -> bool:
    """Whether a node still answers on its case API listener."""
    try:
        call(f"{api}/healthz")
    except OSError:
        return False
    return True


def _events(doc: dict[str, Any], case: str) -> list[tuple[str, str, str]]:
    return [(e["actor"], e["action"], e["outcome"]) for e in doc["events"] if e["case"] == case]


def check_scenario(doc: dict[str, Any]) -> None:
    """Assert that the demo's JSON shows every step of the scenario, as ``node.demo`` says."""
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
