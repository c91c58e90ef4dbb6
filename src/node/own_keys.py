"""This node's own keys as its peers see them: encryption-key windows and the signed key bundle.

Owns the schedule that turns the keystore's encryption keys (epochs 0, 1, 2...) into announced
keys with validity windows, and the bundle built from them. Invariants:

* A key's window is fixed when it is first announced: the signed announcement is appended to
  the key-history log (``ENCRYPTION_KEY`` entry) and read back from there at every start, so it
  is the same at every restart and never changes once peers have seen it — except that
  ``keys rotate`` may start the announced next key *earlier* (a new announcement; its end never
  moves). A key not announced yet starts one rotation after the key before it and ends the grace
  window after the key after it takes over. Consecutive windows overlap by the grace window,
  which ``config`` checks is longer than the outbox's longest retry: an envelope sealed to a key
  just before a rotation is still opened after it.
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
from protocol import codec
from protocol.key_bundle import SignedEncryptionKey, announce_encryption_key, sign_bundle
from protocol.keylog import EntryKind, KeyLog, KeyLogHead
from protocol.keys import PUBLIC_KEY_BYTES, EncryptionKey, KeyKind, encryption_key
from protocol.limits import Limits
from protocol.sealing import DecryptionKey
from protocol.succession import verify_succession


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


def announced_windows(log: KeyLog) -> dict[bytes, EncryptionKey]:
    """The windows this node announced for its encryption keys, by key id (latest entry wins).

    ``ENCRYPTION_KEY`` entries carry the signed announcement (``SignedEncryptionKey``); entries of
    older nodes carrying only the raw public key (32 bytes) announce no window and are skipped.
    """
    windows: dict[bytes, EncryptionKey] = {}
    for entry in log.entries:
        if entry.kind != EntryKind.ENCRYPTION_KEY or len(entry.payload) == PUBLIC_KEY_BYTES:
            continue
        signed = codec.decode(
            entry.payload, SignedEncryptionKey, max_bytes=len(entry.payload), what="key log entry"
        )
        key = codec.decode(signed.key, EncryptionKey, max_bytes=len(signed.key), what="key")
        windows[key.key_id] = key
    return windows


def encryption_windows(
    stored: tuple[StoredKey, ...],
    schedule: KeySchedule,
    announced: Mapping[bytes, EncryptionKey] | None = None,
) -> tuple[EncryptionKey, ...]:
    """Announceable encryption keys with their windows, by epoch.

    A key keeps the window it was announced with (``announced``, from the key-history log). A key
    not announced yet follows the one before it: it starts one rotation period after that key
    started (or when it was created, if later) and ends a rotation plus the grace window later
    (never before that key ends). The first key of a node starts when it was created.
    """
    announced = announced or {}
    rotation, grace = schedule.encryption_rotation_s, schedule.encryption_grace_s
    keys: list[EncryptionKey] = []
    for key in stored:
        known = announced.get(key.key_id)
        if known is not None:
            keys.append(known)
            continue
        if keys:  # never in the past: a node that was stopped for long starts afresh
            not_before = max(keys[-1].not_before + rotation, key.created_at)
            not_after = max(not_before + rotation + grace, keys[-1].not_after + 1)
        else:
            not_before = key.created_at
            not_after = not_before + rotation + grace
        keys.append(
            encryption_key(
                key.public_key, epoch=key.epoch, not_before=not_before, not_after=not_after
            )
        )
    return tuple(keys)


def current_and_next(
    stored: tuple[StoredKey, ...],
    schedule: KeySchedule,
    now: int,
    announced: Mapping[bytes, EncryptionKey] | None = None,
) -> tuple[EncryptionKey, EncryptionKey] | None:
    """The key in use at ``now`` and the one announced after it, or ``None`` if no next exists."""
    windows = encryption_windows(stored, schedule, announced)
    usable = [k for k in windows if k.not_before <= now]
    if not usable:
        return None
    current = usable[-1]
    following = [k for k in windows if k.epoch == current.epoch + 1]
    return (current, following[0]) if following else None


def ensure_next_key(
    keystore: Keystore,
    schedule: KeySchedule,
    now: int,
    announced: Mapping[bytes, EncryptionKey] | None = None,
) -> bool:
    """Create the next encryption key when the current one has no announced successor.

    Returns:
        True when a key was created.
    """
    created = False
    for _ in range(3):  # a brand-new node needs two keys; a node stopped for long, two more
        stored = keystore.keys(KeyKind.ENCRYPTION)
        if stored and current_and_next(stored, schedule, now, announced) is not None:
            break
        keystore.generate_encryption()
        created = True
    return created


def announced_tls_pins(log: KeyLog) -> tuple[bytes, ...]:
    """The TLS pins this node announced and has not retired, in the order added.

    ``TLS_PIN`` entries add a pin (the 32-byte pin), ``TLS_PIN_RETIRED`` entries retire one.
    """
    pins: dict[bytes, None] = {}
    for entry in log.entries:
        if entry.kind == EntryKind.TLS_PIN:
            pins[entry.payload] = None
        elif entry.kind == EntryKind.TLS_PIN_RETIRED:
            pins.pop(entry.payload, None)
    return tuple(pins)


def _since_identity_key(log: KeyLog, kind: EntryKind) -> tuple[bytes, ...]:
    """Payloads of ``kind`` logged after the last ``IDENTITY_KEY`` entry: the statements about the
    identity key the agreement names now (a key replaced through an agreement change starts a
    new chain; the statements about the replaced keys are no longer served)."""
    starts = [e.index for e in log.entries if e.kind == EntryKind.IDENTITY_KEY]
    first = starts[-1] if starts else 0
    return tuple(e.payload for e in log.entries[first:] if e.kind == kind)


def own_successions(log: KeyLog) -> tuple[bytes, ...]:
    """This node's identity succession statements since its current identity key was introduced,
    oldest first (served in its package)."""
    return _since_identity_key(log, EntryKind.SUCCESSION)


def own_revocations(log: KeyLog) -> tuple[bytes, ...]:
    """This node's revocations of its own identity keys since its current identity key was
    introduced, oldest first (served in its package)."""
    return _since_identity_key(log, EntryKind.REVOCATION)


def signing_identities(
    keystore: Keystore, successions: tuple[bytes, ...]
) -> tuple[tuple[int, Ed25519PrivateKey], ...]:
    """The identity private keys with the first second each signs for, oldest first.

    The first identity key signs from 0; each succession hands over at its ``effective_from``.
    Envelopes and receipts are signed by the key of their own timestamp, so nothing this node
    signs falls outside the window its peers give that key.

    Raises:
        KeyNotFound: a succession names a key the keystore does not hold.
    """
    stored = keystore.keys(KeyKind.IDENTITY)
    by_public = {key.public_key: key for key in stored}
    steps = [verify_succession(data) for data in successions]
    # The chain starts at the newest key no succession leads to: the first key, or the key that
    # replaced a compromised one through an agreement change (``node.key_replacement``).
    successors = {step.new_key for step in steps}
    start = [key for key in stored if key.public_key not in successors][-1]
    schedule = [(0, keystore.load_identity(start.key_id))]
    for step in steps:
        successor = by_public.get(step.new_key)
        if successor is None:
            raise KeyNotFound("a succession names an identity key the keystore does not hold")
        schedule.append((step.effective_from, keystore.load_identity(successor.key_id)))
    return tuple(schedule)


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
    announced: Mapping[bytes, EncryptionKey] | None = None,
    previous_sequence: int = 0,
) -> bytes:
    """Sign this node's key bundle as of ``now``.

    Its sequence is ``now * 2**16 + key_log.size`` (and above ``previous_sequence``), so a bundle
    made after a key change in the same second still supersedes the one before at every peer.

    Raises:
        KeyNotFound: there is no current and next encryption key (run :func:`ensure_next_key`).
        LocalProtocolError: the bundle would not verify at a peer.
    """
    pair = current_and_next(own.encryption, schedule, now, announced)
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
        sequence=max(now * 2**16 + min(key_log.size, 2**16 - 1), previous_sequence + 1),
        limits=limits,
    )
