"""``citynode keys``: the node's own keys — show them, rotate them.

Owns the operator commands of the key lifecycle. Every command takes ``--config`` and ``--json``
(one JSON object on stdout). Commands change nothing a peer has already been told: a rotation
appends to the key-history log and announces new keys; announced windows never shrink.

* ``keys show`` — fingerprint, identity key id, the encryption keys with their windows (the one
  in use and the next marked), the TLS pin in use and every pin announced (``current``, ``next``
  while a TLS rotation waits for its switch, ``retiring`` after it), the key-history log head.
* ``keys rotate --kind encryption`` — the announced next encryption key becomes current now and
  a new next key is announced.
* ``keys rotate --kind identity`` — a new identity key, and a succession statement signed by the
  old and the new key appended to the key-history log and served in the package; the new key
  signs envelopes and receipts from ``effective_from`` (30 s later, or ``--switch-after``
  seconds, at least 5: the time peers have to learn the succession), peers keep the old key
  valid up to then, so what it signed stays verifiable.
* ``keys rotate --kind tls`` — a new TLS certificate beside the one in use, its pin logged and
  announced next to the old one; the running node switches to it once every peer accepts it and
  retires the old pin a few seconds later (``node.rotation``, ``node.key_exchange``). Refused
  (``tls_rotation_pending``) while a rotation waits for its switch.
* ``keys revoke --since TIME --yes`` — self-revocation after a compromise: a revocation of the
  identity key, signed by it, logged and served; peers refuse what it signed from ``TIME`` on.
  The node gets a new key through an agreement change (``agreement propose``); until ``keys
  replace`` it signs nothing (``keys show``: ``identity_revoked_since``; healthz: ``keys``
  ``identity_revoked``).
* ``keys replace --yes`` — after a compromise: a new identity key (not vouched for by the old
  one), TLS certificate and encryption keys; they count for the peers once the other members
  adopt an agreement version naming the new key (``agreement propose --replace-key CITY``).
* ``keys show`` also prints ``key_transparency``: ``ok``, or ``equivocation`` with each proof
  that a peer signed two different key-log heads for one size (``node.checkpoints``).

A running node (``serve``) notices a rotation made by the command within seconds (its key log
grew), indexes its keystore again and pushes its new bundle to every peer.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
from typing import Any

from node.checkpoints import transparency_status
from node.cli_support import add_common, config_of, emit, with_node
from node.errors import NodeError
from node.key_replacement import replace_compromised_keys
from node.own_keys import (
    announced_tls_pins,
    announced_windows,
    current_and_next,
    encryption_windows,
)
from node.rotation import bundle_tls_pins
from node.secrets_source import read_operator_secret
from node.service import IDENTITY_SWITCH_S, Node
from node.storage.checkpoint_store import CheckpointStore
from protocol.keylog import EntryKind, KeyLog
from protocol.keys import fingerprint

KINDS = ("encryption", "identity", "tls")
MIN_SWITCH_S = 5
"""Least time between an identity succession and its first signature: a push takes < 2 s."""


async def key_state(node: Node) -> dict[str, Any]:
    """The node's public key state, as ``keys show`` prints it."""
    log = await node.history.load()
    announced = announced_windows(log)
    now = int(node.clock())
    pair = current_and_next(node.own.encryption, node.config.keys, now, announced)
    in_use = {pair[0].key_id: "current", pair[1].key_id: "next"} if pair else {}
    identity = node.own.identity_stored
    city = node.config.city
    destroyed = sum(1 for e in log.entries if e.kind == EntryKind.ENCRYPTION_KEY_DESTROYED)
    return {
        "city": city,
        "fingerprint": fingerprint(city, identity.public_key),
        "identity_key_id": identity.key_id.hex(),
        "identity_revoked_since": node.identity_revoked_since(),
        "encryption_keys": [
            {
                "key_id": k.key_id.hex(),
                "epoch": k.epoch,
                "not_before": k.not_before,
                "not_after": k.not_after,
                "use": in_use.get(k.key_id, "grace"),
            }
            for k in encryption_windows(node.own.encryption, node.config.keys, announced)
        ],
        "encryption_keys_destroyed": destroyed,
        "tls_pin": node.tls.pin().hex(),
        "tls_pins": _tls_pins(node, log),
        "key_log": {"size": log.size, "head": log.head.hex()},
        "agreement_version": node.trust().agreement.version if node.has_agreement() else None,
        "key_transparency": await transparency_status(CheckpointStore(node.db, node.clock), city),
    }


