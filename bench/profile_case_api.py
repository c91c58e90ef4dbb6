"""Profile the case API's ``POST /api/v1/cases`` in one process: CPU per request, and where.

A two-city federation (Stockholm, Göteborg) is provisioned by the operator procedure
(:class:`node.localnet.LocalFederation`, subprocesses), a case worker and its token are added
with ``citynode users``; then Stockholm's node is opened **in this process** and its case API
(the same service, user store and audit trail as ``node.serving`` builds) listens on loopback.
An aiohttp client in the same process opens ``--requests`` inquiries (2 KiB summaries, as in
``bench_federation.py``), ``--concurrency`` at a time. Göteborg is not running: the inquiries
stay queued in the outbox (``max_queue_length`` is raised to hold them all).

With ``--serve`` the sending node runs as ``citynode serve`` runs it (``node.serving.serve``: the
case API, its sender loop to Göteborg, which then runs as a process) in this process, and the
requests are offered open loop at ``--rate`` a second as ``bench_federation.py`` offers them:
the CPU per request then includes the delivery of each inquiry and its receipt.

Printed: the process's CPU time per request (every thread: the event loop, the database's
thread, the client's share included, ``time.process_time``), the wall rate, the client-side
latency p50/p99, and with ``--profile`` a cProfile of the event loop's thread (top 30 by
cumulative and by own time, in that thread's CPU seconds). A warm-up of ``--warmup`` requests
runs first and is not counted.

Usage: ``python bench/profile_case_api.py [--requests N] [--concurrency C] [--profile]
[--serve [--rate R]] [--database sqlite|postgresql] [--pg-url URL] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench_federation import api_body, api_headers, inquiry_summary, post_open_loop
from node.config import load_config
from node.localnet import LocalFederation
from node.secrets_source import OperatorSecret
from node.service import Node
from node.serving import case_api, serve

SENDER, RECEIVER = "stockholm", "goteborg"
UNITS = {"stockholm": "jarva", "goteborg": "hisingen"}
PG_URL_ENV = "CITYNODE_TEST_PG_URL"
API = "/api/v1"


def _body(today: datetime.date) -> bytes:
    """The benchmark's inquiry: a 2 KiB encoded body (``bench_federation``)."""
    return api_body(inquiry_summary(today), today)


def _case_api(node: Node) -> web.Application:
    """The case API as ``node.serving`` builds it, with no sender loop to wake."""
    app = web.Application()
    app.add_subapp(API + "/", case_api(node, lambda _peer: None))
    return app


async def _post_many(
    session: aiohttp.ClientSession, url: str, token: str, body: bytes, count: int, concurrency: int
) -> list[float]:
    headers = api_headers(token)
    latencies: list[float] = []
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            sent = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                if r.status != 201:
                    raise RuntimeError(f"the case API answered {r.status}: {await r.text()}")
            latencies.append(time.perf_counter() - sent)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def _timed(
    profile: bool, work: Awaitable[list[float]]
) -> tuple[list[float], float, float, cProfile.Profile | None]:
    """Run ``work``: its latencies, the process's CPU and wall seconds it took, and (with
    ``profile``) a cProfile of the event loop's thread (its own CPU time: the database thread's
    work is not in it)."""
    profiler = cProfile.Profile(time.thread_time) if profile else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profiler is not None:
        profiler.enable()
    latencies = await work
    if profiler is not None:
        profiler.disable()
    return latencies, time.process_time() - cpu0, time.perf_counter() - wall0, profiler


