"""Joining the federation: exchanging peer packages and adopting signed agreement versions.

Owns the operator procedures behind ``citynode peers`` and ``citynode agreement``. Invariants:

* An imported peer package is **not trusted** until the operator confirms its numeric
  fingerprint (``verify_peer``) with the digits the other city's operator read out. Only verified
  peers' keys go into an agreement this node proposes or accepts as version 1.
* An agreement version is adopted only when it verifies: version 1 with a threshold of its own
  members' signatures and every member key equal to a key this node's operator verified; later
  versions against the adopted one (``protocol.agreement.verify_successor``: thresholds on both
  sides, no rollback, no skipped version, no fork). The adopted versions are stored in order, and
  every start re-verifies the chain.
* Signing never adopts: an operator signs what they reviewed (``sign_agreement``), and adoption is
  a separate step that checks the signatures collected so far.
* Importing a package whose identity key differs from the one stored for the city (a member
  whose key was replaced after a compromise) makes the city unverified again: its new key enters
  a proposal only after the operator confirmed the new fingerprint. ``propose_agreement`` with
  ``replace_keys`` revokes the replaced members' keys of the adopted version (revocation by
  threshold: ``protocol.agreement`` does not count the replaced key's signature).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

from node.errors import NodeError
from node.peer_package import PeerPackage, read_package
from node.service import Node
from node.storage.schema import AgreementRow
from protocol import codec
from protocol.agreement import (
    AgreementDocument,
    SignedAgreement,
    VerifiedAgreement,
    add_signature,
    decode_document,
    encode_document,
    encode_signed,
    sign_document,
    verify_genesis,
    verify_successor,
)
from protocol.agreement_draft import (
    AgreementDraft,
    MemberKeys,
    complete_draft,
    draft_from_toml,
)
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.key_bundle import verify_bundle
from protocol.keys import EncryptionKey, fingerprint


class MembershipError(NodeError):
    """A peer or agreement operation that cannot be done as asked."""

    code: ClassVar[str] = "membership"


class FingerprintMismatch(MembershipError):
    """The digits the operator entered are not the peer's fingerprint: nothing was trusted."""

    code: ClassVar[str] = "fingerprint_mismatch"


@dataclass(frozen=True, slots=True)
class PeerView:
    """A stored peer, as operators see it.

    Attributes:
        city: the peer.
        fingerprint: its identity key's fingerprint, or ``None`` before a package was imported.
        verified: whether its fingerprint was confirmed by this node's operator.
        endpoint: its federation URL (known once an agreement names it).
        last_seen_at: when it last reached us.
        key_sequence: the sequence number of the newest key bundle we hold from it.
        identity_key_id: its identity key id (hex) in that bundle.
        seals_to: the encryption key this node seals to it now: ``(epoch, key id hex)``, or
            ``None`` when no key of the bundle is valid now (or none was received yet).
    """

    city: str
    fingerprint: str | None
    verified: bool
    endpoint: str
    last_seen_at: float | None
    key_sequence: int | None = None
    identity_key_id: str | None = None
    seals_to: tuple[int, str] | None = None


def _normalise_digits(digits: str) -> str:
    return "".join(ch for ch in digits if ch.isdigit())


async def import_peer(node: Node, data: bytes) -> PeerPackage:
    """Store a peer's package (from ``peers export`` at the other city), not yet trusted.

    Returns:
        The verified package, whose fingerprint the operator must compare out of band.

    Raises:
        DecodeError, RemoteProtocolError: the package is malformed or its signatures fail.
        MembershipError: it is this node's own package.
    """
    limits = node.config.limits.protocol
    package = read_package(data, expected_identity=None, now=int(node.clock()), limits=limits)
    city = package.bundle.city
    if city == node.config.city:
        raise MembershipError("this is our own package: import the other cities' packages")
    existing = await node.peers.get(city)
    await node.peers.upsert_peer(city, existing.endpoint if existing else "")
    await node.peers.store_bundle(
        city,
        package.bundle.signed_bytes,
        package.bundle.sequence,
        package.certificates,
        successions=package.successions,
        revocations=package.revocations,
    )
    if existing is not None and existing.bundle is not None:
        before = verify_bundle(existing.bundle, None, int(node.clock()), limits)
        if before.identity_key != package.bundle.identity_key:  # a new key: verify it again
            await node.peers.mark_verified(city, None)
    return package


