"""Replacing a compromised member's keys: the member's side of revocation by threshold.

Owns what a node does when its keys may have been copied and the other members are to replace
its identity key through an agreement change (``citynode keys replace``, then the others'
``agreement propose --replace-key CITY``, ``sign`` and ``adopt``). Invariants:

* The new identity key is **not** vouched for by the old one: a succession signed by a stolen
  key proves nothing (the thief can make one too). It is introduced by a new ``IDENTITY_KEY``
  entry in the key-history log and counts for the peers only once an agreement version signed by
  a threshold of the *other* members names it. From that entry on, the node serves only the
  statements about the new key (``own_keys.own_successions``) and signs only with it.
* Every key a thief may hold is replaced at once: the identity key, the TLS certificate (a new
  pair in use, the old pin retired) and the encryption keys (rotated twice, so that the key in
  use is one created after the replacement — the announced next key was in the keystore too).
* Nothing is sent: the node is cut off until the other members adopt the new version (its old
  key still counts for them until then, its new one not yet). Its cases and queued messages stay.
* From ``keys revoke`` until ``keys replace``, the node **signs nothing** with the revoked key at
  or after its ``compromised_since``: ``Node.identity_at`` raises :class:`IdentityRevoked`, so no
  envelope is sealed (the case API answers 503 ``identity_revoked``, nothing queued), no receipt
  is signed (the federation listener answers 503 and keeps nothing: peers keep what they queued
  for the node and deliver it after the replacement), no ``KeyUpdate`` is pushed and no
  checkpoint is signed. Only the package already signed, which carries the revocation, is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.delivery import Overloaded
from node.own_keys import load_own_keys
from protocol.keylog import EntryKind
from protocol.keys import VerifyKey, fingerprint, identity_key, public_bytes
from protocol.limits import Limits
from protocol.succession import apply_revocation, verify_succession_chain

if TYPE_CHECKING:
    from node.service import Node

logger = logging.getLogger(__name__)


class IdentityRevoked(Overloaded):
    """Our identity key is revoked for the time we would sign at: we sign nothing until ``keys
    replace``. Like an overloaded node, the federation listener answers 503 and keeps nothing
    (peers keep their messages queued); the case API answers 503 ``identity_revoked``."""

    code: ClassVar[str] = "identity_revoked"


def own_chain(
    identities: tuple[tuple[int, Ed25519PrivateKey], ...],
    successions: tuple[bytes, ...],
    revocations: tuple[bytes, ...],
    limits: Limits,
) -> tuple[VerifyKey, ...]:
    """Our own identity keys as the peers trust them: the chain and its revocations.

    Args:
        identities: ``own_keys.signing_identities`` (the chain's private keys, oldest first).
        successions: ``own_keys.own_successions`` (the chain's statements).
        revocations: ``own_keys.own_revocations`` (our ``keys revoke`` statements).
        limits: the protocol limits.

    Returns:
        The verify keys, oldest first, each with its window and ``revoked_since``.

    Raises:
        ProtocolError: a statement of our own log does not verify (a corrupt log).
    """
    if not identities:
        return ()
    first = identity_key(public_bytes(identities[0][1]))
    chain = verify_succession_chain(first, successions, limits=limits)
    for revocation in revocations:
        chain = apply_revocation(chain, revocation)
    return chain


@dataclass(frozen=True, slots=True)
class ReplacedKeys:
    """What ``keys replace`` made; the operator reads the fingerprint out to the other cities.

    Attributes:
        old_key_id: the replaced identity key's id (hex).
        new_key_id: the new identity key's id (hex).
        fingerprint: the new key's numeric fingerprint.
        tls_pin: the new TLS certificate's pin (hex).
    """

    old_key_id: str
    new_key_id: str
    fingerprint: str
    tls_pin: str


async def replace_compromised_keys(node: Node) -> ReplacedKeys:
    """Give the node a new identity key, TLS certificate and encryption keys.

    Args:
        node: the opened node (not serving: its listener would still present the old
            certificate).

    Returns:
        The new keys' public facts.

    Raises:
        TlsRotationPending: a TLS rotation is under way (finish it first).
        KeystoreError: the keystore cannot be written.
    """
    old = node.own.identity_stored
    created = node.keystore.generate_identity()
    await node.history.append([(EntryKind.IDENTITY_KEY, created.public_key)], int(node.clock()))
    node.own = load_own_keys(node.keystore)
    await node.reload_keys()
    pin = await node.rotate_tls()
    await node.switch_tls()
    await node.retire_tls(node.retirable_tls_pins())
    for _ in range(2):  # the announced next key was in the keystore too: make a fresh one current
        await node.rotate_encryption()
    city = node.config.city
    logger.warning("keys [%s] identity, TLS and encryption keys replaced after a compromise", city)
    return ReplacedKeys(
        old_key_id=old.key_id.hex(),
        new_key_id=created.key_id.hex(),
        fingerprint=fingerprint(city, created.public_key),
        tls_pin=pin.hex(),
    )
