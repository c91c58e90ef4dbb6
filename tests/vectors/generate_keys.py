"""Write tests/vectors/keys.json and tests/vectors/agreement.json: known answers for keys and the
agreement.

Run from the repository root: ``.venv/bin/python tests/vectors/generate_keys.py`` (``--check``
only compares). Everything is deterministic — fixed seeds, fixed times, and Ed25519 signatures are
deterministic — so running it again must produce the same files. The key tests
(``tests/protocol/test_keys.py``, ``test_key_bundle.py``, ``test_succession.py``) and the agreement
tests (``test_agreement.py``, ``test_agreement_draft.py``) check the files both ways: they
reproduce every value from the recorded inputs, and verify the recorded bytes.

Identity seeds are ``SHA-256("citynode test vector identity " || name)`` as in ``keylog.json``;
X25519 and TLS seeds use the labels ``x25519`` and ``tls`` in the same way.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from protocol import agreement, agreement_draft, codec, key_bundle, keylog, keys, succession
from protocol.messages import ThreatLevel
from protocol.signing import Purpose, sign

HERE = Path(__file__).parent
OUT_KEYS = HERE / "keys.json"
OUT_AGREEMENT = HERE / "agreement.json"

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400
TODAY = datetime.date(2026, 6, 1)
IDENTITIES = ("stockholm", "goteborg", "malmo", "stockholm-2", "malmo-2", "uppsala")
CITIES = ("stockholm", "goteborg", "malmo")

# The key bundle of the vectors: Stockholm at epoch 7, the next key from day 60.
BUNDLE_CITY = "stockholm"
CURRENT = {"label": "stockholm 7", "epoch": 7, "not_before": T0, "not_after": T0 + 90 * DAY}
NEXT = {
    "label": "stockholm 8",
    "epoch": 8,
    "not_before": T0 + 60 * DAY,
    "not_after": T0 + 180 * DAY,
}
TLS_LABELS = ("stockholm 1", "stockholm 2")
KEY_LOG = {"size": 3, "root": hashlib.sha256(b"citynode test vector key log root").digest()}
ISSUED_AT = T0 + 3600
SEQUENCE = 12
VERIFY_AT = T0 + 7200
SUCCESSION_AT = T0 + 200 * DAY
COMPROMISED_SINCE = T0 + 100 * DAY

# The agreement draft of the vectors: the sample of config/agreement.toml, fixed here so that a
# city editing its configuration never changes the vectors.
DRAFT: dict[str, Any] = {
    "version": 1,
    "title": "Avtal om samverkan för insatser till avhoppare mellan Stockholm, Göteborg och Malmö",
    "valid_from": "2026-01-01",
    "valid_until": "2028-12-31",
    "quota_per_home_city_per_year": 2,
    "eligible_threat_levels": ["low", "moderate"],
    "signing_threshold": 2,
    "members": [
        {
            "city": "stockholm",
            "display_name": "Stockholm",
            "endpoint": "https://127.0.0.1:8443",
            "units": [
                {"id": "socialnamnden", "display_name": "Socialnämnden"},
                {"id": "jarva", "display_name": "Järva stadsdelsnämnd"},
                {"id": "farsta", "display_name": "Farsta stadsdelsnämnd"},
            ],
        },
        {
            "city": "goteborg",
            "display_name": "Göteborg",
            "endpoint": "https://127.0.0.1:8444",
            "units": [
                {"id": "nordost", "display_name": "Socialnämnden Nordost"},
                {"id": "centrum", "display_name": "Socialnämnden Centrum"},
                {"id": "hisingen", "display_name": "Socialnämnden Hisingen"},
            ],
        },
        {
            "city": "malmo",
            "display_name": "Malmö",
            "endpoint": "https://127.0.0.1:8445",
            "units": [
                {"id": "arbetsmarknad-social", "display_name": "Arbetsmarknads- och socialnämnden"}
            ],
        },
    ],
}


# --- Fixed keys --------------------------------------------------------------------------------


def seed(label: str, kind: str = "identity") -> bytes:
    """The fixed 32-byte seed of a key in the vectors."""
    return hashlib.sha256(f"citynode test vector {kind} {label}".encode()).digest()


def private_key(name: str) -> Ed25519PrivateKey:
    """The fixed identity key ``name`` (a city, or ``stockholm-2`` for its successor)."""
    return Ed25519PrivateKey.from_private_bytes(seed(name))


def public(name: str) -> bytes:
    """The raw public key of the identity ``name``."""
    return keys.public_bytes(private_key(name))


def x25519_public(label: str) -> bytes:
    """The raw public key of the fixed X25519 key ``label``."""
    private = X25519PrivateKey.from_private_bytes(seed(label, "x25519"))
    return private.public_key().public_bytes_raw()


def spki_der(label: str) -> bytes:
    """The SubjectPublicKeyInfo (DER) of the fixed TLS key ``label`` (Ed25519)."""
    private = Ed25519PrivateKey.from_private_bytes(seed(label, "tls"))
    return private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def member_keys() -> dict[str, agreement_draft.MemberKeys]:
    """Each city's keys in the agreement of the vectors: its identity and one TLS pin."""
    return {
        city: agreement_draft.MemberKeys(public(city), (keys.tls_pin(spki_der(f"{city} 1")),))
        for city in CITIES
    }


