"""Write tests/vectors/checkpoint_exchange.json: known answers for the checkpoint exchange.

Run from the repository root: ``.venv/bin/python tests/vectors/generate_checkpoint_exchange.py``
(``--check`` compares instead of writing). The keys, Stockholm's log, its checkpoint and
Göteborg's countersignature of it are those of ``keylog.json`` (``generate_keylog.py``); this file
adds Göteborg's log and checkpoint, the offer Göteborg sends Stockholm (its checkpoint and its
view of Stockholm's) and Stockholm's reply (its countersignature of Göteborg's checkpoint and its
own offer). Everything is deterministic; ``tests/protocol/test_checkpoint_exchange.py`` checks the
file both ways (rebuild it from the inputs, and verify the recorded bytes).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from protocol import codec, keylog
from protocol.checkpoint_exchange import encode_offer, encode_reply

OUT = Path(__file__).with_name("checkpoint_exchange.json")


def _keylog_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_keylog", Path(__file__).with_name("generate_keylog.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KEYLOG = _keylog_generator()
GOTEBORG_ENTRIES = (
    (keylog.EntryKind.IDENTITY_KEY, b"test statement: goteborg identity key 1", KEYLOG.T0),
    (keylog.EntryKind.TLS_PIN, b"test statement: goteborg tls pin 1", KEYLOG.T0 + 5),
)
REPLY_AT = KEYLOG.SEEN_AT + 1


def build() -> dict[str, Any]:
    """Compute every vector."""
    keyring = {city: [KEYLOG.trusted_key(city)] for city in ("stockholm", "goteborg")}
    stockholm_log = KEYLOG.build_log()
    stockholm_signed = keylog.sign_checkpoint(
        stockholm_log, "stockholm", KEYLOG.CHECKPOINT_AT, KEYLOG.private_key("stockholm")
    )
    stockholm_checkpoint = keylog.verify_checkpoint(stockholm_signed, keyring)
    goteborg_view = keylog.countersign(
        stockholm_checkpoint, "goteborg", KEYLOG.SEEN_AT, KEYLOG.private_key("goteborg")
    )
    goteborg_log = KEYLOG.build_log(GOTEBORG_ENTRIES)
    goteborg_signed = keylog.sign_checkpoint(
        goteborg_log, "goteborg", KEYLOG.SEEN_AT, KEYLOG.private_key("goteborg")
    )
    offer = encode_offer(goteborg_signed, [goteborg_view])
    stockholm_view = keylog.countersign(
        keylog.verify_checkpoint(goteborg_signed, keyring),
        "stockholm",
        REPLY_AT,
        KEYLOG.private_key("stockholm"),
    )
    reply = encode_reply(stockholm_view, encode_offer(stockholm_signed, []))
    return {
        "description": "citynode checkpoint exchange known answers; see docs/spec/70-keylog.md",
        "keys": "those of keylog.json",
        "goteborg_entries": [
            {"kind": kind.name.lower(), "payload": payload.hex(), "timestamp": timestamp}
            for kind, payload, timestamp in GOTEBORG_ENTRIES
        ],
        "goteborg_head": goteborg_log.head.hex(),
        "goteborg_checkpoint": {
            "timestamp": KEYLOG.SEEN_AT,
            "wire": codec.encode(goteborg_signed).hex(),
        },
        "offer": {"sender": "goteborg", "wire": offer.hex()},
        "reply": {
            "responder": "stockholm",
            "seen_at": REPLY_AT,
            "countersignature": codec.encode(stockholm_view).hex(),
            "wire": reply.hex(),
        },
    }


def render(vectors: dict[str, Any]) -> str:
    """The exact text of the vectors file."""
    return json.dumps(vectors, indent=2) + "\n"


def main() -> int:
    """Write (or with ``--check`` compare) the vectors file."""
    text = render(build())
    if "--check" in sys.argv[1:]:
        stale = not OUT.exists() or OUT.read_text("utf-8") != text
        print(f"stale: {OUT.name}" if stale else "vectors are up to date")
        return 1 if stale else 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
