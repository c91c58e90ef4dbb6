"""Signed receipts: known answers, verification, tampering, purpose separation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, sealing, signing
from protocol.errors import (
    DecodeError,
    EnvelopeRejected,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.keys import EncryptionKey, VerifyKey
from protocol.limits import Limits
from protocol.messages import Inquiry, Need, ThreatLevel
from protocol.signing import Purpose

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parents[1] / "vectors" / "receipts.json").read_text(encoding="utf-8")
)
KEYS: dict[str, dict[str, Any]] = VECTORS["keys"]
T = 1772443800


def identity(city: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEYS[city]["identity_seed"]))


def identity_key_id(city: str) -> bytes:
    return bytes.fromhex(KEYS[city]["identity_key_id"])


def verify_keys(city: str, **changes: Any) -> list[VerifyKey]:
    k = KEYS[city]
    fields: dict[str, Any] = {
        "key_id": bytes.fromhex(k["identity_key_id"]),
        "public_key": bytes.fromhex(k["identity_public"]),
        "valid_from": k["identity_valid_from"],
    }
    fields.update(changes)
    return [VerifyKey(**fields)]


def receipt(**changes: Any) -> sealing.Receipt:
    fields: dict[str, Any] = {
        "envelope_hash": os.urandom(32),
        "message_id": os.urandom(16),
        "sender": "stockholm",
        "recipient": "goteborg",
        "received_at": T,
        "status": "accepted",
    }
    fields.update(changes)
    return sealing.Receipt(**fields)


def signed_by_goteborg(value: sealing.Receipt) -> bytes:
    return sealing.sign_receipt(value, identity("goteborg"), identity_key_id("goteborg"))


def verify(data: bytes, signer: str = "goteborg", **changes: Any) -> sealing.Receipt:
    keys = changes.pop("verify_keys", None) or verify_keys(signer)
    return sealing.verify_receipt(data, signer=signer, verify_keys=keys, **changes)


def refused(data: bytes, code: ErrorCode, **ctx: Any) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as caught:
        verify(data, **ctx)
    assert caught.value.code is code, f"expected {code}, got {caught.value.code}"
    return caught.value


# --- Known answers --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["receipts"], ids=lambda v: v["status"])
def test_recorded_receipt_verifies_to_its_fields(vector: dict[str, Any]) -> None:
    got = verify(bytes.fromhex(vector["signed"]), signer=vector["recipient"])
    assert got == sealing.Receipt(
        envelope_hash=bytes.fromhex(vector["envelope_hash"]),
        message_id=bytes.fromhex(vector["message_id"]),
        sender=vector["sender"],
        recipient=vector["recipient"],
        received_at=vector["received_at"],
        status=vector["status"],
    )


@pytest.mark.parametrize("vector", VECTORS["receipts"], ids=lambda v: v["status"])
def test_recorded_receipt_is_reproduced_byte_for_byte(vector: dict[str, Any]) -> None:
    value = sealing.Receipt(
        envelope_hash=bytes.fromhex(vector["envelope_hash"]),
        message_id=bytes.fromhex(vector["message_id"]),
        sender=vector["sender"],
        recipient=vector["recipient"],
        received_at=vector["received_at"],
        status=vector["status"],
    )
    assert codec.encode(value).hex() == vector["receipt"]
    signer = vector["recipient"]
    signed = sealing.sign_receipt(value, identity(signer), identity_key_id(signer))
    assert signed.hex() == vector["signed"]


@pytest.mark.parametrize("vector", VECTORS["receipts"], ids=lambda v: v["status"])
def test_recorded_receipt_signature_follows_the_spec(vector: dict[str, Any]) -> None:
    receipt_bytes = bytes.fromhex(vector["receipt"])
    signing_input = b"citynode/v1 receipt\x00" + receipt_bytes
    assert signing_input.hex() == vector["signing_input"]
    identity(vector["recipient"]).public_key().verify(
        bytes.fromhex(vector["signature"]), signing_input
    )
    wire = codec.encode(
        (receipt_bytes, bytes.fromhex(vector["signer_key_id"]), bytes.fromhex(vector["signature"]))
    )
    assert wire.hex() == vector["signed"]


def test_recorded_receipt_names_the_recorded_envelope() -> None:
    envelopes = json.loads(
        (Path(__file__).parents[1] / "vectors" / "envelopes.json").read_text(encoding="utf-8")
    )["envelopes"]
    for env, rec in zip(envelopes, VECTORS["receipts"], strict=True):
        assert rec["envelope_hash"] == env["envelope_hash"]
        assert rec["message_id"] == env["message_id"]


@pytest.mark.parametrize("vector", VECTORS["rejections"], ids=lambda v: v["name"])
def test_recorded_receipt_rejection_is_refused_with_its_code(vector: dict[str, Any]) -> None:
    refused(bytes.fromhex(vector["signed"]), ErrorCode(vector["code"]), signer=vector["signer"])


# --- Round trip from an opened envelope -----------------------------------------------------


def test_receipt_for_an_opened_envelope_verifies_at_the_sender() -> None:
    goteborg = KEYS["goteborg"]
    record = EncryptionKey(
        key_id=bytes.fromhex(goteborg["encryption_key_id"]),
        public_key=bytes.fromhex(goteborg["encryption_public"]),
        epoch=goteborg["encryption_epoch"],
        not_before=goteborg["encryption_not_before"],
        not_after=goteborg["encryption_not_after"],
    )
    inquiry = Inquiry(
        case_id=bytes(16),
        from_unit="jarva",
        to_unit=None,
        threat_level=ThreatLevel.LOW,
        police_consulted_on=None,
        consent=True,
        needs=(Need.HOUSING,),
        summary="",
        wished_start=None,
    )
    envelope = sealing.seal_envelope(
        sender="stockholm",
        sender_identity=identity("stockholm"),
        recipient="goteborg",
        recipient_key=record,
        agreement_version=3,
        message=inquiry,
        message_id=os.urandom(16),
        timestamp=T,
        ephemeral=os.urandom(32),
    )
    private = X25519PrivateKey.from_private_bytes(bytes.fromhex(goteborg["encryption_seed"]))
    opened = sealing.open_envelope(
        envelope,
        me="goteborg",
        my_keys={record.key_id: sealing.DecryptionKey(record.epoch, private)},
        sender_keys={"stockholm": verify_keys("stockholm")}.get,
        replay=type("Never", (), {"seen": lambda self, s, m: False})(),
        now=T + 1,
    )
    signed = signed_by_goteborg(sealing.receipt_for(opened, received_at=T + 1))
    got = verify(signed)
    assert got.envelope_hash == sealing.envelope_hash(envelope)
    assert got.message_id == opened.header.message_id
    assert (got.sender, got.recipient, got.received_at, got.status) == (
        "stockholm",
        "goteborg",
        T + 1,
        "accepted",
    )


def test_receipt_may_carry_the_error_code_a_message_was_refused_with() -> None:
    assert verify(signed_by_goteborg(receipt(status="replayed"))).status == "replayed"


# --- Refusals -------------------------------------------------------------------------------


def test_every_flipped_bit_of_a_signed_receipt_is_refused() -> None:
    signed = signed_by_goteborg(receipt())
    for index in range(len(signed)):
        for bit in range(8):
            tampered = bytearray(signed)
            tampered[index] ^= 1 << bit
            with pytest.raises(RemoteProtocolError):
                verify(bytes(tampered))


def test_receipt_signed_by_an_unknown_key_is_refused() -> None:
    forged = sealing.sign_receipt(receipt(), identity("malmo"), identity_key_id("malmo"))
    refused(forged, ErrorCode.UNKNOWN_KEY)


def test_envelope_signature_is_not_a_receipt_signature() -> None:
    value = receipt()
    receipt_bytes = codec.encode(value)
    wrong_purpose = signing.sign(identity("goteborg"), Purpose.ENVELOPE, receipt_bytes)
    forged = codec.encode((receipt_bytes, identity_key_id("goteborg"), wrong_purpose))
    refused(forged, ErrorCode.BAD_SIGNATURE)


def test_receipt_naming_another_city_as_its_recipient_is_refused() -> None:
    refused(signed_by_goteborg(receipt(recipient="malmo")), ErrorCode.INVALID_FIELD)


def test_receipt_signed_with_a_revoked_or_expired_key_is_refused() -> None:
    signed = signed_by_goteborg(receipt(received_at=T))
    refused(signed, ErrorCode.REVOKED_KEY, verify_keys=verify_keys("goteborg", revoked_since=T))
    refused(signed, ErrorCode.EXPIRED_KEY, verify_keys=verify_keys("goteborg", valid_until=T - 1))
    assert verify(signed, verify_keys=verify_keys("goteborg", revoked_since=T + 1)).received_at == T


def test_signed_receipt_with_an_unknown_status_is_refused() -> None:
    # Built by hand: the Receipt type itself refuses an unknown status.
    fields = codec.decode(
        codec.encode(receipt()), tuple[bytes, bytes, str, str, int, str], max_bytes=1024, what=""
    )
    bogus = codec.encode((*fields[:5], "delivered"))
    signature = signing.sign(identity("goteborg"), Purpose.RECEIPT, bogus)
    forged = codec.encode((bogus, identity_key_id("goteborg"), signature))
    refused(forged, ErrorCode.INVALID_FIELD)


def test_oversized_receipt_is_refused_before_decoding() -> None:
    refused(b"\xc1" * 2000, ErrorCode.OVERSIZED)
    signed = signed_by_goteborg(receipt())
    refused(signed, ErrorCode.OVERSIZED, limits=Limits(max_receipt_bytes=len(signed) - 1))


def test_receipt_decode_failures_are_decode_errors() -> None:
    with pytest.raises(DecodeError):
        verify(b"\x93\xc4\x00\xc4\x00\xc4\x00")
    with pytest.raises(DecodeError):
        verify(signed_by_goteborg(receipt()) + b"\x00")


def test_unknown_status_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        receipt(status="delivered")
    assert caught.value.code is ErrorCode.INVALID_FIELD


def test_signing_with_a_key_id_that_does_not_name_the_key_is_refused_locally() -> None:
    with pytest.raises(LocalProtocolError):
        sealing.sign_receipt(receipt(), identity("goteborg"), identity_key_id("malmo"))


@pytest.mark.parametrize(
    "changes",
    [{"message_id": bytes(15)}, {"envelope_hash": bytes(31)}, {"received_at": -1}],
    ids=str,
)
def test_signing_a_receipt_with_fields_out_of_bounds_is_refused_locally(
    changes: dict[str, Any],
) -> None:
    with pytest.raises(LocalProtocolError):
        signed_by_goteborg(receipt(**changes))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        verify(data)


def test_receipt_refusals_are_envelope_rejections_or_decode_errors() -> None:
    signed = signed_by_goteborg(receipt())
    with pytest.raises(EnvelopeRejected):
        verify(signed[:-1] + bytes([signed[-1] ^ 1]))
