"""The federation inbox over HTTP as a fuzz target: mutated batches POSTed to an in-process node.

Stockholm and Göteborg are provisioned by the operators' procedure (``node_fixtures.provision``);
Göteborg's real federation app is served over real mutual TLS on 127.0.0.1
(``node_fixtures.federation_listener``), and Stockholm posts with its own pinned certificate
over one kept-alive session. Seeds are batches (``wire.encode_batch``) of envelopes Stockholm
sealed to Göteborg (``node_fixtures.seal``); the mutator works on the batch and, inside its
``bin`` elements, on the envelopes themselves.

The property for each input, checked against the batch decoder run locally on the same bytes:

* a batch that decodes is answered 200 with exactly one result per envelope, each status one of
  ``accepted``, ``duplicate``, ``rejected`` or a protocol error code;
* a batch that does not decode is answered 400 with a JSON error body carrying the decoder's code;
* nothing else: no 500, no other status, no connection dropped, within the per-input budget.

After the last input the node must still accept a fresh envelope (it still serves).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import traceback
from pathlib import Path
from typing import Final

import aiohttp
from fuzz_harness import BATCH, Outcome, batch_inputs, save_input
from fuzz_targets import Target
from node_fixtures import (
    Federation,
    TestClock,
    federation_listener,
    inquiry,
    new_case_id,
    provision,
    seal,
    tls_session,
)

from node.delivery import ACCEPTED, DUPLICATE, REJECTED
from node.federation import wire
from node.service import Node
from protocol.errors import DecodeError, ErrorCode

CITIES: Final = ("stockholm", "goteborg")
STATUSES: Final = frozenset({ACCEPTED, DUPLICATE, REJECTED} | {c.value for c in ErrorCode})


def _seeds(stockholm: Node) -> tuple[bytes, ...]:
    one = seal(stockholm, "goteborg", inquiry(new_case_id()))
    two = [seal(stockholm, "goteborg", inquiry(new_case_id())) for _ in range(2)]
    return (wire.encode_batch([one]), wire.encode_batch(two), wire.encode_batch([]))


def _expected(data: bytes, goteborg: Node) -> tuple[int, int | str]:
    """What the listener must answer: ``(200, envelope count)`` or ``(400, decoder code)``."""
    limits = goteborg.config.limits
    if len(data) > limits.max_request_bytes:
        return 413, "oversized"
    try:
        return 200, len(wire.decode_batch(data, limits))
    except DecodeError as e:
        return 400, e.code.value


async def _post(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, bytes]:
    async with session.post(url, data=data, headers={"Content-Type": wire.MSGPACK}) as response:
        return response.status, await response.read()


def _check(status: int, body: bytes, expected: tuple[int, int | str], goteborg: Node) -> str:
    """Return the refusal label of a conforming answer; raise AssertionError otherwise."""
    want_status, detail = expected
    assert status == want_status, f"answered {status}, expected {want_status} ({detail})"
    if status == 200:
        assert isinstance(detail, int)
        results = wire.decode_results(body, expected=detail, limits=goteborg.config.limits)
        assert all(r.status in STATUSES for r in results), [r.status for r in results]
        return "200:" + ",".join(sorted({r.status for r in results})) if results else "200:empty"
    error = wire.decode_error(body)
    assert error is not None, "a refusal without a JSON error body"
    assert error.code == detail, f"refused as {error.code}, the decoder says {detail}"
    return f"{status}:{error.code}"


async def _campaign(
    fed: Federation, target_inputs: int, seed: int, budget_s: float, crash_dir: Path
) -> Outcome:
    stockholm, goteborg = await fed.open("stockholm"), await fed.open("goteborg")
    target = Target("inbox_http", _seeds(stockholm), run=lambda _: None)
    outcome = Outcome(target.name)
    codes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=max(budget_s * 4, 5.0))
    async with federation_listener(goteborg) as listener, tls_session(stockholm, goteborg) as s:
        url = listener.url + wire.INBOX_PATH
        for batch in range(-(-target_inputs // BATCH)):
            for data in batch_inputs(target, seed, batch):
                began, began_cpu = time.perf_counter(), time.thread_time()
                try:
                    status, body = await asyncio.wait_for(_post(s, url, data), timeout.total)
                    label = _check(status, body, _expected(data, goteborg), goteborg)
                    codes[label] += 1
                    outcome.accepted += label.startswith("200:")
                except (TimeoutError, AssertionError, aiohttp.ClientError) as e:
                    outcome.failures += 1
                    trace = "".join(traceback.format_exception(e))
                    report = f"target: inbox_http\nseed: {seed}\nbatch: {batch}\n\n{trace}"
                    outcome.saved.append(save_input(crash_dir, target.name, data, report))
                took = time.perf_counter() - began
                outcome.slowest_cpu_s = max(outcome.slowest_cpu_s, time.thread_time() - began_cpu)
                outcome.inputs += 1
                if took > outcome.slowest_s:
                    outcome.slowest_s, outcome.slowest_input = took, data
                if took > budget_s:
                    outcome.hangs += 1
        await _still_serving(s, url, stockholm, goteborg, outcome)
    outcome.codes = codes
    outcome.elapsed_s = time.perf_counter() - started
    return outcome


async def _still_serving(
    session: aiohttp.ClientSession, url: str, stockholm: Node, goteborg: Node, outcome: Outcome
) -> None:
    fresh = wire.encode_batch([seal(stockholm, "goteborg", inquiry(new_case_id()))])
    status, body = await _post(session, url, fresh)
    results = wire.decode_results(body, expected=1, limits=goteborg.config.limits)
    if status != 200 or results[0].status != ACCEPTED:
        outcome.failures += 1


async def fuzz_inbox(
    inputs: int, *, seed: int, budget_s: float, crash_dir: Path, root: Path
) -> Outcome:
    """Provision two nodes under ``root`` and POST ``inputs`` mutated batches to Göteborg's inbox.

    Args:
        inputs: how many requests (rounded up to whole batches).
        seed: the harness seed.
        budget_s: the per-request time budget; a request over it is a hang.
        crash_dir: where failing inputs are saved.
        root: an empty directory for the two nodes' keys, databases and configuration.

    Returns:
        The outcome (``codes`` counts each answer as ``status:code``).
    """
    clock = TestClock()
    configs = await provision(root, CITIES, clock=clock)
    fed = Federation(root, clock, configs)
    errors = _ErrorRecords()
    logging.getLogger().addHandler(errors)  # also keeps the refusal warnings off stderr
    try:
        outcome = await _campaign(fed, inputs, seed, budget_s, crash_dir)
    finally:
        logging.getLogger().removeHandler(errors)
        await fed.close()
    if errors.records:  # the node logged an error: an exception it did not expect
        outcome.failures += len(errors.records)
        report = "\n".join(errors.format(r) for r in errors.records)
        outcome.saved.append(save_input(crash_dir, "inbox_http-log", b"", report))
    return outcome


class _ErrorRecords(logging.Handler):
    """Collects the node's log records at ERROR and above (an unexpected failure is logged so)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