async def _measure_serving(
    federation: LocalFederation, token: str, args: argparse.Namespace
) -> dict[str, Any]:
    """``--serve``: the sending node serves in this process (API, sender loop and all) while
    the receiver runs as a process; the requests are offered open loop at ``--rate``."""
    config = load_config(federation.config_path(SENDER))
    node = await Node.open(config, OperatorSecret(federation.secret.encode()))
    federation.start(RECEIVER)
    federation.wait_healthy(RECEIVER)
    stop = asyncio.Event()
    serving = asyncio.create_task(serve(node, stop))
    try:
        url = f"{federation.api_url(SENDER)}{API}/cases"
        body = _body(datetime.datetime.now(datetime.UTC).date())
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(100):  # until the listener answers
                try:
                    await _post_many(session, url, token, body, 1, 1)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            await post_open_loop(session, url, token, body, args.warmup, args.rate)
            latencies, cpu, wall, profiler = await _timed(
                args.profile, post_open_loop(session, url, token, body, args.requests, args.rate)
            )
    finally:
        stop.set()
        await asyncio.gather(serving, return_exceptions=True)
        await node.close()
    result: dict[str, Any] = {
        "database": args.database,
        "mode": f"serve, open loop at {args.rate:g}/s",
        "requests": args.requests,
        "cpu_ms_per_request": round(1000 * cpu / args.requests, 3),
        "requests_per_s": round(args.requests / wall, 1),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 2),
        "latency_p99_ms": round(1000 * _percentile(latencies, 0.99), 2),
        "load_1m": round(os.getloadavg()[0], 2),
    }
    if profiler is not None:
        result["profile"] = _top(profiler)
    return result


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _measure(
    federation: LocalFederation, token: str, args: argparse.Namespace
) -> dict[str, Any]:
    config = load_config(federation.config_path(SENDER))
    node = await Node.open(config, OperatorSecret(federation.secret.encode()))
    runner = web.AppRunner(_case_api(node), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}{API}/cases"
        body = _body(datetime.datetime.now(datetime.UTC).date())
        connector = aiohttp.TCPConnector(limit=max(64, args.concurrency))
        async with aiohttp.ClientSession(connector=connector) as session:
            await _post_many(session, url, token, body, args.warmup, args.concurrency)
            latencies, cpu, wall, profiler = await _timed(
                args.profile,
                _post_many(session, url, token, body, args.requests, args.concurrency),
            )
    finally:
        await runner.cleanup()
        await node.close()
    result: dict[str, Any] = {
        "database": args.database,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "cpu_ms_per_request": round(1000 * cpu / args.requests, 3),
        "requests_per_s": round(args.requests / wall, 1),
        "latency_p50_ms": round(1000 * statistics.median(latencies), 2),
        "latency_p99_ms": round(1000 * _percentile(latencies, 0.99), 2),
        "load_1m": round(os.getloadavg()[0], 2),
        "profiled": profiler is not None,
    }
    if profiler is not None:
        result["profile"] = _top(profiler)
    return result


def _top(profiler: cProfile.Profile) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(30)
    return out.getvalue()


def run(args: argparse.Namespace) -> dict[str, Any]:
    pg_url = args.pg_url or os.environ.get(PG_URL_ENV)
    if args.database == "postgresql" and not pg_url:
        raise SystemExit(f"--database postgresql needs --pg-url or {PG_URL_ENV}")
    limits = {"max_queue_length": 10 * (args.requests + args.warmup) + 1000}
    root = Path(tempfile.mkdtemp(prefix="citynode-profile-", dir=args.workdir))
    try:
        federation = LocalFederation.create(
            root / "federation",
            (SENDER, RECEIVER),
            database=args.database,
            pg_url=pg_url if args.database == "postgresql" else None,
            limits=limits,
        )
        try:
            federation.citynode(
                SENDER, "users", "add", "bench.caseworker", "--role", "caseworker",
                "--unit", UNITS[SENDER],
            )  # fmt: skip
            token = str(federation.citynode(SENDER, "users", "token", "bench.caseworker")["token"])
            measure = _measure_serving if args.serve else _measure
            return asyncio.run(measure(federation, token, args))
        finally:
            federation.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url")
    parser.add_argument("--workdir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "profile"}))
        return
    for key, value in result.items():
        if key != "profile":
            print(f"{key}: {value}")
    if "profile" in result:
        sys.stdout.write(result["profile"])


if __name__ == "__main__":
    main()
