"""Equivocation: proofs that a city signed two conflicting key-log checkpoints, checking them
offline, the book of checkpoints that catches a conflict, and the proof vectors of
tests/vectors/keylog.json."""

from __future__ import annotations

from typing import Any

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
    vector_log,
)

from protocol import codec, equivocation, keylog
from protocol.equivocation import CheckpointBook, EquivocationProof
from protocol.errors import EquivocationDetected, ErrorCode, KeyLogBroken, LocalProtocolError
from protocol.keylog import EntryKind, KeyLog

# --- Equivocation ---------------------------------------------------------------------------


def test_two_heads_for_one_size_yield_a_proof_that_verifies_offline() -> None:
    honest = checkpoint(make_log(statements(3)))
    other = checkpoint(make_log(statements(3, "shown to malmo")))
    proof = equivocation.detect_equivocation(honest, other)
    assert proof is not None
    assert proof.extension == ()
    received = equivocation.decode_equivocation_proof(codec.encode(proof))
    assert equivocation.verify_equivocation_proof(received, {"stockholm": KEYRING["stockholm"]})


def test_same_head_signed_twice_is_not_equivocation() -> None:
    log = make_log(statements(3))
    assert (
        equivocation.detect_equivocation(checkpoint(log, T0 + 10), checkpoint(log, T0 + 20)) is None
    )


def test_longer_log_that_extends_the_checkpoint_is_not_equivocation() -> None:
    log = make_log(statements(5))
    early = checkpoint(KeyLog(log.entries[:2]))
    late = checkpoint(log)
    assert equivocation.detect_equivocation(early, late, log) is None
    assert equivocation.detect_equivocation(late, early, log) is None


def test_longer_log_that_does_not_extend_the_checkpoint_yields_a_proof() -> None:
    early = checkpoint(make_log(statements(3)))
    fork = make_log([*statements(1), *statements(4, "forked")])
    late = checkpoint(fork)
    assert equivocation.detect_equivocation(early, late) is None  # without entries nothing shows it
    proof = equivocation.detect_equivocation(early, late, fork)
    assert proof is not None
    assert [e.index for e in proof.extension] == [2, 3, 4]
    assert equivocation.verify_equivocation_proof(proof, KEYRING)


def test_detecting_with_a_log_that_is_not_the_checkpoints_is_refused() -> None:
    early = checkpoint(make_log(statements(2)))
    late = checkpoint(make_log(statements(4)))
    with pytest.raises(KeyLogBroken):
        equivocation.detect_equivocation(early, late, make_log(statements(4, "other")))


def test_checkpoints_of_two_cities_are_never_compared() -> None:
    log = make_log(statements(2))
    with pytest.raises(LocalProtocolError):
        equivocation.detect_equivocation(checkpoint(log), checkpoint(log, city="malmo"))


def _proof_pair() -> tuple[EquivocationProof, KeyLog]:
    early = checkpoint(make_log(statements(3)))
    fork = make_log([*statements(1), *statements(4, "forked")])
    proof = equivocation.detect_equivocation(early, checkpoint(fork), fork)
    assert proof is not None
    return proof, fork


def test_proof_with_a_forged_signature_is_refused() -> None:
    honest = checkpoint(make_log(statements(3)))
    other = checkpoint(make_log(statements(3, "other")))
    proof = equivocation.detect_equivocation(honest, other)
    assert proof is not None
    forged = msgspec.structs.replace(
        proof, second=msgspec.structs.replace(proof.second, signature=bytes(64))
    )
    assert not equivocation.verify_equivocation_proof(forged, KEYRING)


def test_proof_fabricated_from_checkpoints_signed_by_another_key_is_refused() -> None:
    # A third city signs a conflicting "stockholm" checkpoint: it does not verify as stockholm's.
    honest = checkpoint(make_log(statements(3)))
    fake = keylog.sign_checkpoint(
        make_log(statements(3, "x")), "stockholm", T0, private_key("malmo")
    )
    proof = EquivocationProof(first=honest.signed, second=fake, extension=())
    assert not equivocation.verify_equivocation_proof(proof, KEYRING)