def _tls_pins(node: Node, log: KeyLog) -> list[dict[str, str]]:
    """Every TLS pin the bundle announces, with its use in the rotation."""
    uses = {node.tls.pin(): "current"}
    if node.tls_next is not None:
        uses[node.tls_next.pin()] = "next"
    pins = bundle_tls_pins(announced_tls_pins(log), node.tls, node.tls_next)
    return [{"pin": pin.hex(), "use": uses.get(pin, "retiring")} for pin in pins]


def _text(doc: dict[str, Any]) -> str:
    lines = []
    for key, value in doc.items():
        if key == "encryption_keys":
            lines.append("encryption_keys:")
            lines += [
                f"  epoch {k['epoch']} {k['key_id']} {k['use']} "
                f"[{k['not_before']}, {k['not_after']}]"
                for k in value
            ]
        elif key == "tls_pins":
            lines.append("tls_pins:")
            lines += [f"  {p['pin']} {p['use']}" for p in value]
        elif key == "key_transparency":
            lines.append(f"key_transparency: {value['status']}")
            lines += [
                f"  ALARM {a['city']}: two signed key-log heads for size {a['size']} "
                f"(reported by {a['reported_by']}; proof kept)"
                for a in value["alarms"]
            ]
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _cmd_show(args: argparse.Namespace) -> int:
    """Show the node's public keys and fingerprint (the keystore must be unlocked)."""
    doc = with_node(args, key_state)
    emit(args, doc, _text(doc))
    return 0


def _cmd_rotate(args: argparse.Namespace) -> int:
    """Rotate one kind of key now."""

    async def rotate(node: Node) -> dict[str, Any]:
        before = await key_state(node)
        effective_from = None
        if args.kind == "identity":
            effective_from = await node.rotate_identity(switch_after_s=args.switch_after)
        elif args.kind == "tls":
            await node.rotate_tls()
        else:
            await node.rotate_encryption()
        after = await key_state(node)
        return {
            "kind": args.kind,
            "before": before,
            "after": after,
            "effective_from": effective_from,
        }

    doc = with_node(args, rotate)
    if args.kind == "identity":
        text = (
            f"identity key succeeded (new key id {doc['after']['identity_key_id']}), "
            f"signing from {doc['effective_from']}; new fingerprint {doc['after']['fingerprint']}"
        )
    elif args.kind == "tls":
        text = (
            f"new TLS certificate added (pin {doc['after']['tls_pins'][-1]['pin']}); the running "
            "node switches to it once every peer accepts it, then retires the old pin"
        )
    else:
        current = next(k for k in doc["after"]["encryption_keys"] if k["use"] == "current")
        text = f"encryption key rotated: epoch {current['epoch']} is current"
    emit(args, doc, text)
    return 0


