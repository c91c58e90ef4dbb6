"""Attack rows on the case API: tokens of the wrong unit or city, and SQL-looking and path-looking
input in every text field (body fields, query parameters, the case id in the path).

The world is ``LiveFederation`` (``tests/node/api/api_fixtures.py``): Stockholm and Göteborg
serving, each with two units and users of every role. Stockholm's ``anna`` works at
``socialnamnden``, ``jonas`` at ``jarva``; Göteborg's ``greta`` at ``nordost``.

A field with a closed vocabulary (city, unit, enum, date, number, id) refuses the input with its
code and changes nothing: the coordinator's case list is the same before and after, and the
answer never echoes the value. A free-text field stores the input verbatim (it is data, never
part of a query or a path): the row is ``stored_verbatim``, the text is read back unchanged and
the node still lists its cases (no table was dropped).
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Final

from api_fixtures import LiveFederation, inquiry_body
from attack_support import Attack, Observed, attack

SQL: Final = "x'); DROP TABLE cases; --"
PATH: Final = "../../../../etc/passwd"
HOSTILE: Final = {"sql": SQL, "path": PATH}
STORED: Final = "stored_verbatim"

_CASES: dict[int, dict[str, str]] = {}
"""Cases made once per live federation for the rows that only read or are refused."""


async def _case_ids(live: LiveFederation) -> list[str]:
    listed = await live.call("stockholm", "karin", "GET", "/cases", params={"limit": "500"})
    assert listed.status == 200, listed.body
    return sorted(c["id"] for c in listed.body["cases"])


async def _inquiry(live: LiveFederation, *, at_goteborg: bool = False) -> str:
    opened = await live.call("stockholm", "anna", "POST", "/cases", json=inquiry_body())
    assert opened.status == 201, opened.body
    case_id = str(opened.body["id"])
    if at_goteborg:
        await live.wait_state("goteborg", "greta", case_id, "awaiting_reply")
    return case_id


async def _shared(live: LiveFederation) -> str:
    """One case delivered to Göteborg and awaiting its reply, shared by the read-only rows."""
    cases = _CASES.setdefault(id(live), {})
    if "shared" not in cases:
        cases["shared"] = await _inquiry(live, at_goteborg=True)
    return cases["shared"]


async def _refused_unchanged(
    live: LiveFederation, city: str, user: str, method: str, path: str, **request: Any
) -> Observed:
    """Make a request that must be refused; check no case changed and nothing was echoed."""
    before = await _case_ids(live)
    states = {c: (await live.case("stockholm", "anna", c)).body.get("state") for c in before[-3:]}
    answer = await live.call(city, user, method, path, **request)
    assert await _case_ids(live) == before
    for case_id, state in states.items():
        assert (await live.case("stockholm", "anna", case_id)).body.get("state") == state
    assert SQL not in str(answer.body), "the value was echoed"
    assert PATH not in str(answer.body), "the value was echoed"
    return str(answer.code), f"{answer.status} {answer.code}"


def _timeline_has(view: dict[str, Any], key: str, text: str) -> bool:
    return any(entry.get(key) == text for entry in view["timeline"])


# --- tokens ---------------------------------------------------------------------------------------


@attack(
    "api_token_of_another_unit_reads",
    "api",
    "A case worker of Stockholm's `jarva` reads a case of `socialnamnden` by its id.",
    "unknown_case",
    "404 unknown_case",
)
async def api_token_of_another_unit_reads(live: LiveFederation) -> Observed:
    case_id = await _shared(live)
    return await _refused_unchanged(live, "stockholm", "jonas", "GET", f"/cases/{case_id}")


@attack(
    "api_token_of_another_unit_acts",
    "api",
    "A case worker of Stockholm's `jarva` closes a case of `socialnamnden`.",
    "unknown_case",
    "404 unknown_case",
)
async def api_token_of_another_unit_acts(live: LiveFederation) -> Observed:
    case_id = await _shared(live)
    body = {"reason": "aborted"}
    return await _refused_unchanged(
        live, "stockholm", "jonas", "POST", f"/cases/{case_id}/close", json=body
    )


@attack(
    "api_token_of_another_city",
    "api",
    "Göteborg's case worker's valid token presented to Stockholm's API.",
    "unauthenticated",
    "401 unauthenticated",
)
async def api_token_of_another_city(live: LiveFederation) -> Observed:
    token = live.tokens["goteborg"]["greta"]
    return await _refused_unchanged(live, "stockholm", None, "GET", "/cases", token=token)  # type: ignore[arg-type]


# --- hostile text in every field ---------------------------------------------------------------

INQUIRY_FIELDS: Final = (
    "to_city",
    "to_unit",
    "from_unit",
    "threat_level",
    "needs",
    "police_consulted_on",
    "wished_start",
    "summary",
)


def _inquiry_case(field: str, kind: str) -> Attack:
    value = HOSTILE[kind]
    sent = [value] if field == "needs" else value
    stored = field == "summary"

    async def run(live: LiveFederation) -> Observed:
        body = inquiry_body(**{field: sent})
        if not stored:
            return await _refused_unchanged(live, "stockholm", "anna", "POST", "/cases", json=body)
        before = await _case_ids(live)
        opened = await live.call("stockholm", "anna", "POST", "/cases", json=body)
        assert opened.status == 201, opened.body
        view = (await live.case("stockholm", "anna", str(opened.body["id"]))).body
        assert _timeline_has(view, "summary", value)
        assert len(await _case_ids(live)) == len(before) + 1
        return STORED, "201"

    return attack(
        f"api_{kind}_in_inquiry_{field}",
        "api",
        f"Open a case with {'SQL' if kind == 'sql' else 'a path'} as the inquiry's `{field}`.",
        STORED if stored else "invalid_field",
        "201" if stored else "422 invalid_field",
    )(run)


def _reply_case(field: str, kind: str) -> Attack:
    value = HOSTILE[kind]
    stored = field == "reason"

    async def run(live: LiveFederation) -> Observed:
        if not stored:
            case_id = await _shared(live)
            body = {"decision": "decline", "reason": "Ingen plats.", field: value}
            path = f"/cases/{case_id}/reply"
            return await _refused_unchanged(live, "goteborg", "greta", "POST", path, json=body)
        case_id = await _inquiry(live, at_goteborg=True)
        body = {"decision": "decline", "reason": value}
        replied = await live.call("goteborg", "greta", "POST", f"/cases/{case_id}/reply", json=body)
        assert replied.status == 200, replied.body
        view = (await live.case("goteborg", "greta", case_id)).body
        assert _timeline_has(view, "reason", value)
        assert await _case_ids(live)
        return STORED, "200"

    return attack(
        f"api_{kind}_in_reply_{field}",
        "api",
        f"Reply (Göteborg) with {'SQL' if kind == 'sql' else 'a path'} as the reply's `{field}`.",
        STORED if stored else "invalid_field",
        "200" if stored else "422 invalid_field",
    )(run)


def _close_case(field: str, kind: str) -> Attack:
    value = HOSTILE[kind]
    stored = field == "note"

    async def run(live: LiveFederation) -> Observed:
        if not stored:
            path = f"/cases/{await _shared(live)}/close"
            body = {"reason": value}
            return await _refused_unchanged(live, "stockholm", "anna", "POST", path, json=body)
        case_id = await _inquiry(live)
        body = {"reason": "aborted", "note": value}
        closed = await live.call("stockholm", "anna", "POST", f"/cases/{case_id}/close", json=body)
        assert closed.status == 200, closed.body
        view = (await live.case("stockholm", "anna", case_id)).body
        assert _timeline_has(view, "note", value)
        return STORED, "200"

    return attack(
        f"api_{kind}_in_close_{field}",
        "api",
        f"Close a case with {'SQL' if kind == 'sql' else 'a path'} as the closure's `{field}`.",
        STORED if stored else "invalid_field",
        "200" if stored else "422 invalid_field",
    )(run)


def _case_id_case(kind: str) -> Attack:
    async def run(live: LiveFederation) -> Observed:
        quoted = urllib.parse.quote(HOSTILE[kind], safe="")
        return await _refused_unchanged(live, "stockholm", "anna", "GET", f"/cases/{quoted}")

    return attack(
        f"api_{kind}_as_case_id",
        "api",
        f"Read a case whose id in the URL path is {'SQL' if kind == 'sql' else 'a path'} "
        "(percent-encoded).",
        "unknown_case",
        "404 unknown_case",
    )(run)


def _limit_case(kind: str) -> Attack:
    async def run(live: LiveFederation) -> Observed:
        params = {"limit": HOSTILE[kind]}
        return await _refused_unchanged(live, "stockholm", "anna", "GET", "/cases", params=params)

    return attack(
        f"api_{kind}_as_list_limit",
        "api",
        f"List cases with {'SQL' if kind == 'sql' else 'a path'} as the `limit` parameter.",
        "invalid_field",
        "422 invalid_field",
    )(run)


def _purpose_case(kind: str) -> Attack:
    async def run(live: LiveFederation) -> Observed:
        case_id = await _shared(live)
        before = await _case_ids(live)
        read = await live.case("stockholm", "anna", case_id, purpose=HOSTILE[kind])
        assert read.status == 200, read.body
        assert read.body["id"] == case_id
        assert await _case_ids(live) == before
        return "accepted", "200"

    return attack(
        f"api_{kind}_as_read_purpose",
        "api",
        f"Read a case giving {'SQL' if kind == 'sql' else 'a path'} as the `purpose` parameter.",
        "accepted",
        "200",
    )(run)


API_CASES: Final = (
    api_token_of_another_unit_reads,
    api_token_of_another_unit_acts,
    api_token_of_another_city,
    *(_inquiry_case(field, kind) for field in INQUIRY_FIELDS for kind in HOSTILE),
    *(_reply_case(field, kind) for field in ("reason", "unit", "decision") for kind in HOSTILE),
    *(_close_case(field, kind) for field in ("note", "reason") for kind in HOSTILE),
    *(_case_id_case(kind) for kind in HOSTILE),
    *(_limit_case(kind) for kind in HOSTILE),
    *(_purpose_case(kind) for kind in HOSTILE),
)
