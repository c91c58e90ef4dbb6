"""The agreement document: the cooperation's signed, versioned root of trust.

Owns the agreement's wire format, its encoding and signing, and the verification of its version
chain. The rule checks the node applies to inquiries and referrals are
:mod:`protocol.agreement_rules`; the draft an operator writes in TOML before the members' keys are
filled in is :mod:`protocol.agreement_draft`. The rules a draft shares with a document
(:func:`check_period_and_members`, :func:`check_unit_ids`) are defined here, once.

Invariants:

* A document is a frozen MessagePack array (``AgreementDocument``); its signatures travel beside it
  as ``[document_bytes, [[signer_key_id, signature], ...]]`` and cover the exact document bytes
  (purpose ``agreement``). A version's hash is ``SHA-256(document_bytes)``; version N+1 names
  version N's hash in ``previous_hash``, version 1 holds ``nil`` there.
* Version 1 is trusted when a threshold of its own members signed it (and, if the operator gives
  the keys verified out of band, its members' keys are exactly those). Version N+1 is adopted
  only when it is N+1 (``agreement_rollback``, ``agreement_skipped_version``), names N's hash
  (``agreement_fork``), has not expired (``agreement_expired``), carries N's revoked keys, and is
  signed by at least N's ``signing_threshold`` distinct keys of N's members *and* N+1's
  ``signing_threshold`` distinct keys of N+1's members.
* On N's side, a member whose identity key N+1 replaces, and every key N+1 revokes, does not count:
  replacing any member's key — planned or after a compromise — takes a threshold of the *others*.
  A member that N+1 removes still counts on N's side, never on N+1's.
* Each key counts once per side; a signature by a key that is not a member's counts for nothing;
  a member's invalid signature counts for nothing. The threshold is a strict majority of the
  members (so two disjoint quorums cannot sign two different successors).
* Verified and unverified are different types: only :func:`verify_genesis`,
  :func:`verify_successor` and :func:`verify_chain` make a :class:`VerifiedAgreement`, and the
  rule checks take only that.

Every byte is specified in ``docs/spec/60-agreement.md``.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import codec
from protocol.errors import (
    AgreementRejected,
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    RemoteProtocolError,
)
from protocol.fields import (
    FIRST_DATE,
    LAST_DATE,
    CityName,
    Digest,
    Signature,
    UnitName,
    check_label,
)
from protocol.keys import (
    MAX_TLS_PINS,
    KeyId,
    KeyKind,
    PublicKey,
    TlsPin,
    identity_key_id,
    key_id,
)
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import MAX_QUOTA, ThreatLevel
from protocol.signing import Purpose, is_valid_public_key, sign, verify

MAX_MEMBERS: Final = 512
MAX_UNITS: Final = 64
MAX_SIGNATURES: Final = 2 * MAX_MEMBERS
MAX_REVOKED_KEYS: Final = 1024
ENDPOINT_PATTERN: Final = r"^https://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?$(?!\n)"

DisplayName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Title = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]
Endpoint = Annotated[str, msgspec.Meta(min_length=9, max_length=512, pattern=ENDPOINT_PATTERN)]
Version = Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)]
Quota = Annotated[int, msgspec.Meta(ge=0, le=MAX_QUOTA)]
Threshold = Annotated[int, msgspec.Meta(ge=1, le=MAX_MEMBERS)]
EligibleLevels = Annotated[
    tuple[ThreatLevel, ...], msgspec.Meta(min_length=1, max_length=len(ThreatLevel))
]


def _invalid(message: str) -> LocalProtocolError:
    return LocalProtocolError(ErrorCode.AGREEMENT_INVALID, message)


def _unique(values: Sequence[object]) -> bool:
    return len(set(values)) == len(values)


def check_unit_ids(unit_ids: Sequence[str]) -> None:
    """Check that a member's units do not repeat an id.

    Raises:
        LocalProtocolError: ``agreement_invalid``.
    """
    if not _unique(unit_ids):
        raise _invalid("a member's units must not repeat an id")


def check_period_and_members(
    valid_from: datetime.date,
    valid_until: datetime.date,
    cities: Sequence[str],
    threshold: int,
    eligible: Sequence[ThreatLevel],
) -> None:
    """Check the rules across fields that a draft and a document share.

    The period lies within the date range and does not end before it starts; no city is a member
    twice; the threshold is a strict majority of the members; no threat level repeats.

    Raises:
        LocalProtocolError: ``agreement_invalid``.
    """
    if not FIRST_DATE <= valid_from <= valid_until <= LAST_DATE:
        raise _invalid("valid_from must not be after valid_until, both within 2000-2100")
    if not _unique(cities):
        raise _invalid("members must not repeat a city")
    if not (threshold <= len(cities) < 2 * threshold):
        raise _invalid("signing_threshold must be a strict majority of the members")
    if not _unique(eligible):
        raise _invalid("eligible_threat_levels must not repeat")


# --- The document ------------------------------------------------------------------------------


class Unit(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A party of the agreement inside a city (a socialnämnd or stadsdelsnämnd).

    Attributes:
        id: the unit's id, unique within its city (``jarva``).
        display_name: its name (``Järva stadsdelsnämnd``).
    """

    id: UnitName
    display_name: DisplayName

    def __post_init__(self) -> None:
        check_label(self.display_name, "unit display_name")


