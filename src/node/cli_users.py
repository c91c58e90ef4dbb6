"""``citynode users`` and ``citynode audit``: accounts and tokens, and the audit trail.

``users`` commands unlock the node (the operator secret) because a case worker's unit is checked
against the adopted agreement; they act as the operator's console (``node.users.CONSOLE``) and
are audited. ``audit`` commands only read: ``audit verify --file`` needs nothing but the file, and
the others need the database only (``--config``), not the operator secret, so an auditor can run
them without being able to unlock the node's keys.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from node.access import UserRole
from node.audit import AuditTrail, verify_file
from node.audit_chain import AuditEntry, Head, VerifyReport
from node.cli_support import add_common, config_of, emit, with_node
from node.errors import NodeError
from node.service import Node
from node.storage.database import Database
from node.users import CONSOLE, UserStore, UserView

T = TypeVar("T")

DAY_S = 86_400
DEFAULT_TOKEN_DAYS = 30


class AuditBroken(NodeError):
    """The audit trail does not verify (the findings name the entries)."""

    code = "audit_broken"


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).isoformat(timespec="seconds")


def _store(node: Node) -> UserStore:
    return UserStore(node.db, node.clock, audit=AuditTrail(node.db, node.clock))


def _user_doc(view: UserView) -> dict[str, Any]:
    return {
        "name": view.name,
        "role": view.role.value,
        "unit": view.unit,
        "created_at": _iso(view.created_at),
        "revoked_at": _iso(view.revoked_at),
        "active_tokens": view.active_tokens,
    }


# --- users ----------------------------------------------------------------------------------------


def _users_add(args: argparse.Namespace) -> int:
    role = UserRole(args.role)

    async def run(node: Node) -> UserView:
        units: list[str] = []
        if role is UserRole.CASEWORKER:  # only a case worker's unit needs the agreement
            member = node.trust().agreement.member(node.config.city)
            units = [unit.id for unit in member.units]
        return await _store(node).add(args.name, role, args.unit, units, actor=CONSOLE)

    view = with_node(args, run)
    unit = f" in {view.unit}" if view.unit else ""
    emit(args, _user_doc(view), f"Added {view.name}: {view.role}{unit}")
    return 0


def _users_token(args: argparse.Namespace) -> int:
    ttl_s = args.ttl_days * DAY_S

    async def run(node: Node) -> tuple[str, float]:
        token = await _store(node).issue_token(args.name, ttl_s, actor=CONSOLE)
        return token, node.clock() + ttl_s

    token, expires_at = with_node(args, run)
    emit(
        args,
        {"user": args.name, "token": token, "expires_at": _iso(expires_at)},
        f"Token for {args.name}, valid until {_iso(expires_at)}. It is shown only this once:\n"
        f"{token}",
    )
    return 0


def _users_revoke(args: argparse.Namespace) -> int:
    async def run(node: Node) -> int:
        store = _store(node)
        if args.token is not None:
            await store.revoke_token(args.name, args.token, actor=CONSOLE)
            return 1
        return await store.revoke(args.name, actor=CONSOLE)

    count = with_node(args, run)
    if args.token is not None:
        text = f"Revoked token {args.token} of {args.name}"
    else:
        text = f"Revoked {args.name} and {count} active token(s)"
    emit(args, {"user": args.name, "token": args.token, "tokens_revoked": count}, text)
    return 0


def _users_list(args: argparse.Namespace) -> int:
    async def run(node: Node) -> list[UserView]:
        return await UserStore(node.db, node.clock).list()

    views = with_node(args, run)
    lines = [
        f"{v.name}: {v.role}{' in ' + v.unit if v.unit else ''}, "
        + (f"revoked {_iso(v.revoked_at)}" if v.revoked_at else f"{v.active_tokens} token(s)")
        for v in views
    ] or ["no users"]
    emit(args, {"users": [_user_doc(v) for v in views]}, "\n".join(lines))
    return 0


# --- audit ----------------------------------------------------------------------------------------


def _with_database(args: argparse.Namespace, action: Callable[[AuditTrail], Awaitable[T]]) -> T:
    """Run ``action`` on the audit trail of the node's database (no secret needed)."""
    config = config_of(args)

    async def run() -> T:
        db = await Database.connect(config.database.url)
        try:
            if await db.current_revision() is None:
                raise NodeError(f"no citynode database at {db.redacted_url}: run citynode init")
            return await action(AuditTrail(db, time.time))
        finally:
            await db.close()

    return asyncio.run(run())


def _anchor(args: argparse.Namespace) -> Head | None:
    if args.anchor is None:
        return None
    try:
        return Head.parse(args.anchor)
    except ValueError as e:
        raise NodeError("--anchor must be SEQ:HASH as printed by audit export") from e


