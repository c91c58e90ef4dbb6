"""Sealing known answers: the envelopes and rejections of tests/vectors/envelopes.json, opened,
reproduced byte for byte, checked against the spec's intermediate values and an independent HPKE,
and the vector files checked against their generator."""

from __future__ import annotations

import datetime
import importlib.util
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives import hpke as lib_hpke
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sealing_fixtures import (
    KEYS,
    VECTOR_DIR,
    VECTORS,
    FakeReplayStore,
    encryption_record,
    identity,
    known_cities,
    open_,
    verify_key,
)

from protocol import codec, sealing
from protocol.errors import RemoteProtocolError
from protocol.limits import Limits
from protocol.messages import Inquiry, Need, ThreatLevel


def inquiry_from_json(fields: dict[str, Any]) -> Inquiry:
    def date(value: str | None) -> datetime.date | None:
        return None if value is None else datetime.date.fromisoformat(value)

    assert fields["type"] == "inquiry"
    return Inquiry(
        case_id=bytes.fromhex(fields["case_id"]),
        from_unit=fields["from_unit"],
        to_unit=fields["to_unit"],
        threat_level=ThreatLevel(fields["threat_level"]),
        police_consulted_on=date(fields["police_consulted_on"]),
        consent=fields["consent"],
        needs=tuple(Need(n) for n in fields["needs"]),
        summary=fields["summary"],
        wished_start=date(fields["wished_start"]),
    )


@pytest.mark.parametrize("vector", VECTORS["envelopes"], ids=lambda v: v["name"])
def test_recorded_envelope_opens_to_the_recorded_message(vector: dict[str, Any]) -> None:
    opened = open_(bytes.fromhex(vector["envelope"]), me=vector["recipient"], now=vector["now"])
    assert opened.message == inquiry_from_json(vector["message"])
    assert opened.header_bytes.hex() == vector["header"]
    assert opened.body_bytes.hex() == vector["body"]
    assert opened.signature.hex() == vector["signature"]
    assert opened.envelope_hash.hex() == vector["envelope_hash"]
    assert opened.header.message_id.hex() == vector["message_id"]


@pytest.mark.parametrize("vector", VECTORS["envelopes"], ids=lambda v: v["name"])
def test_envelope_is_reproduced_byte_for_byte_from_the_recorded_inputs(
    vector: dict[str, Any],
) -> None:
    envelope = sealing.seal_envelope(
        sender=vector["sender"],
        sender_identity=identity(vector["sender"]),
        recipient=vector["recipient"],
        recipient_key=encryption_record(vector["recipient"]),
        agreement_version=vector["agreement_version"],
        message=inquiry_from_json(vector["message"]),
        message_id=bytes.fromhex(vector["message_id"]),
        timestamp=vector["timestamp"],
        ephemeral=bytes.fromhex(vector["ephemeral_private"]),
    )
    assert envelope.hex() == vector["envelope"]


@pytest.mark.parametrize("vector", VECTORS["envelopes"], ids=lambda v: v["name"])
def test_recorded_intermediate_values_follow_the_spec(vector: dict[str, Any]) -> None:
    header, body = bytes.fromhex(vector["header"]), bytes.fromhex(vector["body"])
    payload = len(header).to_bytes(4, "big") + header + len(body).to_bytes(4, "big") + body
    signing_input = b"citynode/v1 envelope\x00" + payload
    assert signing_input.hex() == vector["signing_input"]
    public = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(KEYS[vector["sender"]]["identity_seed"])
    ).public_key()
    public.verify(bytes.fromhex(vector["signature"]), signing_input)
    assert bytes.fromhex(vector["hpke_info"]) == b"citynode/v1 envelope-hpke\x00" + header
    assert (
        vector["hpke_plaintext"] == codec.encode((body, bytes.fromhex(vector["signature"]))).hex()
    )
    assert vector["envelope"] == codec.encode((header, bytes.fromhex(vector["sealed"]))).hex()
    # An independent HPKE implementation opens the sealed part.
    private = X25519PrivateKey.from_private_bytes(
        bytes.fromhex(KEYS[vector["recipient"]]["encryption_seed"])
    )
    suite = lib_hpke.Suite(
        lib_hpke.KEM.X25519, lib_hpke.KDF.HKDF_SHA256, lib_hpke.AEAD.CHACHA20_POLY1305
    )
    plaintext = suite.decrypt(
        bytes.fromhex(vector["sealed"]), private, info=bytes.fromhex(vector["hpke_info"])
    )
    assert plaintext.hex() == vector["hpke_plaintext"]
    assert vector["sealed"].startswith(vector["hpke_enc"])


@pytest.mark.parametrize("vector", VECTORS["rejections"], ids=lambda v: v["name"])
def test_recorded_rejection_is_refused_with_its_code(vector: dict[str, Any]) -> None:
    sender_keys = known_cities()
    if "sender_revoked_since" in vector:
        revoked = verify_key("stockholm", revoked_since=vector["sender_revoked_since"])
        sender_keys = known_cities(stockholm=[revoked])
    limits = Limits(max_envelope_bytes=vector.get("max_envelope_bytes", 256 * 1024))
    store = FakeReplayStore([(s, bytes.fromhex(m)) for s, m in vector.get("seen", [])])
    with pytest.raises(RemoteProtocolError) as caught:
        open_(
            bytes.fromhex(vector["envelope"]),
            me=vector["me"],
            now=vector["now"],
            sender_keys=sender_keys,
            replay=store,
            limits=limits,
        )
    assert caught.value.code == vector["code"]


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vectors_generate", VECTOR_DIR / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vector_files_are_exactly_what_the_generator_produces() -> None:
    generator = _load_generator()
    for filename, builder in generator.BUILDERS.items():
        on_disk = (VECTOR_DIR / filename).read_text(encoding="utf-8")
        assert generator.render(builder()) == on_disk, f"{filename} is stale: run generate.py"
