"""Regenerate the sealing known-answer vectors: hpke.json, envelopes.json, receipts.json.

Every input comes from a fixed seed (``SHA-256("citynode test vector " || label)``) or a fixed
constant, and every construction is deterministic (HPKE with a given ephemeral key, Ed25519), so
running this twice gives the same files byte for byte; ``tests/protocol`` checks that it does and
that the vectors hold both ways (open the recorded bytes, reproduce them from the inputs).

The RFC 9180 vector is copied from RFC 9180 Appendix A.2.1 (base mode, sequence number 0), not
generated: it anchors our HPKE to the standard rather than to ourselves.

Usage: ``.venv/bin/python tests/vectors/generate.py`` (writes next to this file).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import codec, hpke, sealing, signing
from protocol.keys import EncryptionKey, KeyKind, key_id
from protocol.limits import DEFAULT_LIMITS
from protocol.messages import Inquiry, Need, ThreatLevel
from protocol.signing import Purpose

HERE = Path(__file__).parent

NOT_BEFORE = 1767225600  # 2026-01-01T00:00:00Z
NOT_AFTER = 1798761599  # 2026-12-31T23:59:59Z
EPOCHS = {"stockholm": 1, "goteborg": 3, "malmo": 2}
AGREEMENT_VERSION = 3

RFC9180_A2_1: dict[str, Any] = {
    "source": "RFC 9180 Appendix A.2.1 (Base Setup Information) and A.2.1.1 sequence number 0",
    "mode": 0,
    "kem_id": 32,
    "kdf_id": 1,
    "aead_id": 3,
    "info": "4f6465206f6e2061204772656369616e2055726e",
    "ikmE": "909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b",
    "pkEm": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
    "skEm": "f4ec9b33b792c372c1d2c2063507b684ef925b8c75a42dbcbf57d63ccd381600",
    "ikmR": "1ac01f181fdf9f352797655161c58b75c656a6cc2716dcb66372da835542e1df",
    "pkRm": "4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a",
    "skRm": "8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb",
    "enc": "1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a",
    "shared_secret": "0bbe78490412b4bbea4812666f7916932b828bba79942424abb65244930d69a7",
    "key_schedule_context": (
        "00431df6cd95e11ff49d7013563baf7f11588c75a6611ee2a4404a49306ae4cf"
        "c5b69c5718a60cc5876c358d3f7fc31ddb598503f67be58ea1e798c0bb19eb9796"
    ),
    "secret": "5b9cd775e64b437a2335cf499361b2e0d5e444d5cb41a8a53336d8fe402282c6",
    "key": "ad2744de8e17f4ebba575b3f5f5a8fa1f69c2a07f6e7500bc60ca6e3e3ec1c91",
    "base_nonce": "5c4d98150661b848853b547f",
    "exporter_secret": "a3b010d4994890e2c6968a36f64470d3c824c8f5029942feb11e7a74b2921922",
    "encryption": {
        "sequence_number": 0,
        "pt": "4265617574792069732074727574682c20747275746820626561757479",
        "aad": "436f756e742d30",
        "nonce": "5c4d98150661b848853b547f",
        "ct": (
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db"
            "21993c62ce81883d2dd1b51a28"
        ),
    },
}


def seed(label: str) -> bytes:
    """Return the fixed 32-byte seed for ``label``."""
    return hashlib.sha256(b"citynode test vector " + label.encode()).digest()


def identity(city: str) -> Ed25519PrivateKey:
    """Return the fixed identity key of a test city."""
    return Ed25519PrivateKey.from_private_bytes(seed(f"identity {city}"))


def encryption(city: str) -> X25519PrivateKey:
    """Return the fixed encryption key of a test city."""
    return X25519PrivateKey.from_private_bytes(seed(f"encryption {city}"))


def encryption_record(city: str) -> EncryptionKey:
    """Return the public encryption key record of a test city."""
    public = encryption(city).public_key().public_bytes_raw()
    return EncryptionKey(
        key_id=key_id(KeyKind.ENCRYPTION, public),
        public_key=public,
        epoch=EPOCHS[city],
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
    )


def keys_json() -> dict[str, Any]:
    """Return the key section shared by envelopes.json and receipts.json."""
    out: dict[str, Any] = {}
    for city in EPOCHS:
        id_public = identity(city).public_key().public_bytes_raw()
        record = encryption_record(city)
        out[city] = {
            "identity_seed": seed(f"identity {city}").hex(),
            "identity_public": id_public.hex(),
            "identity_key_id": key_id(KeyKind.IDENTITY, id_public).hex(),
            "identity_valid_from": NOT_BEFORE,
            "encryption_seed": seed(f"encryption {city}").hex(),
            "encryption_public": record.public_key.hex(),
            "encryption_key_id": record.key_id.hex(),
            "encryption_epoch": record.epoch,
            "encryption_not_before": record.not_before,
            "encryption_not_after": record.not_after,
        }
    return out


def inquiry_json(message: Inquiry) -> dict[str, Any]:
    """Return an inquiry's fields as JSON values (bytes in hex, dates ISO)."""

    def _date(value: datetime.date | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "type": "inquiry",
        "case_id": message.case_id.hex(),
        "from_unit": message.from_unit,
        "to_unit": message.to_unit,
        "threat_level": message.threat_level.value,
        "police_consulted_on": _date(message.police_consulted_on),
        "consent": message.consent,
        "needs": [need.value for need in message.needs],
        "summary": message.summary,
        "wished_start": _date(message.wished_start),
    }


