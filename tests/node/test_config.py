"""Node configuration: the shipped files load, and every kind of mistake is named precisely."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from node.config import (
    ConfigError,
    KeySchedule,
    NodeConfig,
    NodeLimits,
    Retention,
    load_config,
)
from protocol.limits import DEFAULT_LIMITS, Limits

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

MINIMAL = """\
city = "stockholm"
data_dir = "data"
agreement = "agreement.toml"

[federation]
host = "127.0.0.1"
port = 8443

[api]
host = "127.0.0.1"
port = 8081
"""


def write(tmp_path: Path, text: str, name: str = "node.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> NodeConfig:
    return load_config(write(tmp_path, text))


# --- the shipped files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("city", "federation_port", "api_port"),
    [("stockholm", 8443, 8081), ("goteborg", 8444, 8082), ("malmo", 8445, 8083)],
)
def test_each_city_config_in_the_repository_loads(
    city: str, federation_port: int, api_port: int
) -> None:
    config = load_config(CONFIG_DIR / f"{city}.toml")

    assert config.city == city
    assert config.federation.host == config.api.host == "127.0.0.1"
    assert (config.federation.port, config.api.port) == (federation_port, api_port)
    assert config.data_dir == (CONFIG_DIR.parent / "var" / city).resolve()
    assert config.agreement_path == CONFIG_DIR / "agreement.toml"
    assert config.database.url == f"sqlite+aiosqlite:///{config.data_dir}/citynode.sqlite3"
    assert config.database.is_sqlite
    assert config.keys.encryption_rotation_days == 7
    assert config.log_level == "info"


def test_city_configs_in_the_repository_state_every_default_explicitly() -> None:
    # The shipped files document each setting; their values must be the code's defaults, so the
    # comments and the code cannot drift apart unnoticed.
    minimal = NodeLimits()
    for city in ("stockholm", "goteborg", "malmo"):
        config = load_config(CONFIG_DIR / f"{city}.toml")
        assert config.limits == dataclasses.replace(minimal, protocol=DEFAULT_LIMITS)
        assert config.keys == KeySchedule()
        assert config.retention == Retention()


def test_three_city_nodes_can_run_side_by_side_on_one_host() -> None:
    configs = [load_config(CONFIG_DIR / f"{c}.toml") for c in ("stockholm", "goteborg", "malmo")]
    ports = [p for c in configs for p in (c.federation.port, c.api.port)]
    assert len(set(ports)) == len(ports)
    assert len({c.data_dir for c in configs}) == 3


# --- paths and defaults ---------------------------------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_directory_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = write(conf_dir, MINIMAL)
    monkeypatch.chdir(tmp_path)

    config = load_config(path.relative_to(tmp_path))

    assert config.source == path
    assert config.data_dir == conf_dir / "data"
    assert config.agreement_path == conf_dir / "agreement.toml"


def test_data_dir_override_replaces_the_file_and_the_default_database_follows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, MINIMAL)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    config = load_config(path, data_dir_override="copy-2")

    assert config.data_dir == work / "copy-2"
    assert config.database.url == f"sqlite+aiosqlite:///{work}/copy-2/citynode.sqlite3"


def test_data_dir_override_does_not_move_an_explicit_database(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://citynode@db.internal/citynode_stockholm"
    path = write(tmp_path, MINIMAL + f'[database]\nurl = "{url}"\n')

    config = load_config(path, data_dir_override=tmp_path / "other")

    assert config.data_dir == tmp_path / "other"
    assert config.database.url == url
    assert not config.database.is_sqlite


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)

    assert config.limits == NodeLimits()
    assert config.limits.protocol == DEFAULT_LIMITS
    assert config.keys == KeySchedule(encryption_rotation_days=7)
    assert config.retention == Retention()
    assert config.log_level == "info"


def test_protocol_limits_are_built_from_the_limits_table(tmp_path: Path) -> None:
    config = load_text(
        tmp_path, MINIMAL + "[limits]\nmax_clock_skew_s = 120\nmax_envelope_bytes = 300000\n"
    )

    assert isinstance(config.limits.protocol, Limits)
    assert config.limits.protocol == dataclasses.replace(
        DEFAULT_LIMITS, max_clock_skew_s=120, max_envelope_bytes=300000
    )


def test_every_integer_protocol_limit_can_be_set_by_its_own_name(tmp_path: Path) -> None:
    fields = [f for f in dataclasses.fields(Limits) if type(f.default) is int]
    lines = [f"{f.name} = {f.default}" for f in fields]

    config = load_text(tmp_path, MINIMAL + "[limits]\n" + "\n".join(lines) + "\n")

    assert config.limits.protocol == DEFAULT_LIMITS


def test_protocol_and_node_limit_names_do_not_collide() -> None:
    protocol_names = {f.name for f in dataclasses.fields(Limits)}
    node_names = {f.name for f in dataclasses.fields(NodeLimits)}
    assert protocol_names.isdisjoint(node_names)


def test_postgresql_url_is_accepted_and_its_password_is_redacted(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://citynode:s3cret-pw@db.internal:5432/citynode"
    config = load_text(tmp_path, MINIMAL + f'[database]\nurl = "{url}"\n')

    assert config.database.url == url
    assert "s3cret-pw" not in config.database.redacted_url
    assert "db.internal" in config.database.redacted_url


def test_listener_without_a_host_binds_to_loopback(tmp_path: Path) -> None:
    text = MINIMAL.replace('host = "127.0.0.1"\n', "").replace("[api]\n", '[api]\nhost = "::1"\n')
    config = load_text(tmp_path, text)
    assert config.federation.host == "127.0.0.1"
    assert config.api.host == "::1"


def test_log_level_is_case_insensitive(tmp_path: Path) -> None:
    assert load_text(tmp_path, 'log_level = "WARNING"\n' + MINIMAL).log_level == "warning"


def test_config_object_is_frozen(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.city = "malmo"  # type: ignore[misc]


# --- every kind of mistake ------------------------------------------------------------------------


def replace_line(old: str, new: str) -> str:
    assert old in MINIMAL
    return MINIMAL.replace(old, new)


MISTAKES = [
    # (id, file text, key path, words the message must contain)
    ("city_missing", replace_line('city = "stockholm"\n', ""), "city", "is required"),
    ("city_uppercase", replace_line('"stockholm"', '"Stockholm"'), "city", "matching"),
    ("city_with_space", replace_line('"stockholm"', '"stock holm"'), "city", "lowercase city"),
    ("city_too_long", replace_line('"stockholm"', '"' + "a" * 65 + '"'), "city", "matching"),
    ("city_not_a_string", replace_line('"stockholm"', "3"), "city", "found 3"),
    ("data_dir_missing", replace_line('data_dir = "data"\n', ""), "data_dir", "is required"),
    ("data_dir_empty", replace_line('"data"', '""'), "data_dir", "a path"),
    (
        "agreement_missing",
        replace_line('agreement = "agreement.toml"\n', ""),
        "agreement",
        "is required",
    ),
    (
        "agreement_a_list",
        replace_line('"agreement.toml"', '["a.toml"]'),
        "agreement",
        "found a list",
    ),
    ("log_level_unknown", 'log_level = "verbose"\n' + MINIMAL, "log_level", "one of debug"),
    (
        "federation_missing",
        MINIMAL.split("[federation]", maxsplit=1)[0] + '[api]\nhost = "::1"\nport = 1\n',
        "federation",
        "is required",
    ),
    (
        "federation_not_a_table",
        MINIMAL.replace("[federation]\n", "federation = 3\n[x]\n"),
        "federation",
        "a table",
    ),
    ("port_missing", replace_line("port = 8443\n", ""), "federation.port", "is required"),
    ("port_zero", replace_line("port = 8443", "port = 0"), "federation.port", "from 1 to 65535"),
    ("port_too_big", replace_line("port = 8081", "port = 70000"), "api.port", "found 70000"),
    (
        "port_a_string",
        replace_line("port = 8443", 'port = "8443"'),
        "federation.port",
        "found a string",
    ),
    ("port_a_boolean", replace_line("port = 8081", "port = true"), "api.port", "found a boolean"),
    (
        "host_invalid",
        replace_line('host = "127.0.0.1"\nport = 8443', 'host = "no such!"\nport = 8443'),
        "federation.host",
        "host name or IP",
    ),
    ("same_ports", replace_line("port = 8081", "port = 8443"), "api.port", "must differ"),
    ("unknown_top_level_key", "citty = 1\n" + MINIMAL, "citty", "did you mean city"),
    ("unknown_table", MINIMAL + "[limit]\nbatch_size = 3\n", "limit", "did you mean limits"),
    (
        "unknown_listener_key",
        replace_line("port = 8443", "port = 8443\nhots = 1"),
        "federation.hots",
        "did you mean federation.host",
    ),
    (
        "unknown_limit_key",
        MINIMAL + "[limits]\nbatchsize = 3\n",
        "limits.batchsize",
        "did you mean limits.batch_size",
    ),
    ("unknown_without_hint", MINIMAL + "[limits]\nfoo = 3\n", "limits.foo", "unknown key"),
    (
        "database_url_not_a_string",
        MINIMAL + "[database]\nurl = 5\n",
        "database.url",
        "postgresql+asyncpg",
    ),
    (
        "database_url_wrong_driver",
        MINIMAL + '[database]\nurl = "postgresql://h/db"\n',
        "database.url",
        "postgresql+asyncpg",
    ),
    (
        "database_url_unparsable",
        MINIMAL + '[database]\nurl = "not a url"\n',
        "database.url",
        "does not parse",
    ),
    (
        "database_sqlite_relative",
        MINIMAL + '[database]\nurl = "sqlite+aiosqlite:///x.db"\n',
        "database.url",
        "must be absolute",
    ),
    (
        "database_sqlite_memory",
        MINIMAL + '[database]\nurl = "sqlite+aiosqlite://"\n',
        "database.url",
        "must be absolute",
    ),
    (
        "database_no_name",
        MINIMAL + '[database]\nurl = "postgresql+asyncpg://h"\n',
        "database.url",
        "postgresql+asyncpg",
    ),
    (
        "database_unknown_key",
        MINIMAL + '[database]\nuri = "x"\n',
        "database.uri",
        "did you mean database.url",
    ),
    ("batch_size_zero", MINIMAL + "[limits]\nbatch_size = 0\n", "limits.batch_size", "found 0"),
    (
        "batch_size_fraction",
        MINIMAL + "[limits]\nbatch_size = 1.5\n",
        "limits.batch_size",
        "an integer",
    ),
    (
        "protocol_limit_a_string",
        MINIMAL + '[limits]\nmax_clock_skew_s = "300"\n',
        "limits.max_clock_skew_s",
        "found a string",
    ),
    (
        "protocol_limit_negative",
        MINIMAL + "[limits]\nmax_envelope_bytes = -1\n",
        "limits.max_envelope_bytes",
        "a positive integer, found -1",
    ),
    (
        "body_not_below_envelope",
        MINIMAL + "[limits]\nmax_body_bytes = 262144\n",
        "limits.max_body_bytes",
        "smaller than limits.max_envelope_bytes",
    ),
    (
        "request_smaller_than_envelope",
        MINIMAL + "[limits]\nmax_request_bytes = 262144\n",
        "limits.max_request_bytes",
        "one envelope always fits",
    ),
    (
        "retry_base_negative",
        MINIMAL + "[limits]\nretry_base_s = -1\n",
        "limits.retry_base_s",
        "positive number",
    ),
    (
        "retry_cap_below_base",
        MINIMAL + "[limits]\nretry_base_s = 10\nretry_cap_s = 5\n",
        "limits.retry_cap_s",
        "at least limits.retry_base_s",
    ),
    (
        "alert_after_expiry",
        MINIMAL + "[limits]\nalert_age_s = 700000\n",
        "limits.alert_age_s",
        "must not exceed limits.max_retry_age_s",
    ),
    (
        "grace_not_longer_than_retries",
        MINIMAL + "[keys]\nencryption_grace_days = 6\n",
        "keys.encryption_grace_days",
        "outlives the longest retry",
    ),
    (
        "retries_outlive_replay_window",
        MINIMAL + "[limits]\nmax_retry_age_s = 604800\n[keys]\nencryption_grace_days = 9\n",
        "limits.max_retry_age_s",
        "replay window",
    ),
    (
        "retry_cap_beyond_retry_age",
        MINIMAL + "[limits]\nmax_retry_age_s = 3600\nalert_age_s = 60\nretry_cap_s = 7200\n",
        "limits.retry_cap_s",
        "must not exceed limits.max_retry_age_s",
    ),
    (
        "rotation_zero",
        MINIMAL + "[keys]\nencryption_rotation_days = 0\n",
        "keys.encryption_rotation_days",
        "an integer from 1",
    ),
    (
        "retention_negative",
        MINIMAL + "[retention]\nshred_case_key_after_days = -1\n",
        "retention.shred_case_key_after_days",
        "found -1",
    ),
    (
        "retention_unknown_key",
        MINIMAL + "[retention]\nkeep_days = 3\n",
        "retention.keep_days",
        "unknown key",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "words"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_config_mistake_is_refused_naming_file_key_and_expectation(
    tmp_path: Path, text: str, key: str, words: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    error = caught.value
    assert error.file == path
    assert error.key == key
    assert error.code == "config_invalid"
    message = str(error)
    assert message.startswith(f"{path}: {key}: ")
    assert words in message


def test_missing_config_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot be read") as caught:
        load_config(path)
    assert caught.value.file == path
    assert caught.value.key is None
    assert str(path) in str(caught.value)


def test_config_that_is_not_toml_is_refused_with_the_parser_position(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "[limits\n")
    with pytest.raises(ConfigError, match=r"is not valid TOML \(.*line 12") as caught:
        load_config(path)
    assert caught.value.key is None


def test_config_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_bytes(MINIMAL.encode() + b'log_level = "\xff"\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path)


def test_config_error_never_echoes_a_string_value_such_as_a_database_password(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, MINIMAL + '[database]\nurl = "mysql://citynode:hunter2@db/x"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "hunter2" not in str(caught.value)
    assert caught.value.key == "database.url"
