"""The fuzz harness in CI: a bounded run of every target, and the harness's own checks.

``make fuzz`` (``run.py``) runs over a million inputs; here each protocol target gets a couple of
thousand and the inbox over HTTP a few hundred, with the same engine and property, in a few
seconds. The harness is tested too: a planted crash and a planted hang must be caught and saved,
inputs must be reproducible from the seed, and the structure-aware mutations must produce what
they claim (checked against the protocol's own decoder codes).
"""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
from fuzz_harness import BATCH, batch_inputs, fuzz, run_one
from fuzz_inbox_http import fuzz_inbox
from fuzz_mutations import Mutator, _Raw, pack, unpack
from fuzz_targets import Target, is_valid_seed, protocol_targets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.messages import decode_message

CI_SEED = 20261127
CI_BUDGET_S = 5.0
"""Generous: a hang detector, not a speed assertion (speed is reported by ``make fuzz``)."""
TARGETS = protocol_targets()


def _inputs_for(target: Target) -> int:
    return 4 * BATCH if target.weight >= 1 else 2 * BATCH


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_every_seed_is_a_valid_input_its_target_accepts(target: Target) -> None:
    assert target.seeds
    assert all(is_valid_seed(target, seed) for seed in target.seeds)


@pytest.mark.parametrize("target", TARGETS, ids=[t.name for t in TARGETS])
def test_bounded_campaign_raises_only_protocol_errors_and_never_hangs(
    target: Target, tmp_path: Path
) -> None:
    outcome = fuzz(
        target, _inputs_for(target), seed=CI_SEED, budget_s=CI_BUDGET_S, crash_dir=tmp_path
    )
    assert (outcome.failures, outcome.hangs) == (0, 0), [p.read_text() for p in outcome.saved]
    assert outcome.inputs == _inputs_for(target)
    # The mutations reach past the first check: several distinct refusal codes are seen.
    assert len(outcome.codes) >= 3, outcome.codes
    assert set(outcome.codes) <= {code.value for code in ErrorCode}


async def test_bounded_inbox_campaign_over_http_answers_every_batch_by_the_rules(
    tmp_path: Path,
) -> None:
    outcome = await fuzz_inbox(
        BATCH, seed=CI_SEED, budget_s=CI_BUDGET_S, crash_dir=tmp_path / "crashes", root=tmp_path
    )
    assert (outcome.failures, outcome.hangs) == (0, 0), [p.read_text() for p in outcome.saved]
    assert outcome.inputs == BATCH
    assert any(label.startswith("400:") for label in outcome.codes), outcome.codes
    assert any(label.startswith("200:") for label in outcome.codes), outcome.codes


# --- the harness catches what it must ------------------------------------------------------------


def _planted(marker: bytes) -> Target:
    """A target that fails with a library error on inputs holding ``marker``, else refuses."""

    def run(data: bytes) -> object:
        if marker in data:
            return {}["not a protocol error"]
        raise RemoteProtocolError(ErrorCode.MALFORMED, "refused")

    return Target("planted", (b"\x92" + marker + b"\xc0",), run)


def test_planted_crash_is_counted_and_its_input_saved_with_how_to_reproduce(
    tmp_path: Path,
) -> None:
    target = _planted(b"\xa3abc")
    outcome = fuzz(target, BATCH, seed=1, budget_s=CI_BUDGET_S, crash_dir=tmp_path)
    assert outcome.failures > 0
    assert not outcome.ok
    saved = outcome.saved[0]
    assert b"\xa3abc" in saved.read_bytes()
    report = saved.with_suffix(".txt").read_text()
    assert "KeyError" in report
    assert "--target planted --seed 1 --first-batch 0" in report


def test_input_over_the_budget_is_a_hang_and_is_saved(tmp_path: Path) -> None:
    target = _planted(b"never")
    ticks = iter(float(n) for n in range(10_000))  # each input "takes" one second
    outcome = fuzz(
        target, BATCH, seed=1, budget_s=0.5, crash_dir=tmp_path, clock=lambda: next(ticks)
    )
    assert outcome.hangs == BATCH
    assert outcome.slowest_s == 1.0
    assert "hang" in outcome.saved[0].with_suffix(".txt").read_text()


