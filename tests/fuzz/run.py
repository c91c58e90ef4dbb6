"""``make fuzz``: run the fuzz harness over every decoder and the inbox over HTTP; print the table.

Usage (from the repository root)::

    .venv/bin/python tests/fuzz/run.py                      # the long run of make fuzz
    .venv/bin/python tests/fuzz/run.py --inputs 20000 --http-inputs 256
    .venv/bin/python tests/fuzz/run.py --target envelope --seed 7 --first-batch 12 --inputs 256
    .venv/bin/python tests/fuzz/run.py --replay var/fuzz-crashes/envelope-0123.bin --target envelope
    .venv/bin/python tests/fuzz/run.py --atheris envelope -- -max_total_time=60   # if installed

``--inputs`` is shared among the protocol targets by their weight; the HTTP target gets
``--http-inputs`` on top. Prints, per target: inputs, unhandled exceptions, hangs, the slowest
input in ms (wall time, and the most CPU time one input took), inputs/s, how many inputs were
accepted and how many distinct refusal codes were seen.
Exits 1 if any target had a failure or a hang (their inputs are under ``--crash-dir``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

_HERE = Path(__file__).resolve().parent
for _path in (_HERE, _HERE.parent / "protocol", _HERE.parent / "node"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

if TYPE_CHECKING:  # imported in main(): atheris must instrument the protocol before it loads
    from fuzz_harness import Outcome
    from fuzz_targets import Target

ROOT = _HERE.parents[1]
DEFAULT_INPUTS = 1_100_000
DEFAULT_HTTP_INPUTS = 5_120
DEFAULT_SEED = 20261127
DEFAULT_CRASH_DIR = ROOT / "var" / "fuzz-crashes"


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS)
    parser.add_argument("--http-inputs", type=int, default=DEFAULT_HTTP_INPUTS)
    parser.add_argument("--target", action="append", help="only this target (repeatable)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--first-batch", type=int, default=0)
    parser.add_argument("--budget-ms", type=float, default=1000.0, help="per-input hang budget")
    parser.add_argument("--crash-dir", type=Path, default=DEFAULT_CRASH_DIR)
    parser.add_argument("--replay", type=Path, help="run one saved input against --target")
    parser.add_argument("--atheris", metavar="TARGET", help="fuzz TARGET with atheris instead")
    parser.add_argument("rest", nargs="*", help="arguments passed on to atheris (after --)")
    return parser.parse_args(argv)


def shares(targets: tuple[Target, ...], total: int) -> dict[str, int]:
    """Split ``total`` inputs among ``targets`` by weight."""
    weights = sum(t.weight for t in targets)
    return {t.name: max(1, round(total * t.weight / weights)) for t in targets}


def table(outcomes: list[Outcome]) -> str:
    """The report: one row per target and a total row."""
    header = (
        f"{'target':<20}{'inputs':>10}{'unhandled':>11}{'hangs':>7}"
        f"{'slowest ms':>12}{'(cpu ms)':>10}{'inputs/s':>10}{'accepted':>10}{'codes':>7}"
    )
    rows = [header, "-" * len(header)]
    for o in outcomes:
        rows.append(
            f"{o.target:<20}{o.inputs:>10,}{o.failures:>11}{o.hangs:>7}"
            f"{o.slowest_s * 1000:>12.2f}{o.slowest_cpu_s * 1000:>10.2f}"
            f"{o.rate:>10,.0f}{o.accepted:>10,}{len(o.codes):>7}"
        )
    inputs = sum(o.inputs for o in outcomes)
    elapsed = sum(o.elapsed_s for o in outcomes)
    slowest = max(outcomes, key=lambda o: o.slowest_s)
    rows.append("-" * len(header))
    rows.append(
        f"{'total':<20}{inputs:>10,}{sum(o.failures for o in outcomes):>11}"
        f"{sum(o.hangs for o in outcomes):>7}{slowest.slowest_s * 1000:>12.2f}"
        f"{max(o.slowest_cpu_s for o in outcomes) * 1000:>10.2f}"
        f"{inputs / elapsed if elapsed else 0:>10,.0f}"
    )
    rows.append(
        f"slowest input: {slowest.target}, {len(slowest.slowest_input)} bytes, "
        f"starting {slowest.slowest_input[:24].hex()}"
    )
    return "\n".join(rows)


def _replay(path: Path, name: str) -> int:
    from fuzz_harness import run_one  # noqa: PLC0415
    from fuzz_targets import target_named  # noqa: PLC0415

    code, unexpected = run_one(target_named(name), path.read_bytes())
    if unexpected is not None:
        raise unexpected
    print(f"{name}: {'accepted' if code is None else 'refused: ' + code}")
    return 0


def _atheris(name: str, rest: list[str]) -> int:
    try:
        import atheris  # type: ignore[import-not-found]  # noqa: PLC0415
    except ImportError:
        print("atheris is not installed: .venv/bin/pip install atheris", file=sys.stderr)
        return 2
    with atheris.instrument_imports(include=["protocol"]):
        from fuzz_harness import run_one  # noqa: PLC0415
        from fuzz_targets import target_named  # noqa: PLC0415
    target = target_named(name)
    corpus = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    for index, seed in enumerate(target.seeds):
        (corpus / f"seed-{index}").write_bytes(seed)

    def one_input(data: bytes) -> None:
        _, unexpected = run_one(target, data)
        if unexpected is not None:
            raise unexpected

    atheris.Setup([sys.argv[0], *rest, str(corpus)], one_input)
    atheris.Fuzz()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz campaign; return the process exit status."""
    args = _arguments(sys.argv[1:] if argv is None else argv)
    if args.replay:
        return _replay(args.replay, (args.target or ["envelope"])[0])
    if args.atheris:
        return _atheris(args.atheris, args.rest)
    from fuzz_harness import fuzz  # noqa: PLC0415
    from fuzz_targets import protocol_targets  # noqa: PLC0415

    chosen = tuple(t for t in protocol_targets() if not args.target or t.name in args.target)
    budget = args.budget_ms / 1000
    outcomes = []
    started = time.perf_counter()
    for target in chosen:
        count = shares(chosen, args.inputs)[target.name] if len(chosen) > 1 else args.inputs
        outcome = fuzz(
            target,
            count,
            seed=args.seed,
            budget_s=budget,
            crash_dir=args.crash_dir,
            first_batch=args.first_batch,
        )
        print(
            f"  {target.name}: {outcome.inputs:,} inputs, {outcome.failures} failures", flush=True
        )
        outcomes.append(outcome)
    if args.http_inputs and (not args.target or "inbox_http" in args.target):
        from fuzz_inbox_http import fuzz_inbox  # noqa: PLC0415  (imports the node only when needed)

        with tempfile.TemporaryDirectory(prefix="fuzz-inbox-") as root:
            outcome = asyncio.run(
                fuzz_inbox(
                    args.http_inputs,
                    seed=args.seed,
                    budget_s=budget,
                    crash_dir=args.crash_dir,
                    root=Path(root) / "fed",
                )
            )
        print(f"  inbox_http: {outcome.inputs:,} inputs, {outcome.failures} failures", flush=True)
        outcomes.append(outcome)
    print(table(outcomes))
    print(f"wall time: {time.perf_counter() - started:.1f} s, seed {args.seed}")
    failed = [o for o in outcomes if not o.ok]
    for o in failed:
        print(f"FAILED {o.target}: saved {[str(p) for p in o.saved]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