async def verify_peer(node: Node, city: str, digits: str) -> PeerView:
    """Trust a peer's imported identity key once the operator confirmed its fingerprint.

    Raises:
        MembershipError: no package imported for ``city``.
        FingerprintMismatch: the digits differ; the peer stays untrusted.
    """
    record = await node.peers.get(city)
    if record is None or record.bundle is None:
        raise MembershipError(f"no package imported for {city}: run peers import first")
    bundle = verify_bundle(record.bundle, None, int(node.clock()), node.config.limits.protocol)
    expected = fingerprint(city, bundle.identity_key)
    if _normalise_digits(expected) != _normalise_digits(digits):
        raise FingerprintMismatch(
            f"the fingerprint given for {city} does not match its package: not trusted"
        )
    await node.peers.mark_verified(city, node.clock())
    return (await list_peers(node, city))[0]


async def list_peers(node: Node, only: str | None = None) -> list[PeerView]:
    """The stored peers (or just ``only``), with their fingerprints and trust state."""
    views = []
    now = int(node.clock())
    for record in await node.peers.all():
        if only is not None and record.city != only:
            continue
        view = PeerView(
            city=record.city,
            fingerprint=None,
            verified=record.fingerprint_verified_at is not None,
            endpoint=record.endpoint,
            last_seen_at=record.last_seen_at,
        )
        if record.bundle is not None:
            bundle = verify_bundle(record.bundle, None, now, node.config.limits.protocol)
            try:
                sealing: EncryptionKey | None = bundle.sealing_key(now)
            except RemoteProtocolError:  # expired_key: none of its keys is valid now
                sealing = None
            view = replace(
                view,
                fingerprint=fingerprint(record.city, bundle.identity_key),
                key_sequence=bundle.sequence,
                identity_key_id=bundle.identity_key_id.hex(),
                seals_to=None if sealing is None else (sealing.epoch, sealing.key_id.hex()),
            )
        views.append(view)
    return views


async def _verified_member_keys(node: Node) -> dict[str, MemberKeys]:
    keys = {node.config.city: MemberKeys(node.own.identity_stored.public_key, (node.tls.pin(),))}
    for record in await node.peers.all():
        if record.fingerprint_verified_at is None or record.bundle is None:
            continue
        bundle = verify_bundle(record.bundle, None, int(node.clock()), node.config.limits.protocol)
        keys[record.city] = MemberKeys.from_bundle(bundle)
    return keys


async def propose_agreement(
    node: Node, draft_file: Path, *, replace_keys: Sequence[str] = ()
) -> bytes:
    """Make a version from a TOML draft, with the verified members' keys, signed by this node.

    Args:
        node: this node.
        draft_file: the TOML draft of the new version.
        replace_keys: members whose identity key is replaced (revocation by threshold): the
            adopted version's key of each goes into ``revoked_keys``, and the new version names
            the key of the package imported and verified since. Their own signature does not
            count towards the adopted version's threshold (``protocol.agreement``).

    Raises:
        MembershipError: a member of the draft has no verified key here; a member to replace
            is not in the adopted version or the draft, or its verified key is still the old one.
        LocalProtocolError: the draft breaks a rule (named with its key path).
    """
    with draft_file.open("rb") as f:
        draft = draft_from_toml(tomllib.load(f))
    keys = await _verified_member_keys(node)
    missing = [m.city for m in draft.members if m.city not in keys]
    if missing:
        raise MembershipError(
            "no verified key for " + ", ".join(missing) + ": import and verify their packages"
        )
    previous = node.trust().agreement if node.has_agreement() else None
    revoked = _replaced_keys(previous, draft, keys, replace_keys)
    limits = node.config.limits.protocol
    document = complete_draft(draft, keys, previous=previous, revoked_keys=revoked, limits=limits)
    document_bytes = encode_document(document, limits)
    return encode_signed(document_bytes, [sign_document(node.own.identity, document_bytes)])


