"""The parts of the local federation, without starting a node: files, ports, processes."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from node.config import load_config
from node.localnet import DEFAULT_DRAFT, LocalFederation
from node.localnet_support import (
    HOST,
    LocalNetError,
    NodeProcess,
    agreement_draft,
    config_text,
    free_ports,
    pg_url_for,
    toml_document,
)
from protocol.agreement_draft import draft_from_toml


def test_agreement_draft_keeps_the_terms_and_puts_members_at_the_given_endpoints() -> None:
    endpoints = {"malmo": "https://127.0.0.1:21001", "stockholm": "https://127.0.0.1:21002"}

    content, threshold = agreement_draft(DEFAULT_DRAFT, endpoints)

    written = tomllib.loads(content)
    with DEFAULT_DRAFT.open("rb") as f:
        original = tomllib.load(f)
    assert [(m["city"], m["endpoint"]) for m in written["members"]] == list(endpoints.items())
    assert written["members"][1]["units"] == original["members"][0]["units"]
    assert written["valid_until"] == original["valid_until"] == datetime.date(2028, 12, 31)
    assert written["title"] == original["title"]
    assert threshold == written["signing_threshold"] == 2
    draft_from_toml(written)  # the protocol accepts it


def test_agreement_draft_gives_an_unknown_city_one_unit_and_a_majority_threshold() -> None:
    cities = ["stockholm", "goteborg", "malmo", "uppsala", "lund"]
    content, threshold = agreement_draft(
        DEFAULT_DRAFT, {c: f"https://127.0.0.1:{22000 + i}" for i, c in enumerate(cities)}
    )
    written = tomllib.loads(content)
    assert threshold == 3
    assert written["members"][3]["units"] == [
        {"id": "socialnamnden", "display_name": "Socialnämnden"}
    ]
    draft_from_toml(written)


def test_toml_document_round_trips_escapes_and_nested_tables() -> None:
    doc = {
        "title": 'Avtal "Göteborg"\n\\ slut\t\u0001',
        "n": 3,
        "ok": True,
        "day": datetime.date(2026, 1, 1),
        "levels": ["low", "moderate"],
        "members": [{"city": "a", "units": [{"id": "x"}, {"id": "y"}]}, {"city": "b"}],
    }
    assert tomllib.loads(toml_document(doc)) == doc


def test_config_text_is_a_valid_node_config(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "goteborg.toml"
    path.write_text(
        config_text(
            "goteborg",
            federation_port=21010,
            api_port=21011,
            data_dir="../data/goteborg",
            database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/citynode_x_goteborg",
            limits={"batch_size": 16, "retry_base_s": 0.25},
            log_level="debug",
        )
    )

    config = load_config(path)

    assert config.city == "goteborg"
    assert config.data_dir == tmp_path / "data" / "goteborg"
    assert (config.federation.host, config.federation.port) == (HOST, 21010)
    assert config.api.port == 21011
    assert config.database.url.endswith("/citynode_x_goteborg")
    assert config.limits.batch_size == 16
    assert config.limits.retry_base_s == 0.25
    assert config.log_level == "debug"


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = free_ports(6)
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert len(set(ports)) == 6
    assert all(20000 <= port < low for port in ports)


def test_pg_url_for_swaps_only_the_database() -> None:
    url = pg_url_for(
        "postgresql+asyncpg://citynode:pw@db.internal:5433/postgres", "citynode_t_lund"
    )
    assert url == "postgresql+asyncpg://citynode:pw@db.internal:5433/citynode_t_lund"


def test_create_refuses_a_non_empty_root_and_touches_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("operator notes")
    with pytest.raises(LocalNetError, match="not empty"):
        LocalFederation.create(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def _sleeper(config: Path) -> subprocess.Popen[bytes]:
    """A stand-in process whose command line names ``serve`` and a config, as a node's does."""
    code = "import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code, "serve", "--config", str(config)])
    deadline = time.monotonic() + 5
    while b"serve" not in Path(f"/proc/{child.pid}/cmdline").read_bytes():  # until it has exec'd
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return child


def test_node_process_stops_a_node_started_by_another_process_by_its_pid_file(
    tmp_path: Path,
) -> None:
    config = tmp_path / "stockholm.toml"
    pid_file = tmp_path / "stockholm.pid"
    other = _sleeper(config)
    try:
        pid_file.write_text(f"{other.pid}\n")
        process = NodeProcess(
            "stockholm", config=config, log=tmp_path / "log", pid_file=pid_file, env={}
        )
        assert process.pid() == other.pid
        assert process.terminate() == other.pid
        other.wait(timeout=5)  # reap it as its parent, so /proc forgets it
        assert process.finish(other.pid, timeout_s=5) == 0
        assert process.pid() is None
        assert not pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_node_process_never_signals_a_pid_that_now_belongs_to_another_program(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "stockholm.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # a reused pid: this test process
    process = NodeProcess(
        "stockholm",
        config=tmp_path / "stockholm.toml",
        log=tmp_path / "log",
        pid_file=pid_file,
        env={},
    )
    assert process.pid() is None
    assert process.terminate() is None
    with pytest.raises(LocalNetError, match="not running"):
        process.kill()
