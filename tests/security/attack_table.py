"""The attack table: every case of the security suite in one tuple, and its rendering as
``docs/security-tests.md``.

The order of :data:`CASES` is the order of the document. :func:`render` is the only writer of the
document: ``make_table.py`` calls it with the results of a run, and ``test_security_table.py``
checks that the committed document is what it renders for the case list with every case passing
(the suite itself fails if one does not), so the document cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from attack_support import Attack
from attacks_api import API_CASES
from attacks_edge import AGREEMENT_CASES, ATTACHMENT_CASES, LISTENER_CASES
from attacks_inbox import INBOX_CASES

CASES: Final[tuple[Attack, ...]] = (
    *INBOX_CASES,
    *LISTENER_CASES,
    *AGREEMENT_CASES,
    *ATTACHMENT_CASES,
    *API_CASES,
)
PASS: Final = "pass"
COMMAND: Final = ".venv/bin/python tests/security/make_table.py"

_INTRO: Final = f"""# Security tests: the attack table

Generated from the case list in `tests/security/` by `{COMMAND}`
(do not edit by hand: `tests/security/test_security_table.py` fails when this file differs from
the case list). The suite runs in CI with the other tests: `.venv/bin/pytest tests/security`.

Each row is one attack against real, in-process nodes provisioned by the operators' procedure
(SQLite), their real federation listener over mutual TLS on 127.0.0.1, or their case API. A row
passes only when the attack gets exactly the code in the table, and, where it applies, changed
nothing:

* **inbox** — delivered to Göteborg's real inbox processor: inbox rows, replay records and cases
  are unchanged, and a good envelope right after is accepted. The code is the precise one of the
  receiver's log and `citynode_refusals_total{{code}}` metric; the peer sees `rejected` for the
  cryptographic refusals (so a forger learns nothing), else the code itself. `duplicate` is not
  a refusal: the original receipt is answered again and nothing is stored twice.
* **listener** — against the federation app over TLS: nothing stored, no request reached the app
  for the TLS refusals, and Stockholm's next batch is accepted. A TLS refusal's code is the
  listener's OpenSSL reason; the client only sees the connection closed in the handshake.
* **agreement** — offered to Göteborg's `adopt_agreement` after a version 2 was adopted through
  the operators' procedure: the adopted version is unchanged.
* **attachment** — a stream read by `AttachmentReader`: only the authentic chunks before the
  fault are released, and the reader refuses every later call.
* **api** — the case API of serving nodes: a refused request changes no case and never echoes
  the value; free text is `stored_verbatim` (read back unchanged, every table still there).

The fuzz harness (`docs/fuzzing.md`) covers the same decoders with random and mutated input.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(results: Mapping[str, str]) -> str:
    """Return ``docs/security-tests.md`` for the case list and each case's result.

    Args:
        results: case name → ``pass``, ``FAIL`` or ``not run``.

    Returns:
        The Markdown document.
    """
    rows = [
        "| # | Case | Layer | Attack | Expected code | Peer or client sees | Result |",
        "|---|---|---|---|---|---|---|",
    ]
    for number, case in enumerate(CASES, 1):
        rows.append(
            f"| {number} | `{case.name}` | {case.layer} | {_cell(case.attack)} | "
            f"`{case.code}` | `{case.answer}` | {results.get(case.name, 'not run')} |"
        )
    by_layer: dict[str, int] = {}
    for case in CASES:
        by_layer[case.layer] = by_layer.get(case.layer, 0) + 1
    passed = sum(1 for case in CASES if results.get(case.name) == PASS)
    summary = ", ".join(f"{layer} {count}" for layer, count in by_layer.items())
    counts = f"\n{len(CASES)} cases ({summary}); {passed} pass.\n"
    return _INTRO + counts + "\n" + "\n".join(rows) + "\n"
