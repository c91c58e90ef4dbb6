"""Key rotation: encryption keys on demand and on schedule, the destruction of keys past their
grace, and the steps of a TLS-certificate rotation.

Owns the decisions of a rotation; the node (``service.Node``) persists and announces them.
Invariants:

* Every key change is a list of key-history entries (``EntryKind``, exact public payload) that
  the caller appends in one transaction *before* the new bundle is served: what a peer sees was
  logged first.
* ``keys rotate --kind encryption`` makes the announced next key current now (its window may
  start earlier; its end never moves) and announces a new next key one rotation period later.
  The previous key's window is untouched, so a peer still sealing to it under the bundle it holds
  is still read.
* A private key is destroyed only when its window ended more than the grace window ago (the
  grace is longer than the outbox's longest retry, checked in ``config``) and it is neither the
  current nor the next key; the destruction is logged (``ENCRYPTION_KEY_DESTROYED``, the key id).
  Case data is under the data key and the case keys, never under an encryption key, so the node
  still reads every case it stores.
* A TLS rotation has three steps and never leaves a peer without a pin it accepts:
  **add** (:func:`start_tls_rotation`: a new pair stored beside the one in use, its pin logged as
  ``TLS_PIN`` and announced in the bundle with the old one), **switch** (the running node, once
  every peer accepts a request made with the new certificate, makes it the one it presents), and
  **retire** (:func:`retire_tls_pins`: ``TLS_PIN_RETIRED`` for each announced pin that is neither
  in use nor being added, after the switch's connections have drained). The announced pins are
  the ``TLS_PIN`` entries not retired (``own_keys.announced_tls_pins``).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from typing import ClassVar

import msgspec
from cryptography import x509

from node.config import KeySchedule
from node.errors import NodeError
from node.keystore import KeyNotFound, Keystore
from node.own_keys import OwnKeys, current_and_next, encryption_windows
from node.tls_material import TlsMaterial, self_signed_certificate
from protocol import codec
from protocol.key_bundle import announce_encryption_key
from protocol.keylog import EntryKind
from protocol.keys import EncryptionKey, KeyKind, encryption_key

logger = logging.getLogger(__name__)

Changes = list[tuple[EntryKind, bytes]]
"""Key-history entries to append: (kind, exact payload)."""


def announcement(own: OwnKeys, key: EncryptionKey) -> tuple[EntryKind, bytes]:
    """The key-history entry announcing an encryption key and its window (signed)."""
    return EntryKind.ENCRYPTION_KEY, codec.encode(announce_encryption_key(own.identity, key))


def pending_announcements(
    own: OwnKeys, schedule: KeySchedule, announced: Mapping[bytes, EncryptionKey]
) -> Changes:
    """Entries for the keys whose window has not been logged yet (oldest first)."""
    windows = encryption_windows(own.encryption, schedule, announced)
    return [announcement(own, key) for key in windows if key.key_id not in announced]


def rotate_encryption(
    keystore: Keystore,
    own: OwnKeys,
    schedule: KeySchedule,
    announced: Mapping[bytes, EncryptionKey],
    now: int,
) -> Changes:
    """Make the next encryption key current now and create a new next key.

    Args:
        keystore: where the new key is generated.
        own: the node's keys (``own.encryption`` as before the rotation).
        schedule: the rotation schedule.
        announced: the windows already logged, by key id.
        now: Unix seconds.

    Returns:
        The entries to log: the next key re-announced from ``now``, and the new next key.

    Raises:
        KeyNotFound: there is no current and next key (the node was never initialised).
    """
    pair = current_and_next(own.encryption, schedule, now, announced)
    if pair is None:
        raise KeyNotFound("no current and next encryption key to rotate")
    _, following = pair
    started = msgspec.structs.replace(following, not_before=now)
    created = keystore.generate_encryption()
    not_before = now + schedule.encryption_rotation_s
    new_next = encryption_key(
        created.public_key,
        epoch=created.epoch,
        not_before=not_before,
        not_after=max(
            not_before + schedule.encryption_rotation_s + schedule.encryption_grace_s,
            following.not_after + 1,
        ),
    )
    logger.info("keys: encryption key rotated to epoch %d", started.epoch)
    return [announcement(own, started), announcement(own, new_next)]


def destroy_expired(
    keystore: Keystore,
    own: OwnKeys,
    schedule: KeySchedule,
    announced: Mapping[bytes, EncryptionKey],
    now: int,
) -> Changes:
    """Destroy the encryption private keys past their window and the grace window.

    Returns:
        One ``ENCRYPTION_KEY_DESTROYED`` entry (payload: the key id) per key destroyed.
    """
    pair = current_and_next(own.encryption, schedule, now, announced)
    in_use = {key.key_id for key in pair} if pair else set()
    changes: Changes = []
    for key in encryption_windows(own.encryption, schedule, announced):
        if key.key_id in in_use or now <= key.not_after + schedule.encryption_grace_s:
            continue
        keystore.destroy(key.key_id)
        changes.append((EntryKind.ENCRYPTION_KEY_DESTROYED, key.key_id))
        logger.info("keys: encryption key of epoch %d destroyed after its grace window", key.epoch)
    return changes


def encryption_epochs(keystore: Keystore) -> tuple[int, ...]:
    """The epochs of the encryption private keys still held (for ``keys show``)."""
    return tuple(key.epoch for key in keystore.keys(KeyKind.ENCRYPTION))


# --- TLS certificate ------------------------------------------------------------------------


class TlsRotationPending(NodeError):
    """A TLS rotation is under way: its new certificate is not in use yet."""

    code: ClassVar[str] = "tls_rotation_pending"


def start_tls_rotation(keystore: Keystore, city: str, now: int) -> tuple[TlsMaterial, Changes]:
    """Add step: make a new TLS pair for the same names, store it beside the one in use.

    Args:
        keystore: where the pair in use is read and the new one stored.
        city: the certificate's common name.
        now: Unix seconds.

    Returns:
        The new pair and the entry to log (``TLS_PIN``, its pin).

    Raises:
        TlsRotationPending: a rotation's new pair is stored already (the node has not switched).
    """
    if keystore.load_next_tls() is not None:
        raise TlsRotationPending(
            "a TLS rotation is under way: the node switches to its new certificate once every "
            "peer accepts it (see `keys show`)"
        )
    hostnames, addresses = _alt_names(keystore.load_tls().certificate)
    material = self_signed_certificate(
        city,
        now=datetime.datetime.fromtimestamp(now, tz=datetime.UTC),
        hostnames=hostnames,
        addresses=addresses,
    )
    keystore.store_next_tls(material)
    logger.info("keys: new TLS certificate added beside the one in use")
    return material, [(EntryKind.TLS_PIN, material.pin())]


def bundle_tls_pins(
    announced: tuple[bytes, ...], current: TlsMaterial, following: TlsMaterial | None
) -> tuple[bytes, ...]:
    """The pins the bundle lists: those announced and not retired, and always the pairs held."""
    held = [current.pin()] + ([following.pin()] if following is not None else [])
    return tuple(dict.fromkeys([*announced, *held]))


def retirable_tls_pins(
    announced: tuple[bytes, ...], current: TlsMaterial, following: TlsMaterial | None
) -> tuple[bytes, ...]:
    """The announced pins of certificates the node no longer holds (retire step's candidates)."""
    held = {current.pin()} | ({following.pin()} if following is not None else set())
    return tuple(pin for pin in announced if pin not in held)


def retire_tls_pins(pins: tuple[bytes, ...]) -> Changes:
    """Retire step: one ``TLS_PIN_RETIRED`` entry per pin."""
    return [(EntryKind.TLS_PIN_RETIRED, pin) for pin in pins]


def _alt_names(certificate: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ["localhost"], ["127.0.0.1"]
    hostnames = names.get_values_for_type(x509.DNSName)
    return hostnames, [str(a) for a in names.get_values_for_type(x509.IPAddress)]
