"""The operator's view of real node processes: restarts, and the commands' refusals."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from e2e_support import SECRET

from node.localnet import LocalFederation, LocalNetError
from node.localnet_support import citynode_argv


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    """Run ``citynode serve`` in the foreground (it is expected to refuse, so bounded)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CITYNODE_SECRET")}
    return subprocess.run(
        [*citynode_argv(), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**env, "CITYNODE_SECRET": SECRET},
        timeout=60,
        check=False,
    )


def test_node_restart_keeps_its_keys_agreement_and_peers(federation: LocalFederation) -> None:
    federation.start("stockholm")
    health = federation.wait_healthy("stockholm")
    assert health["agreement_version"] == 1
    keys_before = federation.citynode("stockholm", "keys", "show")
    assert keys_before["fingerprint"] == federation.fingerprint("stockholm")

    assert federation.stop("stockholm") == 0
    federation.start("stockholm")
    health = federation.wait_healthy("stockholm")

    assert health["status"] == "ok"
    assert health["agreement_version"] == 1
    with ThreadPoolExecutor(max_workers=3) as pool:  # three commands, one node: all read-only
        keys, agreement, peers = pool.map(
            lambda command: federation.citynode("stockholm", *command),
            [("keys", "show"), ("agreement", "show"), ("peers", "list")],
        )
    assert keys == keys_before
    assert agreement["version"] == 1
    assert {m["city"]: m["fingerprint"] for m in agreement["members"]} == {
        city: federation.fingerprint(city) for city in federation.nodes
    }
    assert {p["city"]: (p["verified"], p["fingerprint"]) for p in peers["peers"]} == {
        city: (True, federation.fingerprint(city)) for city in ("goteborg", "malmo")
    }
    assert federation.stop("stockholm") == 0


def test_serve_refuses_to_start_without_an_adopted_agreement(tmp_path: Path) -> None:
    with LocalFederation.create(
        tmp_path / "solo", cities=("stockholm",), secret=SECRET, until="init"
    ) as solo:
        done = _serve(solo.config_path("stockholm"))
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("citynode: no_agreement: ")
    assert "adopt" in last
    assert "Traceback" not in done.stderr


def test_serve_refuses_a_database_migrated_by_a_newer_citynode(
    federation: LocalFederation,
) -> None:
    database = federation.data_dir("stockholm") / "citynode.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f999_from_the_future'")

    done = _serve(federation.config_path("stockholm"))

    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("citynode: storage_unavailable: ")
    assert "newer citynode" in last
    assert "Traceback" not in done.stderr
    with sqlite3.connect(database) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    assert revision == "f999_from_the_future"


def test_init_refuses_to_overwrite_an_existing_node(federation: LocalFederation) -> None:
    data_dir = federation.data_dir("stockholm")
    before = _digest_tree(data_dir)

    with pytest.raises(LocalNetError) as refused:
        federation.citynode("stockholm", "init", "--kdf", "interactive")

    assert "failed with status 1: citynode: keystore_exists: " in refused.value.message
    assert _digest_tree(data_dir) == before
