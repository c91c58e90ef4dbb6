"""One node's configuration: a TOML file parsed once, at the edge, into a frozen object tree.

Owns the file format of ``config/<city>.toml``. Invariants:

* :func:`load_config` either returns a complete, cross-checked :class:`NodeConfig` or raises a
  :class:`ConfigError` naming the file, the key path (``limits.batch_size``) and what is expected.
  Nothing else reads the file, and no raw dict leaves this module.
* Unknown keys are refused, so a typo can never silently fall back to a default.
* Relative paths in the file (``data_dir``, ``agreement``) are resolved against the directory of
  the file, never against the working directory; ``--data-dir`` (``data_dir_override``) is
  resolved against the working directory, as a command-line path is.
* The protocol's own limits are not repeated here: the ``[limits]`` table accepts every field of
  :class:`protocol.limits.Limits` by its name and builds one ``Limits`` from them, next to the
  limits that only the node uses (batching, queues, retries).
* Timing rules that keep messages deliverable are checked here, once (see :func:`_check_timing`):
  an encryption key outlives the longest retry of a message sealed to it, and a retried message
  is still inside the receiver's replay window.
* Error messages never echo a string from the file (a database URL can carry a password): they
  name the key, the type found and, for numbers, the number.

Layout (every key except ``city``, ``data_dir``, ``agreement`` and the two listener ports has a
default; listeners bind to ``127.0.0.1`` unless told otherwise)::

    city = "stockholm"          data_dir = "../var/stockholm"     agreement = "agreement.toml"
    log_level = "info"
    [federation] host, port     [api] host, port                  [database] url
    [limits]     protocol.limits.Limits fields + NodeLimits fields
    [keys]       encryption_rotation_days, encryption_grace_days
    [retention]  shred_case_key_after_days
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from node.errors import NodeError
from protocol.limits import DEFAULT_LIMITS, Limits

CITY_PATTERN: Final = re.compile(r"^[a-z][a-z0-9-]{0,63}$")  # as protocol.keys.CityName
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
SQLITE_DRIVER: Final = "sqlite+aiosqlite"
POSTGRES_DRIVER: Final = "postgresql+asyncpg"
DEFAULT_DATABASE_FILE: Final = "citynode.sqlite3"
DEFAULT_HOST: Final = "127.0.0.1"
# Room for the batch framing around one envelope in an inbox request body.
BATCH_FRAMING_ALLOWANCE: Final = 1024
_DAY_S: Final = 24 * 3600
_MAX_INT: Final = 2**63 - 1
_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


class ConfigError(NodeError):
    """The node's configuration file is missing, unreadable or wrong.

    Attributes:
        file: the configuration file.
        key: the dotted key path at fault (``limits.batch_size``), or ``None`` for the whole file.
    """

    code: ClassVar[str] = "config_invalid"

    def __init__(self, file: Path, key: str | None, expected: str) -> None:
        where = f"{file}: {key}" if key else str(file)
        super().__init__(f"{where}: {expected}")
        self.file = file
        self.key = key


@dataclass(frozen=True, slots=True)
class Listener:
    """Where one of the node's two HTTP listeners binds."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """The node's database.

    Attributes:
        url: a SQLAlchemy async URL (``sqlite+aiosqlite:///...`` or ``postgresql+asyncpg://...``).
            May contain a password: log :attr:`redacted_url` instead.
    """

    url: str

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite database."""
        return self.url.startswith(SQLITE_DRIVER + ":")

    @property
    def redacted_url(self) -> str:
        """The URL with any password masked, safe for logs and ``--json`` output."""
        return make_url(self.url).render_as_string(hide_password=True)


MIN_OUTBOX_POLL_S: Final = 0.001
MAX_OUTBOX_POLL_S: Final = 3600.0
_MAX_DOCUMENT_BYTES: Final = 240 * 1024 * 1024
"""Documents stay below the federation listener's 256 MiB stream cap, framing included."""


@dataclass(frozen=True, slots=True)
class NodeLimits:
    """Every bound the node applies, including the protocol's own.

    Attributes:
        protocol: the protocol's limits (envelope and body sizes, clock skew, replay window).
        max_request_bytes: the largest federation inbox request body, refused before it is read.
        max_api_request_bytes: the largest case API request body (attachments stream apart).
        batch_size: the most envelopes sent in one inbox request.
        max_queue_length: the most undelivered outbox messages per peer; beyond it new sends are
            refused with 503, never dropped.
        replay_capacity: the most remembered message ids; when full, new messages are refused.
        retry_base_s: the first retry delay; it doubles per failure, with jitter.
        retry_cap_s: the longest delay between two retries.
        alert_age_s: an undelivered message older than this raises an operator alert.
        max_retry_age_s: an undelivered message older than this stops being retried and is
            marked expired (visible and alerted, never silently dropped).
        max_case_document_bytes: the largest document a case worker may attach to a referral
            (checked before and while the upload is read; below the federation's stream cap).
        outbox_poll_s: how often an idle sender loop looks for messages queued by another
            process writing the same database (an operator tool): at most this long until it
            sends them. Messages queued by the node itself wake their loop at once.
    """

    protocol: Limits = DEFAULT_LIMITS
    max_request_bytes: int = 8 * 1024 * 1024
    max_api_request_bytes: int = 1024 * 1024
    batch_size: int = 64
    max_queue_length: int = 10_000
    replay_capacity: int = 1_000_000
    retry_base_s: float = 0.5
    retry_cap_s: float = 300.0
    alert_age_s: int = 3600
    max_retry_age_s: int = 6 * _DAY_S
    max_case_document_bytes: int = 200 * 1024 * 1024
    outbox_poll_s: float = 5.0


@dataclass(frozen=True, slots=True)
class KeySchedule:
    """When the node rotates its encryption key and how long it keeps the old ones.

    Attributes:
        encryption_rotation_days: a new encryption key every this many days.
        encryption_grace_days: an old encryption private key is kept this long after it stops
            being current, so messages sealed to it and still being retried can be opened.
    """

    encryption_rotation_days: int = 7
    encryption_grace_days: int = 8

    @property
    def encryption_rotation_s(self) -> int:
        """The rotation period in seconds."""
        return self.encryption_rotation_days * _DAY_S

    @property
    def encryption_grace_s(self) -> int:
        """The grace window in seconds."""
        return self.encryption_grace_days * _DAY_S


@dataclass(frozen=True, slots=True)
class Retention:
    """How long the node keeps what it can read.

    Attributes:
        shred_case_key_after_days: days after a case's closure before the receiving node
            destroys the case key (crypto-shredding the case).
    """

    shred_case_key_after_days: int = 365


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One node's whole configuration, cross-checked.

    Attributes:
        source: the configuration file it was read from (absolute).
        city: the node's city name, as in the agreement (``CITY_PATTERN``: lowercase letters,
            digits and ``-``, at most 64 characters).
        data_dir: absolute path of the data directory (keys, database, runtime files).
        federation: the node-to-node mTLS listener.
        api: the case API listener.
        database: the database.
        agreement_path: absolute path of the agreement file.
        limits: every bound.
        keys: the key rotation schedule.
        retention: retention rules.
        log_level: one of ``LOG_LEVELS``.
    """

    source: Path
    city: str
    data_dir: Path
    federation: Listener
    api: Listener
    database: DatabaseConfig
    agreement_path: Path
    limits: NodeLimits
    keys: KeySchedule
    retention: Retention
    log_level: str


def load_config(path: Path | str, *, data_dir_override: Path | str | None = None) -> NodeConfig:
    """Read and check one node's configuration file.

    Args:
        path: the TOML file.
        data_dir_override: a data directory replacing the file's ``data_dir`` (``--data-dir``),
            relative to the working directory; the default database follows it.

    Returns:
        The frozen configuration.

    Raises:
        ConfigError: the file is missing, not TOML, or any key is missing, unknown or wrong.
    """
    source = Path(path).resolve()
    try:
        with source.open("rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise ConfigError(source, None, f"cannot be read ({e.strerror})") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(source, None, f"is not valid TOML ({e})") from e
    root = _Table(source, "", document)
    city = root.string("city", pattern=CITY_PATTERN, expected="a lowercase city name")
    data_dir = root.path("data_dir")
    if data_dir_override is not None:
        data_dir = Path(data_dir_override).resolve()
    agreement_path = root.path("agreement")
    log_level = root.choice("log_level", LOG_LEVELS, default="info")
    federation = _listener(root.table("federation", required=True))
    api = _listener(root.table("api", required=True))
    if api.port == federation.port:
        raise ConfigError(source, "api.port", "must differ from federation.port")
    database = _database(root.table("database"), data_dir)
    limits = _limits(root.table("limits"))
    keys = _key_schedule(root.table("keys"))
    retention = _retention(root.table("retention"))
    root.refuse_unknown()
    _check_timing(source, limits, keys)
    return NodeConfig(
        source=source,
        city=city,
        data_dir=data_dir,
        federation=federation,
        api=api,
        database=database,
        agreement_path=agreement_path,
        limits=limits,
        keys=keys,
        retention=retention,
        log_level=log_level,
    )


class _Table:
    """A TOML table being read: typed getters that record which keys were used."""

    def __init__(self, file: Path, prefix: str, values: Mapping[str, object]) -> None:
        self.file = file
        self.prefix = prefix
        self.values = values
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def fail(self, name: str, expected: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), expected)

    def get(self, name: str) -> object | None:
        self.used.add(name)
        return self.values.get(name)

    def table(self, name: str, *, required: bool = False) -> _Table:
        raw = self.get(name)
        if raw is None and not required:
            raw = {}
        if not isinstance(raw, dict):
            need = "is required: " if raw is None else ""
            raise self.fail(name, f"{need}expected a table [{self.key(name)}]{_found(raw)}")
        return _Table(self.file, f"{self.key(name)}.", raw)

    def string(self, name: str, *, pattern: re.Pattern[str] | None = None, expected: str) -> str:
        raw = self.get(name)
        if not isinstance(raw, str) or not raw or (pattern and not pattern.fullmatch(raw)):
            rule = f" matching {pattern.pattern}" if pattern else ""
            need = "is required: " if raw is None else ""
            found = "" if isinstance(raw, str) else _found(raw)
            raise self.fail(name, f"{need}expected {expected}{rule}{found}")
        return raw

    def path(self, name: str) -> Path:
        raw = self.string(name, expected="a path (relative to the config file's directory)")
        return (self.file.parent / raw).resolve()

    def choice(self, name: str, options: tuple[str, ...], *, default: str) -> str:
        raw = self.get(name)
        if raw is None:
            return default
        if not isinstance(raw, str) or raw.lower() not in options:
            found = "" if isinstance(raw, str) else _found(raw)
            raise self.fail(name, f"expected one of {', '.join(options)}{found}")
        return raw.lower()

    def integer(self, name: str, default: int | None, *, low: int = 1, high: int = _MAX_INT) -> int:
        raw = self.get(name)
        if raw is None and default is not None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
            need = "is required: " if raw is None else ""
            span = f"an integer from {low} to {high}"
            if (low, high) == (1, _MAX_INT):
                span = "a positive integer"
            raise self.fail(name, f"{need}expected {span}{_found(raw)}")
        return raw

    def number(self, name: str, default: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw < 1e9:
            raise self.fail(name, f"expected a positive number of seconds{_found(raw)}")
        return float(raw)

    def refuse_unknown(self) -> None:
        for name in self.values:
            if name not in self.used:
                hint = difflib.get_close_matches(name, sorted(self.used), n=1)
                known = f"did you mean {self.key(hint[0])}?" if hint else "not a known setting"
                raise self.fail(name, f"unknown key: {known}")


_TYPE_NAMES: Final[dict[type, str]] = {
    bool: "a boolean",
    str: "a string",
    dict: "a table",
    list: "a list",
}


def _found(raw: object) -> str:
    """Say what was found. Numbers are shown; strings are not, as one may be a password."""
    if raw is None:
        return ""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return f", found {raw!r}"
    return f", found {_TYPE_NAMES.get(type(raw), type(raw).__name__)}"


def _listener(table: _Table) -> Listener:
    host = DEFAULT_HOST
    if table.values.get("host") is not None:
        host = table.string("host", expected="a host name or IP address to bind")
    table.used.add("host")
    if not _is_host(host):
        raise table.fail("host", "expected a host name or IP address to bind")
    port = table.integer("port", None, high=65535)
    table.refuse_unknown()
    return Listener(host=host, port=port)


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.split(".")
        return len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)
    return True


def _database(table: _Table, data_dir: Path) -> DatabaseConfig:
    raw = table.get("url")
    table.refuse_unknown()
    if raw is None:
        return DatabaseConfig(url=f"{SQLITE_DRIVER}:///{data_dir / DEFAULT_DATABASE_FILE}")
    expected = (
        f"a {POSTGRES_DRIVER}://user@host/db URL, or a {SQLITE_DRIVER}:////absolute/path URL "
        "(omit it for the default SQLite file in the data directory)"
    )
    if not isinstance(raw, str):
        raise table.fail("url", f"expected {expected}{_found(raw)}")
    try:
        url = make_url(raw)
    except ArgumentError as e:
        raise table.fail("url", f"expected {expected}; it does not parse as a URL") from e
    if url.drivername == SQLITE_DRIVER:
        if not url.database or not Path(url.database).is_absolute():
            raise table.fail("url", f"expected {expected}; the SQLite path must be absolute")
    elif url.drivername != POSTGRES_DRIVER or not url.database:
        raise table.fail("url", f"expected {expected}")
    return DatabaseConfig(url=raw)


def _limits(table: _Table) -> NodeLimits:
    protocol_fields = {f.name: f for f in dataclasses.fields(Limits)}
    overrides: dict[str, int] = {}
    for name, field in protocol_fields.items():
        default = field.default
        if isinstance(default, int) and not isinstance(default, bool):
            overrides[name] = table.integer(name, default)
    try:
        protocol = Limits(**overrides)
    except (TypeError, ValueError) as e:  # should Limits ever check its own fields
        raise ConfigError(table.file, "limits", f"inconsistent protocol limits ({e})") from e
    if protocol.max_body_bytes >= protocol.max_envelope_bytes:
        raise table.fail(
            "max_body_bytes",
            f"{protocol.max_body_bytes} must be smaller than limits.max_envelope_bytes "
            f"({protocol.max_envelope_bytes}): the envelope holds the body and more",
        )
    defaults = NodeLimits()
    limits = NodeLimits(
        protocol=protocol,
        max_request_bytes=table.integer("max_request_bytes", defaults.max_request_bytes),
        max_api_request_bytes=table.integer(
            "max_api_request_bytes", defaults.max_api_request_bytes
        ),
        batch_size=table.integer("batch_size", defaults.batch_size, high=100_000),
        max_queue_length=table.integer("max_queue_length", defaults.max_queue_length),
        replay_capacity=table.integer("replay_capacity", defaults.replay_capacity),
        retry_base_s=table.number("retry_base_s", defaults.retry_base_s),
        retry_cap_s=table.number("retry_cap_s", defaults.retry_cap_s),
        alert_age_s=table.integer("alert_age_s", defaults.alert_age_s),
        max_retry_age_s=table.integer("max_retry_age_s", defaults.max_retry_age_s),
        max_case_document_bytes=table.integer(
            "max_case_document_bytes", defaults.max_case_document_bytes, high=_MAX_DOCUMENT_BYTES
        ),
        outbox_poll_s=table.number("outbox_poll_s", defaults.outbox_poll_s),
    )
    table.refuse_unknown()
    if limits.max_request_bytes < protocol.max_envelope_bytes + BATCH_FRAMING_ALLOWANCE:
        raise table.fail(
            "max_request_bytes",
            f"{limits.max_request_bytes} must be at least limits.max_envelope_bytes + "
            f"{BATCH_FRAMING_ALLOWANCE} ({protocol.max_envelope_bytes + BATCH_FRAMING_ALLOWANCE}) "
            "so that one envelope always fits in a request",
        )
    if limits.retry_cap_s < limits.retry_base_s:
        raise table.fail(
            "retry_cap_s",
            f"{limits.retry_cap_s:g} must be at least limits.retry_base_s "
            f"({limits.retry_base_s:g})",
        )
    if not MIN_OUTBOX_POLL_S <= limits.outbox_poll_s <= MAX_OUTBOX_POLL_S:
        raise table.fail(
            "outbox_poll_s",
            f"expected from {MIN_OUTBOX_POLL_S:g} to {MAX_OUTBOX_POLL_S:g} seconds, "
            f"found {limits.outbox_poll_s:g}",
        )
    if limits.alert_age_s > limits.max_retry_age_s:
        raise table.fail(
            "alert_age_s",
            f"{limits.alert_age_s} must not exceed limits.max_retry_age_s "
            f"({limits.max_retry_age_s}): alert before a message expires",
        )
    return limits


def _key_schedule(table: _Table) -> KeySchedule:
    defaults = KeySchedule()
    schedule = KeySchedule(
        encryption_rotation_days=table.integer(
            "encryption_rotation_days", defaults.encryption_rotation_days, high=3650
        ),
        encryption_grace_days=table.integer(
            "encryption_grace_days", defaults.encryption_grace_days, high=3650
        ),
    )
    table.refuse_unknown()
    return schedule


def _retention(table: _Table) -> Retention:
    retention = Retention(
        shred_case_key_after_days=table.integer(
            "shred_case_key_after_days", Retention().shred_case_key_after_days, high=36500
        )
    )
    table.refuse_unknown()
    return retention


def _check_timing(source: Path, limits: NodeLimits, keys: KeySchedule) -> None:
    """Refuse settings under which an accepted message could become undeliverable.

    A message sealed to our encryption key just before it is rotated may be retried by the peer
    for ``max_retry_age_s`` (and the peer's clock may run ``max_clock_skew_s`` late): the old
    private key must outlive that. A retried message keeps its signed timestamp, so the retries
    must also end inside the receiver's replay window, or the receiver would refuse it as stale.
    """
    skew = limits.protocol.max_clock_skew_s
    if keys.encryption_grace_s <= limits.max_retry_age_s + skew:
        raise ConfigError(
            source,
            "keys.encryption_grace_days",
            f"{keys.encryption_grace_days} days ({keys.encryption_grace_s} s) must be longer than "
            f"limits.max_retry_age_s + limits.max_clock_skew_s "
            f"({limits.max_retry_age_s + skew} s), so that an "
            "old encryption key outlives the longest retry of a message sealed to it",
        )
    if limits.max_retry_age_s + skew > limits.protocol.max_message_age_s:
        raise ConfigError(
            source,
            "limits.max_retry_age_s",
            f"{limits.max_retry_age_s} plus limits.max_clock_skew_s ({skew}) must not exceed "
            f"limits.max_message_age_s ({limits.protocol.max_message_age_s}, the replay "
            "window), or late retries would be refused as stale",
        )
    if limits.retry_cap_s > limits.max_retry_age_s:
        raise ConfigError(
            source,
            "limits.retry_cap_s",
            f"{limits.retry_cap_s:g} must not exceed limits.max_retry_age_s "
            f"({limits.max_retry_age_s})",
        )
