"""Write tests/vectors/keylog.json: known answers for the key-history log.

Run from the repository root: ``.venv/bin/python tests/vectors/generate_keylog.py``.
Everything is deterministic (fixed seeds, fixed times, Ed25519 signatures are deterministic), so
running it again must produce the same file; ``tests/protocol/test_keylog.py`` and
``test_equivocation.py`` check the file both ways (reproduce every value from the inputs, and
verify the recorded bytes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import codec, equivocation, keylog
from protocol.keys import KeyKind, VerifyKey, identity_key, key_id

OUT = Path(__file__).with_name("keylog.json")

# 2026-01-01T00:00:00Z, the start of the agreement period, and a few days after.
T0 = 1_767_225_600
ENTRIES: tuple[tuple[keylog.EntryKind, bytes, int], ...] = (
    (keylog.EntryKind.IDENTITY_KEY, b"test statement: stockholm identity key 1", T0),
    (keylog.EntryKind.TLS_PIN, b"test statement: stockholm tls pin 1", T0),
    (keylog.EntryKind.ENCRYPTION_KEY, b"test statement: stockholm encryption key epoch 0", T0 + 60),
    (keylog.EntryKind.AGREEMENT_ADOPTED, b"test statement: agreement version 3", T0 + 3600),
)
FORK_PAYLOAD = b"test statement: a different encryption key epoch 0"
FORK_EXTRA = (keylog.EntryKind.ENCRYPTION_KEY, b"test statement: encryption key epoch 1", T0 + 7200)
CHECKPOINT_AT = T0 + 86_400
SEEN_AT = CHECKPOINT_AT + 30


def seed(city: str) -> bytes:
    """The fixed private-key seed of a city in the vectors."""
    return hashlib.sha256(b"citynode test vector identity " + city.encode()).digest()


def private_key(city: str) -> Ed25519PrivateKey:
    """The fixed identity key of a city in the vectors."""
    return Ed25519PrivateKey.from_private_bytes(seed(city))


def trusted_key(city: str) -> VerifyKey:
    """The trusted identity key record of a city in the vectors (valid from time 0)."""
    return identity_key(private_key(city).public_key().public_bytes_raw())


def _key(city: str) -> dict[str, str]:
    public = private_key(city).public_key().public_bytes_raw()
    return {
        "seed": seed(city).hex(),
        "public_key": public.hex(),
        "key_id": key_id(KeyKind.IDENTITY, public).hex(),
    }


def _entry(entry: keylog.KeyLogEntry) -> dict[str, Any]:
    return {
        "index": entry.index,
        "previous_hash": entry.previous_hash.hex(),
        "timestamp": entry.timestamp,
        "kind": entry.kind.name.lower(),
        "kind_code": int(entry.kind),
        "payload": entry.payload.hex(),
        "hash_input": keylog.entry_hash_input(entry).hex(),
        "hash": keylog.entry_hash(entry).hex(),
        "encoding": codec.encode(entry).hex(),
    }


def _checkpoint(signed: keylog.SignedCheckpoint, log: keylog.KeyLog) -> dict[str, Any]:
    return {
        "city": "stockholm",
        "size": log.size,
        "head": log.head.hex(),
        "timestamp": CHECKPOINT_AT,
        "checkpoint_bytes": signed.checkpoint_bytes.hex(),
        "signer_key_id": signed.signer_key_id.hex(),
        "signature": signed.signature.hex(),
        "wire": codec.encode(signed).hex(),
    }


def build_log(
    entries: tuple[tuple[keylog.EntryKind, bytes, int], ...] = ENTRIES,
) -> keylog.KeyLog:
    """Append the given changes to an empty log."""
    log = keylog.KeyLog()
    for kind, payload, timestamp in entries:
        log = log.append(kind, payload, timestamp)
    return log


def build() -> dict[str, Any]:
    """Compute every vector."""
    stockholm = private_key("stockholm")
    log = build_log()
    signed = keylog.sign_checkpoint(log, "stockholm", CHECKPOINT_AT, stockholm)
    keyring = {city: [trusted_key(city)] for city in ("stockholm", "goteborg")}
    verified = keylog.verify_checkpoint(signed, keyring)
    counter = keylog.countersign(verified, "goteborg", SEEN_AT, private_key("goteborg"))
    forked_entries = (*ENTRIES[:2], (ENTRIES[2][0], FORK_PAYLOAD, ENTRIES[2][2]), ENTRIES[3])
    fork = build_log(forked_entries)
    fork_signed = keylog.sign_checkpoint(fork, "stockholm", CHECKPOINT_AT, stockholm)
    same_size = equivocation.detect_equivocation(
        verified, keylog.verify_checkpoint(fork_signed, keyring)
    )
    longer = build_log((*forked_entries, FORK_EXTRA))
    longer_signed = keylog.sign_checkpoint(longer, "stockholm", CHECKPOINT_AT + 60, stockholm)
    extended = equivocation.detect_equivocation(
        verified, keylog.verify_checkpoint(longer_signed, keyring), longer
    )
    assert same_size is not None
    assert extended is not None
    return {
        "description": "citynode key-history log known answers; see docs/spec/70-keylog.md",
        "keys": {city: _key(city) for city in ("stockholm", "goteborg")},
        "entry_domain": keylog.ENTRY_DOMAIN.hex(),
        "entries": [_entry(e) for e in log.entries],
        "heads": [log.head_at(n).hex() for n in range(log.size + 1)],
        "log_encoding": codec.encode(log.entries).hex(),
        "checkpoint": _checkpoint(signed, log),
        "countersignature": {
            "witness": "goteborg",
            "seen_at": SEEN_AT,
            "statement_bytes": counter.statement_bytes.hex(),
            "witness_key_id": counter.witness_key_id.hex(),
            "signature": counter.signature.hex(),
            "wire": codec.encode(counter).hex(),
        },
        "equivocation_same_size": {
            "fork_index": 2,
            "fork_payload": FORK_PAYLOAD.hex(),
            "fork_head": fork.head.hex(),
            "fork_checkpoint": codec.encode(fork_signed).hex(),
            "proof": codec.encode(same_size).hex(),
        },
        "equivocation_extension": {
            "extra_entry": {
                "kind": FORK_EXTRA[0].name.lower(),
                "payload": FORK_EXTRA[1].hex(),
                "timestamp": FORK_EXTRA[2],
            },
            "longer_checkpoint_timestamp": CHECKPOINT_AT + 60,
            "longer_checkpoint": codec.encode(longer_signed).hex(),
            "proof": codec.encode(extended).hex(),
        },
    }


def main() -> None:
    """Write the vectors file."""
    OUT.write_text(json.dumps(build(), indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