INQUIRIES = {
    "stockholm-to-goteborg": Inquiry(
        case_id=seed("case 1")[:16],
        from_unit="socialnamnden",
        to_unit="nordost",
        threat_level=ThreatLevel.MODERATE,
        police_consulted_on=datetime.date(2026, 2, 20),
        consent=True,
        needs=(Need.HOUSING, Need.TREATMENT, Need.EMPLOYMENT),
        summary="Behöver boende och öppenvårdsbehandling; kan börja arbetsträning i april.",
        wished_start=datetime.date(2026, 4, 1),
    ),
    "malmo-to-stockholm": Inquiry(
        case_id=seed("case 2")[:16],
        from_unit="asn",
        to_unit=None,
        threat_level=ThreatLevel.LOW,
        police_consulted_on=None,
        consent=True,
        needs=(Need.HOUSING,),
        summary="",
        wished_start=None,
    ),
}
ROUTES = {
    "stockholm-to-goteborg": ("stockholm", "goteborg"),
    "malmo-to-stockholm": ("malmo", "stockholm"),
}
TIMESTAMPS = {"stockholm-to-goteborg": 1772443800, "malmo-to-stockholm": 1772546700}


def envelope_vector(name: str) -> dict[str, Any]:
    """Seal one fixed message and record every intermediate value."""
    sender, recipient = ROUTES[name]
    message = INQUIRIES[name]
    message_id = seed(f"message id {name}")[:16]
    ephemeral = seed(f"ephemeral {name}")
    record = encryption_record(recipient)
    envelope = sealing.seal_envelope(
        sender=sender,
        sender_identity=identity(sender),
        recipient=recipient,
        recipient_key=record,
        agreement_version=AGREEMENT_VERSION,
        message=message,
        message_id=message_id,
        timestamp=TIMESTAMPS[name],
        ephemeral=ephemeral,
    )
    header_bytes, sealed = codec.decode(envelope, tuple[bytes, bytes], max_bytes=1 << 20, what="")
    body = codec.encode(message)
    payload = sealing.signed_payload(header_bytes, body)
    signature = signing.sign(identity(sender), Purpose.ENVELOPE, payload)
    info = sealing.HPKE_INFO_PREFIX + header_bytes
    shared_secret, enc = hpke.encapsulate(record.public_key, ephemeral)
    key, base_nonce = hpke.key_schedule(shared_secret, info)
    return {
        "name": name,
        "sender": sender,
        "recipient": recipient,
        "agreement_version": AGREEMENT_VERSION,
        "message_id": message_id.hex(),
        "timestamp": TIMESTAMPS[name],
        "ephemeral_private": ephemeral.hex(),
        "message": inquiry_json(message),
        "now": TIMESTAMPS[name] + 2,
        "header": header_bytes.hex(),
        "body": body.hex(),
        "signing_input": signing.signing_input(Purpose.ENVELOPE, payload).hex(),
        "signature": signature.hex(),
        "hpke_info": info.hex(),
        "hpke_plaintext": codec.encode((body, signature)).hex(),
        "hpke_enc": enc.hex(),
        "hpke_shared_secret": shared_secret.hex(),
        "hpke_key": key.hex(),
        "hpke_base_nonce": base_nonce.hex(),
        "sealed": sealed.hex(),
        "envelope": envelope.hex(),
        "envelope_hash": sealing.envelope_hash(envelope).hex(),
    }


