"""The test cities' keys (from ``tests/vectors/envelopes.json``), a fake replay store, and sealing
and opening with defaults, shared by the envelope tests (``test_sealing.py``,
``test_sealing_vectors.py``)."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import sealing
from protocol.errors import ReplayStoreFull
from protocol.keys import EncryptionKey, VerifyKey
from protocol.messages import Inquiry, Need, ThreatLevel

VECTOR_DIR = Path(__file__).parents[1] / "vectors"
VECTORS: dict[str, Any] = json.loads((VECTOR_DIR / "envelopes.json").read_text(encoding="utf-8"))
KEYS: dict[str, dict[str, Any]] = VECTORS["keys"]
T = 1772443800  # 2026-03-02T09:30:00Z, inside every test key's validity

INQUIRY = Inquiry(
    case_id=bytes(range(16)),
    from_unit="socialnamnden",
    to_unit="nordost",
    threat_level=ThreatLevel.MODERATE,
    police_consulted_on=datetime.date(2026, 2, 20),
    consent=True,
    needs=(Need.HOUSING, Need.TREATMENT),
    summary="Testfall: behöver boende och behandling.",
    wished_start=datetime.date(2026, 4, 1),
)


def identity(city: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS[city]["identity_seed"]))


def encryption_record(city: str) -> EncryptionKey:
    k = KEYS[city]
    return EncryptionKey(
        key_id=bytes.fromhex(k["encryption_key_id"]),
        public_key=bytes.fromhex(k["encryption_public"]),
        epoch=k["encryption_epoch"],
        not_before=k["encryption_not_before"],
        not_after=k["encryption_not_after"],
    )


def decryption_keys(city: str) -> dict[bytes, sealing.DecryptionKey]:
    k = KEYS[city]
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(k["encryption_seed"]))
    return {
        bytes.fromhex(k["encryption_key_id"]): sealing.DecryptionKey(
            epoch=k["encryption_epoch"], private_key=private
        )
    }


def verify_key(city: str, **changes: Any) -> VerifyKey:
    k = KEYS[city]
    fields: dict[str, Any] = {
        "key_id": bytes.fromhex(k["identity_key_id"]),
        "public_key": bytes.fromhex(k["identity_public"]),
        "valid_from": k["identity_valid_from"],
    }
    fields.update(changes)
    return VerifyKey(**fields)


class FakeReplayStore:
    """An in-memory replay store: ``seen`` answers from a set; ``full`` fails closed."""

    def __init__(self, seen: Sequence[tuple[str, bytes]] = (), *, full: bool = False) -> None:
        self.ids = set(seen)
        self.full = full
        self.asked: list[tuple[str, bytes]] = []

    def seen(self, sender: str, message_id: bytes) -> bool:
        self.asked.append((sender, message_id))
        if self.full:
            raise ReplayStoreFull()
        return (sender, message_id) in self.ids


def known_cities(**keys: Sequence[VerifyKey]) -> sealing.SenderKeys:
    """A resolver over the three test cities, with ``keys`` replacing a city's key list."""
    table: dict[str, Sequence[VerifyKey]] = {city: [verify_key(city)] for city in KEYS}
    table.update(keys)
    return table.get


def seal(**changes: Any) -> bytes:
    args: dict[str, Any] = {
        "sender": "stockholm",
        "sender_identity": identity("stockholm"),
        "recipient": "goteborg",
        "recipient_key": encryption_record("goteborg"),
        "agreement_version": 3,
        "message": INQUIRY,
        "message_id": os.urandom(16),
        "timestamp": T,
        "ephemeral": os.urandom(32),
    }
    args.update(changes)
    return sealing.seal_envelope(**args)


def open_(data: bytes, **changes: Any) -> sealing.OpenedEnvelope:
    me = changes.pop("me", "goteborg")
    args: dict[str, Any] = {
        "me": me,
        "my_keys": decryption_keys(me),
        "sender_keys": known_cities(),
        "replay": FakeReplayStore(),
        "now": T + 1,
    }
    args.update(changes)
    return sealing.open_envelope(data, **args)
