"""``citynode users`` and ``citynode audit`` on a provisioned node, in-process through ``main``.

The node is Stockholm alone under a one-member agreement (its unit: ``socialnamnden``),
provisioned once per session by the operators' procedure (``node_fixtures``) and copied per test.
The commands are backend-agnostic; the stores under them are tested on both backends in
``test_users.py`` and ``test_audit.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from node_fixtures import SECRET, copy_federation, federation_template

from node.access import Principal, Unauthenticated, UserRole
from node.audit import AuditTrail
from node.cli import main
from node.storage.database import Database
from node.users import UserStore

CITY = ("stockholm",)
TOKEN_FORMAT = re.compile(r"^cn_[A-Za-z0-9_-]{43}$")


@dataclass
class Console:
    """Runs ``citynode`` commands against one node and returns what they printed."""

    config: Path
    secret: Path
    database_url: str
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str, secret: bool = True, config: bool = True) -> tuple[int, str, str]:
        argv = list(args)
        if config:
            argv += ["--config", str(self.config)]
        if secret:
            argv += ["--secret-file", str(self.secret)]
        self.capsys.readouterr()
        code = main(argv)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *args: str, secret: bool = True) -> dict[str, Any]:
        code, out, err = self.run(*args, "--json", secret=secret)
        assert code == 0, err
        doc: dict[str, Any] = json.loads(out)
        return doc

    def sqlite_file(self) -> Path:
        return Path(self.database_url.removeprefix("sqlite+aiosqlite:///"))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return federation_template(tmp_path_factory, CITY)


@pytest.fixture
def console(template: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Console:
    federation = copy_federation(template, tmp_path / "fed", CITY)
    config = federation.configs["stockholm"]
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET.value)
    secret.chmod(0o600)
    return Console(config.source, secret, config.database.url, capsys)


async def _authenticate(url: str, token: str) -> Principal:
    db = await Database.connect(url)
    try:
        return await UserStore(db, time.time).authenticate(token, time.time())
    finally:
        await db.close()


def authenticate(console: Console, token: str) -> Principal:
    return asyncio.run(_authenticate(console.database_url, token))


def test_users_are_added_given_tokens_listed_and_revoked(console: Console) -> None:
    added = console.json(
        "users", "add", "anna.berg", "--role", "caseworker", "--unit", "socialnamnden"
    )
    assert (added["role"], added["unit"]) == ("caseworker", "socialnamnden")
    console.json("users", "add", "sara", "--role", "coordinator")

    issued = console.json("users", "token", "anna.berg", "--ttl-days", "7")
    token = issued["token"]
    assert TOKEN_FORMAT.fullmatch(token)
    assert authenticate(console, token) == Principal(
        "anna.berg", UserRole.CASEWORKER, "socialnamnden"
    )

    code, out, _ = console.run("users", "list")
    assert code == 0
    assert "anna.berg: caseworker in socialnamnden, 1 token(s)" in out
    assert token not in out
    listed = {u["name"]: u for u in console.json("users", "list")["users"]}
    assert listed["sara"]["unit"] is None

    revoked = console.json("users", "revoke", "anna.berg")
    assert revoked["tokens_revoked"] == 1
    with pytest.raises(Unauthenticated):
        authenticate(console, token)


def test_a_token_is_printed_once_for_people_too(console: Console) -> None:
    console.json("users", "add", "sara", "--role", "coordinator")
    code, out, _ = console.run("users", "token", "sara")
    assert code == 0
    assert "shown only this once" in out
    (token,) = [line for line in out.splitlines() if TOKEN_FORMAT.fullmatch(line)]
    assert authenticate(console, token).role is UserRole.COORDINATOR


@pytest.mark.parametrize(
    "unit_args",
    [["--unit", "nordost"], [], ["--unit", "farsta"]],
    ids=["other-citys-unit", "no-unit", "unit-not-in-this-agreement"],
)
def test_a_caseworker_needs_a_unit_of_this_city_in_the_adopted_agreement(
    console: Console, unit_args: list[str]
) -> None:
    code, _, err = console.run("users", "add", "anna.berg", "--role", "caseworker", *unit_args)
    assert code == 1
    assert err.startswith("citynode: invalid_unit:")
    assert "socialnamnden" in err  # the units there are
    assert console.json("users", "list")["users"] == []


def test_a_coordinator_with_a_unit_is_refused(console: Console) -> None:
    code, _, err = console.run("users", "add", "sara", "--role", "coordinator", "--unit", "jarva")
    assert code == 1
    assert "invalid_unit" in err


def test_admin_commands_are_audited_as_the_console_and_the_trail_verifies(
    console: Console,
) -> None:
    console.json("users", "add", "anna.berg", "--role", "caseworker", "--unit", "socialnamnden")
    console.json("users", "token", "anna.berg")
    console.run("users", "add", "erik", "--role", "caseworker", "--unit", "nordost")
    console.json("users", "revoke", "anna.berg")

    shown = console.json("audit", "show", secret=False)["entries"]  # no secret needed
    assert [(e["action"], e["subject"], e["outcome"]) for e in shown] == [
        ("user_revoked", "anna.berg", "ok"),
        ("user_added", "erik", "invalid_unit"),
        ("token_issued", "anna.berg", "ok"),
        ("user_added", "anna.berg", "ok"),
    ]
    assert {(e["user"], e["role"]) for e in shown} == {("console", "operator")}

    code, out, _ = console.run("audit", "verify", secret=False)
    assert code == 0
    assert "verifies: 4 entries" in out


def test_audit_verify_names_an_edited_entry_and_fails(console: Console) -> None:
    console.json("users", "add", "sara", "--role", "coordinator")
    console.json("users", "token", "sara")
    console.json("users", "revoke", "sara")
    with sqlite3.connect(console.sqlite_file()) as raw:
        raw.execute("UPDATE audit_log SET subject = 'olle' WHERE seq = 2")

    code, out, err = console.run("audit", "verify", secret=False)
    assert code == 1
    assert "entry 2: edited" in out
    assert "citynode: audit_broken: entry 2: edited" in err
    report = json.loads(console.run("audit", "verify", "--json", secret=False)[1])
    assert report["ok"] is False
    assert [(f["seq"], f["problem"]) for f in report["findings"]] == [(2, "edited")]


def test_audit_export_verifies_offline_and_damage_to_it_is_named(
    console: Console, tmp_path: Path
) -> None:
    for name in ("sara", "olle", "revisor"):
        console.json("users", "add", name, "--role", "auditor")
    out_file = tmp_path / "audit.jsonl"
    exported = console.json("audit", "export", "--out", str(out_file), secret=False)
    assert exported["count"] == 3

    code, out, _ = console.run(
        "audit", "verify", "--file", str(out_file), secret=False, config=False
    )
    assert code == 0, out
    assert f"head {exported['head']}" in out

    lines = out_file.read_text().splitlines()
    out_file.write_text("\n".join([lines[0], *lines[2:]]) + "\n")  # entry 2 removed
    code, out, err = console.run(
        "audit", "verify", "--file", str(out_file), secret=False, config=False
    )
    assert code == 1
    assert "entry 2 (line 2): deleted" in out or "entry 2: deleted" in out
    assert "audit_broken" in err


def test_audit_verify_against_a_kept_head_finds_the_newest_entries_removed(
    console: Console, tmp_path: Path
) -> None:
    for name in ("sara", "olle", "revisor"):
        console.json("users", "add", name, "--role", "auditor")
    head = console.json("audit", "export", "--out", str(tmp_path / "a.jsonl"), secret=False)["head"]
    with sqlite3.connect(console.sqlite_file()) as raw:
        raw.execute("DELETE FROM audit_log WHERE seq = 3")
    assert console.run("audit", "verify", secret=False)[0] == 0  # consistent in itself
    code, out, _ = console.run("audit", "verify", "--anchor", head, secret=False)
    assert code == 1
    assert "entry 3: truncated" in out


def test_audit_show_filters_by_case_and_limits(console: Console) -> None:
    case_a, case_b = bytes(range(16)), bytes(range(16, 32))

    async def record() -> None:
        db = await Database.connect(console.database_url)
        try:
            trail = AuditTrail(db, time.time)
            reader = Principal("anna.berg", UserRole.CASEWORKER, "socialnamnden")
            for case_id in (case_a, case_b, case_a):
                await trail.record(
                    None,
                    principal=reader,
                    action="read_identity",
                    case_id=case_id,
                    purpose="handover meeting",
                    outcome="ok",
                )
        finally:
            await db.close()

    asyncio.run(record())
    shown = console.json("audit", "show", "--case", case_a.hex(), secret=False)["entries"]
    assert [e["seq"] for e in shown] == [3, 1]
    assert console.json("audit", "show", "--limit", "1", secret=False)["entries"][0]["seq"] == 3
    code, out, _ = console.run("audit", "show", "--case", case_b.hex(), secret=False)
    assert code == 0
    assert f'read_identity case {case_b.hex()} purpose "handover meeting" -> ok' in out
    code, _, err = console.run("audit", "show", "--case", "not-hex", secret=False)
    assert code == 1
    assert "--case" in err