def reseal(valid: dict[str, Any], to_city: str, label: str, **header_changes: Any) -> bytes:
    """Seal a recorded envelope's signed inner plaintext again under a changed header.

    This is what an attacker holding a signed message (e.g. its legitimate recipient) can do.
    """
    fields = codec.decode(
        bytes.fromhex(valid["header"]), sealing.Header, max_bytes=1024, what="header"
    )
    header = sealing.Header(
        **{f: header_changes.get(f, getattr(fields, f)) for f in sealing.Header.__struct_fields__}
    )
    header_bytes = codec.encode(header)
    sealed = hpke.seal(
        encryption_record(to_city).public_key,
        sealing.HPKE_INFO_PREFIX + header_bytes,
        bytes.fromhex(valid["hpke_plaintext"]),
        seed(f"ephemeral {label}"),
    )
    return codec.encode((header_bytes, sealed))


def rejection_vectors(valid: dict[str, Any]) -> list[dict[str, Any]]:
    """Envelopes (or contexts) that ``open`` must refuse, each with its expected code."""
    envelope = bytes.fromhex(valid["envelope"])
    ts = valid["timestamp"]
    flipped_tag = envelope[:-1] + bytes([envelope[-1] ^ 0x01])
    goteborg = encryption_record("goteborg")

    def case(name: str, data: bytes, code: str, me: str = "goteborg", **ctx: Any) -> dict[str, Any]:
        out = {"name": name, "envelope": data.hex(), "me": me, "now": ctx.pop("now", ts + 2)}
        out.update(ctx)
        out["code"] = code
        return out

    return [
        case("addressed to another city", envelope, "wrong_recipient", me="malmo"),
        case("own envelope reflected back", envelope, "reflected", me="stockholm"),
        case("stale", envelope, "stale", now=ts + DEFAULT_LIMITS.max_message_age_s + 1),
        case(
            "from the future", envelope, "from_future", now=ts - DEFAULT_LIMITS.max_clock_skew_s - 1
        ),
        case("replayed", envelope, "replayed", seen=[["stockholm", valid["message_id"]]]),
        case("tag bit flipped", flipped_tag, "decrypt_failed"),
        case(
            "signed message re-sealed to a third city under a header naming it",
            reseal(
                valid,
                "malmo",
                "reseal malmo",
                recipient="malmo",
                recipient_key_id=encryption_record("malmo").key_id,
                recipient_key_epoch=EPOCHS["malmo"],
            ),
            "bad_signature",
            me="malmo",
        ),
        case(
            "signed message re-sealed to a third city under its original header",
            reseal(valid, "malmo", "reseal original"),
            "wrong_recipient",
            me="malmo",
        ),
        case("version 2 header", reseal(valid, "goteborg", "v2", version=2), "unsupported_version"),
        case("suite 2 header", reseal(valid, "goteborg", "s2", suite=2), "unsupported_suite"),
        case(
            "encryption key epoch not ours",
            reseal(valid, "goteborg", "epoch", recipient_key_epoch=goteborg.epoch + 1),
            "unknown_key",
        ),
        case(
            "sender identity key revoked before timestamp",
            envelope,
            "revoked_key",
            sender_revoked_since=ts - 60,
        ),
        case(
            "larger than the size limit",
            envelope,
            "oversized",
            max_envelope_bytes=len(envelope) - 1,
        ),
    ]


def build_envelopes() -> dict[str, Any]:
    """Return the content of envelopes.json."""
    vectors = [envelope_vector(name) for name in INQUIRIES]
    return {
        "description": (
            "Sealed envelopes (docs/spec/30-sealing.md). Keys are derived from the seeds: Ed25519 "
            "private key = identity_seed, X25519 private key = encryption_seed. Open each "
            "envelope as its recipient at 'now' with the sender's identity key (valid_from "
            "identity_valid_from, never revoked) and nothing seen; reseal it from the inputs and "
            "compare byte for byte. Each rejection opens the first envelope's context "
            "(sender stockholm) as 'me' at 'now' and must fail with 'code'."
        ),
        "generator": "tests/vectors/generate.py",
        "limits": {
            "max_envelope_bytes": DEFAULT_LIMITS.max_envelope_bytes,
            "max_body_bytes": DEFAULT_LIMITS.max_body_bytes,
            "max_clock_skew_s": DEFAULT_LIMITS.max_clock_skew_s,
            "max_message_age_s": DEFAULT_LIMITS.max_message_age_s,
        },
        "keys": keys_json(),
        "envelopes": vectors,
        "rejections": rejection_vectors(vectors[0]),
    }


