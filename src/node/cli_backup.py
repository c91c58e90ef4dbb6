"""``citynode backup`` and ``citynode restore``: the operator side of :mod:`node.backup`.

* ``backup --config FILE --out FILE`` — one archive (tar, ``0600``, never over an existing file)
  of a node, taken while it serves: a consistent database snapshot, the sealed key files, the
  attachment streams and a manifest. Needs no operator secret.
* ``restore FILE --config FILE`` — the node back from an archive into an empty data directory
  (and, for PostgreSQL, an empty database); needs the operator secret (as ``serve``) to check
  that the keystore opens. Prints what the peers must do: send again what they sent after the
  backup was taken.

Both take ``--data-dir`` (instead of the config's) and ``--json`` (one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
from pathlib import Path
from typing import Any

from node.backup import BackupSummary, RestoreSummary, restore_backup, take_backup
from node.cli_support import add_common, config_of, emit
from node.secrets_source import read_operator_secret

RESEND_MARGIN_S = 60
"""The peers resend from this long before the backup was taken: a message in flight while it was
taken may have been receipted by the node after its snapshot (what it still has is answered as a
duplicate, never processed twice)."""


def resend_since(taken_at: float) -> str:
    """The ``--since`` the peers resend from (ISO 8601, UTC): the backup's time less the margin."""
    since = datetime.datetime.fromtimestamp(int(taken_at) - RESEND_MARGIN_S, datetime.UTC)
    return since.isoformat().replace("+00:00", "Z")


def resend_instruction(city: str, taken_at: float) -> str:
    """The line telling the operators of the peers what to run after a restore."""
    return (
        f'peers: run "citynode outbox resend --peer {city} --since {resend_since(taken_at)} --yes"'
        " on each peer"
    )


def backup_document(summary: BackupSummary) -> dict[str, Any]:
    """``backup --json``: the archive written and what its manifest says."""
    manifest = summary.manifest
    return {
        "path": str(summary.path),
        "bytes": summary.size_bytes,
        "city": manifest.city,
        "taken_at": manifest.taken_at,
        "taken_at_iso": manifest.taken_at_iso,
        "database": manifest.database.backend,
        "schema_revision": manifest.database.schema_revision,
        "key_log": {"size": manifest.key_log.size, "head": manifest.key_log.head},
        "files": len(manifest.files),
    }


def restore_document(summary: RestoreSummary) -> dict[str, Any]:
    """``restore --json``: what was restored, from when, and the peers' instruction."""
    manifest = summary.manifest
    return {
        "city": manifest.city,
        "data_dir": str(summary.data_dir),
        "taken_at": manifest.taken_at,
        "taken_at_iso": manifest.taken_at_iso,
        "restored_at": summary.restored_at,
        "database": manifest.database.backend,
        "schema_revision": summary.schema_revision,
        "key_log": {"size": manifest.key_log.size, "head": manifest.key_log.head},
        "files": len(manifest.files),
        "peers": resend_instruction(manifest.city, manifest.taken_at),
    }


def _cmd_backup(args: argparse.Namespace) -> int:
    """Write a backup archive of the node (it may be serving)."""
    config = config_of(args)
    doc = backup_document(asyncio.run(take_backup(config, args.out)))
    emit(
        args,
        doc,
        f"Backup of {doc['city']} written to {doc['path']} ({doc['bytes']} bytes, "
        f"{doc['files']} files)\ntaken at {doc['taken_at_iso']} ({doc['taken_at']}), "
        f"key log size {doc['key_log']['size']}, head {doc['key_log']['head']}",
    )
    return 0


def _cmd_restore(args: argparse.Namespace) -> int:
    """Restore the node from an archive into its empty data directory (and database)."""
    config = config_of(args)
    secret = read_operator_secret(secret_file=args.secret_file)
    doc = restore_document(asyncio.run(restore_backup(args.archive, config, secret)))
    emit(
        args,
        doc,
        f"Restored {doc['city']} into {doc['data_dir']} from the backup taken at "
        f"{doc['taken_at_iso']} ({doc['taken_at']}); key log size {doc['key_log']['size']}, "
        f"head {doc['key_log']['head']}\nEverything this node sent or received after "
        f"{doc['taken_at_iso']} is lost: its peers must send it again.\n"
        "next: citynode keys recover (the node refuses to start until it has run)\n"
        f"{doc['peers']}",
    )
    return 0


def register_backup(sub: Any) -> None:
    """Add ``backup`` and ``restore`` to the ``citynode`` subcommands."""
    backup = sub.add_parser("backup", help="write a consistent backup archive (while serving)")
    add_common(backup)
    backup.add_argument(
        "--out", type=Path, required=True, metavar="FILE", help="the archive to create"
    )
    backup.set_defaults(handler=_cmd_backup)
    restore = sub.add_parser("restore", help="restore the node from a backup archive")
    add_common(restore)
    restore.add_argument("archive", type=Path, metavar="FILE", help="the archive to restore")
    restore.set_defaults(handler=_cmd_restore)
