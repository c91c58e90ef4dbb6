"""``citynode report``: the balance between the cities, and the cases waiting to be shredded.

* ``report balance [--year Y] [--json] [--chart FILE.png|svg]`` — relocations sent and received
  per city and year, each city's own word (``node.balance_report``), the pairs of cities that
  disagree, and optionally the chart (``node.balance_chart``).
* ``report retention [--json]`` — the receiving city's ended cases not yet shredded, with the day
  each one will be (``node.retention``); ``serve`` shreds them when due.

Both unlock the node (the agreement names the member cities) and act as the operator's console
(``node.users.CONSOLE``); reading the balance is audited like a read through the API. Output is
counts, dates and opaque case ids: never a person.
"""

from __future__ import annotations

import argparse
import datetime
import uuid
from pathlib import Path
from typing import Any

import msgspec

from node.audit import AuditTrail
from node.balance_report import FIRST_YEAR, LAST_YEAR, BalanceReport, BalanceService, CityBalance
from node.cli_support import add_common, emit, with_node
from node.errors import NodeError
from node.pictures import format_of
from node.retention import CaseRetention, RetainedCase
from node.service import Node
from node.users import CONSOLE


def _year(text: str) -> int:
    """An ``argparse`` type: a year the reports know."""
    if not (text.isascii() and text.isdigit() and FIRST_YEAR <= int(text) <= LAST_YEAR):
        raise argparse.ArgumentTypeError(f"a year from {FIRST_YEAR} to {LAST_YEAR}")
    return int(text)


# --- balance --------------------------------------------------------------------------------------


def _report_balance(args: argparse.Namespace) -> int:
    # matplotlib costs ~40 MiB of every node process: load it only when drawing.
    from node.balance_chart import balance_chart  # noqa: PLC0415

    chart: Path | None = args.chart
    picture = None if chart is None else format_of(chart.name)
    if chart is not None and picture is None:
        raise NodeError("--chart must name a .png or .svg file")

    async def run(node: Node) -> tuple[BalanceReport, dict[str, str]]:
        members = node.trust().agreement.document.members
        service = BalanceService(
            city=node.config.city,
            db=node.db,
            audit=AuditTrail(node.db, node.clock),
            members=lambda: [m.city for m in members],
            clock=node.clock,
        )
        report = await service.report(CONSOLE, args.year)
        return report, {m.city: m.display_name for m in members}

    report, names = with_node(args, run)
    if chart is not None and picture is not None:
        chart.write_bytes(balance_chart(report, picture, names=names))
    text = _balance_text(report)
    if chart is not None:
        text += f"\nChart written to {chart}"
    emit(args, _json_of(report), text)
    return 0


def _json_of(report: BalanceReport) -> dict[str, Any]:
    """The report's JSON form, exactly as the API gives it."""
    decoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(report))
    return decoded


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _city_line(city: CityBalance) -> str:
    if city.source == "none":
        source = "no statement"
    elif city.source == "own":
        source = "own cases"
    else:
        source = f"statement of {city.as_of}"
    return f"  {city.city:<24} {_count(city.sent):>5} {_count(city.received):>9}   {source}"


def _balance_text(report: BalanceReport) -> str:
    header = f"  {'city':<24} {'sent':>5} {'received':>9}   according to"
    lines = [f"Balance between the cities (report of {report.as_of} at {report.city})"]
    for year in report.by_year:
        lines += ["", f"{year.year}", header, *(_city_line(c) for c in year.cities)]
    if len(report.by_year) > 1:
        span = f"{report.years[0]}-{report.years[-1]}"
        lines += ["", f"All years, {span}", header, *(_city_line(c) for c in report.cities)]
    if report.disagreements:
        lines += ["", "Disagreements (each city's own word):"]
        for pair in report.disagreements:
            lines.append(
                f"  {pair.year} {pair.home_city} -> {pair.receiving_city}: {pair.home_city} "
                f"says it sent {pair.stated_by_home}, {pair.receiving_city} says it received "
                f"{pair.stated_by_receiving}"
            )
    else:
        lines += ["", "No disagreement between cities that stated the same year."]
    return "\n".join(lines)


# --- retention ------------------------------------------------------------------------------------


def _report_retention(args: argparse.Namespace) -> int:
    async def run(node: Node) -> tuple[int, float, list[RetainedCase]]:
        days = node.config.retention.shred_case_key_after_days
        retention = CaseRetention(
            db=node.db,
            cases=node.cases,
            audit=AuditTrail(node.db, node.clock),
            after_days=days,
            clock=node.clock,
        )
        return days, node.clock(), await retention.retained()

    days, now, cases = with_node(args, run)
    listed = [
        {
            "id": str(uuid.UUID(bytes=case.case_id)),
            "state": case.state,
            "closed_on": _day(case.closed_at).isoformat(),
            "shred_on": case.shred_on.isoformat(),
            "due": case.shred_at <= now,
        }
        for case in cases
    ]
    lines = [
        f"Ended cases of this receiving city are shredded {days} days after they end "
        f"({len(cases)} waiting):"
    ]
    for case in listed:
        due = " (due: shredded at the next housekeeping pass)" if case["due"] else ""
        lines.append(
            f"  {case['id']}  {case['state']:<8} ended {case['closed_on']}  "
            f"shredded on {case['shred_on']}{due}"
        )
    emit(args, {"shred_case_key_after_days": days, "cases": listed}, "\n".join(lines))
    return 0


def _day(at: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(at, tz=datetime.UTC).date()


def register(sub: Any) -> None:
    """Add ``report`` to the ``citynode`` parser's subcommands."""
    report = sub.add_parser("report", help="the balance between the cities; retention")
    rsub = report.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    r = rsub.add_parser("balance", help="relocations sent and received per city and year")
    add_common(r)
    r.add_argument("--year", type=_year, help="one year (default: every year)")
    r.add_argument("--chart", type=Path, metavar="FILE", help="also draw it: FILE.png or .svg")
    r.set_defaults(handler=_report_balance)
    r = rsub.add_parser("retention", help="ended cases waiting to be shredded, and when")
    add_common(r)
    r.set_defaults(handler=_report_retention)