class Member(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """A city of the cooperation and how to reach and authenticate its node.

    Attributes:
        city: the city's id (``stockholm``).
        display_name: its name (``Stockholm``).
        units: the city's parties to the agreement, ids unique.
        endpoint: the node's federation URL (``https://...``).
        identity_key: the node's Ed25519 identity public key.
        tls_pins: SHA-256 of the SubjectPublicKeyInfo of each accepted TLS certificate (1..4,
            several during a TLS rotation).
    """

    city: CityName
    display_name: DisplayName
    units: Annotated[tuple[Unit, ...], msgspec.Meta(min_length=1, max_length=MAX_UNITS)]
    endpoint: Endpoint
    identity_key: PublicKey
    tls_pins: Annotated[tuple[TlsPin, ...], msgspec.Meta(min_length=1, max_length=MAX_TLS_PINS)]

    def __post_init__(self) -> None:
        check_label(self.display_name, "member display_name")
        check_unit_ids([unit.id for unit in self.units])
        if not _unique(self.tls_pins):
            raise _invalid("a member's tls_pins must not repeat")

    def has_unit(self, unit_id: str) -> bool:
        """Whether ``unit_id`` is one of this member's units."""
        return any(unit.id == unit_id for unit in self.units)


class AgreementDocument(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One version of the agreement, as its members sign it.

    Attributes:
        version: 1 for the first document, then +1 per version.
        previous_hash: SHA-256 of the previous version's document bytes; ``None`` for version 1.
        title: the agreement's title.
        valid_from: first day the agreement applies (inclusive).
        valid_until: last day it applies (inclusive).
        members: the cities, in a fixed order.
        quota_per_home_city_per_year: referrals a home city may make per calendar year.
        eligible_threat_levels: the threat levels of the target group.
        signing_threshold: distinct member signatures needed, a strict majority of the members.
        revoked_keys: identity keys that must never count again (cumulative over versions).
    """

    version: Version
    previous_hash: Digest | None
    title: Title
    valid_from: datetime.date
    valid_until: datetime.date
    members: Annotated[tuple[Member, ...], msgspec.Meta(min_length=1, max_length=MAX_MEMBERS)]
    quota_per_home_city_per_year: Quota
    eligible_threat_levels: EligibleLevels
    signing_threshold: Threshold
    revoked_keys: Annotated[tuple[PublicKey, ...], msgspec.Meta(max_length=MAX_REVOKED_KEYS)]

    def __post_init__(self) -> None:
        check_label(self.title, "title")
        if (self.version == 1) != (self.previous_hash is None):
            raise _invalid("previous_hash must be nil exactly for version 1")
        check_period_and_members(
            self.valid_from,
            self.valid_until,
            [member.city for member in self.members],
            self.signing_threshold,
            self.eligible_threat_levels,
        )
        member_keys = [member.identity_key for member in self.members]
        if not all(is_valid_public_key(key) for key in member_keys):
            raise _invalid("a member's identity_key is not a valid Ed25519 public key")
        if not _unique(member_keys):
            raise _invalid("members must not share an identity key")
        if not _unique(self.revoked_keys) or set(self.revoked_keys) & set(member_keys):
            raise _invalid("revoked_keys must be distinct and not a member's key")


class MemberSignature(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[signer_key_id, signature]``: one member's ``agreement`` signature of the document."""

    signer_key_id: KeyId
    signature: Signature


class SignedAgreement(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[document_bytes, signatures]`` as it travels; unverified."""

    document: bytes
    signatures: Annotated[tuple[MemberSignature, ...], msgspec.Meta(max_length=MAX_SIGNATURES)]


@dataclass(frozen=True, slots=True)
class VerifiedAgreement:
    """An agreement version that verified against its trust root or its predecessor.

    Attributes:
        document: the decoded document.
        document_bytes: its exact bytes (what was signed).
        document_hash: ``SHA-256(document_bytes)``, the next version's ``previous_hash``.
        signed_bytes: the exact signed form received, to store and forward.
        signers: key ids of this version's members whose signatures verified.
    """

    document: AgreementDocument
    document_bytes: bytes
    document_hash: bytes
    signed_bytes: bytes
    signers: frozenset[bytes]

    @property
    def version(self) -> int:
        """The document's version."""
        return self.document.version

    def member(self, city: str) -> Member:
        """Return the member ``city``.

        Raises:
            LocalProtocolError: ``not_a_member``.
        """
        for member in self.document.members:
            if member.city == city:
                return member
        raise LocalProtocolError(ErrorCode.NOT_A_MEMBER, "city is not a member of the agreement")

    def member_by_key_id(self, wanted: bytes) -> Member | None:
        """Return the member whose identity key has id ``wanted``, or ``None``."""
        for member in self.document.members:
            if key_id(KeyKind.IDENTITY, member.identity_key) == wanted:
                return member
        return None


# --- Encoding and signing ----------------------------------------------------------------------


def encode_document(document: AgreementDocument, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Encode a document, checking every length and range a peer will check.

    Raises:
        LocalProtocolError: the code a peer would refuse it with.
    """
    data = codec.encode(document)
    try:
        codec.decode(data, AgreementDocument, max_bytes=limits.max_document_bytes, what="agreement")
    except RemoteProtocolError as e:
        raise LocalProtocolError(e.code, e.message) from e
    return data


def sign_document(private_key: Ed25519PrivateKey, document_bytes: bytes) -> MemberSignature:
    """Sign a document's exact bytes (purpose ``agreement``) as a member."""
    return MemberSignature(
        identity_key_id(private_key),
        sign(private_key, Purpose.AGREEMENT, document_bytes),
    )


def encode_signed(document_bytes: bytes, signatures: Sequence[MemberSignature]) -> bytes:
    """Return ``[document_bytes, signatures]`` encoded, signatures in the order given."""
    return codec.encode(SignedAgreement(document_bytes, tuple(signatures)))


def _decode(data: bytes, limits: Limits) -> tuple[SignedAgreement, AgreementDocument]:
    signed = codec.decode(
        data, SignedAgreement, max_bytes=limits.max_document_bytes, what="agreement"
    )
    return signed, decode_document(signed.document, limits)


def decode_document(document_bytes: bytes, limits: Limits = DEFAULT_LIMITS) -> AgreementDocument:
    """Decode a proposed document (``messages.AgreementProposal``) for operators to review.

    Not verified: nothing here makes it trusted; sign it with :func:`sign_document` only after
    review, and adopt it only through :func:`verify_successor`.

    Raises:
        DecodeError: malformed.
        AgreementRejected: a rule of the document is broken (``agreement_invalid``).
    """
    try:
        return codec.decode(
            document_bytes,
            AgreementDocument,
            max_bytes=limits.max_document_bytes,
            what="agreement document",
        )
    except DecodeError:
        raise
    except RemoteProtocolError as e:
        raise AgreementRejected(e.code, e.message) from e


def add_signature(
    data: bytes, private_key: Ed25519PrivateKey, limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Add our signature to a signed (or proposed) version; a no-op if our key already signed.

    Raises:
        DecodeError, AgreementRejected: the proposal is malformed or invalid.
    """
    signed, _ = _decode(data, limits)
    ours = sign_document(private_key, signed.document)
    if any(s.signer_key_id == ours.signer_key_id for s in signed.signatures):
        return bytes(data)
    return encode_signed(signed.document, (*signed.signatures, ours))


# --- Verification ------------------------------------------------------------------------------


def _tally(
    document_bytes: bytes,
    signatures: Sequence[MemberSignature],
    members: Sequence[Member],
    excluded: frozenset[bytes],
) -> tuple[frozenset[bytes], bool]:
    """Return the distinct counted member key ids with a valid signature, and whether any
    signature names a member's key (an excluded key names a member but never counts)."""
    keys = {key_id(KeyKind.IDENTITY, m.identity_key): m.identity_key for m in members}
    valid: set[bytes] = set()
    by_member = False
    for entry in signatures:
        public = keys.get(entry.signer_key_id)
        if public is None:
            continue
        by_member = True
        if public in excluded or entry.signer_key_id in valid:
            continue
        if verify(public, Purpose.AGREEMENT, document_bytes, entry.signature):
            valid.add(entry.signer_key_id)
    return frozenset(valid), by_member


def _require_threshold(
    side: str,
    document_bytes: bytes,
    signatures: Sequence[MemberSignature],
    document: AgreementDocument,
    excluded: frozenset[bytes] = frozenset(),
) -> frozenset[bytes]:
    valid, by_member = _tally(document_bytes, signatures, document.members, excluded)
    if not by_member:
        raise AgreementRejected(ErrorCode.NOT_A_MEMBER, f"no signature is by a {side} member")
    if len(valid) < document.signing_threshold:
        raise AgreementRejected(
            ErrorCode.AGREEMENT_THRESHOLD,
            f"{len(valid)} valid signatures by {side} members, {document.signing_threshold} needed",
        )
    return valid


def _check_not_expired(document: AgreementDocument, today: datetime.date | None) -> None:
    if today is not None and today > document.valid_until:
        raise AgreementRejected(ErrorCode.AGREEMENT_EXPIRED, "agreement version has expired")


def _verified(
    data: bytes, signed: SignedAgreement, document: AgreementDocument, signers: frozenset[bytes]
) -> VerifiedAgreement:
    return VerifiedAgreement(
        document=document,
        document_bytes=signed.document,
        document_hash=hashlib.sha256(signed.document).digest(),
        signed_bytes=bytes(data),
        signers=signers,
    )


def _genesis(
    data: bytes,
    today: datetime.date | None,
    trusted_identity_keys: Mapping[str, bytes] | None,
    limits: Limits,
) -> VerifiedAgreement:
    signed, document = _decode(data, limits)
    if document.version != 1:
        raise AgreementRejected(ErrorCode.AGREEMENT_INVALID, "a trust root must be version 1")
    if trusted_identity_keys is not None:
        for index, member in enumerate(document.members):
            if trusted_identity_keys.get(member.city) != member.identity_key:
                raise AgreementRejected(
                    ErrorCode.UNKNOWN_KEY,
                    f"members[{index}].identity_key is not the key verified out of band",
                )
    _check_not_expired(document, today)
    signers = _require_threshold("version 1", signed.document, signed.signatures, document)
    return _verified(data, signed, document, signers)


def verify_genesis(
    signed: bytes,
    today: datetime.date,
    trusted_identity_keys: Mapping[str, bytes] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedAgreement:
    """Verify version 1, the trust root: a threshold of its own members signed it.

    Args:
        signed: the exact signed bytes.
        today: the current date; an expired version is refused.
        trusted_identity_keys: city → identity key the operators verified out of band (by
            fingerprint); if given, every member's key must be exactly that.
        limits: the limits.

    Returns:
        The verified version 1.

    Raises:
        DecodeError: malformed.
        AgreementRejected: ``agreement_invalid``, ``unknown_key``, ``agreement_expired``,
            ``not_a_member``, ``agreement_threshold``.
    """
    return _genesis(signed, today, trusted_identity_keys, limits)


def _check_sequence(current: VerifiedAgreement, signed: SignedAgreement, version: int) -> None:
    if version < current.version or signed.document == current.document_bytes:
        raise AgreementRejected(ErrorCode.AGREEMENT_ROLLBACK, "agreement version is not newer")
    if version == current.version:
        raise AgreementRejected(ErrorCode.AGREEMENT_FORK, "another document for the same version")
    if version > current.version + 1:
        raise AgreementRejected(ErrorCode.AGREEMENT_SKIPPED_VERSION, "agreement skips a version")


def _old_side_excluded(current: AgreementDocument, nxt: AgreementDocument) -> frozenset[bytes]:
    """Keys of N that do not count for N+1: revoked by N+1, or of a member whose key N+1 changes."""
    new_keys = {member.city: member.identity_key for member in nxt.members}
    replaced = {
        member.identity_key
        for member in current.members
        if new_keys.get(member.city, member.identity_key) != member.identity_key
    }
    return frozenset(replaced | set(nxt.revoked_keys))


def _successor(
    current: VerifiedAgreement, data: bytes, today: datetime.date | None, limits: Limits
) -> VerifiedAgreement:
    signed, document = _decode(data, limits)
    _check_sequence(current, signed, document.version)
    if document.previous_hash != current.document_hash:
        raise AgreementRejected(
            ErrorCode.AGREEMENT_FORK, "previous_hash is not the current version"
        )
    if not set(current.document.revoked_keys) <= set(document.revoked_keys):
        raise AgreementRejected(ErrorCode.AGREEMENT_INVALID, "revoked_keys drops a revoked key")
    _check_not_expired(document, today)
    excluded = _old_side_excluded(current.document, document)
    _require_threshold(
        "current-version", signed.document, signed.signatures, current.document, excluded
    )
    signers = _require_threshold("new-version", signed.document, signed.signatures, document)
    return _verified(data, signed, document, signers)


def verify_successor(
    current: VerifiedAgreement,
    signed_next: bytes,
    today: datetime.date,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedAgreement:
    """Verify version N+1 against the verified version N.

    Checks, in order: decoding; version (``agreement_rollback`` if not newer,
    ``agreement_fork`` for another document of version N, ``agreement_skipped_version`` beyond
    N+1); ``previous_hash`` (``agreement_fork``); revoked keys kept (``agreement_invalid``);
    expiry (``agreement_expired``); N's threshold among N's members minus replaced and revoked
    keys; N+1's threshold among N+1's members (``not_a_member`` when no signature is by a member
    of that side, else ``agreement_threshold``).

    Args:
        current: the verified version N (it may itself have expired: a lapsed agreement can be
            renewed).
        signed_next: the exact signed bytes of the candidate N+1.
        today: the current date.
        limits: the limits.

    Returns:
        The verified version N+1.

    Raises:
        DecodeError: malformed.
        AgreementRejected: with the codes above.
    """
    return _successor(current, signed_next, today, limits)


def verify_chain(
    genesis: bytes,
    versions: Sequence[bytes],
    today: datetime.date,
    trusted_identity_keys: Mapping[str, bytes] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> VerifiedAgreement:
    """Verify version 1 then each following version in order; return the last.

    Only the last version must be unexpired today: the earlier ones are history.

    Raises:
        DecodeError, AgreementRejected: the first failure, as in :func:`verify_genesis` and
            :func:`verify_successor`.
    """
    current = _genesis(genesis, None if versions else today, trusted_identity_keys, limits)
    for index, data in enumerate(versions):
        last = index == len(versions) - 1
        current = _successor(current, data, today if last else None, limits)
    return current