def _audit_verify(args: argparse.Namespace) -> int:
    anchor = _anchor(args)
    if args.file is not None:
        report = verify_file(args.file, anchor)
    else:

        async def run(trail: AuditTrail) -> VerifyReport:
            return await trail.verify(anchor)

        report = _with_database(args, run)
    where = str(args.file) if args.file is not None else "the database"
    if report.ok:
        text = f"Audit trail in {where} verifies: {report.count} entries, head {report.head}"
    else:
        lines = [f.describe() for f in report.findings]
        if report.omitted:
            lines.append(f"... and {report.omitted} more")
        text = f"Audit trail in {where} does NOT verify:\n" + "\n".join(lines)
    emit(args, report.as_json(), text)
    if not report.ok:
        error = AuditBroken(report.findings[0].describe())
        print(f"citynode: {error.code}: {error.message}", file=sys.stderr)
        return 1
    return 0


def _audit_export(args: argparse.Namespace) -> int:
    async def run(trail: AuditTrail) -> Any:
        return await trail.export(args.out)

    result = _with_database(args, run)
    emit(
        args,
        {"file": str(result.path), "count": result.count, "head": str(result.head)},
        f"Exported {result.count} entries to {result.path}\nHead {result.head} (keep it: "
        f"'citynode audit verify --anchor {result.head}' then detects entries removed later)",
    )
    return 0


def _entry_line(entry: AuditEntry) -> str:
    who = f"{entry.user} ({entry.role})" if entry.user else "(not authenticated)"
    parts = [f"#{entry.seq} {_iso(entry.at)} {who} {entry.action}"]
    if entry.subject:
        parts.append(f"user {entry.subject}")
    if entry.case_id:
        parts.append(f"case {entry.case_id.hex()}")
    if entry.purpose:
        parts.append(f'purpose "{entry.purpose}"')
    return " ".join(parts) + f" -> {entry.outcome}"


def _audit_show(args: argparse.Namespace) -> int:
    try:
        case_id = None if args.case is None else bytes.fromhex(args.case)
    except ValueError as e:
        raise NodeError("--case must be the case id in hex") from e
    since = None
    if args.since is not None:
        start = datetime.datetime.combine(args.since, datetime.time(), tzinfo=datetime.UTC)
        since = start.timestamp()

    async def run(trail: AuditTrail) -> list[AuditEntry]:
        return await trail.entries(case_id=case_id, since=since, limit=args.limit)

    entries = _with_database(args, run)
    lines = [_entry_line(e) for e in entries] or ["no entries"]
    emit(args, {"entries": [e.as_json() for e in entries]}, "\n".join(lines))
    return 0


def register(sub: Any) -> None:
    """Add ``users`` and ``audit`` to the ``citynode`` parser's subcommands."""
    users = sub.add_parser("users", help="accounts, roles and API tokens of the people")
    usub = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    u = usub.add_parser("add", help="add a user with a role (a case worker with a unit)")
    add_common(u)
    u.add_argument("name", metavar="NAME", help="account name, e.g. anna.berg (not a personnummer)")
    u.add_argument("--role", required=True, choices=[r.value for r in UserRole])
    u.add_argument("--unit", help="a case worker's unit (one of this city's in the agreement)")
    u.set_defaults(handler=_users_add)
    u = usub.add_parser("token", help="issue an API token (printed once, stored hashed)")
    add_common(u)
    u.add_argument("name")
    u.add_argument("--ttl-days", type=int, default=DEFAULT_TOKEN_DAYS, metavar="N")
    u.set_defaults(handler=_users_token)
    u = usub.add_parser("revoke", help="revoke a user and all their tokens (or one token)")
    add_common(u)
    u.add_argument("name")
    u.add_argument("--token", type=int, metavar="ID", help="revoke only this token")
    u.set_defaults(handler=_users_revoke)
    u = usub.add_parser("list", help="the users, their roles and active tokens")
    add_common(u)
    u.set_defaults(handler=_users_list)

    audit = sub.add_parser("audit", help="verify, export and read the audit trail")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    a = asub.add_parser("verify", help="check the hash chain; name any altered entry")
    add_common(a)
    a.add_argument("--file", type=Path, help="check an export offline instead of the database")
    a.add_argument("--anchor", metavar="SEQ:HASH", help="a head kept earlier that must remain")
    a.set_defaults(handler=_audit_verify)
    a = asub.add_parser("export", help="write the trail to a file that verifies offline")
    add_common(a)
    a.add_argument("--out", type=Path, required=True)
    a.set_defaults(handler=_audit_export)
    a = asub.add_parser("show", help="the newest entries, first")
    add_common(a)
    a.add_argument("--case", metavar="HEX", help="only this case's entries")
    a.add_argument("--since", type=datetime.date.fromisoformat, metavar="YYYY-MM-DD")
    a.add_argument("--limit", type=int, default=50, metavar="N")
    a.set_defaults(handler=_audit_show)
