"""What this node trusts: the adopted agreement and its peers' verified keys, as one snapshot.

Owns the answer to "which keys count for whom" on the node side. Invariants:

* Trust has one root, the signed agreement the node adopted (``protocol.agreement``): a peer is a
  member of it, its identity key is the member's key there, its endpoint is the member's endpoint.
* A peer's encryption keys and TLS pins come from its **key bundle**, signed by its current
  identity key: the agreement's key, or the last key of the chain that leads from it through the
  peer's succession statements (each signed by the old and the new key). A bundle signed by any
  other key never enters a snapshot. The chain's old keys stay, each valid up to its succession
  time, so what they signed before (receipts, envelopes still being retried) still verifies.
* The TLS pins accepted for a peer are those of its bundle once we hold one, and the agreement's
  pins for the member until then: the bundle, signed by the same identity key the agreement
  names, lets a node rotate its TLS certificate with overlapping pins without a new agreement
  version (add the new pin, switch, retire the old) — and a retired pin, even the agreement's,
  is refused from the bundle that drops it on.
* A :class:`TrustState` is immutable; the node swaps in a new one when it adopts an agreement or a
  peer's bundle changes, so a request never sees half an update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from node.errors import NodeError
from node.federation.tls import PinTable, pin_of_certificate_pem
from protocol.agreement import VerifiedAgreement
from protocol.key_bundle import VerifiedKeyBundle
from protocol.keys import EncryptionKey, VerifyKey, identity_key


class UnknownPeer(NodeError):
    """A city that is not a member of the adopted agreement, or whose keys we do not have yet."""

    code: ClassVar[str] = "unknown_peer"


@dataclass(frozen=True, slots=True)
class PeerKeys:
    """Everything this node trusts about one peer.

    Attributes:
        city: the peer's city.
        endpoint: its federation URL, from the agreement.
        identity: the identity keys whose signatures count for it, oldest first.
        bundle: its verified key bundle (encryption keys, TLS pins), or ``None`` until fetched.
        certificates: its TLS certificates (PEM) whose pins are accepted.
        pins: the accepted TLS pins (the bundle's; the agreement's before a bundle is held).
    """

    city: str
    endpoint: str
    identity: tuple[VerifyKey, ...]
    bundle: VerifiedKeyBundle | None
    certificates: tuple[bytes, ...]
    pins: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class TrustState:
    """One consistent view of the agreement and the peers' keys.

    Attributes:
        city: this node's city.
        agreement: the adopted, verified agreement.
        peers: the other members, by city.
    """

    city: str
    agreement: VerifiedAgreement
    peers: Mapping[str, PeerKeys] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def build(
        cls,
        city: str,
        agreement: VerifiedAgreement,
        bundles: Mapping[str, VerifiedKeyBundle],
        certificates: Mapping[str, Sequence[bytes]],
        chains: Mapping[str, Sequence[VerifyKey]] | None = None,
    ) -> TrustState:
        """Assemble a snapshot from the agreement and the peers' verified bundles and certificates.

        Args:
            city: this node's city; it must be a member.
            agreement: the adopted agreement.
            bundles: each peer's verified bundle (verified against the agreement's identity key).
            certificates: each peer's TLS certificates (PEM); those whose pin is not accepted
                are left out.
            chains: each peer's identity keys, verified from the agreement's key through its
                succession statements (``protocol.succession.verify_succession_chain``); a peer
                without one has just the agreement's key.

        Returns:
            The snapshot.

        Raises:
            UnknownPeer: this node's city is not a member, or a bundle is not the member's.
        """
        members = {m.city: m for m in agreement.document.members}
        if city not in members:
            raise UnknownPeer("this node's city is not a member of the adopted agreement")
        peers: dict[str, PeerKeys] = {}
        for member in agreement.document.members:
            if member.city == city:
                continue
            bundle = bundles.get(member.city)
            chain = tuple((chains or {}).get(member.city, ())) or (
                identity_key(member.identity_key),
            )
            if chain[0].public_key != member.identity_key:
                raise UnknownPeer(
                    f"the identity keys of {member.city} do not start at its member key"
                )
            if bundle is not None and bundle.identity_key != chain[-1].public_key:
                raise UnknownPeer(
                    f"the key bundle of {member.city} is not signed by its current identity key"
                )
            pins = frozenset(bundle.tls_pins if bundle is not None else member.tls_pins)
            certs = tuple(
                pem
                for pem in certificates.get(member.city, ())
                if pin_of_certificate_pem(pem) in pins
            )
            peers[member.city] = PeerKeys(
                city=member.city,
                endpoint=member.endpoint,
                identity=chain,
                bundle=bundle,
                certificates=certs,
                pins=pins,
            )
        return cls(city=city, agreement=agreement, peers=MappingProxyType(peers))

    def sender_keys(self, city: str) -> Sequence[VerifyKey] | None:
        """The identity keys that count for ``city``; ``None`` for a non-member or ourselves."""
        peer = self.peers.get(city)
        return peer.identity if peer else None

    def peer(self, city: str) -> PeerKeys:
        """Return a peer's keys.

        Raises:
            UnknownPeer: not a member of the adopted agreement.
        """
        peer = self.peers.get(city)
        if peer is None:
            raise UnknownPeer(f"{city} is not a peer in the adopted agreement")
        return peer

    def sealing_key(self, city: str, now: int) -> EncryptionKey:
        """The encryption key to seal to ``city`` at ``now``.

        Raises:
            UnknownPeer: not a member, or its key bundle has not been fetched yet.
            RemoteProtocolError: ``expired_key`` when no key of its bundle is valid at ``now``.
        """
        peer = self.peer(city)
        if peer.bundle is None:
            raise UnknownPeer(f"no key bundle from {city} yet")
        return peer.bundle.sealing_key(now)

    def pin_table(self) -> PinTable:
        """The TLS pins accepted from each peer: what authenticates a federation request."""
        return PinTable({city: peer.pins for city, peer in self.peers.items()})

    def all_peer_certificates(self) -> tuple[bytes, ...]:
        """Every accepted peer certificate (PEM): the trust anchors of the federation listener."""
        return tuple(pem for peer in self.peers.values() for pem in peer.certificates)