def build_receipts() -> dict[str, Any]:
    """Return the content of receipts.json."""
    envelopes = [envelope_vector(name) for name in INQUIRIES]
    receipts = []
    for env, status in zip(envelopes, ("accepted", "replayed"), strict=True):
        signer = env["recipient"]
        receipt = sealing.Receipt(
            envelope_hash=bytes.fromhex(env["envelope_hash"]),
            message_id=bytes.fromhex(env["message_id"]),
            sender=env["sender"],
            recipient=signer,
            received_at=env["now"],
            status=status,
        )
        public = identity(signer).public_key().public_bytes_raw()
        signer_id = key_id(KeyKind.IDENTITY, public)
        signed = sealing.sign_receipt(receipt, identity(signer), signer_id)
        receipt_bytes = codec.encode(receipt)
        receipts.append(
            {
                "envelope_hash": env["envelope_hash"],
                "message_id": env["message_id"],
                "sender": env["sender"],
                "recipient": signer,
                "received_at": env["now"],
                "status": status,
                "receipt": receipt_bytes.hex(),
                "signer_key_id": signer_id.hex(),
                "signing_input": signing.signing_input(Purpose.RECEIPT, receipt_bytes).hex(),
                "signature": signing.sign(identity(signer), Purpose.RECEIPT, receipt_bytes).hex(),
                "signed": signed.hex(),
            }
        )
    first = bytes.fromhex(receipts[0]["signed"])
    return {
        "description": (
            "Signed receipts (docs/spec/30-sealing.md). Keys as in envelopes.json. Verify each "
            "'signed' as coming from its 'recipient' and reproduce it from the fields. Each "
            "rejection is verified as coming from 'signer' and must fail with 'code'."
        ),
        "generator": "tests/vectors/generate.py",
        "keys": keys_json(),
        "receipts": receipts,
        "rejections": [
            {
                "name": "signature bit flipped",
                "signer": "goteborg",
                "signed": (first[:-1] + bytes([first[-1] ^ 0x80])).hex(),
                "code": "bad_signature",
            },
            {
                "name": "verified as another city's receipt",
                "signer": "malmo",
                "signed": first.hex(),
                "code": "unknown_key",
            },
        ],
    }


def hpke_vector(name: str, recipient: str, info: bytes, plaintext: bytes) -> dict[str, Any]:
    """Return one citynode HPKE vector (empty aad)."""
    ephemeral = seed(f"hpke ephemeral {name}")
    private = encryption(recipient)
    public = private.public_key().public_bytes_raw()
    shared_secret, enc = hpke.encapsulate(public, ephemeral)
    key, base_nonce = hpke.key_schedule(shared_secret, info)
    return {
        "name": name,
        "skRm": seed(f"encryption {recipient}").hex(),
        "pkRm": public.hex(),
        "skEm": ephemeral.hex(),
        "info": info.hex(),
        "pt": plaintext.hex(),
        "aad": "",
        "enc": enc.hex(),
        "shared_secret": shared_secret.hex(),
        "key": key.hex(),
        "base_nonce": base_nonce.hex(),
        "sealed": hpke.seal(public, info, plaintext, ephemeral).hex(),
    }


def build_hpke() -> dict[str, Any]:
    """Return the content of hpke.json."""
    return {
        "description": (
            "HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, "
            "single shot (sequence 0). 'sealed' = enc || ciphertext || tag."
        ),
        "generator": "tests/vectors/generate.py",
        "rfc9180_a2_1": RFC9180_A2_1,
        "citynode": [
            hpke_vector("empty plaintext, empty info", "goteborg", b"", b""),
            hpke_vector(
                "envelope-style info",
                "malmo",
                sealing.HPKE_INFO_PREFIX + b"\x9a\x01\x01",
                b"citynode known-answer plaintext",
            ),
        ],
    }


def render(content: dict[str, Any]) -> str:
    """Serialise one vector file deterministically."""
    return json.dumps(content, indent=2, ensure_ascii=False) + "\n"


BUILDERS = {
    "hpke.json": build_hpke,
    "envelopes.json": build_envelopes,
    "receipts.json": build_receipts,
}


def main() -> int:
    """Write the three vector files next to this script."""
    for filename, builder in BUILDERS.items():
        (HERE / filename).write_text(render(builder()), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
