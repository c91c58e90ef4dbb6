"""Test keys, logs and checkpoints, and the known answers of ``tests/vectors/keylog.json``, shared
by the key-history log tests (``test_keylog.py``, ``test_equivocation.py``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import keylog
from protocol.keylog import EntryKind, KeyLog, KeyLogEntry, VerifiedCheckpoint
from protocol.keys import VerifyKey, identity_key

VECTORS = json.loads(
    (Path(__file__).parents[1] / "vectors" / "keylog.json").read_text(encoding="utf-8")
)
T0 = 1_767_225_600
CITIES = ("stockholm", "goteborg", "malmo")


def private_key(city: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"test key " + city.encode()).digest()
    )


def trusted(city: str, **window: int) -> VerifyKey:
    key = identity_key(private_key(city).public_key().public_bytes_raw())
    return msgspec.structs.replace(key, **window) if window else key


KEYRING: dict[str, list[VerifyKey]] = {city: [trusted(city)] for city in CITIES}


def make_log(payloads: list[bytes], start: int = T0) -> KeyLog:
    log = KeyLog()
    for offset, payload in enumerate(payloads):
        log = log.append(EntryKind.ENCRYPTION_KEY, payload, start + offset * 60)
    return log


def statements(n: int, label: str = "key") -> list[bytes]:
    return [f"test statement: {label} {i}".encode() for i in range(n)]


def checkpoint(log: KeyLog, at: int = T0 + 86_400, city: str = "stockholm") -> VerifiedCheckpoint:
    signed = keylog.sign_checkpoint(log, city, at, private_key(city))
    return keylog.verify_checkpoint(signed, KEYRING)


def relinked(entries: list[KeyLogEntry], start: int) -> list[KeyLogEntry]:
    """Re-chain entries from ``start`` on as a forger would (index and previous hash fixed up)."""
    fixed = list(entries[:start])
    for entry in entries[start:]:
        previous = keylog.entry_hash(fixed[-1]) if fixed else keylog.ZERO_HASH
        fixed.append(msgspec.structs.replace(entry, index=len(fixed), previous_hash=previous))
    return fixed


def vector_keyring() -> dict[str, list[VerifyKey]]:
    return {
        city: [identity_key(bytes.fromhex(key["public_key"]))]
        for city, key in VECTORS["keys"].items()
    }


def vector_private(city: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["keys"][city]["seed"]))


def vector_log() -> KeyLog:
    log = KeyLog()
    for entry in VECTORS["entries"]:
        kind = EntryKind[entry["kind"].upper()]
        assert int(kind) == entry["kind_code"]
        log = log.append(kind, bytes.fromhex(entry["payload"]), entry["timestamp"])
    return log
