"""The attack table itself: enough named cases, every one with a known code, and the committed
``docs/security-tests.md`` exactly what ``make_table.py`` renders from the case list."""

from __future__ import annotations

from pathlib import Path

from attack_table import CASES, PASS, render

from protocol.errors import ErrorCode

DOC = Path(__file__).parents[2] / "docs" / "security-tests.md"
NODE_CODES = {"unknown_peer", "unknown_case", "unauthenticated", "invalid_field"}
OUTCOMES = {"duplicate", "stored_verbatim", "accepted"}


def test_table_has_at_least_thirty_uniquely_named_cases() -> None:
    names = [case.name for case in CASES]
    assert len(names) >= 30
    assert len(set(names)) == len(names)


def test_every_expected_code_is_a_protocol_node_or_tls_code() -> None:
    known = {code.value for code in ErrorCode} | NODE_CODES | OUTCOMES
    unknown = [c.code for c in CASES if c.code not in known and not c.code.startswith("tls:")]
    assert unknown == []


def test_every_header_field_has_its_own_tampering_case() -> None:
    from protocol.sealing import Header  # noqa: PLC0415

    tampered = {c.name.removeprefix("header_").removesuffix("_tampered") for c in CASES}
    assert set(Header.__struct_fields__) <= tampered


def test_committed_document_is_the_rendering_of_the_case_list() -> None:
    expected = render({case.name: PASS for case in CASES})
    assert DOC.read_text(encoding="utf-8") == expected, (
        "docs/security-tests.md is stale: run .venv/bin/python tests/security/make_table.py"
    )
