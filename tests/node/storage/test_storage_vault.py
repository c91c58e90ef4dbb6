"""The vault: case keys wrapped per case, fields sealed per case and purpose, one opaque error."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_fixtures import DATA_KEY, case_id

from node.storage.vault import OVERHEAD_BYTES, CaseShredded, CaseVault, VaultError

CASE_A = case_id(1)
CASE_B = case_id(2)


def test_a_wrapped_case_key_unwraps_to_the_same_key() -> None:
    vault = CaseVault(DATA_KEY)
    case_key, wrapped = vault.new_case_key(CASE_A)
    assert len(case_key) == 32
    assert case_key not in wrapped
    assert vault.unwrap(CASE_A, wrapped) == case_key


def test_a_wrapped_key_moved_to_another_case_does_not_unwrap() -> None:
    vault = CaseVault(DATA_KEY)
    _, wrapped = vault.new_case_key(CASE_A)
    with pytest.raises(VaultError) as caught:
        vault.unwrap(CASE_B, wrapped)
    assert caught.value.code == "sealed_data_unreadable"


def test_a_wrapped_key_does_not_unwrap_under_another_nodes_data_key() -> None:
    _, wrapped = CaseVault(DATA_KEY).new_case_key(CASE_A)
    with pytest.raises(VaultError):
        CaseVault(bytes(32)).unwrap(CASE_A, wrapped)


def test_a_shredded_key_says_so() -> None:
    with pytest.raises(CaseShredded) as caught:
        CaseVault(DATA_KEY).unwrap(CASE_A, None)
    assert caught.value.code == "case_shredded"


def test_fresh_case_keys_differ_between_cases() -> None:
    vault = CaseVault(DATA_KEY)
    assert vault.new_case_key(CASE_A)[0] != vault.new_case_key(CASE_A)[0]


def test_a_sealed_field_opens_only_for_its_case_and_purpose() -> None:
    vault = CaseVault(DATA_KEY)
    key_a, _ = vault.new_case_key(CASE_A)
    key_b, _ = vault.new_case_key(CASE_B)
    sealed = vault.seal(key_a, CASE_A, "case.identity", b"Tess Testsson")
    assert vault.open(key_a, CASE_A, "case.identity", sealed) == b"Tess Testsson"
    for key, case, purpose in (
        (key_a, CASE_A, "case.contact"),  # swapped into another field
        (key_a, CASE_B, "case.identity"),  # swapped into another case
        (key_b, CASE_B, "case.identity"),  # another case's key
    ):
        with pytest.raises(VaultError):
            vault.open(key, case, purpose, sealed)


def test_an_altered_sealed_field_does_not_open() -> None:
    vault = CaseVault(DATA_KEY)
    key, _ = vault.new_case_key(CASE_A)
    sealed = bytearray(vault.seal(key, CASE_A, "case.identity", b"Tess Testsson"))
    for position in (0, 1, len(sealed) - 1):
        altered = bytearray(sealed)
        altered[position] ^= 0x01
        with pytest.raises(VaultError):
            vault.open(key, CASE_A, "case.identity", bytes(altered))
    with pytest.raises(VaultError):
        vault.open(key, CASE_A, "case.identity", bytes(sealed[: OVERHEAD_BYTES - 1]))


def test_control_payloads_are_bound_to_their_purpose_and_data_key() -> None:
    vault = CaseVault(DATA_KEY)
    sealed = vault.seal_with_data_key("inbox:malmo:00ff", b"key bundle")
    assert vault.open_with_data_key("inbox:malmo:00ff", sealed) == b"key bundle"
    with pytest.raises(VaultError):
        vault.open_with_data_key("inbox:malmo:00fe", sealed)
    with pytest.raises(VaultError):
        CaseVault(bytes(32)).open_with_data_key("inbox:malmo:00ff", sealed)


def test_a_control_payload_cannot_be_opened_as_a_case_field() -> None:
    vault = CaseVault(DATA_KEY)
    key, _ = vault.new_case_key(CASE_A)
    sealed = vault.seal(key, CASE_A, "inbox:malmo:00ff", b"body")
    with pytest.raises(VaultError):
        vault.open_with_data_key("inbox:malmo:00ff", sealed)


def test_the_rng_is_injected_for_keys_and_nonces() -> None:
    calls: list[int] = []

    def counting(n: int) -> bytes:
        calls.append(n)
        return bytes(n)

    vault = CaseVault(DATA_KEY, random_bytes=counting)
    vault.new_case_key(CASE_A)
    assert calls == [32, 12]


@pytest.mark.parametrize("purpose", ["", "Case.Identity", "case identity", "x" * 201, "é"])
def test_malformed_purposes_are_a_programming_error(purpose: str) -> None:
    vault = CaseVault(DATA_KEY)
    key, _ = vault.new_case_key(CASE_A)
    with pytest.raises(ValueError, match="purpose"):
        vault.seal(key, CASE_A, purpose, b"x")


def test_wrong_lengths_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="data key"):
        CaseVault(b"short")
    with pytest.raises(ValueError, match="case id"):
        CaseVault(DATA_KEY).new_case_key(b"short")


@settings(max_examples=50, deadline=None)
@given(
    plaintext=st.binary(max_size=2048),
    purpose=st.from_regex(r"[a-z][a-z0-9.:]{0,30}", fullmatch=True),
)
def test_any_field_round_trips_and_grows_by_the_fixed_overhead(
    plaintext: bytes, purpose: str
) -> None:
    vault = CaseVault(DATA_KEY)
    key, _ = vault.new_case_key(CASE_A)
    sealed = vault.seal(key, CASE_A, purpose, plaintext)
    assert len(sealed) == len(plaintext) + OVERHEAD_BYTES
    assert vault.open(key, CASE_A, purpose, sealed) == plaintext
