"""``bench/report.py``: the page keeps what was not measured again and replaces the rest."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_a_partial_run_replaces_its_section_and_keeps_the_others_in_order() -> None:
    report = _report()
    current = report.merge(
        "",
        {
            "protocol": "## P (`bench/bench_protocol.py`)\n\nold protocol\n",
            "rotation": "## R (`bench/bench_rotation.py`)\n\nold rotation\n",
        },
    )
    page = report.merge(current, {"protocol": "## P (`bench/bench_protocol.py`)\n\nnew\n"})
    assert page.startswith("# Performance\n")
    assert "new" in page
    assert "old protocol" not in page
    assert "old rotation" in page
    assert page.index("bench_protocol.py") < page.index("bench_rotation.py")
    assert "bench_federation.py" not in page  # never measured: no section made up


def test_every_benchmark_script_has_the_table_function_the_page_uses() -> None:
    report = _report()
    for _, script, function in report.BENCHMARKS.values():
        assert f"def {function}(" in (ROOT / "bench" / script).read_text(), script
