"""The key-history log: chain, tampering, checkpoints, countersignatures, equivocation, vectors."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import codec, keylog
from protocol.errors import (
    DecodeError,
    EquivocationDetected,
    ErrorCode,
    KeyLogBroken,
    LocalProtocolError,
    RemoteProtocolError,
)
from protocol.keylog import (
    CheckpointBook,
    EntryKind,
    EquivocationProof,
    KeyLog,
    KeyLogEntry,
    SignedCheckpoint,
    VerifiedCheckpoint,
)
from protocol.keys import VerifyKey, identity_key
from protocol.limits import Limits
from protocol.signing import Purpose, sign

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


# --- The chain ------------------------------------------------------------------------------


def test_empty_log_has_the_zero_head() -> None:
    assert KeyLog().head == bytes(32)
    assert keylog.verify_entries([]) == bytes(32)


def test_appended_entries_chain_and_the_head_is_the_last_entry_hash() -> None:
    log = make_log(statements(5))
    assert [e.index for e in log.entries] == [0, 1, 2, 3, 4]
    assert log.entries[0].previous_hash == bytes(32)
    for parent, child in zip(log.entries, log.entries[1:], strict=False):
        assert child.previous_hash == keylog.entry_hash(parent)
    assert log.head == keylog.entry_hash(log.entries[-1])
    assert keylog.verify_entries(log.entries) == log.head


def test_append_leaves_the_old_log_unchanged() -> None:
    log = make_log(statements(2))
    longer = log.append(EntryKind.REVOCATION, b"test statement: revoke", T0 + 600)
    assert log.size == 2
    assert longer.size == 3
    assert longer.head_at(2) == log.head


def test_edited_entry_breaks_the_chain_at_the_next_entry() -> None:
    entries = list(make_log(statements(5)).entries)
    entries[2] = msgspec.structs.replace(entries[2], payload=b"test statement: forged key")
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_entries(entries)
    assert caught.value.index == 3
    assert caught.value.code is ErrorCode.KEYLOG_BROKEN


def test_edited_last_entry_is_caught_against_a_checkpoint() -> None:
    log = make_log(statements(4))
    seen = checkpoint(log)
    entries = list(log.entries)
    entries[3] = msgspec.structs.replace(entries[3], payload=b"test statement: forged key")
    forged = KeyLog.from_entries(entries)  # the chain alone cannot tell
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_consistency(seen, forged)
    assert caught.value.index == 3


def test_deleted_entry_is_named_by_its_position() -> None:
    entries = list(make_log(statements(5)).entries)
    del entries[1]
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_entries(entries)
    assert caught.value.index == 1


def test_inserted_entry_is_caught_at_the_entry_it_displaced() -> None:
    entries = list(make_log(statements(5)).entries)
    intruder = KeyLogEntry(
        index=2,
        previous_hash=keylog.entry_hash(entries[1]),
        timestamp=entries[1].timestamp,
        kind=EntryKind.ENCRYPTION_KEY,
        payload=b"test statement: intruder key",
    )
    entries.insert(2, intruder)
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_entries(entries)
    assert caught.value.index == 3


def test_reordered_entries_are_named_by_the_first_moved_position() -> None:
    entries = list(make_log(statements(5)).entries)
    entries[1], entries[2] = entries[2], entries[1]
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_entries(entries)
    assert caught.value.index == 1


def test_truncated_log_is_caught_against_a_checkpoint() -> None:
    log = make_log(statements(5))
    seen = checkpoint(log)
    truncated = KeyLog.from_entries(log.entries[:3])
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_consistency(seen, truncated)
    assert caught.value.index == 3


def test_entry_dated_before_its_parent_is_refused() -> None:
    entries = list(make_log(statements(3)).entries)
    entries[2] = msgspec.structs.replace(entries[2], timestamp=entries[1].timestamp - 1)
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_entries(entries)
    assert caught.value.index == 2


def test_append_refuses_a_timestamp_that_goes_back() -> None:
    log = make_log(statements(2))
    with pytest.raises(LocalProtocolError) as caught:
        log.append(EntryKind.TLS_PIN, b"test statement: pin", T0 - 1)
    assert caught.value.code is ErrorCode.INVALID_FIELD


def test_append_refuses_an_empty_or_oversized_payload() -> None:
    with pytest.raises(LocalProtocolError):
        KeyLog().append(EntryKind.TLS_PIN, b"", T0)
    with pytest.raises(LocalProtocolError) as caught:
        KeyLog().append(EntryKind.TLS_PIN, b"x" * (keylog.MAX_PAYLOAD_BYTES + 1), T0)
    assert caught.value.code is ErrorCode.OVERSIZED


def test_full_log_refuses_another_entry_and_a_longer_peer_log_is_refused() -> None:
    small = Limits(max_keylog_entries=2)
    log = make_log(statements(2))
    with pytest.raises(LocalProtocolError) as caught:
        log.append(EntryKind.TLS_PIN, b"test statement: pin", T0 + 600, limits=small)
    assert caught.value.code is ErrorCode.OVERSIZED
    with pytest.raises(KeyLogBroken):
        KeyLog.from_entries(make_log(statements(3)).entries, limits=small)


def test_log_round_trips_through_its_wire_form() -> None:
    log = make_log(statements(4))
    decoded = keylog.decode_log(codec.encode(log.entries))
    assert decoded == log
    assert decoded.head == log.head


def test_decoded_log_with_a_broken_chain_is_refused_as_the_peers_fault() -> None:
    entries = list(make_log(statements(3)).entries)
    entries[0] = msgspec.structs.replace(entries[0], payload=b"test statement: forged")
    with pytest.raises(KeyLogBroken) as caught:
        keylog.decode_log(codec.encode(tuple(entries)))
    assert isinstance(caught.value, RemoteProtocolError)
    assert caught.value.index == 1


def test_decoded_entry_of_an_unknown_kind_is_refused() -> None:
    raw = [[0, bytes(32), T0, 99, b"test statement"]]
    with pytest.raises(DecodeError) as caught:
        keylog.decode_log(msgspec.msgpack.encode(raw))
    assert caught.value.code is ErrorCode.INVALID_FIELD


# --- Checkpoints ----------------------------------------------------------------------------


def test_signed_checkpoint_verifies_and_names_the_log() -> None:
    log = make_log(statements(3))
    seen = checkpoint(log, at=T0 + 1000)
    assert (seen.city, seen.size, seen.head, seen.checkpoint.timestamp) == (
        "stockholm",
        3,
        log.head,
        T0 + 1000,
    )
    relayed = keylog.decode_signed_checkpoint(codec.encode(seen.signed))
    assert keylog.verify_checkpoint(relayed, KEYRING) == seen


def test_checkpoint_of_an_empty_log_cannot_be_signed() -> None:
    with pytest.raises(LocalProtocolError):
        keylog.sign_checkpoint(KeyLog(), "stockholm", T0, private_key("stockholm"))


def _refused(signed: SignedCheckpoint, keyring: Any = None) -> ErrorCode:
    with pytest.raises(RemoteProtocolError) as caught:
        keylog.verify_checkpoint(signed, KEYRING if keyring is None else keyring)
    return caught.value.code


def test_checkpoint_with_an_edited_byte_is_refused() -> None:
    signed = checkpoint(make_log(statements(3))).signed
    data = bytearray(signed.checkpoint_bytes)
    data[-1] ^= 1  # the last byte of the timestamp
    forged = msgspec.structs.replace(signed, checkpoint_bytes=bytes(data))
    assert _refused(forged) is ErrorCode.BAD_SIGNATURE


def test_checkpoint_signed_for_another_purpose_is_refused() -> None:
    signed = checkpoint(make_log(statements(3))).signed
    other = sign(private_key("stockholm"), Purpose.KEYLOG_COUNTERSIGN, signed.checkpoint_bytes)
    assert _refused(msgspec.structs.replace(signed, signature=other)) is ErrorCode.BAD_SIGNATURE


def test_checkpoint_signed_by_another_city_is_refused() -> None:
    log = make_log(statements(3))
    signed = keylog.sign_checkpoint(log, "stockholm", T0, private_key("malmo"))
    assert _refused(signed) is ErrorCode.UNKNOWN_KEY


def test_checkpoint_of_an_unknown_city_is_refused() -> None:
    signed = keylog.sign_checkpoint(make_log(statements(1)), "uppsala", T0, private_key("malmo"))
    assert _refused(signed) is ErrorCode.UNKNOWN_SENDER


def test_checkpoint_dated_after_its_key_was_revoked_is_refused() -> None:
    signed = checkpoint(make_log(statements(2)), at=T0 + 500).signed
    revoked = {"stockholm": [trusted("stockholm", revoked_since=T0 + 500)]}
    assert _refused(signed, revoked) is ErrorCode.REVOKED_KEY
    still_good = {"stockholm": [trusted("stockholm", revoked_since=T0 + 501)]}
    assert keylog.verify_checkpoint(signed, still_good).size == 2


def test_checkpoint_dated_outside_its_keys_window_is_refused() -> None:
    signed = checkpoint(make_log(statements(2)), at=T0 + 500).signed
    retired = {"stockholm": [trusted("stockholm", valid_until=T0 + 499)]}
    assert _refused(signed, retired) is ErrorCode.EXPIRED_KEY


def test_checkpoint_claiming_a_log_beyond_the_limit_is_refused() -> None:
    signed = checkpoint(make_log(statements(3))).signed
    with pytest.raises(RemoteProtocolError) as caught:
        keylog.verify_checkpoint(signed, KEYRING, limits=Limits(max_keylog_entries=2))
    assert caught.value.code is ErrorCode.OVERSIZED


def test_malformed_checkpoint_bytes_are_a_decode_error() -> None:
    signed = checkpoint(make_log(statements(1))).signed
    broken = msgspec.structs.replace(signed, checkpoint_bytes=b"\xc1")
    with pytest.raises(DecodeError):
        keylog.verify_checkpoint(broken, KEYRING)


# --- Countersignatures ----------------------------------------------------------------------


def test_countersignature_verifies_and_carries_the_checkpoint() -> None:
    seen = checkpoint(make_log(statements(3)), at=T0 + 1000)
    counter = keylog.countersign(seen, "goteborg", T0 + 1010, private_key("goteborg"))
    relayed = keylog.decode_countersignature(codec.encode(counter))
    verified = keylog.verify_countersignature(relayed, KEYRING)
    assert (verified.witness, verified.seen_at) == ("goteborg", T0 + 1010)
    assert verified.checkpoint == seen


def test_countersignature_with_an_edited_statement_is_refused() -> None:
    seen = checkpoint(make_log(statements(3)), at=T0 + 1000)
    counter = keylog.countersign(seen, "goteborg", T0 + 1010, private_key("goteborg"))
    data = bytearray(counter.statement_bytes)
    data[-1] ^= 1  # inside the checkpoint's signature
    with pytest.raises(RemoteProtocolError) as caught:
        keylog.verify_countersignature(
            msgspec.structs.replace(counter, statement_bytes=bytes(data)), KEYRING
        )
    assert caught.value.code is ErrorCode.BAD_SIGNATURE


def test_countersignature_over_a_forged_checkpoint_is_refused() -> None:
    seen = checkpoint(make_log(statements(3)), at=T0 + 1000)
    forged = msgspec.structs.replace(seen.signed, signature=bytes(64))
    statement = keylog.CountersignStatement("goteborg", T0 + 1010, forged)
    data = codec.encode(statement)
    counter = keylog.Countersignature(
        data,
        trusted("goteborg").key_id,
        sign(private_key("goteborg"), Purpose.KEYLOG_COUNTERSIGN, data),
    )
    with pytest.raises(RemoteProtocolError) as caught:
        keylog.verify_countersignature(counter, KEYRING)
    assert caught.value.code is ErrorCode.BAD_SIGNATURE


def test_a_city_cannot_countersign_its_own_checkpoint() -> None:
    seen = checkpoint(make_log(statements(2)))
    with pytest.raises(LocalProtocolError):
        keylog.countersign(seen, "stockholm", T0, private_key("stockholm"))
    data = codec.encode(keylog.CountersignStatement("stockholm", T0 + 86_400, seen.signed))
    counter = keylog.Countersignature(
        data,
        trusted("stockholm").key_id,
        sign(private_key("stockholm"), Purpose.KEYLOG_COUNTERSIGN, data),
    )
    with pytest.raises(RemoteProtocolError) as caught:
        keylog.verify_countersignature(counter, KEYRING)
    assert caught.value.code is ErrorCode.INVALID_FIELD


def test_countersignature_dated_before_the_checkpoint_beyond_skew_is_refused() -> None:
    seen = checkpoint(make_log(statements(2)), at=T0 + 10_000)
    early = keylog.countersign(seen, "malmo", T0 + 10_000 - 301, private_key("malmo"))
    with pytest.raises(RemoteProtocolError) as caught:
        keylog.verify_countersignature(early, KEYRING)
    assert caught.value.code is ErrorCode.FROM_FUTURE
    within_skew = keylog.countersign(seen, "malmo", T0 + 10_000 - 300, private_key("malmo"))
    assert keylog.verify_countersignature(within_skew, KEYRING).witness == "malmo"


# --- Consistency ----------------------------------------------------------------------------


def test_later_log_is_consistent_with_every_earlier_checkpoint() -> None:
    log = make_log(statements(6))
    for size in range(1, 7):
        earlier = checkpoint(KeyLog(log.entries[:size]))
        keylog.verify_consistency(earlier, log)


def test_forked_log_is_inconsistent_with_the_checkpoint_it_forked_from() -> None:
    original = make_log(statements(4))
    seen = checkpoint(original)
    fork = make_log([*statements(2), *statements(3, "forked")])
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_consistency(seen, fork)
    assert caught.value.index == 3


# --- Equivocation ---------------------------------------------------------------------------


def test_two_heads_for_one_size_yield_a_proof_that_verifies_offline() -> None:
    honest = checkpoint(make_log(statements(3)))
    other = checkpoint(make_log(statements(3, "shown to malmo")))
    proof = keylog.detect_equivocation(honest, other)
    assert proof is not None
    assert proof.extension == ()
    received = keylog.decode_equivocation_proof(codec.encode(proof))
    assert keylog.verify_equivocation_proof(received, {"stockholm": KEYRING["stockholm"]})


def test_same_head_signed_twice_is_not_equivocation() -> None:
    log = make_log(statements(3))
    assert keylog.detect_equivocation(checkpoint(log, T0 + 10), checkpoint(log, T0 + 20)) is None


def test_longer_log_that_extends_the_checkpoint_is_not_equivocation() -> None:
    log = make_log(statements(5))
    early = checkpoint(KeyLog(log.entries[:2]))
    late = checkpoint(log)
    assert keylog.detect_equivocation(early, late, log) is None
    assert keylog.detect_equivocation(late, early, log) is None


def test_longer_log_that_does_not_extend_the_checkpoint_yields_a_proof() -> None:
    early = checkpoint(make_log(statements(3)))
    fork = make_log([*statements(1), *statements(4, "forked")])
    late = checkpoint(fork)
    assert keylog.detect_equivocation(early, late) is None  # without entries nothing shows it
    proof = keylog.detect_equivocation(early, late, fork)
    assert proof is not None
    assert [e.index for e in proof.extension] == [2, 3, 4]
    assert keylog.verify_equivocation_proof(proof, KEYRING)


def test_detecting_with_a_log_that_is_not_the_checkpoints_is_refused() -> None:
    early = checkpoint(make_log(statements(2)))
    late = checkpoint(make_log(statements(4)))
    with pytest.raises(KeyLogBroken):
        keylog.detect_equivocation(early, late, make_log(statements(4, "other")))


def test_checkpoints_of_two_cities_are_never_compared() -> None:
    log = make_log(statements(2))
    with pytest.raises(LocalProtocolError):
        keylog.detect_equivocation(checkpoint(log), checkpoint(log, city="malmo"))


def _proof_pair() -> tuple[EquivocationProof, KeyLog]:
    early = checkpoint(make_log(statements(3)))
    fork = make_log([*statements(1), *statements(4, "forked")])
    proof = keylog.detect_equivocation(early, checkpoint(fork), fork)
    assert proof is not None
    return proof, fork


def test_proof_with_a_forged_signature_is_refused() -> None:
    honest = checkpoint(make_log(statements(3)))
    other = checkpoint(make_log(statements(3, "other")))
    proof = keylog.detect_equivocation(honest, other)
    assert proof is not None
    forged = msgspec.structs.replace(
        proof, second=msgspec.structs.replace(proof.second, signature=bytes(64))
    )
    assert not keylog.verify_equivocation_proof(forged, KEYRING)


def test_proof_fabricated_from_checkpoints_signed_by_another_key_is_refused() -> None:
    # A third city signs a conflicting "stockholm" checkpoint: it does not verify as stockholm's.
    honest = checkpoint(make_log(statements(3)))
    fake = keylog.sign_checkpoint(
        make_log(statements(3, "x")), "stockholm", T0, private_key("malmo")
    )
    proof = EquivocationProof(first=honest.signed, second=fake, extension=())
    assert not keylog.verify_equivocation_proof(proof, KEYRING)


def test_proof_of_two_identical_checkpoints_is_refused() -> None:
    seen = checkpoint(make_log(statements(3)))
    proof = EquivocationProof(first=seen.signed, second=seen.signed, extension=())
    assert not keylog.verify_equivocation_proof(proof, KEYRING)


def test_proof_whose_extension_is_tampered_is_refused() -> None:
    proof, fork = _proof_pair()
    cases = [
        proof.extension[:-1],  # too short
        (proof.extension[0], proof.extension[2], proof.extension[1]),  # reordered
        # an honest-looking first entry: the forger cannot make it link to the signed head
        (make_log(statements(3)).entries[2], *proof.extension[1:]),
    ]
    for extension in cases:
        forged = msgspec.structs.replace(proof, extension=tuple(extension))
        assert not keylog.verify_equivocation_proof(forged, KEYRING)
    assert keylog.verify_equivocation_proof(proof, KEYRING)
    assert fork.size == 5


def test_proof_of_equal_sizes_must_not_carry_an_extension() -> None:
    honest = checkpoint(make_log(statements(3)))
    other = checkpoint(make_log(statements(3, "other")))
    proof = keylog.detect_equivocation(honest, other)
    assert proof is not None
    padded = msgspec.structs.replace(proof, extension=make_log(statements(1)).entries)
    assert not keylog.verify_equivocation_proof(padded, KEYRING)


def test_proof_with_an_unknown_city_is_refused_without_raising() -> None:
    proof, _ = _proof_pair()
    assert not keylog.verify_equivocation_proof(proof, {"goteborg": KEYRING["goteborg"]})


# --- The checkpoint book --------------------------------------------------------------------


def _proof_of(error: EquivocationDetected) -> EquivocationProof:
    assert isinstance(error.proof, EquivocationProof)
    return error.proof


def test_book_catches_a_conflicting_checkpoint_relayed_by_a_witness() -> None:
    honest = checkpoint(make_log(statements(3)), at=T0 + 100)
    book = CheckpointBook().record(honest)
    # Stockholm showed Malmö another log; Malmö countersigned what it saw and relays it to us.
    shown_to_malmo = checkpoint(make_log(statements(3, "for malmo")), at=T0 + 200)
    relayed = keylog.countersign(shown_to_malmo, "malmo", T0 + 210, private_key("malmo"))
    verified = keylog.verify_countersignature(relayed, KEYRING)
    with pytest.raises(EquivocationDetected) as caught:
        book.record(verified.checkpoint)
    assert caught.value.code is ErrorCode.EQUIVOCATION
    assert keylog.verify_equivocation_proof(_proof_of(caught.value), KEYRING)


def test_book_catches_a_small_checkpoint_that_the_known_log_does_not_pass_through() -> None:
    log = make_log(statements(5))
    book = CheckpointBook().record(checkpoint(log), log)
    other = checkpoint(make_log([*statements(1), *statements(2, "forked")]))
    with pytest.raises(EquivocationDetected) as caught:
        book.record(other)
    assert keylog.verify_equivocation_proof(_proof_of(caught.value), KEYRING)


def test_book_catches_a_new_log_that_does_not_extend_a_recorded_checkpoint() -> None:
    book = CheckpointBook().record(checkpoint(make_log(statements(3))))
    fork = make_log([*statements(2), *statements(3, "forked")])
    with pytest.raises(EquivocationDetected) as caught:
        book.record(checkpoint(fork), fork)
    assert keylog.verify_equivocation_proof(_proof_of(caught.value), KEYRING)


def test_book_catches_a_new_log_that_does_not_extend_the_known_log() -> None:
    log = make_log(statements(3))
    book = CheckpointBook().record(checkpoint(log), log)
    fork = make_log([*statements(1), *statements(4, "forked")])
    with pytest.raises(EquivocationDetected):
        book.record(checkpoint(fork), fork)


def test_book_follows_an_honest_city_and_keeps_only_what_the_log_does_not_cover() -> None:
    log = make_log(statements(6))
    book = CheckpointBook()
    for size in (2, 4, 3):
        book = book.record(checkpoint(KeyLog(log.entries[:size])))
    assert [c.size for c in book.cities["stockholm"].pending] == [2, 3, 4]
    assert book.latest("stockholm") is not None
    book = book.record(checkpoint(KeyLog(log.entries[:5])), KeyLog(log.entries[:5]))
    book = book.record(checkpoint(log, T0 + 99_999))
    known = book.cities["stockholm"]
    assert known.log.size == 5
    assert [c.size for c in known.pending] == [6]
    assert book.latest("stockholm") == checkpoint(log, T0 + 99_999)
    assert book.latest("malmo") is None


def test_book_recording_the_same_checkpoint_again_learns_nothing() -> None:
    log = make_log(statements(3))
    seen = checkpoint(log)
    book = CheckpointBook().record(seen, log)
    assert book.record(seen) is book
    assert book.record(checkpoint(log, T0 + 5)) is book


def test_book_refuses_a_log_that_is_not_the_checkpoints() -> None:
    with pytest.raises(KeyLogBroken):
        CheckpointBook().record(checkpoint(make_log(statements(3))), make_log(statements(2)))


def test_book_keeps_cities_apart() -> None:
    book = CheckpointBook().record(checkpoint(make_log(statements(2))))
    book = book.record(checkpoint(make_log(statements(2, "malmo")), city="malmo"))
    assert set(book.cities) == {"stockholm", "malmo"}


# --- Properties -----------------------------------------------------------------------------

changes = st.lists(
    st.tuples(
        st.sampled_from(EntryKind), st.binary(min_size=1, max_size=40), st.integers(0, 10**6)
    ),
    min_size=1,
    max_size=12,
)


def _build(items: list[tuple[EntryKind, bytes, int]]) -> KeyLog:
    log, now = KeyLog(), T0
    for kind, payload, step in items:
        now += step
        log = log.append(kind, payload, now)
    return log


@settings(max_examples=150, deadline=None)
@given(changes)
def test_random_logs_verify_and_round_trip(items: list[tuple[EntryKind, bytes, int]]) -> None:
    log = _build(items)
    assert keylog.verify_entries(log.entries) == log.head
    assert keylog.decode_log(codec.encode(log.entries)) == log
    for size in range(1, log.size + 1):
        keylog.verify_consistency(checkpoint(KeyLog(log.entries[:size])), log)


@settings(max_examples=150, deadline=None)
@given(changes, st.data())
def test_any_edit_of_any_entry_is_caught_against_the_checkpoint(
    items: list[tuple[EntryKind, bytes, int]], data: st.DataObject
) -> None:
    log = _build(items)
    position = data.draw(st.integers(0, log.size - 1))
    field = data.draw(st.sampled_from(["payload", "kind", "timestamp"]))
    original = log.entries[position]
    if field == "payload":
        changed = msgspec.structs.replace(original, payload=original.payload + b"!")
    elif field == "kind":
        others = [k for k in EntryKind if k is not original.kind]
        changed = msgspec.structs.replace(original, kind=data.draw(st.sampled_from(others)))
    else:
        changed = msgspec.structs.replace(original, timestamp=original.timestamp + 1)
    entries = list(log.entries)
    entries[position] = changed
    with pytest.raises(KeyLogBroken) as caught:
        keylog.verify_consistency(checkpoint(log), KeyLog.from_entries(entries))
    assert caught.value.index in (position, position + 1, log.size - 1)
    # A forger who re-links everything after the edit still cannot reach the signed head.
    with pytest.raises(KeyLogBroken):
        keylog.verify_consistency(checkpoint(log), KeyLog(tuple(relinked(entries, position))))


# --- Known-answer vectors -------------------------------------------------------------------


def _vector_keyring() -> dict[str, list[VerifyKey]]:
    return {
        city: [identity_key(bytes.fromhex(key["public_key"]))]
        for city, key in VECTORS["keys"].items()
    }


def _vector_private(city: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["keys"][city]["seed"]))


def _vector_log() -> KeyLog:
    log = KeyLog()
    for entry in VECTORS["entries"]:
        kind = EntryKind[entry["kind"].upper()]
        assert int(kind) == entry["kind_code"]
        log = log.append(kind, bytes.fromhex(entry["payload"]), entry["timestamp"])
    return log


def test_vector_keys_match_their_seeds() -> None:
    for city, key in VECTORS["keys"].items():
        public = _vector_private(city).public_key().public_bytes_raw()
        assert public.hex() == key["public_key"]
        assert identity_key(public).key_id.hex() == key["key_id"]


def test_vector_entry_hashes_follow_the_documented_layout() -> None:
    # Recomputed here from the spec's layout, without the module's hash-input function.
    for entry in VECTORS["entries"]:
        payload = bytes.fromhex(entry["payload"])
        layout = (
            b"citynode/v1 keylog-entry\x00"
            + struct.pack(">Q", entry["index"])
            + bytes.fromhex(entry["previous_hash"])
            + struct.pack(">QBI", entry["timestamp"], entry["kind_code"], len(payload))
            + payload
        )
        assert layout.hex() == entry["hash_input"]
        assert hashlib.sha256(layout).hexdigest() == entry["hash"]


def test_vector_log_is_reproduced_from_its_inputs() -> None:
    log = _vector_log()
    assert [keylog.entry_hash(e).hex() for e in log.entries] == [
        e["hash"] for e in VECTORS["entries"]
    ]
    assert [codec.encode(e).hex() for e in log.entries] == [
        e["encoding"] for e in VECTORS["entries"]
    ]
    assert [log.head_at(n).hex() for n in range(log.size + 1)] == VECTORS["heads"]
    assert codec.encode(log.entries).hex() == VECTORS["log_encoding"]


def test_vector_recorded_log_decodes_and_verifies() -> None:
    log = keylog.decode_log(bytes.fromhex(VECTORS["log_encoding"]))
    assert log.head.hex() == VECTORS["heads"][-1]
    assert [e.previous_hash.hex() for e in log.entries] == [
        e["previous_hash"] for e in VECTORS["entries"]
    ]


def test_vector_checkpoint_is_reproduced_and_verifies() -> None:
    vector = VECTORS["checkpoint"]
    signed = keylog.sign_checkpoint(
        _vector_log(), vector["city"], vector["timestamp"], _vector_private(vector["city"])
    )
    assert signed.checkpoint_bytes.hex() == vector["checkpoint_bytes"]
    assert signed.signer_key_id.hex() == vector["signer_key_id"]
    assert signed.signature.hex() == vector["signature"]
    assert codec.encode(signed).hex() == vector["wire"]
    received = keylog.decode_signed_checkpoint(bytes.fromhex(vector["wire"]))
    verified = keylog.verify_checkpoint(received, _vector_keyring())
    assert (verified.size, verified.head.hex()) == (vector["size"], vector["head"])


def test_vector_countersignature_is_reproduced_and_verifies() -> None:
    vector = VECTORS["countersignature"]
    received = keylog.decode_countersignature(bytes.fromhex(vector["wire"]))
    verified = keylog.verify_countersignature(received, _vector_keyring())
    assert (verified.witness, verified.seen_at) == (vector["witness"], vector["seen_at"])
    again = keylog.countersign(
        verified.checkpoint, vector["witness"], vector["seen_at"], _vector_private("goteborg")
    )
    assert again.statement_bytes.hex() == vector["statement_bytes"]
    assert again.witness_key_id.hex() == vector["witness_key_id"]
    assert again.signature.hex() == vector["signature"]


def _vector_proof(name: str) -> tuple[dict[str, Any], EquivocationProof]:
    vector = VECTORS[name]
    return vector, keylog.decode_equivocation_proof(bytes.fromhex(vector["proof"]))


def test_vector_equivocation_proofs_verify_and_are_reproduced() -> None:
    keyring = _vector_keyring()
    honest = keylog.verify_checkpoint(
        keylog.decode_signed_checkpoint(bytes.fromhex(VECTORS["checkpoint"]["wire"])), keyring
    )
    vector, proof = _vector_proof("equivocation_same_size")
    assert keylog.verify_equivocation_proof(proof, keyring)
    fork_signed = keylog.decode_signed_checkpoint(bytes.fromhex(vector["fork_checkpoint"]))
    fork = keylog.verify_checkpoint(fork_signed, keyring)
    assert fork.head.hex() == vector["fork_head"]
    again = keylog.detect_equivocation(honest, fork)
    assert again is not None
    assert codec.encode(again).hex() == vector["proof"]

    vector, proof = _vector_proof("equivocation_extension")
    assert keylog.verify_equivocation_proof(proof, keyring)
    assert [e.index for e in proof.extension] == [3, 4]
    longer = keylog.verify_checkpoint(
        keylog.decode_signed_checkpoint(bytes.fromhex(vector["longer_checkpoint"])), keyring
    )
    assert longer.checkpoint.timestamp == vector["longer_checkpoint_timestamp"]
    # Reproduce the forked log from the recorded inputs, then the proof from it.
    forked = KeyLog(_vector_log().entries[:2])
    for entry in VECTORS["entries"][2:]:
        payload = bytes.fromhex(entry["payload"])
        if entry["index"] == VECTORS["equivocation_same_size"]["fork_index"]:
            payload = bytes.fromhex(VECTORS["equivocation_same_size"]["fork_payload"])
        forked = forked.append(EntryKind[entry["kind"].upper()], payload, entry["timestamp"])
    extra = vector["extra_entry"]
    forked = forked.append(
        EntryKind[extra["kind"].upper()], bytes.fromhex(extra["payload"]), extra["timestamp"]
    )
    assert forked.head == longer.head
    again = keylog.detect_equivocation(honest, longer, forked)
    assert again is not None
    assert codec.encode(again).hex() == vector["proof"]