def _replaced_keys(
    previous: VerifiedAgreement | None,
    draft: AgreementDraft,
    keys: Mapping[str, MemberKeys],
    replace_keys: Sequence[str],
) -> list[bytes]:
    """The identity keys that ``replace_keys`` revokes: each member's key in the adopted version."""
    revoked = []
    drafted = {member.city for member in draft.members}
    for city in replace_keys:
        if previous is None or city not in drafted:
            raise MembershipError(f"{city} must be a member of the adopted version and the draft")
        try:
            old = previous.member(city).identity_key
        except LocalProtocolError as e:
            raise MembershipError(f"{city} is not a member of the adopted version") from e
        if keys[city].identity_key == old:
            raise MembershipError(
                f"the verified key of {city} is still the one to replace: import its new "
                "package and verify its fingerprint first"
            )
        revoked.append(old)
    return revoked


def review_agreement(node: Node, signed: bytes) -> AgreementDocument:
    """Decode a proposed version for the operator to read before signing (not verified)."""
    envelope = codec.decode(
        signed,
        SignedAgreement,
        max_bytes=node.config.limits.protocol.max_document_bytes,
        what="agreement",
    )
    return decode_document(envelope.document, node.config.limits.protocol)


def sign_agreement(node: Node, signed: bytes) -> bytes:
    """Add this node's signature to a proposed version (a no-op if already signed by us)."""
    return add_signature(signed, node.own.identity, node.config.limits.protocol)


async def adopt_agreement(node: Node, signed: bytes) -> VerifiedAgreement:
    """Adopt a version that verifies; store it and the members' endpoints; rebuild trust.

    Raises:
        AgreementRejected: it does not verify (threshold, rollback, fork, skipped, expired...).
        MembershipError: version 1 names a key this node's operator has not verified.
    """
    limits = node.config.limits.protocol
    if node.has_agreement():
        verified = verify_successor(node.trust().agreement, signed, node.today(), limits)
    else:
        trusted = {
            city: keys.identity_key for city, keys in (await _verified_member_keys(node)).items()
        }
        verified = verify_genesis(
            signed, node.today(), trusted_identity_keys=trusted, limits=limits
        )
    await _store(node, verified)
    return verified


async def _store(node: Node, verified: VerifiedAgreement) -> None:
    async with node.db.transaction() as s:
        s.add(
            AgreementRow(
                version=verified.version, signed=verified.signed_bytes, adopted_at=node.clock()
            )
        )
    for member in verified.document.members:
        if member.city != node.config.city:
            await node.peers.upsert_peer(member.city, member.endpoint)
    await node.reload_trust()


def agreement_summary(agreement: VerifiedAgreement) -> Mapping[str, object]:
    """What ``agreement show`` prints: the version's terms, members, units and signers."""
    document = agreement.document
    return {
        "version": document.version,
        "title": document.title,
        "valid_from": document.valid_from.isoformat(),
        "valid_until": document.valid_until.isoformat(),
        "quota_per_home_city_per_year": document.quota_per_home_city_per_year,
        "eligible_threat_levels": [level.value for level in document.eligible_threat_levels],
        "signing_threshold": document.signing_threshold,
        "members": [
            {
                "city": m.city,
                "display_name": m.display_name,
                "endpoint": m.endpoint,
                "units": [u.id for u in m.units],
                "fingerprint": fingerprint(m.city, m.identity_key),
            }
            for m in document.members
        ],
        "signers": len(agreement.signers),
        "document_hash": agreement.document_hash.hex(),
    }