# --- keys.json ---------------------------------------------------------------------------------


def encryption_key(spec: dict[str, Any]) -> keys.EncryptionKey:
    """The encryption key record of ``CURRENT`` or ``NEXT``."""
    return keys.encryption_key(
        x25519_public(spec["label"]),
        epoch=spec["epoch"],
        not_before=spec["not_before"],
        not_after=spec["not_after"],
    )


def signed_bundle() -> bytes:
    """The signed key bundle of the vectors."""
    identity = private_key(BUNDLE_CITY)
    return key_bundle.sign_bundle(
        identity,
        city=BUNDLE_CITY,
        current=key_bundle.announce_encryption_key(identity, encryption_key(CURRENT)),
        next_key=key_bundle.announce_encryption_key(identity, encryption_key(NEXT)),
        tls_pins=[keys.tls_pin(spki_der(label)) for label in TLS_LABELS],
        key_log=keylog.KeyLogHead(KEY_LOG["size"], KEY_LOG["root"]),
        issued_at=ISSUED_AT,
        sequence=SEQUENCE,
    )


def _fingerprint(city: str) -> dict[str, Any]:
    key = public(city)
    initial = keys.FINGERPRINT_VERSION.to_bytes(2, "big") + key + city.encode()
    digest = initial
    for _ in range(keys.FINGERPRINT_ITERATIONS):
        digest = hashlib.sha512(digest + key).digest()
    return {
        "city": city,
        "identity_public": key.hex(),
        "initial_input": initial.hex(),
        "final_digest": digest.hex(),
        "fingerprint": keys.fingerprint(city, key),
    }


def _encryption(spec: dict[str, Any]) -> dict[str, Any]:
    record = encryption_key(spec)
    announcement = key_bundle.announce_encryption_key(private_key(BUNDLE_CITY), record)
    return {
        "x25519_seed": seed(spec["label"], "x25519").hex(),
        "public_key": record.public_key.hex(),
        "key_id": record.key_id.hex(),
        "epoch": record.epoch,
        "not_before": record.not_before,
        "not_after": record.not_after,
        "record_bytes": announcement.key.hex(),
        "signature": announcement.signature.hex(),
        "announcement": codec.encode(announcement).hex(),
    }


def _resign(bundle: key_bundle.KeyBundle) -> str:
    """Sign a bundle without the self-check of ``sign_bundle`` (for refused vectors)."""
    body = codec.encode(bundle)
    signature = sign(private_key(BUNDLE_CITY), Purpose.KEY_BUNDLE, body)
    return codec.encode(key_bundle.SignedKeyBundle(body, signature)).hex()


