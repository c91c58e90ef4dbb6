"""The deployment files in deploy/ are well-formed and name only paths and commands that exist.

Covers deploy/compose.yaml (three nodes, one PostgreSQL each, nothing shared), deploy/Dockerfile,
the container configs in deploy/config/, the systemd unit, the env file template and
deploy/local.sh. Every ``citynode`` command line they run or document is parsed by the real
argument parser. One test runs ``deploy/local.sh up`` for real and stops the nodes again.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from node.cli import build_parser
from node.config import load_config
from node.secrets_source import SECRET_ENV, SECRET_FILE_ENV

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CITIES = ("stockholm", "goteborg", "malmo")
CONFIG_IN_IMAGE = "/etc/citynode/citynode.toml"
AGREEMENT_IN_IMAGE = "/etc/citynode/agreement.toml"
DATA_IN_IMAGE = "/var/lib/citynode"


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return doc


def _nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if "citynode" in s.get("image", "")}


def _databases(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s["image"].startswith("postgres:")}


def _binds(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (host source, read-only) of a service's bind mounts (short syntax)."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith("."):
            binds[target] = (source, mode == ["ro"])
    return binds


def _named_volumes(service: dict[str, Any]) -> list[str]:
    return [v.split(":")[0] for v in service.get("volumes", []) if not v.startswith(".")]


def _parses_as_citynode(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert callable(args.handler), argv
    assert args.config is not None, f"{argv} names no --config"


def _api_port_of_healthcheck(command: str) -> int:
    match = re.search(r"urllib\.request\.urlopen\('http://127\.0\.0\.1:(\d+)/healthz'", command)
    assert match, f"the healthcheck does not ask /healthz with urllib: {command}"
    return int(match.group(1))


# --- compose ---------------------------------------------------------------------------------


def test_compose_runs_three_nodes_each_with_its_own_postgresql() -> None:
    compose = _compose()
    nodes, databases = _nodes(compose), _databases(compose)
    assert sorted(nodes) == sorted(CITIES)
    assert sorted(databases) == sorted(f"{city}-db" for city in CITIES)
    for city, node in nodes.items():
        assert node["depends_on"] == {f"{city}-db": {"condition": "service_healthy"}}
        assert databases[f"{city}-db"]["healthcheck"]["test"][0] == "CMD"
        assert "healthcheck" in node


def test_compose_shares_no_volume_database_or_database_network() -> None:
    compose = _compose()
    users: dict[str, list[str]] = {}
    for name, service in compose["services"].items():
        for volume in _named_volumes(service):
            users.setdefault(volume, []).append(name)
    assert set(users) == set(compose["volumes"])
    assert all(len(names) == 1 for names in users.values()), users

    urls = {}
    for city, node in _nodes(compose).items():
        source, read_only = _binds(node)[CONFIG_IN_IMAGE]
        assert read_only
        config = load_config(DEPLOY / source)
        assert config.city == city
        urls[city] = config.database.url
        host = config.database.url.split("@", 1)[1].split(":", 1)[0]
        assert host == f"{city}-db", "a node must use its own city's database"
        network = f"{city}-db"
        assert compose["networks"][network] == {"internal": True}
        members = sorted(n for n, s in compose["services"].items() if network in s["networks"])
        assert members == sorted([city, network])
    assert len(set(urls.values())) == len(CITIES)
    assert not any(":" in url.split("//", 1)[1].split("@", 1)[0] for url in urls.values()), (
        "a database URL carries a password"
    )


def test_compose_keeps_every_secret_in_a_git_ignored_file_outside_the_environment() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert SECRET_ENV not in environment, name
        assert "POSTGRES_PASSWORD" not in environment, name
        for key, value in environment.items():
            if key.endswith("_FILE") or key == "PGPASSFILE":
                target = PurePosixPath(value)
                assert target.parent == PurePosixPath("/run/secrets"), (name, key)
                assert target.name in {s["target"] for s in service["secrets"]}, (name, key)
    for node in _nodes(compose).values():
        assert node["environment"][SECRET_FILE_ENV] == "/run/secrets/operator_secret"
    for name, secret in compose["secrets"].items():
        path = (DEPLOY / secret["file"]).resolve()
        assert path.parent == DEPLOY / "secrets", name
        assert "*" in (DEPLOY / "secrets" / ".gitignore").read_text().splitlines()
        if shutil.which("git"):
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", str(path)], cwd=REPO, check=False
            )
            assert ignored.returncode == 0, f"{path} would be committed"


def test_compose_references_only_paths_that_exist() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == REPO
            assert (context / service["build"]["dockerfile"]).is_file()
        for target, (source, _) in _binds(service).items():
            assert (DEPLOY / source).exists(), f"{name}: {source} (for {target}) is missing"
    for node in _nodes(compose).values():
        binds = _binds(node)
        assert binds[AGREEMENT_IN_IMAGE] == ("./config/agreement.toml", True)
        assert f"{node['volumes'][0].split(':')[1]}" == DATA_IN_IMAGE


def test_compose_node_commands_and_documented_commands_parse() -> None:
    compose = _compose()
    for node in _nodes(compose).values():
        _parses_as_citynode(node["command"])
        assert node["command"][node["command"].index("--config") + 1] == CONFIG_IN_IMAGE
        port = _api_port_of_healthcheck(node["healthcheck"]["test"][-1])
        source, _ = _binds(node)[CONFIG_IN_IMAGE]
        assert port == load_config(DEPLOY / source).api.port
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    runs = re.findall(r"docker compose run --rm (\S+) (.+)$", text, re.M)
    assert {cmd.split()[0] for _, cmd in runs} >= {"init", "peers", "agreement"}
    for service, command in runs:
        assert service in compose["services"]
        _parses_as_citynode(shlex.split(command))


def test_container_configs_are_valid_and_the_draft_differs_only_in_endpoints() -> None:
    for city in CITIES:
        config = load_config(DEPLOY / "config" / f"{city}.toml")
        assert config.city == city
        assert str(config.data_dir) == DATA_IN_IMAGE
        assert config.agreement_path == DEPLOY / "config" / "agreement.toml"
    with (DEPLOY / "config" / "agreement.toml").open("rb") as f:
        ours = tomllib.load(f)
    with (REPO / "config" / "agreement.toml").open("rb") as f:
        theirs = tomllib.load(f)
    endpoints = {m["city"]: m.pop("endpoint") for m in ours["members"]}
    for member in theirs["members"]:
        del member["endpoint"]
    assert ours == theirs
    federation = load_config(DEPLOY / "config" / "stockholm.toml").federation.port
    assert endpoints == {city: f"https://{city}:{federation}" for city in CITIES}


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """The instructions of deploy/Dockerfile as (KEYWORD, arguments), continuations joined."""
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for raw in joined.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_copies_only_what_exists_and_runs_citynode_as_non_root() -> None:
    instructions = _dockerfile()
    keywords = [k for k, _ in instructions]
    assert keywords.count("FROM") == 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in " ".join(f"{k} {a}" for k, a in instructions)
    # BuildKit reads deploy/Dockerfile.dockerignore: everything excluded but what is let back in.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignore
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from="):
            *sources, _ = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert f"!{source}" in ignore, f"COPY {source}: excluded from the build context"
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert json.loads(dict(instructions)["VOLUME"]) == [DATA_IN_IMAGE]
    assert json.loads(dict(instructions)["ENTRYPOINT"]) == ["citynode"]
    command = json.loads(dict(instructions)["CMD"])
    _parses_as_citynode(command)
    assert command[command.index("--config") + 1] == CONFIG_IN_IMAGE
    for node in _nodes(_compose()).values():
        assert CONFIG_IN_IMAGE in _binds(node)
    assert not any(
        k == "ENV" and re.search(r"SECRET(?!_FILE)|PASSWORD", a) for k, a in instructions
    )


def test_dockerfile_healthcheck_asks_the_api_listener_without_curl() -> None:
    healthcheck = dict(_dockerfile())["HEALTHCHECK"]
    assert "curl" not in healthcheck
    port = _api_port_of_healthcheck(healthcheck)
    for city in CITIES:
        assert load_config(DEPLOY / "config" / f"{city}.toml").api.port == port


# --- systemd ---------------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "citynode@.service"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "CapabilityBoundingSet": "",
    "User": "citynode",
    "Restart": "on-failure",
}


def _unit() -> dict[str, list[str]]:
    """The [Service] section, each key with all its values in order."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_systemd_unit_has_the_hardening_options() -> None:
    unit = _unit()
    for key, value in HARDENING.items():
        assert unit.get(key) == [value], f"{key}= should be {value!r}, found {unit.get(key)}"
    assert "@system-service" in unit["SystemCallFilter"]
    assert unit["ReadWritePaths"] == ["/var/lib/citynode/%i"]
    assert unit["StateDirectory"] == ["citynode/%i"]


