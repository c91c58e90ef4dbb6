"""``citynode peers`` and ``citynode agreement``: the operator side of ``node.membership``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from node.cli_support import add_common, emit, with_node
from node.membership import (
    adopt_agreement,
    agreement_summary,
    import_peer,
    list_peers,
    propose_agreement,
    review_agreement,
    sign_agreement,
    verify_peer,
)
from node.service import Node


def _write_or_print(path: Path | None, data: bytes) -> str:
    if path is None:
        sys.stdout.buffer.write(data)
        return "-"
    path.write_bytes(data)
    return str(path)


def _peers_export(args: argparse.Namespace) -> int:
    async def run(node: Node) -> bytes:
        return node.package()

    data = with_node(args, run)
    if args.out is None:
        sys.stdout.buffer.write(data)
        return 0
    args.out.write_bytes(data)
    emit(args, {"file": str(args.out)}, f"Wrote this node's package to {args.out}")
    return 0


def _peers_import(args: argparse.Namespace) -> int:
    async def run(node: Node) -> Any:
        return await import_peer(node, args.file.read_bytes())

    package = with_node(args, run)
    city = package.bundle.city
    emit(
        args,
        {"city": city, "fingerprint": package.fingerprint, "verified": False},
        f"Imported {city}, NOT trusted yet. Fingerprint: {package.fingerprint}\n"
        f"Compare it with {city}'s operator, then: citynode peers verify {city} --fingerprint ...",
    )
    return 0


def _peers_verify(args: argparse.Namespace) -> int:
    async def run(node: Node) -> Any:
        return await verify_peer(node, args.city, args.fingerprint)

    view = with_node(args, run)
    emit(
        args,
        {"city": view.city, "fingerprint": view.fingerprint, "verified": view.verified},
        f"{view.city} verified: {view.fingerprint}",
    )
    return 0


def _peers_list(args: argparse.Namespace) -> int:
    async def run(node: Node) -> Any:
        return await list_peers(node)

    views = with_node(args, run)
    doc = {
        "peers": [
            {
                "city": v.city,
                "fingerprint": v.fingerprint,
                "verified": v.verified,
                "endpoint": v.endpoint,
                "last_seen_at": v.last_seen_at,
                "key_sequence": v.key_sequence,
                "identity_key_id": v.identity_key_id,
                "seals_to": None
                if v.seals_to is None
                else {"epoch": v.seals_to[0], "key_id": v.seals_to[1]},
            }
            for v in views
        ]
    }
    lines = [
        f"{v.city}: {'verified' if v.verified else 'NOT verified'} {v.fingerprint or '-'} "
        f"{v.endpoint or ''}"
        for v in views
    ] or ["no peers"]
    emit(args, doc, "\n".join(lines))
    return 0


def _agreement_propose(args: argparse.Namespace) -> int:
    async def run(node: Node) -> bytes:
        return await propose_agreement(node, args.draft, replace_keys=args.replace_key)

    data = with_node(args, run)
    where = _write_or_print(args.out, data)
    if args.out is not None:
        emit(args, {"file": where}, f"Wrote the proposal, signed by this node, to {where}")
    return 0


def _agreement_sign(args: argparse.Namespace) -> int:
    data = args.file.read_bytes()

    async def run(node: Node) -> tuple[dict[str, Any], bytes]:
        document = review_agreement(node, data)
        if not args.yes:
            print(f"Signing version {document.version}: {document.title}", file=sys.stderr)
            if input("Sign it? [y/N] ").strip().lower() not in ("y", "yes"):
                raise SystemExit(1)
        return {"version": document.version}, sign_agreement(node, data)

    doc, signed = with_node(args, run)
    out = args.out or args.file
    out.write_bytes(signed)
    emit(args, {**doc, "file": str(out)}, f"Signed version {doc['version']}: {out}")
    return 0


def _agreement_adopt(args: argparse.Namespace) -> int:
    async def run(node: Node) -> Any:
        return agreement_summary(await adopt_agreement(node, args.file.read_bytes()))

    summary = with_node(args, run)
    emit(args, dict(summary), f"Adopted agreement version {summary['version']}")
    return 0


def _agreement_show(args: argparse.Namespace) -> int:
    async def run(node: Node) -> Any:
        return agreement_summary(node.trust().agreement)

    summary = with_node(args, run)
    lines = [f"{key}: {value}" for key, value in summary.items() if key != "members"]
    lines += [
        f"  {m['city']} ({', '.join(m['units'])}) {m['endpoint']} {m['fingerprint']}"
        for m in summary["members"]
    ]
    emit(args, dict(summary), "\n".join(lines))
    return 0


def register(sub: Any) -> None:
    """Add ``peers`` and ``agreement`` to the ``citynode`` parser's subcommands."""
    peers = sub.add_parser("peers", help="exchange and verify the other cities' keys")
    psub = peers.add_subparsers(dest="peers_command", required=True, metavar="ACTION")
    p = psub.add_parser("export", help="write this node's signed public package")
    add_common(p)
    p.add_argument("--out", type=Path)
    p.set_defaults(handler=_peers_export)
    p = psub.add_parser("import", help="store a peer's package (not trusted until verified)")
    add_common(p)
    p.add_argument("file", type=Path)
    p.set_defaults(handler=_peers_import)
    p = psub.add_parser("verify", help="trust a peer after comparing its fingerprint")
    add_common(p)
    p.add_argument("city")
    p.add_argument("--fingerprint", required=True)
    p.set_defaults(handler=_peers_verify)
    p = psub.add_parser("list", help="the peers and whether they are verified")
    add_common(p)
    p.set_defaults(handler=_peers_list)

    agreement = sub.add_parser("agreement", help="propose, sign, adopt and show agreement versions")
    asub = agreement.add_subparsers(dest="agreement_command", required=True, metavar="ACTION")
    a = asub.add_parser("propose", help="make a version from a TOML draft, signed by this node")
    add_common(a)
    a.add_argument("draft", type=Path)
    a.add_argument("--out", type=Path)
    a.add_argument(
        "--replace-key",
        action="append",
        default=[],
        metavar="CITY",
        help="revoke CITY's identity key in favour of its newly verified one (compromise)",
    )
    a.set_defaults(handler=_agreement_propose)
    a = asub.add_parser("sign", help="add this node's signature to a proposed version")
    add_common(a)
    a.add_argument("file", type=Path)
    a.add_argument("--out", type=Path)
    a.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    a.set_defaults(handler=_agreement_sign)
    a = asub.add_parser("adopt", help="adopt a signed version that verifies")
    add_common(a)
    a.add_argument("file", type=Path)
    a.set_defaults(handler=_agreement_adopt)
    a = asub.add_parser("show", help="the adopted version")
    add_common(a)
    a.set_defaults(handler=_agreement_show)
