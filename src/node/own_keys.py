"""This node's own keys as its peers see them: encryption-key windows and the signed key bundle.

Owns the schedule that turns the keystore's encryption keys (epochs 0, 1, 2...) into announced
keys with validity windows, and the bundle built from them. Invariants:

* Windows follow from the keys' epochs and the first key's creation time, so they are the same at
  every restart: epoch ``e`` may be sealed to from ``anchor + (e - e0) * rotation`` until
  ``grace`` after the next key takes over. Consecutive windows overlap by the grace window, which
  ``config`` checks is longer than the outbox's longest retry: an envelope sealed to a key just
  before a rotation is still opened after it.
* The bundle always announces the next key before it is used; :func:`ensure_next_key` creates it
  when it is missing.
* Private keys stay in the keystore; only public keys and signatures leave this module, except
  :func:`decryption_keys`, which hands ``open_envelope`` the private keys still held.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.config import KeySchedule
from node.keystore import KeyNotFound, Keystore, StoredKey
from protocol.key_bundle import announce_encryption_key, sign_bundle
from protocol.keylog import KeyLogHead
from protocol.keys import EncryptionKey, KeyKind, encryption_key
from protocol.limits import Limits
from protocol.sealing import DecryptionKey


@dataclass(frozen=True, slots=True)
class OwnKeys:
    """The node's key material in use, loaded once from the keystore.

    Attributes:
        identity: the identity private key.
        identity_stored: its keystore record.
        encryption: the encryption keys' records, by epoch.
    """

    identity: Ed25519PrivateKey
    identity_stored: StoredKey
    encryption: tuple[StoredKey, ...]


def load_own_keys(keystore: Keystore) -> OwnKeys:
    """Load the current identity key and the list of encryption keys.

    Raises:
        KeyNotFound: the keystore holds no identity key.
    """
    identities = keystore.keys(KeyKind.IDENTITY)
    if not identities:
        raise KeyNotFound("the keystore holds no identity key")
    current = identities[-1]
    return OwnKeys(
        identity=keystore.load_identity(current.key_id),
        identity_stored=current,
        encryption=keystore.keys(KeyKind.ENCRYPTION),
    )


def encryption_windows(
    stored: tuple[StoredKey, ...], schedule: KeySchedule
) -> tuple[EncryptionKey, ...]:
    """Announceable encryption keys with their windows, by epoch."""
    if not stored:
        return ()
    first = stored[0]
    rotation = schedule.encryption_rotation_s
    keys = []
    for key in stored:
        not_before = first.created_at + (key.epoch - first.epoch) * rotation
        keys.append(
            encryption_key(
                key.public_key,
                epoch=key.epoch,
                not_before=not_before,
                not_after=not_before + rotation + schedule.encryption_grace_s,
            )
        )
    return tuple(keys)


def current_and_next(
    stored: tuple[StoredKey, ...], schedule: KeySchedule, now: int
) -> tuple[EncryptionKey, EncryptionKey] | None:
    """The key in use at ``now`` and the one announced after it, or ``None`` if no next exists."""
    windows = encryption_windows(stored, schedule)
    usable = [k for k in windows if k.not_before <= now]
    if not usable:
        return None
    current = usable[-1]
    following = [k for k in windows if k.epoch == current.epoch + 1]
    return (current, following[0]) if following else None


def ensure_next_key(keystore: Keystore, schedule: KeySchedule, now: int) -> bool:
    """Create the next encryption key when the current one has no announced successor.

    Returns:
        True when a key was created.
    """
    stored = keystore.keys(KeyKind.ENCRYPTION)
    if stored and current_and_next(stored, schedule, now) is not None:
        return False
    keystore.generate_encryption()
    if len(stored) == 0:  # a brand-new node needs both the current and the next key
        keystore.generate_encryption()
    return True


def decryption_keys(
    keystore: Keystore, stored: tuple[StoredKey, ...]
) -> Mapping[bytes, DecryptionKey]:
    """Our encryption private keys still held, by key id, for ``open_envelope``."""
    return {
        key.key_id: DecryptionKey(epoch=key.epoch, private_key=keystore.load_encryption(key.key_id))
        for key in stored
    }


def own_bundle(
    own: OwnKeys,
    *,
    city: str,
    schedule: KeySchedule,
    tls_pins: tuple[bytes, ...],
    key_log: KeyLogHead,
    now: int,
    limits: Limits,
) -> bytes:
    """Sign this node's key bundle as of ``now``.

    Raises:
        KeyNotFound: there is no current and next encryption key (run :func:`ensure_next_key`).
        LocalProtocolError: the bundle would not verify at a peer.
    """
    pair = current_and_next(own.encryption, schedule, now)
    if pair is None:
        raise KeyNotFound("no current and next encryption key: the keystore needs a rotation")
    current, following = pair
    return sign_bundle(
        own.identity,
        city=city,
        current=announce_encryption_key(own.identity, current),
        next_key=announce_encryption_key(own.identity, following),
        tls_pins=tls_pins,
        key_log=key_log,
        issued_at=now,
        sequence=now,
        limits=limits,
    )