def test_proof_of_two_identical_checkpoints_is_refused() -> None:
    seen = checkpoint(make_log(statements(3)))
    proof = EquivocationProof(first=seen.signed, second=seen.signed, extension=())
    assert not equivocation.verify_equivocation_proof(proof, KEYRING)


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
        assert not equivocation.verify_equivocation_proof(forged, KEYRING)
    assert equivocation.verify_equivocation_proof(proof, KEYRING)
    assert fork.size == 5


def test_proof_of_equal_sizes_must_not_carry_an_extension() -> None:
    honest = checkpoint(make_log(statements(3)))
    other = checkpoint(make_log(statements(3, "other")))
    proof = equivocation.detect_equivocation(honest, other)
    assert proof is not None
    padded = msgspec.structs.replace(proof, extension=make_log(statements(1)).entries)
    assert not equivocation.verify_equivocation_proof(padded, KEYRING)


def test_proof_with_an_unknown_city_is_refused_without_raising() -> None:
    proof, _ = _proof_pair()
    assert not equivocation.verify_equivocation_proof(proof, {"goteborg": KEYRING["goteborg"]})


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
    assert equivocation.verify_equivocation_proof(_proof_of(caught.value), KEYRING)


def test_book_catches_a_small_checkpoint_that_the_known_log_does_not_pass_through() -> None:
    log = make_log(statements(5))
    book = CheckpointBook().record(checkpoint(log), log)
    other = checkpoint(make_log([*statements(1), *statements(2, "forked")]))
    with pytest.raises(EquivocationDetected) as caught:
        book.record(other)
    assert equivocation.verify_equivocation_proof(_proof_of(caught.value), KEYRING)


def test_book_catches_a_new_log_that_does_not_extend_a_recorded_checkpoint() -> None:
    book = CheckpointBook().record(checkpoint(make_log(statements(3))))
    fork = make_log([*statements(2), *statements(3, "forked")])
    with pytest.raises(EquivocationDetected) as caught:
        book.record(checkpoint(fork), fork)
    assert equivocation.verify_equivocation_proof(_proof_of(caught.value), KEYRING)


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


# --- Known-answer vectors -------------------------------------------------------------------


def _vector_proof(name: str) -> tuple[dict[str, Any], EquivocationProof]:
    vector = VECTORS[name]
    return vector, equivocation.decode_equivocation_proof(bytes.fromhex(vector["proof"]))


def test_vector_equivocation_proofs_verify_and_are_reproduced() -> None:
    keyring = vector_keyring()
    honest = keylog.verify_checkpoint(
        keylog.decode_signed_checkpoint(bytes.fromhex(VECTORS["checkpoint"]["wire"])), keyring
    )
    vector, proof = _vector_proof("equivocation_same_size")
    assert equivocation.verify_equivocation_proof(proof, keyring)
    fork_signed = keylog.decode_signed_checkpoint(bytes.fromhex(vector["fork_checkpoint"]))
    fork = keylog.verify_checkpoint(fork_signed, keyring)
    assert fork.head.hex() == vector["fork_head"]
    again = equivocation.detect_equivocation(honest, fork)
    assert again is not None
    assert codec.encode(again).hex() == vector["proof"]

    vector, proof = _vector_proof("equivocation_extension")
    assert equivocation.verify_equivocation_proof(proof, keyring)
    assert [e.index for e in proof.extension] == [3, 4]
    longer = keylog.verify_checkpoint(
        keylog.decode_signed_checkpoint(bytes.fromhex(vector["longer_checkpoint"])), keyring
    )
    assert longer.checkpoint.timestamp == vector["longer_checkpoint_timestamp"]
    # Reproduce the forked log from the recorded inputs, then the proof from it.
    forked = KeyLog(vector_log().entries[:2])
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
    again = equivocation.detect_equivocation(honest, longer, forked)
    assert again is not None
    assert codec.encode(again).hex() == vector["proof"]
