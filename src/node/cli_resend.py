"""``citynode outbox resend``: queue again, sealed afresh, what a peer restored from a backup lost.

Run by the operator of a peer of the restored node, with this node stopped or serving: the rows
it queues are found by the serving node's idle sender loop within ``limits.outbox_poll_s``
(or at the loop's next attempt while it backs off from the peer), as any row queued by another
process. The logic is :mod:`node.resend`; this module only parses, asks and prints.

Without ``--yes`` it shows what it would queue and asks first. Errors have stable codes:
``unknown_peer``, ``bad_time``, ``time_in_future``, ``resend_raced``, ``outbox_full``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from node.audit import AuditTrail
from node.cli_support import add_common, emit, with_node
from node.resend import Resender, ResendPlan, parse_since
from node.service import Node


def resender_for(node: Node) -> Resender:
    """The resender of an opened node (its sender loop, if any, is not woken: see the module)."""
    return Resender(
        db=node.db,
        vault=node.vault,
        outgoing=node.outgoing(node.wake_sender),
        audit=AuditTrail(node.db, node.clock),
        trust=node.trust,
        clock=node.clock,
        limits=node.config.limits.protocol,
    )


def describe(plan: ResendPlan) -> str:
    """The plan in a few lines for the operator (counts only)."""
    not_case = ", ".join(f"{name} {count}" for name, count in plan.not_case.items()) or "none"
    lines = [
        f"{len(plan.to_queue)} case message(s) to queue again for {plan.peer}",
        f"skipped, still on their way: {plan.in_flight}",
        f"not case messages (never resent): {not_case}",
        f"of shredded cases (cannot be resent): {plan.shredded}",
        f"unreadable in the case journal: {plan.unreadable}",
    ]
    if plan.to_queue:
        lines.append(
            "any of them the peer still holds it refuses as replayed (shown failed here): "
            "nothing is processed twice"
        )
    if plan.held_back:
        lines.append(
            f"warning: {plan.held_back} message(s) still on their way follow a resent message of "
            "their case; the peer may refuse them as out of order: run this again once they settle"
        )
    return "\n".join(lines)


def _confirmed(plan: ResendPlan) -> bool:
    print(describe(plan), file=sys.stderr)
    try:
        answer = input(f"Queue {len(plan.to_queue)} message(s) for {plan.peer}? [y/N] ")
    except EOFError:  # no terminal to answer from: not confirmed
        return False
    return answer.strip().lower() in ("y", "yes")


def _cmd_resend(args: argparse.Namespace) -> int:
    """Queue again the case messages sent to ``--peer`` since ``--since``."""

    async def run(node: Node) -> dict[str, Any]:
        since = parse_since(args.since, node.clock())
        resender = resender_for(node)
        plan = await resender.plan(args.peer, since)
        if plan.to_queue and not args.yes and not _confirmed(plan):
            return {**plan.counts(), "queued": 0, "confirmed": False, "text": describe(plan)}
        # Planned again just before the write: only what was shown, as the outbox is now.
        plan = await resender.plan(
            args.peer, since, only=frozenset(item.resend.message_id for item in plan.to_queue)
        )
        queued = await resender.queue(plan)
        return {**plan.counts(), "queued": len(queued), "confirmed": True, "text": describe(plan)}

    doc = with_node(args, run)
    text = doc.pop("text")
    if not doc["confirmed"]:
        emit(args, doc, "Nothing queued.")
        return 1
    emit(args, doc, f"{text}\nQueued {doc['queued']} message(s) for {doc['peer']}.")
    return 0


def register_resend(outbox_sub: Any) -> None:
    """Add ``resend`` to the ``citynode outbox`` subcommands (``build_parser``'s ``outbox_sub``)."""
    resend = outbox_sub.add_parser(
        "resend", help="queue again, sealed afresh, the case messages a restored peer lost"
    )
    add_common(resend)
    resend.add_argument("--peer", required=True, metavar="CITY", help="the restored peer")
    resend.add_argument(
        "--since",
        required=True,
        metavar="ISO_TIME",
        help="when the peer's backup was taken (ISO 8601, UTC if no zone; or Unix seconds)",
    )
    resend.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    resend.set_defaults(handler=_cmd_resend)
