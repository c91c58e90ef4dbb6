"""Checkpoint exchange: offers and replies verify as a whole, and every tamper is refused with its
code (protocol.checkpoint_exchange, docs/spec/70-keylog.md §8.6)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import msgspec
import pytest
from keylog_fixtures import (
    KEYRING,
    T0,
    VECTORS,
    checkpoint,
    make_log,
    private_key,
    statements,
    vector_keyring,
)

from protocol import codec, keylog
from protocol.checkpoint_exchange import (
    CheckpointOffer,
    CheckpointReply,
    encode_offer,
    encode_reply,
    verify_offer,
    verify_reply,
)
from protocol.errors import DecodeError, ErrorCode, RemoteProtocolError
from protocol.keylog import Countersignature, SignedCheckpoint

SEEN = T0 + 86_400 + 10


def _witnessed(witness: str, of: str, size: int = 2) -> Countersignature:
    return keylog.countersign(
        checkpoint(make_log(statements(size, of)), city=of), witness, SEEN, private_key(witness)
    )


def _offer(city: str, relayed: tuple[str, ...] = ()) -> tuple[SignedCheckpoint, bytes]:
    signed = checkpoint(make_log(statements(3, city)), city=city).signed
    return signed, encode_offer(signed, [_witnessed(city, other) for other in relayed])


def _refused(code: ErrorCode, call: object) -> None:
    assert callable(call)
    with pytest.raises(RemoteProtocolError) as caught:
        call()
    assert caught.value.code == code


def test_offer_with_the_senders_checkpoint_and_its_view_of_a_third_city_verifies() -> None:
    signed, data = _offer("goteborg", ("stockholm",))
    offer = verify_offer(data, "goteborg", KEYRING)
    assert offer.checkpoint.signed == signed
    assert [w.checkpoint.city for w in offer.witnessed] == ["stockholm"]
    assert [c.city for c in offer.checkpoints()] == ["goteborg", "stockholm"]


def test_offer_from_a_city_other_than_the_checkpoints_is_refused() -> None:
    _, data = _offer("goteborg")
    _refused(ErrorCode.INVALID_FIELD, lambda: verify_offer(data, "malmo", KEYRING))


def test_offer_relaying_a_countersignature_made_by_another_witness_is_refused() -> None:
    signed = checkpoint(make_log(statements(3, "goteborg")), city="goteborg").signed
    data = encode_offer(signed, [_witnessed("malmo", "stockholm")])
    _refused(ErrorCode.INVALID_FIELD, lambda: verify_offer(data, "goteborg", KEYRING))


def test_offer_relaying_two_countersignatures_of_one_city_is_refused() -> None:
    signed = checkpoint(make_log(statements(3, "goteborg")), city="goteborg").signed
    twice = [_witnessed("goteborg", "stockholm", 2), _witnessed("goteborg", "stockholm", 3)]
    data = encode_offer(signed, twice)
    _refused(ErrorCode.INVALID_FIELD, lambda: verify_offer(data, "goteborg", KEYRING))


def test_offer_with_a_tampered_checkpoint_signature_is_refused() -> None:
    signed, _ = _offer("goteborg")
    forged = msgspec.structs.replace(signed, signature=bytes(64))
    data = encode_offer(forged, [])
    _refused(ErrorCode.BAD_SIGNATURE, lambda: verify_offer(data, "goteborg", KEYRING))


def test_offer_with_an_edited_checkpoint_head_is_refused() -> None:
    signed, _ = _offer("goteborg")
    edited = bytearray(signed.checkpoint_bytes)
    edited[-10] ^= 1  # inside the head
    data = encode_offer(msgspec.structs.replace(signed, checkpoint_bytes=bytes(edited)), [])
    _refused(ErrorCode.BAD_SIGNATURE, lambda: verify_offer(data, "goteborg", KEYRING))


def test_offer_with_a_tampered_relayed_countersignature_is_refused() -> None:
    signed, _ = _offer("goteborg")
    relayed = msgspec.structs.replace(_witnessed("goteborg", "stockholm"), signature=bytes(64))
    data = encode_offer(signed, [relayed])
    _refused(ErrorCode.BAD_SIGNATURE, lambda: verify_offer(data, "goteborg", KEYRING))


def test_offer_from_a_city_without_trusted_keys_is_refused() -> None:
    _, data = _offer("goteborg")
    keyring = {city: keys for city, keys in KEYRING.items() if city != "goteborg"}
    _refused(ErrorCode.UNKNOWN_SENDER, lambda: verify_offer(data, "goteborg", keyring))


def test_offer_signed_by_a_revoked_key_is_refused() -> None:
    _, data = _offer("goteborg")
    keyring = dict(KEYRING)
    keyring["goteborg"] = [msgspec.structs.replace(KEYRING["goteborg"][0], revoked_since=T0)]
    _refused(ErrorCode.REVOKED_KEY, lambda: verify_offer(data, "goteborg", keyring))


def test_offer_truncated_or_with_an_unknown_field_is_refused_as_malformed() -> None:
    _, data = _offer("goteborg", ("stockholm",))
    with pytest.raises(DecodeError):
        verify_offer(data[:-5], "goteborg", KEYRING)
    offer = codec.decode(data, CheckpointOffer, max_bytes=len(data), what="offer")
    extra = codec.encode((offer.checkpoint, offer.witnessed, b"extra"))
    with pytest.raises(DecodeError):
        verify_offer(extra, "goteborg", KEYRING)


def _reply_to(offered: SignedCheckpoint, responder: str = "malmo") -> bytes:
    verified = keylog.verify_checkpoint(offered, KEYRING)
    countersignature = keylog.countersign(verified, responder, SEEN, private_key(responder))
    _, own = _offer(responder, ("stockholm",))
    return encode_reply(countersignature, own)


def test_reply_countersigning_our_checkpoint_with_the_responders_view_verifies() -> None:
    offered, _ = _offer("goteborg")
    reply = verify_reply(_reply_to(offered), "malmo", offered, KEYRING)
    assert reply.countersignature.witness == "malmo"
    assert reply.countersignature.checkpoint.signed == offered
    assert reply.offer.sender == "malmo"
    assert [w.checkpoint.city for w in reply.offer.witnessed] == ["stockholm"]


def test_reply_countersigning_another_checkpoint_is_refused() -> None:
    offered, _ = _offer("goteborg")
    other = checkpoint(make_log(statements(4, "goteborg")), city="goteborg").signed
    data = _reply_to(other)
    _refused(ErrorCode.INVALID_FIELD, lambda: verify_reply(data, "malmo", offered, KEYRING))


def test_reply_whose_countersignature_is_by_a_third_city_is_refused() -> None:
    offered, _ = _offer("goteborg")
    verified = keylog.verify_checkpoint(offered, KEYRING)
    by_stockholm = keylog.countersign(verified, "stockholm", SEEN, private_key("stockholm"))
    _, own = _offer("malmo")
    data = encode_reply(by_stockholm, own)
    _refused(ErrorCode.INVALID_FIELD, lambda: verify_reply(data, "malmo", offered, KEYRING))


def test_reply_whose_offer_is_not_the_responders_is_refused() -> None:
    offered, _ = _offer("goteborg")
    verified = keylog.verify_checkpoint(offered, KEYRING)
    countersignature = keylog.countersign(verified, "malmo", SEEN, private_key("malmo"))
    _, stockholm_offer = _offer("stockholm")
    data = encode_reply(countersignature, stockholm_offer)
    _refused(ErrorCode.INVALID_FIELD, lambda: verify_reply(data, "malmo", offered, KEYRING))


def test_reply_with_a_tampered_countersignature_is_refused() -> None:
    offered, _ = _offer("goteborg")
    data = _reply_to(offered)
    reply = codec.decode(data, CheckpointReply, max_bytes=len(data), what="reply")
    bad = msgspec.structs.replace(reply.countersignature, signature=bytes(64))
    tampered = codec.encode(msgspec.structs.replace(reply, countersignature=bad))
    _refused(ErrorCode.BAD_SIGNATURE, lambda: verify_reply(tampered, "malmo", offered, KEYRING))


def test_reply_countersigning_a_checkpoint_dated_after_it_was_seen_is_refused() -> None:
    offered = checkpoint(make_log(statements(3, "goteborg")), SEEN + 3600, "goteborg").signed
    data = _reply_to(offered)
    _refused(ErrorCode.FROM_FUTURE, lambda: verify_reply(data, "malmo", offered, KEYRING))


# --- known answers (tests/vectors/checkpoint_exchange.json) --------------------------------------

_VECTOR_DIR = Path(__file__).parents[1] / "vectors"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_checkpoint_exchange", _VECTOR_DIR / "generate_checkpoint_exchange.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_vector_file_is_exactly_what_the_generator_writes() -> None:
    generator = _generator()
    on_disk = (_VECTOR_DIR / "checkpoint_exchange.json").read_text(encoding="utf-8")
    assert generator.render(generator.build()) == on_disk, "run generate_checkpoint_exchange.py"


def test_vector_offer_and_reply_verify_from_their_recorded_bytes() -> None:
    vectors = json.loads((_VECTOR_DIR / "checkpoint_exchange.json").read_text(encoding="utf-8"))
    keyring = vector_keyring()
    offer = verify_offer(bytes.fromhex(vectors["offer"]["wire"]), "goteborg", keyring)
    assert offer.checkpoint.head.hex() == vectors["goteborg_head"]
    assert [w.checkpoint.head.hex() for w in offer.witnessed] == [VECTORS["checkpoint"]["head"]]
    assert codec.encode(offer.witnessed[0].signed).hex() == VECTORS["countersignature"]["wire"]
    reply = verify_reply(
        bytes.fromhex(vectors["reply"]["wire"]), "stockholm", offer.checkpoint.signed, keyring
    )
    assert reply.countersignature.seen_at == vectors["reply"]["seen_at"]
    assert codec.encode(reply.offer.checkpoint.signed).hex() == VECTORS["checkpoint"]["wire"]