def test_local_protocol_error_on_peer_input_is_a_failure() -> None:
    def run(data: bytes) -> object:
        raise LocalProtocolError(ErrorCode.MALFORMED, "our caller's fault, not the peer's")

    code, unexpected = run_one(Target("local", (b"",), run), b"x")
    assert code is None
    assert isinstance(unexpected, LocalProtocolError)


def test_batches_are_reproduced_exactly_from_the_seed() -> None:
    target = TARGETS[0]
    first = list(batch_inputs(target, 5, 3))
    assert first == list(batch_inputs(target, 5, 3))
    assert first != list(batch_inputs(target, 5, 4))
    assert first != list(batch_inputs(target, 6, 3))
    assert len(first) == BATCH


# --- the structure-aware mutations produce what they claim -------------------------------------

MESSAGE_SEED = TARGETS[0].seeds[0]


def _refusal(data: bytes) -> ErrorCode | None:
    """The code ``decode_message`` refuses ``data`` with, or None when it accepts it."""
    try:
        decode_message(data)
    except RemoteProtocolError as e:
        return e.code
    return None


def test_raw_nodes_are_spliced_in_after_packing() -> None:
    tree = unpack(MESSAGE_SEED)
    tree[2] = _Raw(b"\xa2\xc3\x28")  # a two-byte string of invalid UTF-8
    packed = pack(tree)
    assert b"\xa2\xc3\x28" in packed
    assert b"fuzz-raw" not in packed
    assert _refusal(packed) is ErrorCode.INVALID_UTF8


@pytest.mark.parametrize(
    ("operation", "codes"),
    [
        ("_invalid_utf8", {ErrorCode.INVALID_UTF8, ErrorCode.BAD_TYPE}),
        ("_huge_length", {ErrorCode.MALFORMED, ErrorCode.BAD_TYPE}),
        ("_deep_nesting", {ErrorCode.BAD_TYPE, ErrorCode.MALFORMED, ErrorCode.OVERSIZED}),
        ("_wrong_type", {ErrorCode.BAD_TYPE, ErrorCode.INVALID_FIELD, ErrorCode.MALFORMED}),
    ],
)
def test_each_structure_mutation_is_refused_with_its_own_kind_of_code(
    operation: str, codes: set[ErrorCode]
) -> None:
    mutator = Mutator(random.Random(9), (MESSAGE_SEED,))
    seen = set()
    for field in range(2, 5):  # string fields of the inquiry, past the tag and the case id
        tree = unpack(MESSAGE_SEED)
        tree[field] = getattr(mutator, operation)(tree[field])
        seen.add(_refusal(pack(tree)))
    seen.discard(None)  # a wrong type that happens to be valid there (e.g. None for to_unit)
    assert seen, operation
    assert seen <= codes, (operation, seen)


def test_inner_mutation_keeps_the_outer_framing_and_changes_the_inner_bytes() -> None:
    envelope = next(t for t in TARGETS if t.name == "envelope").seeds[0]
    mutator = Mutator(random.Random(3), (envelope,))
    header, sealed = unpack(envelope)
    changed = 0
    for _ in range(50):
        inner = mutator._inner(header, 0)
        outer = pack([inner, sealed])
        decoded = msgspec.msgpack.decode(outer)
        assert len(decoded) == 2
        changed += decoded[0] != header
    assert changed > 40


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), target=st.sampled_from(TARGETS))
def test_any_seeded_mutation_of_any_target_is_accepted_or_refused_by_the_protocol(
    seed: int, target: Target
) -> None:
    data = Mutator(random.Random(seed), target.seeds).next_input()
    code, unexpected = run_one(target, data)
    assert unexpected is None, (target.name, data.hex())
    assert code is None or code in {c.value for c in ErrorCode}
