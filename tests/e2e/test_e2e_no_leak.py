"""The no-leak check: after the demo's year of cases, no plaintext identity anywhere it could leak.

The demo workload (``citynode demo``, real processes, mutual TLS) runs with its recognisable fake
people and document. Then everything the nodes produced is scanned for every name, every
personnummer (all its written forms: 12 and 10 digits, with and without the dash), every phone
number and the document's text: each database file (SQLite with its WAL, or a ``pg_dump`` of each
node's PostgreSQL database — what a backup holds), the data directories (keys, attachments), the
logs, the exchanged packages, each node's ``/metrics`` and ``/healthz`` page, and the error bodies
of requests that carry a person in bad input. The result must be **0 hits**. And each node must
decrypt exactly the identities of its own cases: asked for each case's person, with a purpose,
it gives the right person for the cases it is a party to, and nothing for the others. The checks
that need running nodes use the SQLite run, whose nodes are kept; the files and database dumps
are scanned for both backends.
"""

from __future__ import annotations

import json
import subprocess
from urllib.parse import quote

from demo_support import DemoRun, call

from node.demo import DOCUMENT, PEOPLE, PURPOSE
from node.localnet_support import pg_url_for

# Which demo person each case hands over (node.demo: cases 1, 3 and 4 reach a referral).
PERSON_OF_CASE = {"case 1": 0, "case 3": 1, "case 4": 2}


def _needles() -> dict[str, bytes]:
    """Every form a demo person or the demo document could be written in, lower-cased."""
    needles: dict[str, bytes] = {}
    for i, person in enumerate(PEOPLE):
        number = person["personnummer"]
        digits = number.replace("-", "")
        forms = {"name": person["name"], "pnr12": digits, "pnr10": digits[2:], "pnr": number}
        forms["pnr10-"] = number[2:]
        if "phone" in person:
            forms["phone"] = person["phone"]
        for kind, text in forms.items():
            needles[f"person {i} {kind}"] = text.lower().encode()
        for part in person["name"].split():
            needles[f"person {i} name part {part}"] = part.lower().encode()
    for i, line in enumerate(sorted(set(DOCUMENT.split(b"\n")))):
        if len(line) >= 20:
            needles[f"document line {i}"] = line.lower()
    return needles


NEEDLES = _needles()


def _hits(what: str, data: bytes) -> list[str]:
    lowered = data.lower()
    return [f"{what}: {name}" for name, needle in NEEDLES.items() if needle in lowered]


def test_demo_output_names_no_person(demo_run: DemoRun) -> None:
    doc = demo_run.doc
    assert _hits("demo output", doc["_output"]) == []


def test_no_file_the_nodes_wrote_holds_a_person_or_the_document(demo_run: DemoRun) -> None:
    root = demo_run.root
    scanned = 0
    hits = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            hits += _hits(str(path.relative_to(root)), path.read_bytes())
            scanned += 1
    assert scanned > 20  # keys, databases (+ WAL on SQLite), logs, packages, configs, chart
    assert hits == []


def test_a_backup_of_each_database_holds_no_person(demo_run: DemoRun) -> None:
    root, pg_url = demo_run.root, demo_run.pg_url
    if pg_url is None:  # SQLite: the backup is the database file, scanned with every file
        databases = list(root.glob("data/*/citynode.sqlite3"))
        assert len(databases) == 3
        return
    manifest = json.loads((root / "localnet.json").read_text())
    for node in manifest["nodes"]:
        url = pg_url_for(pg_url, node["database_name"]).replace("postgresql+asyncpg", "postgresql")
        dump = subprocess.run(
            ["pg_dump", "--no-owner", url], capture_output=True, timeout=60, check=True
        ).stdout
        assert b"CREATE TABLE" in dump
        assert _hits(f"pg_dump of {node['city']}", dump) == []


def test_metrics_health_and_error_bodies_name_no_person(
    demo_runs: dict[str, DemoRun],
) -> None:
    doc = demo_runs["sqlite"].doc  # the nodes kept running
    person = PEOPLE[0]
    wrong_number = person["personnummer"][:-1] + str((int(person["personnummer"][-1]) + 1) % 10)
    pages = []
    for city, info in doc["cities"].items():
        api, tokens = info["api"], info["tokens"]
        pages.append((f"{city} /metrics", call(f"{api}/metrics")))
        pages.append((f"{city} /healthz", call(f"{api}/healthz")))
        cases = f"{api}/api/v1/cases"
        some_case = doc["cases"]["case 1"]
        bad_person = {"person": {**person, "personnummer": wrong_number}, "interventions": []}
        worker = next(token for unit, token in tokens.items() if unit != "coordinator")
        pages += [
            (f"{city} bad referral", call(f"{cases}/{some_case}/referral", worker, bad_person)),
            (f"{city} bad inquiry", call(cases, worker, {"summary": person["name"]})),
            (f"{city} no token", call(f"{cases}/{some_case}?purpose={quote(person['name'])}")),
        ]
    assert all(status >= 400 for name, (status, _) in pages if "bad" in name or "token" in name)
    assert all(status == 200 for name, (status, _) in pages if "/metrics" in name)
    hits = [hit for name, (_, body) in pages for hit in _hits(name, body)]
    assert hits == []


def test_each_node_decrypts_exactly_the_identities_of_its_own_cases(
    demo_runs: dict[str, DemoRun],
) -> None:
    doc = demo_runs["sqlite"].doc  # the nodes kept running
    for city, info in doc["cities"].items():
        token = info["tokens"]["coordinator"]
        for label, case_id in doc["cases"].items():
            url = f"{info['api']}/api/v1/cases/{case_id}?purpose={quote(PURPOSE)}"
            status, body = call(url, token)
            party = doc["identities"][label][city] != "not a party"
            assert status == (200 if party else 404), (city, label)
            person = json.loads(body).get("person") if status == 200 else None
            if party and label in PERSON_OF_CASE:
                expected = PEOPLE[PERSON_OF_CASE[label]]
                assert person is not None, (city, label)
                assert person["name"] == expected["name"]
                assert (
                    person["personnummer"]
                    .replace("-", "")
                    .endswith(expected["personnummer"].replace("-", "")[2:])
                )
            else:
                assert person is None, (city, label)