def parse_time(text: str) -> int:
    """A time given as Unix seconds or ISO 8601 (``2026-11-27T12:00:00+00:00``; UTC if no zone).

    Raises:
        argparse.ArgumentTypeError: neither.
    """
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("give Unix seconds or an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp())


def _switch_after(text: str) -> int:
    """``--switch-after``: whole seconds, at least :data:`MIN_SWITCH_S`.

    Raises:
        argparse.ArgumentTypeError: not a number, or too short for peers to learn the succession.
    """
    if not text.isdigit() or int(text) < MIN_SWITCH_S:
        raise argparse.ArgumentTypeError(f"give whole seconds, at least {MIN_SWITCH_S}")
    return int(text)


def _cmd_revoke(args: argparse.Namespace) -> int:
    """Declare the node's identity key compromised since ``--since``."""
    if not args.yes:
        raise NodeError(
            "revoking the identity key stops this node from sending until an agreement change "
            "gives it a new key; repeat with --yes to do it"
        )

    async def revoke(node: Node) -> dict[str, Any]:
        await node.revoke_identity(args.since)
        return {"revoked_key_id": node.own.identity_stored.key_id.hex(), "since": args.since}

    doc = with_node(args, revoke)
    emit(args, doc, f"identity key {doc['revoked_key_id']} revoked since {doc['since']}")
    return 0


def _cmd_replace(args: argparse.Namespace) -> int:
    """Replace every key after a compromise (``node.key_replacement``)."""
    if not args.yes:
        raise NodeError(
            "replacing the keys cuts this node off until the other members adopt an agreement "
            "version with its new identity key; repeat with --yes to do it"
        )

    async def replace(node: Node) -> dict[str, Any]:
        return dataclasses.asdict(await replace_compromised_keys(node))

    doc = with_node(args, replace)
    emit(
        args,
        doc,
        f"new identity key {doc['new_key_id']}, fingerprint {doc['fingerprint']}: export the "
        "package (peers export) and have the other operators verify it",
    )
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    """Take back from the peers the key-log entries a restored node lost; replace lost keys."""
    from node.key_recovery import recover_keys  # noqa: PLC0415 (it needs node.backup)

    config = config_of(args)
    secret = read_operator_secret(secret_file=args.secret_file)
    recovery = asyncio.run(recover_keys(config, secret))
    doc = dataclasses.asdict(recovery)
    text = (
        f"key log: restored {recovery.restored_size} entries, {recovery.taken_back} taken back"
        + (f" from {recovery.source}" if recovery.source else "")
        + f" (now {recovery.size}); copies held by the peers: "
        + ", ".join(f"{peer} {size}" for peer, size in sorted(recovery.sources.items()))
        + ("; lost encryption key replaced" if recovery.encryption_replaced else "")
        + (
            f"; {recovery.tls_pins_lost} TLS pin(s) of lost certificates, retired when serving"
            if recovery.tls_pins_lost
            else ""
        )
        + "; the node may serve again"
    )
    emit(args, doc, text)
    return 0


def register(sub: Any) -> None:
    """Add ``keys`` and its actions to the ``citynode`` subcommands."""
    keys = sub.add_parser("keys", help="the node's keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    show = keys_sub.add_parser("show", help="public keys, windows, fingerprint, key-log head")
    add_common(show)
    show.set_defaults(handler=_cmd_show)
    rotate = keys_sub.add_parser("rotate", help="rotate a key now")
    add_common(rotate)
    rotate.add_argument("--kind", choices=KINDS, required=True, help="which key")
    rotate.add_argument(
        "--switch-after",
        type=_switch_after,
        default=IDENTITY_SWITCH_S,
        metavar="SECONDS",
        help=f"identity: seconds before the new key signs (default {IDENTITY_SWITCH_S}, min "
        f"{MIN_SWITCH_S})",
    )
    rotate.set_defaults(handler=_cmd_rotate)
    revoke = keys_sub.add_parser("revoke", help="declare the identity key compromised")
    add_common(revoke)
    revoke.add_argument(
        "--since", type=parse_time, required=True, help="compromised since (Unix s or ISO 8601)"
    )
    revoke.add_argument("--yes", action="store_true", help="do it without asking")
    revoke.set_defaults(handler=_cmd_revoke)
    replace = keys_sub.add_parser(
        "replace", help="new identity, TLS and encryption keys after a compromise"
    )
    add_common(replace)
    replace.add_argument("--yes", action="store_true", help="do it without asking")
    replace.set_defaults(handler=_cmd_replace)
    recover = keys_sub.add_parser(
        "recover", help="after a restore: take back the key-log entries lost since the backup"
    )
    add_common(recover)
    recover.set_defaults(handler=_cmd_recover)
