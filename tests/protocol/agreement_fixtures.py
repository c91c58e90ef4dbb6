"""Agreement documents, signers and the sample agreement shared by the agreement tests
(``test_agreement.py``, ``test_agreement_rules.py``, ``test_agreement_draft.py``)."""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import agreement, agreement_draft, keys
from protocol.agreement import AgreementDocument, Member, Unit, VerifiedAgreement
from protocol.agreement_draft import MemberKeys
from protocol.messages import ThreatLevel

ROOT = Path(__file__).parents[2]
SAMPLE: dict[str, Any] = tomllib.loads((ROOT / "config" / "agreement.toml").read_text("utf-8"))
VECTORS: dict[str, Any] = json.loads((ROOT / "tests" / "vectors" / "agreement.json").read_text())
TODAY = datetime.date(2026, 6, 1)
CITIES = ("stockholm", "goteborg", "malmo")


def ed(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"test key " + label.encode()).digest()
    )


def pub(label: str) -> bytes:
    return keys.public_bytes(ed(label))


def member(city: str, key: str | None = None) -> Member:
    units = (Unit("socialnamnden", "Socialnämnden"), Unit("east", "Östra stadsdelsnämnden"))
    pin = keys.tls_pin(f"spki of {key or city}".encode())
    return Member(
        city, city.title(), units, f"https://{city}.example:8443", pub(key or city), (pin,)
    )


def document(
    version: int = 1,
    previous: VerifiedAgreement | None = None,
    members: Sequence[Member] | None = None,
    threshold: int = 2,
    revoked: Sequence[bytes] = (),
    **fields: Any,
) -> AgreementDocument:
    values: dict[str, Any] = {
        "version": version,
        "previous_hash": previous.document_hash if previous else None,
        "title": "Testavtal",
        "valid_from": datetime.date(2026, 1, 1),
        "valid_until": datetime.date(2028, 12, 31),
        "members": tuple(members if members is not None else [member(c) for c in CITIES]),
        "quota_per_home_city_per_year": 2,
        "eligible_threat_levels": (ThreatLevel.LOW, ThreatLevel.MODERATE),
        "signing_threshold": threshold,
        "revoked_keys": tuple(revoked),
    }
    values.update(fields)
    return AgreementDocument(**values)


def signed(doc: AgreementDocument, signers: Sequence[str]) -> bytes:
    data = agreement.encode_document(doc)
    return agreement.encode_signed(data, [agreement.sign_document(ed(s), data) for s in signers])


def genesis(signers: Sequence[str] = CITIES) -> VerifiedAgreement:
    return agreement.verify_genesis(signed(document(), signers), TODAY)


def sample_keys() -> dict[str, MemberKeys]:
    """Keys for each city of the sample draft (``config/agreement.toml``)."""
    return {c: MemberKeys(pub(c), (keys.tls_pin(c.encode()),)) for c in CITIES}


SAMPLE_AGREEMENT = agreement.verify_genesis(
    signed(
        agreement_draft.complete_draft(agreement_draft.draft_from_toml(SAMPLE), sample_keys()),
        CITIES,
    ),
    TODAY,
)
"""The sample agreement of the seed, signed by all three cities."""


def sample_with(path: str, value: Any) -> dict[str, Any]:
    """The sample draft with the key at a dotted ``path`` set to ``value`` (``None``: removed)."""
    draft = copy.deepcopy(SAMPLE)
    target: Any = draft
    *parents, last = path.split(".")
    for part in parents:
        target = target[int(part)] if part.isdigit() else target[part]
    if value is None:
        del target[last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return draft


def document_from_json(fields: dict[str, Any]) -> AgreementDocument:
    """The document of a vector of agreement.json."""
    return AgreementDocument(
        version=fields["version"],
        previous_hash=bytes.fromhex(fields["previous_hash"]) if fields["previous_hash"] else None,
        title=fields["title"],
        valid_from=datetime.date.fromisoformat(fields["valid_from"]),
        valid_until=datetime.date.fromisoformat(fields["valid_until"]),
        members=tuple(
            Member(
                m["city"],
                m["display_name"],
                tuple(Unit(u["id"], u["display_name"]) for u in m["units"]),
                m["endpoint"],
                bytes.fromhex(m["identity_key"]),
                tuple(bytes.fromhex(p) for p in m["tls_pins"]),
            )
            for m in fields["members"]
        ),
        quota_per_home_city_per_year=fields["quota_per_home_city_per_year"],
        eligible_threat_levels=tuple(ThreatLevel(v) for v in fields["eligible_threat_levels"]),
        signing_threshold=fields["signing_threshold"],
        revoked_keys=tuple(bytes.fromhex(k) for k in fields["revoked_keys"]),
    )
