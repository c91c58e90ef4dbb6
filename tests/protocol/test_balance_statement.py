"""The balance statement (tag 20): anonymous counts, per-city lists in one canonical form.

Each rule that relates fields is refused when the statement is built locally
(``LocalProtocolError``) and when it arrives from a peer (``RemoteProtocolError``, same code);
the wire forms are encoded as raw arrays, bypassing the constructor.
"""

from __future__ import annotations

import datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import balance_statements

from protocol import codec
from protocol.agreement import MAX_MEMBERS
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.messages import (
    MAX_BALANCE_CITIES,
    BalanceStatement,
    CityCount,
    decode_message,
    message_tag,
)

AS_OF = datetime.date(2026, 11, 30)


def _statement(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "city": "stockholm",
        "year": 2026,
        "sent": 3,
        "received": 1,
        "as_of": AS_OF,
        "sent_to": (CityCount(city="goteborg", count=2), CityCount(city="malmo", count=1)),
        "received_from": (CityCount(city="malmo", count=1),),
    }
    fields.update(changes)
    return fields


def _raw(fields: dict[str, Any]) -> bytes:
    """The wire array of the fields given, without any validation."""

    def plain(value: Any) -> Any:
        if isinstance(value, CityCount):
            return [value.city, value.count]
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        if isinstance(value, datetime.date):
            return value.isoformat()
        return value

    order = BalanceStatement.__struct_fields__
    return msgspec.msgpack.encode([20, *(plain(fields[name]) for name in order)])


def _refused_both_ways(fields: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError) as local:
        BalanceStatement(**fields)
    assert local.value.code is ErrorCode.INVALID_FIELD
    with pytest.raises(RemoteProtocolError) as remote:
        decode_message(_raw(fields))
    assert remote.value.code is ErrorCode.INVALID_FIELD


def test_statement_carries_counts_and_no_case_or_person() -> None:
    assert BalanceStatement.__struct_fields__ == (
        "city",
        "year",
        "sent",
        "received",
        "as_of",
        "sent_to",
        "received_from",
    )
    assert CityCount.__struct_fields__ == ("city", "count")
    assert message_tag(BalanceStatement) == 20


def test_a_valid_statement_decodes_from_its_wire_form() -> None:
    fields = _statement()
    assert decode_message(_raw(fields)) == BalanceStatement(**fields)


def test_sent_that_is_not_the_sum_of_sent_to_is_refused() -> None:
    _refused_both_ways(_statement(sent=2))


def test_received_that_is_not_the_sum_of_received_from_is_refused() -> None:
    _refused_both_ways(_statement(received=0))


def test_cities_out_of_order_are_refused() -> None:
    listed = (CityCount(city="malmo", count=1), CityCount(city="goteborg", count=2))
    _refused_both_ways(_statement(sent_to=listed))


def test_a_city_listed_twice_is_refused() -> None:
    listed = (CityCount(city="malmo", count=1), CityCount(city="malmo", count=2))
    _refused_both_ways(_statement(sent_to=listed))


def test_a_statement_counting_the_stating_city_is_refused() -> None:
    listed = (CityCount(city="stockholm", count=1),)
    _refused_both_ways(_statement(received_from=listed))


def test_counts_taken_before_the_year_began_are_refused() -> None:
    _refused_both_ways(_statement(as_of=datetime.date(2025, 12, 31)))


def test_counts_taken_in_a_later_year_are_accepted() -> None:
    statement = BalanceStatement(**_statement(year=2025, as_of=datetime.date(2026, 1, 2)))
    assert decode_message(codec.encode(statement)) == statement


def test_a_zero_count_entry_is_refused_on_the_wire() -> None:
    # The constructor of a nested record does not check ranges; the decoder does.
    body = _raw(_statement(received=1, received_from=(CityCount(city="malmo", count=0),)))
    with pytest.raises(RemoteProtocolError) as refused:
        decode_message(body)
    assert refused.value.code is ErrorCode.INVALID_FIELD


def test_more_cities_than_an_agreement_can_have_is_refused_as_oversized() -> None:
    assert MAX_BALANCE_CITIES == MAX_MEMBERS
    names = sorted(f"c{i:04d}" for i in range(MAX_BALANCE_CITIES + 1))
    listed = tuple(CityCount(city=name, count=1) for name in names)
    body = _raw(_statement(received=len(listed), received_from=listed))
    with pytest.raises(RemoteProtocolError) as refused:
        decode_message(body)
    assert refused.value.code is ErrorCode.OVERSIZED


@settings(max_examples=60, deadline=None)
@given(balance_statements(), st.integers(1, 5))
def test_any_statement_with_a_wrong_total_is_refused(
    statement: BalanceStatement, error: int
) -> None:
    fields = {name: getattr(statement, name) for name in statement.__struct_fields__}
    fields["sent"] += error
    with pytest.raises(RemoteProtocolError) as refused:
        decode_message(_raw(fields))
    assert refused.value.code is ErrorCode.INVALID_FIELD