def _refused_bundles(signed: bytes) -> list[dict[str, Any]]:
    outer = codec.decode(signed, key_bundle.SignedKeyBundle, max_bytes=1 << 20, what="vector")
    bundle = codec.decode(outer.bundle, key_bundle.KeyBundle, max_bytes=1 << 20, what="vector")
    identity = private_key(BUNDLE_CITY)
    stale = keys.encryption_key(
        x25519_public("stockholm 9"), epoch=9, not_before=T0 + 61 * DAY, not_after=T0 + 365 * DAY
    )
    skipped = msgspec.structs.replace(
        bundle, next=key_bundle.announce_encryption_key(identity, stale)
    )
    tampered = bytearray(signed)
    tampered[len(signed) - 67] ^= 0x01  # the last byte of the bundle: the sequence number
    flipped = bytearray(signed)
    flipped[-1] ^= 0x80
    me = public(BUNDLE_CITY).hex()
    return [
        {"name": "bit flipped in the bundle", "signed": tampered.hex(), "expected_identity": me,
         "now": VERIFY_AT, "error": "bad_signature"},
        {"name": "bit flipped in the signature", "signed": flipped.hex(), "expected_identity": me,
         "now": VERIFY_AT, "error": "bad_signature"},
        {"name": "not the expected identity", "signed": signed.hex(),
         "expected_identity": public("goteborg").hex(), "now": VERIFY_AT, "error": "unknown_key"},
        {"name": "current key expired", "signed": signed.hex(), "expected_identity": me,
         "now": CURRENT["not_after"] + 1, "error": "expired_key"},
        {"name": "issued in the future", "signed": signed.hex(), "expected_identity": me,
         "now": ISSUED_AT - 301, "error": "from_future"},
        {"name": "next epoch skips one", "signed": _resign(skipped), "expected_identity": me,
         "now": VERIFY_AT, "error": "bad_key_bundle"},
    ]  # fmt: skip


def _succession() -> dict[str, Any]:
    signed = succession.sign_succession(
        private_key("stockholm"),
        private_key("stockholm-2"),
        city="stockholm",
        effective_from=SUCCESSION_AT,
    )
    wire = codec.decode(signed, succession.SignedSuccession, max_bytes=1024, what="vector")
    chain = succession.verify_succession_chain(keys.identity_key(public("stockholm")), [signed])
    return {
        "city": "stockholm",
        "old": "stockholm",
        "new": "stockholm-2",
        "effective_from": SUCCESSION_AT,
        "statement": wire.statement.hex(),
        "old_signature": wire.old_signature.hex(),
        "new_signature": wire.new_signature.hex(),
        "signed": signed.hex(),
        "chain": [_verify_key(key) for key in chain],
    }


def _verify_key(key: keys.VerifyKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id.hex(),
        "valid_from": key.valid_from,
        "valid_until": key.valid_until,
        "revoked_since": key.revoked_since,
    }


def _revocation() -> dict[str, Any]:
    signed = succession.sign_revocation(
        private_key("malmo"),
        city="malmo",
        revoked_key=public("malmo"),
        compromised_since=COMPROMISED_SINCE,
    )
    wire = codec.decode(signed, succession.SignedRevocation, max_bytes=1024, what="vector")
    applied = succession.apply_revocation([keys.identity_key(public("malmo"))], signed)
    return {
        "city": "malmo",
        "signer": "malmo",
        "revoked": "malmo",
        "compromised_since": COMPROMISED_SINCE,
        "statement": wire.statement.hex(),
        "signature": wire.signature.hex(),
        "signed": signed.hex(),
        "chain": [_verify_key(key) for key in applied],
    }


