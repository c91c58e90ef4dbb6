"""The fuzz loop: a plain seeded loop over a target, recording failures, hangs, the slowest input.

Inputs are drawn in batches of :data:`BATCH`; batch ``b`` of target ``t`` under harness seed
``s`` draws from ``random.Random(f"{s}/{t}/{b}")``, so any input is reproduced by re-running its
batch (``run.py --target t --seed s --first-batch b --inputs 256``), and runs are identical from
one machine to the next.

A *failure* is any exception outside the target's ``allowed`` tuple; a *hang* is an input that
took longer than the per-input budget. Both are saved under the crash directory as
``<target>-<sha256 prefix>.bin`` (the input) with a ``.txt`` beside it (what happened, how to
reproduce). An input that never returns at all is caught by :mod:`faulthandler`, re-armed for
each batch: it dumps every thread's traceback and ends the process; the batch being run is kept
in ``<crash dir>/in-progress.txt`` for that case.

Invariant: the harness itself never swallows ``KeyboardInterrupt`` or ``SystemExit``.
"""

from __future__ import annotations

import collections
import faulthandler
import hashlib
import random
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fuzz_mutations import Mutator
from fuzz_targets import Target

BATCH: Final = 256
MAX_SAVED: Final = 20
"""At most this many failing inputs are written per target (all are counted)."""
HARD_TIMEOUT_S: Final = 60.0
"""A batch not finished after this long is a hard hang: tracebacks dumped, process ended."""


@dataclass
class Outcome:
    """What one target's run found.

    Attributes:
        target: the target's name.
        inputs: inputs run.
        failures: inputs that raised an exception outside ``allowed`` (saved up to MAX_SAVED).
        hangs: inputs over the per-input budget.
        slowest_s: the longest single input, seconds of wall time (what the hang budget judges).
        slowest_input: that input (for the report).
        slowest_cpu_s: the most CPU time (this thread's) a single input took: unlike the wall
            time, not inflated when other jobs share the machine.
        elapsed_s: the wall time of the whole run.
        accepted: inputs the target accepted (valid ones: seeds and harmless mutations).
        codes: how many refusals carried each error code (shows how deep inputs reach).
        saved: the files written under the crash directory.
    """

    target: str
    inputs: int = 0
    failures: int = 0
    hangs: int = 0
    slowest_s: float = 0.0
    slowest_input: bytes = b""
    slowest_cpu_s: float = 0.0
    elapsed_s: float = 0.0
    accepted: int = 0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    saved: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No failure and no hang."""
        return self.failures == 0 and self.hangs == 0

    @property
    def rate(self) -> float:
        """Inputs per second."""
        return self.inputs / self.elapsed_s if self.elapsed_s else 0.0


def batch_inputs(target: Target, seed: int, batch: int) -> Iterator[bytes]:
    """The inputs of one batch, reproducibly.

    Args:
        target: the target (its seeds and name).
        seed: the harness seed.
        batch: the batch number.

    Yields:
        :data:`BATCH` inputs.
    """
    mutator = Mutator(random.Random(f"{seed}/{target.name}/{batch}"), target.seeds)
    for _ in range(BATCH):
        yield mutator.next_input()


def save_input(crash_dir: Path, target: str, data: bytes, report: str) -> Path:
    """Write a failing input and its report; return the input's path."""
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"{target}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(report, encoding="utf-8")
    return path


def _record(
    outcome: Outcome, crash_dir: Path, data: bytes, what: str, seed: int, batch: int
) -> None:
    if len(outcome.saved) < MAX_SAVED:
        report = (
            f"target: {outcome.target}\nseed: {seed}\nbatch: {batch}\n"
            f"reproduce: .venv/bin/python tests/fuzz/run.py --target {outcome.target} "
            f"--seed {seed} --first-batch {batch} --inputs {BATCH}\n"
            f"replay: .venv/bin/python tests/fuzz/run.py --replay <this .bin> "
            f"--target {outcome.target}\n\n{what}\n"
        )
        outcome.saved.append(save_input(crash_dir, outcome.target, data, report))


def run_one(target: Target, data: bytes) -> tuple[str | None, BaseException | None]:
    """Run one input: ``(refusal code or None, unexpected exception or None)``."""
    try:
        target.run(data)
    except target.allowed as refusal:
        return str(getattr(refusal, "code", type(refusal).__name__)), None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as unexpected:  # the property under test: nothing else may escape
        return None, unexpected
    return None, None


def fuzz(
    target: Target,
    inputs: int,
    *,
    seed: int,
    budget_s: float,
    crash_dir: Path,
    first_batch: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> Outcome:
    """Run ``inputs`` mutated inputs through ``target``.

    Args:
        target: the decoder and its seeds.
        inputs: how many inputs (rounded up to whole batches).
        seed: the harness seed.
        budget_s: the per-input time budget; an input over it is a hang.
        crash_dir: where failing inputs are saved.
        first_batch: the first batch number (to reproduce a batch).
        clock: seconds, for the per-input timing.

    Returns:
        The outcome.
    """
    outcome = Outcome(target.name)
    started = clock()
    batches = -(-inputs // BATCH)
    progress = crash_dir / "in-progress.txt"
    crash_dir.mkdir(parents=True, exist_ok=True)
    try:
        for batch in range(first_batch, first_batch + batches):
            progress.write_text(f"{target.name} seed={seed} batch={batch}\n", encoding="utf-8")
            faulthandler.dump_traceback_later(HARD_TIMEOUT_S, exit=True)
            for data in batch_inputs(target, seed, batch):
                _run_timed(target, data, outcome, crash_dir, seed, batch, budget_s, clock)
    finally:
        faulthandler.cancel_dump_traceback_later()
        progress.unlink(missing_ok=True)
    outcome.elapsed_s = clock() - started
    return outcome


def _run_timed(
    target: Target,
    data: bytes,
    outcome: Outcome,
    crash_dir: Path,
    seed: int,
    batch: int,
    budget_s: float,
    clock: Callable[[], float],
) -> None:
    began, began_cpu = clock(), time.thread_time()
    code, unexpected = run_one(target, data)
    took, cpu = clock() - began, time.thread_time() - began_cpu
    outcome.inputs += 1
    outcome.slowest_cpu_s = max(outcome.slowest_cpu_s, cpu)
    if took > outcome.slowest_s:
        outcome.slowest_s, outcome.slowest_input = took, data
    if unexpected is not None:
        outcome.failures += 1
        trace = "".join(traceback.format_exception(unexpected))
        _record(outcome, crash_dir, data, f"unhandled exception:\n{trace}", seed, batch)
    elif code is not None:
        outcome.codes[code] += 1
    else:
        outcome.accepted += 1
    if took > budget_s:
        outcome.hangs += 1
        _record(outcome, crash_dir, data, f"hang: {took * 1000:.1f} ms > budget", seed, batch)