def test_systemd_unit_runs_a_real_command_and_takes_the_secret_as_a_credential() -> None:
    unit = _unit()
    (exec_start,) = unit["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/citynode/bin/citynode"  # made by the install step in the unit
    for city in CITIES:
        concrete = [arg.replace("%i", city) for arg in argv[1:]]
        _parses_as_citynode(concrete)
        config = concrete[concrete.index("--config") + 1]
        assert config == f"/etc/citynode/{city}.toml"
        assert (REPO / "config" / f"{city}.toml").is_file()  # what is installed there
    (credential,) = unit["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source == "/etc/citynode/credentials/%i.secret"
    assert f"{SECRET_FILE_ENV}=%d/{name}" in unit["Environment"]
    assert not any(SECRET_ENV + "=" in env for env in unit["Environment"])


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    units = Path("/usr/lib/systemd/system")
    if analyze is None or not units.is_dir():
        pytest.skip("systemd-analyze or the system's unit directory is not on this machine")
    # A root holding the system units, the unit, and the citynode command at its install path.
    shutil.copytree(units, tmp_path / "usr/lib/systemd/system", symlinks=True)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system" / UNIT.name)
    command = tmp_path / "opt/citynode/bin/citynode"
    command.parent.mkdir(parents=True)
    installed = shutil.which("citynode") or str(Path(sys.executable).with_name("citynode"))
    shutil.copy(installed, command)
    done = subprocess.run(
        [analyze, "verify", f"--root={tmp_path}", "citynode@stockholm.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", f"systemd-analyze warns: {done.stderr}"


# --- env file, local.sh ----------------------------------------------------------------------


def test_env_template_names_exactly_the_variables_citynode_reads() -> None:
    read = set()
    for source in (REPO / "src" / "node").rglob("*.py"):
        read |= set(re.findall(r"\"(CITYNODE_[A-Z_]+)\"", source.read_text(encoding="utf-8")))
    assert read == {SECRET_ENV, SECRET_FILE_ENV}
    template = (DEPLOY / "citynode.env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^#?(CITYNODE_[A-Z_]+)=", template, re.M))
    active = set(re.findall(r"^([A-Z_]+)=", template, re.M))
    assert named == read
    assert active <= read


def test_local_sh_is_valid_bash() -> None:
    script = DEPLOY / "local.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def _local_sh(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {SECRET_ENV, SECRET_FILE_ENV}}
    return subprocess.run(
        [str(DEPLOY / "local.sh"), "--json", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def _healthz(api: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{api}/healthz", timeout=5) as response:
            doc: dict[str, Any] = json.loads(response.read())
            return doc
    except (urllib.error.URLError, OSError):
        return None


@pytest.mark.slow
def test_local_sh_up_runs_three_healthy_nodes_and_down_stops_them(tmp_path: Path) -> None:
    root = tmp_path / "localnet"
    try:
        up = _local_sh("up", str(root))
        assert up.returncode == 0, up.stderr
        doc = json.loads(up.stdout)
        assert sorted(doc["cities"]) == sorted(CITIES)
        secret_file = Path(doc["secret_file"])
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert secret not in up.stdout
        assert secret not in up.stderr
        for city, node in doc["cities"].items():
            assert Path(node["data_dir"]).is_dir()
            assert node["federation"].startswith("https://127.0.0.1:")
            health = _healthz(node["api"])
            assert health is not None, city
            assert health["status"] == "ok", city
            assert health["city"] == city
        pids = [node["pid"] for node in doc["cities"].values()]
        assert _local_sh("status", str(root)).returncode == 0
    finally:
        down = _local_sh("down", str(root))
    assert down.returncode == 0, down.stderr
    stopped = json.loads(down.stdout)["cities"]
    assert all(node["pid"] is None for node in stopped.values())
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists()
            or b"serve" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )
    for node in doc["cities"].values():
        assert _healthz(node["api"]) is None
    assert _local_sh("status", str(root)).returncode == 3


def test_local_sh_status_without_a_federation_fails_and_names_the_directory(
    tmp_path: Path,
) -> None:
    done = _local_sh("status", str(tmp_path))
    assert done.returncode == 1
    assert done.stdout == ""
    assert f"localnet_cli: localnet: no local federation manifest in {tmp_path}" in done.stderr
