"""After a restore from backup: take back the key-history entries lost since the backup.

A node restored from a backup (``citynode restore``, ``node.backup``) holds its key-history log
as it was when the backup was taken, while its peers have seen (and countersigned) the longer log
it had when its disk died. Appending to the short log would fork it — to the peers, exactly what
an equivocating node does — and the peers refuse a key bundle whose log is shorter than the one
they hold. So a restored node does nothing with its keys until ``citynode keys recover`` has run:

* :meth:`node.service.Node.open` refuses to open a node with a restore marker
  (``restore_pending``) unless it is opened to recover, and then nothing may append to the log.
* :func:`recover_keys` asks every peer for its copy of our log (``/federation/v1/keylogs``,
  ``node.checkpoints``). A copy counts only if a checkpoint **signed by our own identity key**
  vouches for it and it extends the log we hold; every copy must be a prefix of the longest (two
  peers holding logs that diverge is the equivocation alarm, not something to pick from). Every
  peer must answer: one we cannot reach may hold the longest log.
* The missing entries are appended as they were (same bytes, same hashes): no fork.
* Keys named by those entries were created after the backup, so their private halves are gone:
  a lost encryption key is replaced at once (a new key made current by rotation, up to an epoch
  no lower than any announced, so the peers take the bundle; pushed when the node serves); a
  lost identity key cannot be replaced by the node alone — the other members replace it
  (runbook 4c), and the recovery says so with ``identity_key_lost``. A TLS certificate added
  after the backup is an announced pin the node no longer holds: the running node retires it.
* The marker is removed only when all of this is done; a failed recovery changes nothing and can
  be run again.

Logs and errors carry city names, sizes and codes only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Final

from node.backup import clear_restore_marker, read_restore_marker
from node.checkpoints import KEYLOGS_PATH
from node.config import NodeConfig
from node.errors import NodeError
from node.federation.client import FederationClient, PeerEndpoint
from node.own_keys import announced_windows, current_and_next
from node.secrets_source import OperatorSecret
from node.service import Node
from protocol.checkpoint_exchange import encode_log_request, verify_log_copy
from protocol.errors import ErrorCode, ProtocolError, RemoteProtocolError
from protocol.keylog import EntryKind, KeyLog
from protocol.keys import KeyKind

logger = logging.getLogger(__name__)

MAX_REPLACEMENT_ROTATIONS: Final = 16
"""Rotations ``keys recover`` makes at most to bring the current encryption epoch back up to
the one announced before the disk died (one or two in practice: one per rotation since the
backup)."""


class NotRestored(NodeError):
    """``keys recover`` on a node that was not restored from a backup."""

    code: ClassVar[str] = "not_restored"


class RecoveryIncomplete(NodeError):
    """A peer could not be asked, or its copy of our log does not fit ours (nothing changed)."""

    code: ClassVar[str] = "recovery_incomplete"


class IdentityKeyLost(NodeError):
    """The identity key was replaced after the backup: the other members must replace it."""

    code: ClassVar[str] = "identity_key_lost"


@dataclass(frozen=True, slots=True)
class Recovery:
    """What :func:`recover_keys` did.

    Attributes:
        restored_size: the size of our log as restored from the backup.
        size: its size after the entries taken back (before the new keys were logged).
        taken_back: how many entries were taken back.
        source: the peer whose copy they came from (``None`` when none were missing).
        sources: peer → the size of the copy it holds of our log (0: none).
        encryption_replaced: whether a lost encryption key was replaced by a new one.
        tls_pins_lost: announced TLS pins whose certificates were lost (retired when serving).
    """

    restored_size: int
    size: int
    taken_back: int
    source: str | None
    sources: dict[str, int]
    encryption_replaced: bool
    tls_pins_lost: int


async def recover_keys(
    config: NodeConfig, secret: OperatorSecret, *, clock: Callable[[], float] = time.time
) -> Recovery:
    """Take back the key-history entries lost with the backup, then replace lost keys.

    Raises:
        NotRestored: no restore marker in the data directory.
        RecoveryIncomplete: a peer cannot be reached or answers with a copy that does not verify
            or does not fit our log; nothing is changed.
        IdentityKeyLost: the entries taken back replace our identity key (they are kept: the
            log now matches the peers'), or the peers' copies are signed by a successor key the
            backup lacks (nothing is taken back); either way the other members replace the key
            (runbook 4c) and the marker is removed so that procedure can open the node.
    """
    if read_restore_marker(config.data_dir) is None:
        raise NotRestored("this node was not restored from a backup: nothing to recover")
    node = await Node.open(config, secret, clock=clock, recovering=True)
    try:
        local = await node.history.load()
        try:
            copies = await _ask_peers(node, local)
        except IdentityKeyLost:
            clear_restore_marker(config.data_dir)  # the way on is runbook 4c, which opens it
            raise
        best_peer, best = max(copies.items(), key=lambda item: item[1].size)
        for peer, copy in copies.items():
            if best.head_at(copy.size) != copy.head:
                raise RecoveryIncomplete(
                    f"the copies of our key log held by {peer} and {best_peer} diverge: "
                    "see `citynode keys show` on the peers before going on"
                )
        taken = best.entries[local.size :]
        if taken:
            await node.history.take_back(taken, int(clock()))
            logger.warning(
                "keys [%s] restored node: %d key-log entries taken back from %s (%d -> %d)",
                config.city,
                len(taken),
                best_peer,
                local.size,
                best.size,
            )
        lost_identity = any(e.kind in (EntryKind.IDENTITY_KEY, EntryKind.SUCCESSION) for e in taken)
        lost_encryption = _lost_encryption(node, best, int(clock()))
        tls_pins_lost = sum(1 for e in taken if e.kind == EntryKind.TLS_PIN)
        announced_epoch = max((k.epoch for k in announced_windows(best).values()), default=0)
    finally:
        await node.close()
    clear_restore_marker(config.data_dir)
    if lost_encryption:
        await _replace_encryption(config, secret, clock, announced_epoch)
    if lost_identity:
        raise IdentityKeyLost(
            "the identity key was replaced after this backup was taken and its private key is "
            "lost: the other members replace it (runbook 4c, `keys replace`)"
        )
    return Recovery(
        restored_size=local.size,
        size=best.size,
        taken_back=len(taken),
        source=best_peer if taken else None,
        sources={peer: copy.size for peer, copy in copies.items()},
        encryption_replaced=lost_encryption,
        tls_pins_lost=tls_pins_lost,
    )


async def _replace_encryption(
    config: NodeConfig, secret: OperatorSecret, clock: Callable[[], float], epoch: int
) -> None:
    """Make a new encryption key current, at an epoch no lower than any announced before.

    Opening the node creates the next key the keystore lacks (at the epoch after the newest one
    held) and logs its window; each rotation makes it current and creates the next. The peers
    refuse a bundle whose current epoch goes back, so it rotates until the current epoch reaches
    the highest one the lost keys were announced with.
    """
    node = await Node.open(config, secret, clock=clock)
    try:
        for _ in range(MAX_REPLACEMENT_ROTATIONS):
            await node.rotate_encryption()
            pair = current_and_next(
                node.own.encryption,
                config.keys,
                int(clock()),
                announced_windows(await node.history.load()),
            )
            if pair is None or pair[0].epoch >= epoch:
                break
        else:
            raise RecoveryIncomplete(
                f"the lost encryption keys were announced up to epoch {epoch}: more than "
                f"{MAX_REPLACEMENT_ROTATIONS} rotations away; the peers would refuse the bundle"
            )
    finally:
        await node.close()
    logger.warning("keys [%s] restored node: lost encryption key replaced", config.city)


async def _ask_peers(node: Node, local: KeyLog) -> dict[str, KeyLog]:
    """Every peer's copy of our log (the empty log when it holds none), each checked against
    the checkpoint that vouches for it and against ``local``."""
    city, limits = node.config.city, node.config.limits
    # Only our identity keys as the restored log has them (their windows, our revocations): a
    # superseded or revoked key the keystore still holds vouches for nothing after its time.
    keyring = {city: node.own_verify_keys()}

    def endpoint(peer: str) -> PeerEndpoint | None:
        trusted = node.trust().peers.get(peer)
        if trusted is None or not trusted.certificates:
            return None
        return PeerEndpoint(url=trusted.endpoint, certificates=trusted.certificates)

    client = FederationClient(
        own=node.tls,
        peers=endpoint,
        verify_receipt=node.receipt_checker(),
        limits=limits,
        metrics=node.metrics,
        clock=node.clock,
    )
    copies: dict[str, KeyLog] = {}
    try:
        for peer in sorted(node.trust().peers):
            try:
                data = await client.post_exchange(
                    peer,
                    KEYLOGS_PATH,
                    encode_log_request(city),
                    cap=limits.protocol.max_keylog_bytes,
                )
                found = verify_log_copy(data, city, keyring, limits=limits.protocol)
            except RemoteProtocolError as e:
                if e.code == ErrorCode.UNKNOWN_KEY:  # signed by a successor this backup lacks
                    raise IdentityKeyLost(
                        f"{peer}'s copy of our key log is signed by an identity key this backup "
                        "does not hold: the identity key was replaced after the backup was "
                        "taken; the other members replace it (runbook 4c)"
                    ) from e
                raise RecoveryIncomplete(
                    f"{peer}'s copy of our key log does not verify ({e.code})"
                ) from e
            except (NodeError, ProtocolError) as e:
                raise RecoveryIncomplete(
                    f"{peer} could not give its copy of our key log ({e.code}); every peer must "
                    "answer, try again when it is reachable"
                ) from e
            log = found[1] if found is not None else KeyLog()
            shorter, longer = (log, local) if log.size < local.size else (local, log)
            if longer.head_at(shorter.size) != shorter.head:
                raise RecoveryIncomplete(
                    f"{peer}'s copy of our key log and the restored one diverge: see "
                    "`citynode keys show` on the peers before going on"
                )
            copies[peer] = log if log.size > local.size else local
    finally:
        await client.close()
    if not copies:
        raise RecoveryIncomplete("no peer to ask: adopt the agreement first")
    return copies


def _lost_encryption(node: Node, log: KeyLog, now: int) -> bool:
    """Whether the log announces an encryption key, still within its window, that the keystore
    does not hold (and that was not destroyed on schedule)."""
    held = {k.key_id for k in node.keystore.keys(KeyKind.ENCRYPTION)}
    destroyed = {e.payload for e in log.entries if e.kind == EntryKind.ENCRYPTION_KEY_DESTROYED}
    return any(
        key.key_id not in held and key.key_id not in destroyed and key.not_after > now
        for key in announced_windows(log).values()
    )
