"""The agreement draft: the TOML an operator writes, and the document made from it.

Owns the draft's typed form (``config/agreement.toml``: everything of a version but the members'
keys), reading it from parsed TOML with errors that name the key path and what is expected, and
completing it with each member's keys (taken from its verified key bundle) into the
:class:`~protocol.agreement.AgreementDocument` the members sign. Invariants:

* A draft obeys the same field bounds and cross-field rules as a document
  (:func:`~protocol.agreement.check_period_and_members`), so an operator learns of a broken rule
  when loading the file, not when the members try to sign.
* :func:`complete_draft` returns only a document that encodes under the limits peers apply; a
  version after 1 names the hash of the verified version it follows and keeps its revoked keys.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

import msgspec

from protocol.agreement import (
    MAX_MEMBERS,
    MAX_UNITS,
    AgreementDocument,
    DisplayName,
    EligibleLevels,
    Endpoint,
    Member,
    Quota,
    Threshold,
    Title,
    Unit,
    VerifiedAgreement,
    Version,
    check_period_and_members,
    check_unit_ids,
    encode_document,
)
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.fields import CityName, UnitName, check_label
from protocol.key_bundle import VerifiedKeyBundle
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import ThreatLevel


class UnitDraft(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A unit as written in the TOML draft."""

    id: UnitName
    display_name: DisplayName

    def __post_init__(self) -> None:
        check_label(self.display_name, "unit display_name")


class MemberDraft(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A member as written in the TOML draft: everything but its keys and pins."""

    city: CityName
    display_name: DisplayName
    endpoint: Endpoint
    units: Annotated[tuple[UnitDraft, ...], msgspec.Meta(min_length=1, max_length=MAX_UNITS)]

    def __post_init__(self) -> None:
        check_label(self.display_name, "member display_name")
        check_unit_ids([unit.id for unit in self.units])


class AgreementDraft(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An agreement version as operators write it (``config/agreement.toml``), keys not yet in."""

    version: Version
    title: Title
    valid_from: datetime.date
    valid_until: datetime.date
    quota_per_home_city_per_year: Quota
    eligible_threat_levels: EligibleLevels
    signing_threshold: Threshold
    members: Annotated[tuple[MemberDraft, ...], msgspec.Meta(min_length=1, max_length=MAX_MEMBERS)]

    def __post_init__(self) -> None:
        check_label(self.title, "title")
        check_period_and_members(
            self.valid_from,
            self.valid_until,
            [member.city for member in self.members],
            self.signing_threshold,
            self.eligible_threat_levels,
        )


@dataclass(frozen=True, slots=True)
class MemberKeys:
    """A member's keys, taken from its verified key bundle (fingerprint checked by operators)."""

    identity_key: bytes
    tls_pins: tuple[bytes, ...]

    @classmethod
    def from_bundle(cls, bundle: VerifiedKeyBundle) -> MemberKeys:
        """The identity key and TLS pins of a verified key bundle."""
        return cls(bundle.identity_key, bundle.tls_pins)


_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_NAME_EXPECTED: Final = "expected a lowercase name matching [a-z][a-z0-9-]*"
_ENDPOINT_EXPECTED: Final = "expected an https:// URL without query or fragment"


def _explain(error: msgspec.ValidationError) -> str:
    text = str(error)
    match = _PATH.search(text)
    where = match.group(1) if match and match.group(1) else "agreement draft"
    detail = _PATH.sub("", text)
    if detail.startswith("Invalid enum value"):
        detail = "expected one of: " + ", ".join(level.value for level in ThreatLevel)
    elif detail.startswith("Invalid RFC3339 encoded date"):
        detail = "expected a date (YYYY-MM-DD)"
    elif "matching regex" in detail:  # the draft's patterns: names, and the endpoint
        detail = _ENDPOINT_EXPECTED if where.endswith("endpoint") else _NAME_EXPECTED
    detail = detail.replace("Object missing required field", "missing required key")
    detail = detail.replace("Object contains unknown field", "unknown key")
    return f"{where}: {detail}"


def draft_from_toml(table: Mapping[str, Any]) -> AgreementDraft:
    """Read an agreement draft from parsed TOML (``tomllib.load``).

    Args:
        table: the parsed file; see ``config/agreement.toml`` for the layout.

    Returns:
        The typed draft.

    Raises:
        LocalProtocolError: ``invalid_field`` naming the key path and what is expected
            (``members[0].units[1].id: expected a lowercase name ...``), or ``agreement_invalid``
            for a rule across fields (repeated city, threshold not a majority, ...).
    """
    try:
        return msgspec.convert(dict(table), AgreementDraft)
    except msgspec.ValidationError as e:
        raise LocalProtocolError(ErrorCode.INVALID_FIELD, _explain(e)) from e


def _previous_hash(draft: AgreementDraft, previous: VerifiedAgreement | None) -> bytes | None:
    if draft.version == 1:
        if previous is not None:
            raise LocalProtocolError(
                ErrorCode.AGREEMENT_INVALID, "version 1 has no previous version"
            )
        return None
    if previous is None or previous.version != draft.version - 1:
        raise LocalProtocolError(
            ErrorCode.AGREEMENT_INVALID,
            "the draft's version must follow the previous version given",
        )
    return previous.document_hash


def complete_draft(
    draft: AgreementDraft,
    keys_by_city: Mapping[str, MemberKeys],
    *,
    previous: VerifiedAgreement | None = None,
    revoked_keys: Sequence[bytes] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> AgreementDocument:
    """Fill the members' keys into a draft and return the document to sign.

    Args:
        draft: the draft.
        keys_by_city: each member's keys, from its verified key bundle.
        previous: the version this one follows (required for version > 1).
        revoked_keys: identity keys to revoke now; the previous version's stay revoked.
        limits: the limits.

    Returns:
        The document; encode it with :func:`~protocol.agreement.encode_document`.

    Raises:
        LocalProtocolError: ``invalid_field`` (a member without keys, a key of the wrong
            length), ``agreement_invalid`` (version and previous disagree, a broken rule).
    """
    members = []
    for index, member in enumerate(draft.members):
        keys = keys_by_city.get(member.city)
        if keys is None:
            raise LocalProtocolError(ErrorCode.INVALID_FIELD, f"members[{index}]: no keys given")
        units = tuple(Unit(unit.id, unit.display_name) for unit in member.units)
        members.append(
            Member(
                member.city,
                member.display_name,
                units,
                member.endpoint,
                keys.identity_key,
                keys.tls_pins,
            )
        )
    revoked = dict.fromkeys((*(previous.document.revoked_keys if previous else ()), *revoked_keys))
    document = AgreementDocument(
        version=draft.version,
        previous_hash=_previous_hash(draft, previous),
        title=draft.title,
        valid_from=draft.valid_from,
        valid_until=draft.valid_until,
        members=tuple(members),
        quota_per_home_city_per_year=draft.quota_per_home_city_per_year,
        eligible_threat_levels=draft.eligible_threat_levels,
        signing_threshold=draft.signing_threshold,
        revoked_keys=tuple(revoked),
    )
    encode_document(document, limits)
    return document