def build_keys() -> dict[str, Any]:
    """Compute every vector of keys.json."""
    signed = signed_bundle()
    outer = codec.decode(signed, key_bundle.SignedKeyBundle, max_bytes=1 << 20, what="vector")
    verified = key_bundle.verify_bundle(signed, public(BUNDLE_CITY), VERIFY_AT)
    return {
        "description": "citynode keys: ids, fingerprints, TLS pins, bundles, succession, "
        "revocation; see docs/spec/50-keys.md",
        "identities": {
            name: {
                "seed": seed(name).hex(),
                "public_key": public(name).hex(),
                "key_id": keys.key_id(keys.KeyKind.IDENTITY, public(name)).hex(),
            }
            for name in IDENTITIES
        },
        "fingerprints": [_fingerprint(city) for city in CITIES],
        "tls_pins": [
            {
                "tls_seed": seed(label, "tls").hex(),
                "spki_der": spki_der(label).hex(),
                "pin": keys.tls_pin(spki_der(label)).hex(),
            }
            for label in TLS_LABELS
        ],
        "bundle": {
            "city": BUNDLE_CITY,
            "identity": BUNDLE_CITY,
            "current": _encryption(CURRENT),
            "next": _encryption(NEXT),
            "tls_pins": [keys.tls_pin(spki_der(label)).hex() for label in TLS_LABELS],
            "key_log": {"size": KEY_LOG["size"], "root": KEY_LOG["root"].hex()},
            "issued_at": ISSUED_AT,
            "sequence": SEQUENCE,
            "bundle_bytes": outer.bundle.hex(),
            "signature": outer.signature.hex(),
            "signed": signed.hex(),
            "verify_at": VERIFY_AT,
            "sealing_key_at": {
                str(t): verified.sealing_key(t).key_id.hex()
                for t in (VERIFY_AT, NEXT["not_before"], CURRENT["not_after"] + 1)
            },
        },
        "refused_bundles": _refused_bundles(signed),
        "succession": _succession(),
        "revocation": _revocation(),
    }


# --- agreement.json ----------------------------------------------------------------------------


def document_json(document: agreement.AgreementDocument) -> dict[str, Any]:
    """A document's fields by name, bytes as hex and dates as ISO strings."""
    return {
        "version": document.version,
        "previous_hash": document.previous_hash.hex() if document.previous_hash else None,
        "title": document.title,
        "valid_from": document.valid_from.isoformat(),
        "valid_until": document.valid_until.isoformat(),
        "members": [
            {
                "city": m.city,
                "display_name": m.display_name,
                "units": [{"id": u.id, "display_name": u.display_name} for u in m.units],
                "endpoint": m.endpoint,
                "identity_key": m.identity_key.hex(),
                "tls_pins": [pin.hex() for pin in m.tls_pins],
            }
            for m in document.members
        ],
        "quota_per_home_city_per_year": document.quota_per_home_city_per_year,
        "eligible_threat_levels": [level.value for level in document.eligible_threat_levels],
        "signing_threshold": document.signing_threshold,
        "revoked_keys": [key.hex() for key in document.revoked_keys],
    }


def document_from_json(fields: dict[str, Any]) -> agreement.AgreementDocument:
    """The inverse of :func:`document_json`."""
    previous = fields["previous_hash"]
    return agreement.AgreementDocument(
        version=fields["version"],
        previous_hash=bytes.fromhex(previous) if previous else None,
        title=fields["title"],
        valid_from=datetime.date.fromisoformat(fields["valid_from"]),
        valid_until=datetime.date.fromisoformat(fields["valid_until"]),
        members=tuple(
            agreement.Member(
                m["city"],
                m["display_name"],
                tuple(agreement.Unit(u["id"], u["display_name"]) for u in m["units"]),
                m["endpoint"],
                bytes.fromhex(m["identity_key"]),
                tuple(bytes.fromhex(pin) for pin in m["tls_pins"]),
            )
            for m in fields["members"]
        ),
        quota_per_home_city_per_year=fields["quota_per_home_city_per_year"],
        eligible_threat_levels=tuple(ThreatLevel(v) for v in fields["eligible_threat_levels"]),
        signing_threshold=fields["signing_threshold"],
        revoked_keys=tuple(bytes.fromhex(key) for key in fields["revoked_keys"]),
    )


def signed_version(document: agreement.AgreementDocument, signers: tuple[str, ...]) -> bytes:
    """Encode ``document`` and sign it by the identities ``signers``, in that order."""
    data = agreement.encode_document(document)
    return agreement.encode_signed(
        data, [agreement.sign_document(private_key(name), data) for name in signers]
    )


