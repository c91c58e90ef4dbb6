"""The key-history log: the hash chain and its tampering, checkpoints, countersignatures,
consistency with a checkpoint, and the log vectors of tests/vectors/keylog.json."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from keylog_fixtures import (
    KEYRING,
    T0,
    VECTORS,
    checkpoint,
    make_log,
    private_key,
    relinked,
    statements,
    trusted,
    vector_keyring,
    vector_log,
    vector_private,
)

from protocol import codec, keylog
from protocol.errors import (
    DecodeError,
    ErrorCode,
    KeyLogBroken,
    LocalProtocolError,
    RemoteProtocolError,
)
from protocol.keylog import EntryKind, KeyLog, KeyLogEntry, SignedCheckpoint
from protocol.keys import identity_key
from protocol.limits import Limits
from protocol.signing import Purpose, sign

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


def test_vector_keys_match_their_seeds() -> None:
    for city, key in VECTORS["keys"].items():
        public = vector_private(city).public_key().public_bytes_raw()
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
    log = vector_log()
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
        vector_log(), vector["city"], vector["timestamp"], vector_private(vector["city"])
    )
    assert signed.checkpoint_bytes.hex() == vector["checkpoint_bytes"]
    assert signed.signer_key_id.hex() == vector["signer_key_id"]
    assert signed.signature.hex() == vector["signature"]
    assert codec.encode(signed).hex() == vector["wire"]
    received = keylog.decode_signed_checkpoint(bytes.fromhex(vector["wire"]))
    verified = keylog.verify_checkpoint(received, vector_keyring())
    assert (verified.size, verified.head.hex()) == (vector["size"], vector["head"])


def test_vector_countersignature_is_reproduced_and_verifies() -> None:
    vector = VECTORS["countersignature"]
    received = keylog.decode_countersignature(bytes.fromhex(vector["wire"]))
    verified = keylog.verify_countersignature(received, vector_keyring())
    assert (verified.witness, verified.seen_at) == (vector["witness"], vector["seen_at"])
    again = keylog.countersign(
        verified.checkpoint, vector["witness"], vector["seen_at"], vector_private("goteborg")
    )
    assert again.statement_bytes.hex() == vector["statement_bytes"]
    assert again.witness_key_id.hex() == vector["witness_key_id"]
    assert again.signature.hex() == vector["signature"]
