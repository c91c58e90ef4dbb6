"""Messages (§3) for the independent implementation: the field tables as data, by position.

Part of the deliberately separate second implementation described in ``reference.py``: written
from ``docs/protocol.md`` alone, importing nothing from ``protocol``. A decoded message is the
JSON form used by ``tests/vectors/messages.json`` and ``envelopes.json``: ``{"type": name,
field: value, ...}`` with bytes as lower-case hex, dates as strings, nested records as objects,
absent optionals as ``None``.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reference import U32_MAX, Refused, array, bin_, date, pack, seq, str_, uint, unpack

Check = Callable[[Any, str], Any]
"""Wire value and where it is → JSON value (or ``Refused``)."""
Build = Callable[[Any], Any]
"""JSON value → the value to encode."""


def _same(v: Any) -> Any:
    return v


@dataclass(frozen=True)
class Field:
    name: str
    check: Check
    build: Build = _same


# -------------------------------------------------------------------- §3.2 field types

UNIT = re.compile(r"[a-z][a-z0-9-]*")
PHONE = re.compile(r"\+?[0-9][0-9 -]{2,30}")
MEDIA = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,62}/[a-z0-9][a-z0-9!#$&^_.+-]{0,62}")
PNR_SHAPED = re.compile(r"(?<![0-9])([0-9]{2})?[0-9]{6}[-+ ]?[0-9]{4}(?![0-9])")
BIDI = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]}
TEXT_FORBIDDEN = {chr(c) for c in [*range(0x00, 0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0)]}
LINE_FORBIDDEN = {chr(c) for c in [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}


def fixed_bin(n: int) -> Check:
    return lambda v, where: bin_(v, where, n, n).hex()


def payload(n: int) -> Check:
    return lambda v, where: bin_(v, where, 1, n).hex()


def unhex(v: Any) -> Any:
    return bytes.fromhex(v)


def unit_name(v: Any, where: str) -> str:
    s = str_(v, where, 1, 64)
    if not UNIT.fullmatch(s):
        raise Refused("invalid_field", where)
    return s


def text(n: int, *, blank: bool = True, forbidden: frozenset[str] | None = None) -> Check:
    bad = TEXT_FORBIDDEN if forbidden is None else forbidden

    def check(v: Any, where: str) -> str:
        s = str_(v, where, 0, n)
        if any(c in bad for c in s) or (not blank and (not s or s.isspace())):
            raise Refused("invalid_field", where)
        return s

    return check


def line(n: int, *, blank: bool = True) -> Check:
    return text(n, blank=blank, forbidden=frozenset(LINE_FORBIDDEN))


def enum(*values: str) -> Check:
    def check(v: Any, where: str) -> str:
        if str_(v, where) not in values:
            raise Refused("invalid_field", where)
        return str(v)

    return check


def boolean(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise Refused("bad_type", where)
    return v


def integer(lo: int, hi: int) -> Check:
    return lambda v, where: uint(v, where, lo, hi)


def optional(f: Field) -> Field:
    def check(v: Any, where: str) -> Any:
        return None if v is None else f.check(v, where)

    return Field(f.name, check, lambda v: None if v is None else f.build(v))


def array_of(f: Field, lo: int, hi: int) -> Field:
    def check(v: Any, where: str) -> list[Any]:
        return [f.check(x, f"{where}[{i}]") for i, x in enumerate(seq(v, where, lo, hi))]

    return Field(f.name, check, lambda v: [f.build(x) for x in v])


def record(field_name: str, fields: tuple[Field, ...]) -> Field:
    """A nested record: an array of its fields in order, no tag."""

    def check(v: Any, where: str) -> dict[str, Any]:
        a = array(v, len(fields), where)
        return {
            f.name: f.check(x, f"{where}[{i}]")
            for i, (f, x) in enumerate(zip(fields, a, strict=False))
        }

    return Field(field_name, check, lambda v: [fld.build(v[fld.name]) for fld in fields])


def valid_personnummer(s: str) -> bool:
    """§3.6 rules 1-4 on the canonical twelve ASCII digits."""
    if len(s) != 12 or any(c not in "0123456789" for c in s) or s[:2] not in ("18", "19", "20"):
        return False
    year, month, day = int(s[:4]), int(s[4:6]), int(s[6:8])
    if day > 60:
        day -= 60
    elif day == 60:
        return False
    if not 1 <= month <= 12 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return False
    if s[8:11] == "000":
        return False
    total = 0
    for i, c in enumerate(s[2:11]):
        product = int(c) * (2 if i % 2 == 0 else 1)
        total += product // 10 + product % 10
    return int(s[11]) == (10 - total % 10) % 10


def personnummer(v: Any, where: str) -> str:
    s = str_(v, where, 0, 12)
    if not valid_personnummer(s):
        raise Refused("invalid_personnummer", where)
    return s


def filename(v: Any, where: str) -> str:
    s = str(line(255, blank=False)(v, where))
    if "/" in s or "\\" in s or s in (".", "..") or any(c in BIDI for c in s):
        raise Refused("invalid_field", where)
    return s


def pattern(rx: re.Pattern[str], lo: int, hi: int) -> Check:
    def check(v: Any, where: str) -> str:
        s = str_(v, where, lo, hi)
        if not rx.fullmatch(s):
            raise Refused("invalid_field", where)
        return s

    return check


# -------------------------------------------------------------------- §3.3, §3.4, §3.5 tables

THREAT = enum("none", "low", "moderate", "high")
NEED = enum(
    *[
        "housing",
        "treatment",
        "employment",
        "education",
        "economic_support",
        "substance_abuse_care",
    ],
    *["psychiatric_care", "family_support", "debt_counselling", "other"],
)
CASE_ID = Field("case_id", fixed_bin(16), unhex)


def unit(field_name: str) -> Field:
    return Field(field_name, unit_name)


def f(field_name: str, check: Check, build: Build = _same) -> Field:
    return Field(field_name, check, build)


PERSON = record(
    "person",
    (
        f("name", line(200, blank=False)),
        f("personnummer", personnummer),
        f("protected_identity", boolean),
        optional(f("phone", pattern(PHONE, 0, 32))),
        optional(f("address", text(500, blank=False))),
    ),
)
ATTACHMENT_REF = record(
    "documents",
    (
        Field("attachment_id", fixed_bin(16), unhex),
        f("filename", filename),
        f("media_type", pattern(MEDIA, 3, 127)),
        f("size", integer(0, 2**48)),
        Field("digest", fixed_bin(32), unhex),
        Field("key", fixed_bin(32), unhex),
        f("chunk_count", integer(1, U32_MAX)),
    ),
)
QUOTA = record(
    "quota",
    (f("year", integer(2000, 2100)), f("index", integer(1, 100)), f("total", integer(1, 100))),
)

CITY_COUNT = record("city_count", (f("city", unit_name), f("count", integer(1, 65535))))

MESSAGES: dict[int, tuple[str, tuple[Field, ...]]] = {
    1: (
        "inquiry",
        (
            CASE_ID,
            unit("from_unit"),
            optional(unit("to_unit")),
            f("threat_level", THREAT),
            optional(f("police_consulted_on", date)),
            f("consent", boolean),
            array_of(f("needs", NEED), 1, 10),
            f("summary", text(2000)),
            optional(f("wished_start", date)),
        ),
    ),
    2: (
        "reply",
        (
            CASE_ID,
            unit("unit"),
            f("decision", enum("accept", "decline", "need_info")),
            f("reason", text(2000)),
        ),
    ),
    3: (
        "referral",
        (
            CASE_ID,
            unit("from_unit"),
            PERSON,
            array_of(ATTACHMENT_REF, 0, 64),
            array_of(f("interventions", line(500, blank=False)), 1, 32),
            unit("payer"),
            QUOTA,
        ),
    ),
    4: (
        "intake",
        (CASE_ID, unit("unit"), f("arrived_on", date), f("contact", text(1000, blank=False))),
    ),
    5: (
        "progress_report",
        (
            CASE_ID,
            unit("unit"),
            f("period_start", date),
            f("period_end", date),
            f("text", text(20000, blank=False)),
        ),
    ),
    6: (
        "closure",
        (
            CASE_ID,
            unit("unit"),
            f("reason", enum("completed", "aborted", "long_term_housing", "returned")),
            f("closed_on", date),
            f("note", text(2000)),
        ),
    ),
    16: ("key_update", (Field("bundle", payload(196608), unhex),)),
    17: (
        "agreement_proposal",
        (f("version", integer(1, U32_MAX)), Field("document", payload(196608), unhex)),
    ),
    18: (
        "agreement_signature",
        (
            f("version", integer(1, U32_MAX)),
            Field("document_hash", fixed_bin(32), unhex),
            Field("signer_key_id", fixed_bin(16), unhex),
            Field("signature", fixed_bin(64), unhex),
        ),
    ),
    19: ("keylog_checkpoint", (Field("checkpoint", payload(196608), unhex),)),
    20: (
        "balance_statement",
        (
            f("city", unit_name),
            f("year", integer(2000, 2100)),
            f("sent", integer(0, 65535)),
            f("received", integer(0, 65535)),
            f("as_of", date),
            array_of(Field("sent_to", CITY_COUNT.check, CITY_COUNT.build), 0, 512),
            array_of(Field("received_from", CITY_COUNT.check, CITY_COUNT.build), 0, 512),
        ),
    ),
}
TAGS = {type_name: tag for tag, (type_name, _) in MESSAGES.items()}


def _relations(m: dict[str, Any]) -> None:
    """Step 4: the rules that relate values or look inside a string."""
    kind = m["type"]
    if kind == "inquiry" and (
        len(set(m["needs"])) != len(m["needs"]) or PNR_SHAPED.search(m["summary"])
    ):
        raise Refused("invalid_field", "inquiry")
    if kind == "reply" and m["decision"] != "accept" and (not m["reason"] or m["reason"].isspace()):
        raise Refused("invalid_field", "reason")
    if kind == "progress_report" and m["period_end"] < m["period_start"]:
        raise Refused("invalid_field", "period_end")
    if kind == "referral":
        p, q, docs = m["person"], m["quota"], m["documents"]
        if p["protected_identity"] and p["address"] is not None:
            raise Refused("invalid_field", "person address")
        if len({d["attachment_id"] for d in docs}) != len(docs) or q["index"] > q["total"]:
            raise Refused("invalid_field", "referral")
        if any(d["chunk_count"] > max(1, d["size"]) for d in docs):
            raise Refused("invalid_field", "chunk_count")
    if kind == "balance_statement":
        _balance_relations(m)


def _balance_relations(m: dict[str, Any]) -> None:
    """§3.5 BalanceStatement: as_of not before the year; each list ascending, without the
    stating city, adding up to its total."""
    if int(m["as_of"][:4]) < m["year"]:
        raise Refused("invalid_field", "as_of")
    for name, total in (("sent_to", m["sent"]), ("received_from", m["received"])):
        cities = [entry["city"] for entry in m[name]]
        if cities != sorted(set(cities)) or m["city"] in cities:  # ascending, each once
            raise Refused("invalid_field", name)
        if sum(entry["count"] for entry in m[name]) != total:
            raise Refused("invalid_field", name)


# -------------------------------------------------------------------- §3.1 decoding


def read_tag(body: bytes) -> int:
    """§3.1 step 2: the tag from the first bytes, before anything else is parsed."""
    if not body:
        raise Refused("malformed", "empty")
    first, at = body[0], {0xDC: 3, 0xDD: 5}.get(body[0], 1)
    if not (0x90 <= first <= 0x9F or first in (0xDC, 0xDD)):
        raise Refused("bad_type", "body")
    if len(body) < at or (int.from_bytes(body[1:at], "big") if at > 1 else first & 0x0F) == 0:
        raise Refused("malformed", "array header")
    if len(body) <= at:
        raise Refused("malformed", "tag")
    t = body[at]
    if t <= 0x7F:
        tag = t
    elif t == 0xCC:
        if len(body) <= at + 1:
            raise Refused("malformed", "tag")
        tag = body[at + 1]
    elif 0xCD <= t <= 0xD3 or t >= 0xE0:
        raise Refused("unknown_message_type")
    else:
        raise Refused("bad_type", "tag")
    if tag not in MESSAGES:
        raise Refused("unknown_message_type")
    return tag


def decode_message(body: bytes, max_body_bytes: int = 204800) -> dict[str, Any]:
    """§3.1 "Decoding, in this order": size, tag, the type's fields, then relations."""
    if len(body) > max_body_bytes:
        raise Refused("oversized", "body")
    tag = read_tag(body)
    type_name, fields = MESSAGES[tag]
    a = array(unpack(body), 1 + len(fields), type_name)
    m: dict[str, Any] = {"type": type_name}
    for i, (fld, v) in enumerate(zip(fields, a[1:], strict=True), start=1):
        m[fld.name] = fld.check(v, f"$[{i}]")
    _relations(m)
    return m


def encode_message(m: dict[str, Any]) -> bytes:
    """The body of a message given in the JSON form: ``[tag, field...]`` in shortest form."""
    tag = TAGS[m["type"]]
    return pack([tag, *(fld.build(m[fld.name]) for fld in MESSAGES[tag][1])])