def _version(signed: bytes, signers: tuple[str, ...]) -> dict[str, Any]:
    wire = codec.decode(signed, agreement.SignedAgreement, max_bytes=1 << 20, what="vector")
    document = agreement.decode_document(wire.document)
    return {
        "document": document_json(document),
        "document_bytes": wire.document.hex(),
        "document_hash": hashlib.sha256(wire.document).hexdigest(),
        "signatures": [
            {"signer": name, "signer_key_id": s.signer_key_id.hex(), "signature": s.signature.hex()}
            for name, s in zip(signers, wire.signatures, strict=True)
        ],
        "signed": signed.hex(),
    }


def agreement_versions() -> tuple[tuple[agreement.AgreementDocument, tuple[str, ...]], ...]:
    """Version 1 (the sample) and version 2 (Malmö's compromised key replaced), with signers."""
    v1 = agreement_draft.complete_draft(agreement_draft.draft_from_toml(DRAFT), member_keys())
    first = agreement.verify_genesis(signed_version(v1, CITIES), TODAY)
    new_malmo = agreement_draft.MemberKeys(public("malmo-2"), (keys.tls_pin(spki_der("malmo 2")),))
    replaced = {**member_keys(), "malmo": new_malmo}
    draft2 = agreement_draft.draft_from_toml({**DRAFT, "version": 2})
    v2 = agreement_draft.complete_draft(
        draft2, replaced, previous=first, revoked_keys=[public("malmo")]
    )
    return (v1, CITIES), (v2, ("stockholm", "goteborg", "malmo-2"))


def _refused_versions(v1: agreement.AgreementDocument, v2: agreement.AgreementDocument) -> Any:
    v2_hash = hashlib.sha256(agreement.encode_document(v2)).digest()
    fork = msgspec.structs.replace(v2, previous_hash=bytes(32))
    v3 = msgspec.structs.replace(v2, version=3, previous_hash=v2_hash)
    expired = msgspec.structs.replace(v2, valid_until=datetime.date(2026, 3, 31))
    cases = [
        ("rollback to version 1", 2, signed_version(v1, CITIES), "agreement_rollback"),
        ("previous_hash names another document", 1, signed_version(fork, CITIES),
         "agreement_fork"),
        ("version 3 after version 1", 1, signed_version(v3, CITIES), "agreement_skipped_version"),
        ("signed by one member only", 1, signed_version(v2, ("stockholm",)),
         "agreement_threshold"),
        ("replaced key signs its own replacement", 1,
         signed_version(v2, ("stockholm", "malmo", "malmo-2")), "agreement_threshold"),
        ("one key signs twice", 1, signed_version(v2, ("stockholm", "stockholm", "malmo-2")),
         "agreement_threshold"),
        ("signed by a non-member only", 1, signed_version(v2, ("uppsala",)), "not_a_member"),
        ("expired before today", 1, signed_version(expired, ("stockholm", "goteborg", "malmo-2")),
         "agreement_expired"),
    ]  # fmt: skip
    return [
        {"name": name, "current_version": current, "signed": data.hex(), "error": error}
        for name, current, data, error in cases
    ]


def build_agreement() -> dict[str, Any]:
    """Compute every vector of agreement.json."""
    (v1, signers1), (v2, signers2) = agreement_versions()
    return {
        "description": "citynode agreement chain; see docs/spec/60-agreement.md",
        "today": TODAY.isoformat(),
        "identities": {name: public(name).hex() for name in IDENTITIES},
        "trusted_identity_keys": {city: public(city).hex() for city in CITIES},
        "draft": DRAFT,
        "versions": [
            _version(signed_version(v1, signers1), signers1),
            _version(signed_version(v2, signers2), signers2),
        ],
        "refused": _refused_versions(v1, v2),
    }


def render(vectors: dict[str, Any]) -> str:
    """The exact text of a vectors file."""
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    """Write (or with ``--check`` compare) both vectors files."""
    outputs = {OUT_KEYS: render(build_keys()), OUT_AGREEMENT: render(build_agreement())}
    if "--check" in sys.argv[1:]:
        stale = [path.name for path, text in outputs.items() if path.read_text("utf-8") != text]
        print("stale: " + ", ".join(stale) if stale else "vectors are up to date")
        return 1 if stale else 0
    for path, text in outputs.items():
        path.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
