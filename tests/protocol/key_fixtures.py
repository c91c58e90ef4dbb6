"""Deterministic test keys and the known answers of ``tests/vectors/keys.json``, shared by the key
tests (``test_keys.py``, ``test_key_bundle.py``, ``test_succession.py``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import keys

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "keys.json").read_text(encoding="utf-8")
)
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400
NOW = T0 + 3600


def ed25519(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        hashlib.sha256(b"test key " + label.encode()).digest()
    )


def x25519_public(label: str) -> bytes:
    seed = hashlib.sha256(b"test x25519 " + label.encode()).digest()
    return X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def pub(label: str) -> bytes:
    return keys.public_bytes(ed25519(label))


def vector_identity(name: str) -> Ed25519PrivateKey:
    """The identity private key of a vector of keys.json, from its seed."""
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["identities"][name]["seed"]))
