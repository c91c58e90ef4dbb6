"""Run the attack table and write ``docs/security-tests.md`` with each case's result.

Usage (from the repository root)::

    .venv/bin/python tests/security/make_table.py

Runs ``tests/security`` with pytest, records each case's outcome by its name, and writes the
document with :func:`attack_table.render`. Exits 1 (after writing) if a case did not pass, so a
stale or failing table is never committed silently; ``test_security_table.py`` then fails too.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent / "node", _HERE.parent / "node" / "api"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import pytest  # noqa: E402
from attack_table import CASES, PASS, render  # noqa: E402

DOC = _HERE.parents[1] / "docs" / "security-tests.md"


class _Results:
    """A pytest plugin recording each attack case's outcome by its parameter id (its name)."""

    def __init__(self) -> None:
        self.by_name: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if "test_attacks_" not in report.nodeid or "[" not in report.nodeid:
            return
        name = report.nodeid.rsplit("[", 1)[1].rstrip("]")
        if report.failed:
            self.by_name[name] = "FAIL"
        elif report.when == "call" and report.passed:
            self.by_name.setdefault(name, PASS)


def main() -> int:
    """Run the suite, write the document; return 0 only if every case passed."""
    results = _Results()
    pytest.main(["-q", "-p", "no:cacheprovider", str(_HERE)], plugins=[results])
    DOC.write_text(render(results.by_name), encoding="utf-8")
    failed = [c.name for c in CASES if results.by_name.get(c.name) != PASS]
    print(
        f"wrote {DOC.relative_to(_HERE.parents[1])}: {len(CASES) - len(failed)}/{len(CASES)} pass"
    )
    for name in failed:
        print(f"not passing: {name}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
