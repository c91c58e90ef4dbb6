"""The load test, bounded: ``bench/bench_load.py --quick`` run once, its behaviour asserted.

Three real ``citynode serve`` processes on loopback (SQLite), ``[limits] max_queue_length`` the
size of a 1,000-message federation stream queued at the stopped Stockholm node; a burst of
inquiries at Stockholm while Göteborg is still down (its queue to Göteborg full), then 10 case
workers per node through the case API for 8 s while the stream drains (see the benchmark's
docstring for the workload). Asserted, not timed:

* nothing accepted is lost: every inquiry answered 201 and every reply answered 200 exists at the
  receiving node exactly once, every outbox row is receipted and processed once, no message
  failed for good, every stream case is closed at Göteborg;
* overload is answered 503 with ``Retry-After`` (every request of the burst, and every 503 of the
  load phase), and no other 5xx is ever answered, nor an error logged by a node;
* each node's peak resident memory stays under the bench's bound (250 MiB): its high-water mark
  (``VmHWM``) and its ``VmRSS`` sampled every 0.2 s under the load.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_load.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _bench()


@pytest.fixture(scope="module")
def quick_run(bench: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``--quick`` run of the load benchmark (about 40 s with provisioning)."""
    args = argparse.Namespace(
        quick=True,
        json=True,
        workers=None,
        duration=None,
        stream=None,
        burst=None,
        workdir=str(tmp_path_factory.mktemp("load")),
    )
    result: dict[str, Any] = asyncio.run(bench.run(args))
    return result


def test_load_workers_did_real_work_on_every_path(quick_run: dict[str, Any]) -> None:
    # Guards the other assertions against passing on an idle run.
    statuses = quick_run["api_statuses"]
    assert quick_run["inquiries_accepted"] > 0
    assert quick_run["replies_accepted"] > 0
    assert statuses.get("200", 0) > 0
    assert statuses.get("201", 0) > 0
    assert quick_run["messages"] >= quick_run["stream"] + quick_run["inquiries_accepted"]


def test_load_nothing_accepted_is_lost_or_processed_twice(quick_run: dict[str, Any]) -> None:
    assert quick_run["inquiries_missing"] == 0
    assert quick_run["inquiries_duplicated"] == 0
    assert quick_run["replies_missing"] == 0
    assert quick_run["replies_duplicated"] == 0
    assert quick_run["lost"] == 0
    assert quick_run["duplicated"] == 0
    assert quick_run["failed"] == 0
    assert quick_run["stream_cases_not_closed"] == 0


def test_load_overload_is_answered_503_with_retry_after(quick_run: dict[str, Any]) -> None:
    assert quick_run["overload_503"] == quick_run["burst"] == quick_run["overload_requests"]
    assert quick_run["overload_503_with_retry_after"] == quick_run["burst"]
    assert all(int(value) > 0 for value in quick_run["overload_retry_after_s"])
    assert quick_run["api_503_with_retry_after"] == quick_run["api_503"]
    # A refused request kept nothing: every case a home node holds was answered 201 (or queued
    # as the stream).
    assert quick_run["refused_but_kept"] == 0


def test_load_no_server_error_but_503_and_no_error_logged(quick_run: dict[str, Any]) -> None:
    assert quick_run["server_errors_not_503"] == 0, quick_run["api_errors"]
    assert not [s for s in quick_run["api_statuses"] if "client_error" in s], quick_run[
        "api_errors"
    ]
    assert quick_run["log_errors"] == dict.fromkeys(quick_run["peak_rss_mib"], 0)


def test_load_peak_memory_per_node_stays_bounded(
    bench: ModuleType, quick_run: dict[str, Any]
) -> None:
    # VmHWM: the high-water mark since the process started (the keystore unlock included);
    # sampled VmRSS: from the moment every node was ready until every outbox had drained.
    for key in ("peak_rss_mib", "rss_sampled_peak_mib"):
        peaks = quick_run[key]
        assert set(peaks) == {"stockholm", "goteborg", "malmo"}
        assert all(p is not None and p < bench.RSS_BOUND_MIB for p in peaks.values()), peaks
