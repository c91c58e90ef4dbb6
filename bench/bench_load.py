"""Load benchmark: three real nodes, 10 case workers per node and a 10,000-message stream.

Three ``citynode serve`` processes on loopback, provisioned by the operator procedure
(:class:`node.localnet.LocalFederation`, SQLite), ``[limits] max_queue_length`` the stream's size.
Before they start, accounts are added as ``citynode demo`` adds them
(``node.demo_command.add_accounts``) and the stream (an inquiry and its withdrawal per case,
Stockholm Järva → Göteborg Hisingen) is queued at the stopped Stockholm node as the end-to-end
tests queue one (``e2e_support.queue_cases``): Stockholm's queue to Göteborg is then full.

**Overload**: while Göteborg is still down, ``--burst`` concurrent inquiries to Göteborg are sent
at Stockholm: each must get 503 with ``Retry-After`` and leave no case behind. **Load**: Göteborg
starts; ``--workers`` case workers per node run for ``--duration`` s, each in a loop: open an
inquiry to another city (not to the stream's unit), list its unit's cases, reply to its share of
the inquiries awaiting its unit, read a case; a 503 is honoured by waiting its ``Retry-After``.
**Accounting**, once every outbox has drained: each inquiry answered 201 is in the receiver's
inbox exactly once, each reply answered 200 in the home node's, every outbox row of every node
receipted and processed once, none failed, every stream case closed at Göteborg, and no home
case without a 201. **Memory**: ``VmRSS`` of each ``serve`` process sampled every 0.2 s, and its
``VmHWM`` (which includes the keystore's Argon2id unlock at start); both must stay under
:data:`RSS_BOUND_MIB`. Also: API requests/s, p50/p99 latency, answers by status and code.
What the figures mean: ``bench/notes/load.md``.

Prints a Markdown table, or one JSON object with ``--json``; always exits 0 (it reports;
``tests/e2e/test_e2e_load.py`` asserts on the ``--quick`` run).

Usage: ``python bench/bench_load.py [--quick] [--json] [--workers N] [--duration S]
[--stream N] [--burst N] [--workdir DIR]`` (``make load``, ``make bench``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from node.demo_command import add_accounts
from node.localnet import LocalFederation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import e2e_support
from e2e_support import SECRET, queue_cases

CITIES = ("stockholm", "goteborg", "malmo")
STREAM = ("stockholm", "goteborg")  # the stream's sender and receiver (Järva → Hisingen)
# Every unit of config/agreement.toml (all get accounts); the workers use all but the stream's.
ALL_UNITS = {
    "stockholm": ["socialnamnden", "jarva", "farsta"],
    "goteborg": ["nordost", "centrum", "hisingen"],
    "malmo": ["arbetsmarknad-social"],
}
WORKER_UNITS = {
    "stockholm": ("jarva", "farsta", "socialnamnden"),
    "goteborg": ("nordost", "centrum"),
    "malmo": ("arbetsmarknad-social",),
}
RSS_BOUND_MIB = 250
FULL = {"workers": 10, "duration": 60.0, "stream": 10_000, "burst": 50}
QUICK = {"workers": 10, "duration": 8.0, "stream": 1_000, "burst": 20}
DRAIN_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 60.0
LISTED = 100
ZERO = (lambda v: v == 0, "0")
BOUNDED = (lambda v: v is not None and v < RSS_BOUND_MIB, f"< {RSS_BOUND_MIB}")
TARGETS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lost": ZERO,
    "duplicated": ZERO,
    "failed": ZERO,
    "server_errors_not_503": ZERO,
    "overload_without_503_retry_after": ZERO,
    "refused_but_kept": ZERO,
    "peak_rss_mib_max": BOUNDED,
    "rss_sampled_peak_mib_max": BOUNDED,
}


# --- the API client ----------------------------------------------------------------------------


@dataclass
class Stats:
    """Every API answer of the run: status, error code, latency, ``Retry-After``."""

    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    unavailable: int = 0  # 503 answers
    unavailable_with_retry_after: int = 0
    accepted_inquiries: list[tuple[str, str, bytes]] = field(default_factory=list)
    accepted_replies: list[tuple[str, str, bytes]] = field(default_factory=list)

    def record(self, status: int, code: str, latency: float, retry_after: str | None) -> None:
        self.statuses[str(status)] += 1
        self.latencies.append(latency)
        if status >= 400:
            self.errors[f"{status} {code}"] += 1
        if status == 503:
            self.unavailable += 1
            self.unavailable_with_retry_after += retry_after is not None


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    retry_after: str | None


class Client:
    """One node's case API, as one account (a bearer token)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str, stats: Stats):
        self._session = session
        self._base = f"{base}/api/v1"
        self._headers = {"Authorization": f"Bearer {token}"}
        self._stats = stats

    async def call(self, method: str, path: str, body: Any = None) -> Answer:
        started = time.monotonic()
        try:
            async with self._session.request(
                method, self._base + path, json=body, headers=self._headers
            ) as response:
                raw = await response.read()
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as e:
            self._stats.statuses["client_error"] += 1
            self._stats.errors[f"client {type(e).__name__}"] += 1
            return Answer(0, None, None)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        code = doc.get("error", {}).get("code", "") if isinstance(doc, dict) else ""
        self._stats.record(status, code, time.monotonic() - started, retry_after)
        return Answer(status, doc, retry_after)


def inquiry_body(from_unit: str, to_city: str, to_unit: str) -> dict[str, Any]:
    today = datetime.datetime.now(datetime.UTC).date()
    return {
        "to_city": to_city,
        "to_unit": to_unit,
        "from_unit": from_unit,
        "threat_level": "moderate",
        "police_consulted_on": (today - datetime.timedelta(days=7)).isoformat(),
        "consent": True,
        "needs": ["housing", "treatment"],
        "summary": "Behöver boende och stöd i öppenvård (fiktivt lastärende).",
        "wished_start": (today + datetime.timedelta(days=30)).isoformat(),
    }


# --- the workers -------------------------------------------------------------------------------


@dataclass
class Worker:
    """A case worker at ``city`` in ``unit``; answers the cases whose id falls to ``share``."""

    city: str
    unit: str
    share: int
    shares: int
    client: Client
    stats: Stats
    rng: random.Random

    async def run(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            for step in (self._inquire, self._answer):
                answer = await step()
                if answer is not None and answer.status == 503:
                    wait = float(answer.retry_after or 1)
                    await asyncio.sleep(max(0.0, min(wait, deadline - time.monotonic())))
                if time.monotonic() >= deadline:
                    return

    async def _inquire(self) -> Answer:
        to_city = self.rng.choice([c for c in CITIES if c != self.city])
        body = inquiry_body(self.unit, to_city, self.rng.choice(WORKER_UNITS[to_city]))
        answer = await self.client.call("POST", "/cases", body)
        if answer.status == 201:
            case_id = uuid.UUID(answer.body["id"]).bytes
            self.stats.accepted_inquiries.append((self.city, to_city, case_id))
        return answer

    async def _answer(self) -> Answer | None:
        listed = await self.client.call("GET", f"/cases?limit={LISTED}")
        if listed.status != 200:
            return listed
        cases = listed.body["cases"]
        mine = [
            c
            for c in cases
            if c["role"] == "receiving"
            and c["state"] == "awaiting_reply"
            and c.get("unit") == self.unit
            and uuid.UUID(c["id"]).int % self.shares == self.share
        ]
        for case in mine[:3]:
            decision = self.rng.choice(("accept", "decline"))
            body = {"decision": decision}
            if decision == "decline":
                body["reason"] = "Ingen plats just nu (lasttest)."
            answer = await self.client.call("POST", f"/cases/{case['id']}/reply", body)
            if answer.status == 200:
                self.stats.accepted_replies.append(
                    (self.city, case["home_city"], uuid.UUID(case["id"]).bytes)
                )
            elif answer.status == 503:
                return answer
        if cases:
            return await self.client.call("GET", f"/cases/{self.rng.choice(cases)['id']}")
        return None


def workers_of(
    city: str, count: int, client_of: dict[str, Client], stats: Stats, seed: int
) -> list[Worker]:
    units = WORKER_UNITS[city]
    return [
        Worker(
            city=city,
            unit=units[i % len(units)],
            share=i // len(units),
            shares=len(range(i % len(units), count, len(units))),
            client=client_of[units[i % len(units)]],
            stats=stats,
            rng=random.Random(seed + i),
        )
        for i in range(count)
    ]


# --- reading what the nodes stored -------------------------------------------------------------


TablesByCity = dict[str, "e2e_support.Tables"]


async def drained(tables: TablesByCity, timeout_s: float) -> None:
    """Wait until no outbox holds an undelivered message."""
    deadline = time.monotonic() + timeout_s
    query = "SELECT count(*) FROM outbox WHERE state IN ('queued', 'sent')"
    while pending := sum([await t.scalar(query) for t in tables.values()]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pending} messages undelivered after {timeout_s:g} s")
        await asyncio.sleep(0.2)


def pairs() -> list[tuple[str, str]]:
    return [(s, r) for s in CITIES for r in CITIES if r != s]


async def delivery(tables: TablesByCity, inboxes: dict[tuple[str, str], Counter[bytes]]) -> dict:
    """Every outbox row against its receiver's inbox, each direction; fills ``inboxes``."""
    lost = duplicated = failed = messages = 0
    for sender, recipient in pairs():
        sent = await tables[sender].outbox(recipient)
        received = await tables[recipient].inbox(sender)
        inboxes[recipient, sender] = Counter(row.case_id for row in received)
        ids = [row.message_id for row in received]
        messages += len(sent)
        failed += sum(1 for row in sent if row.state == "failed")
        duplicated += len(ids) - len(set(ids))
        lost += len({row.message_id for row in sent} - set(ids))
    return {"messages": messages, "lost": lost, "duplicated": duplicated, "failed": failed}


def accepted_once(
    inboxes: dict[tuple[str, str], Counter[bytes]], accepted: list[tuple[str, str, bytes]]
) -> tuple[int, int]:
    """Of the accepted (sender, recipient, case): missing at the recipient, and extra copies."""
    counts = [inboxes[recipient, sender][case_id] for sender, recipient, case_id in accepted]
    return sum(n == 0 for n in counts), sum(max(0, n - 1) for n in counts)


async def stream_outcome(tables: TablesByCity, case_ids: list[bytes], started: float) -> dict:
    """Whether every stream case ended closed at the receiver, and the stream's rate."""
    sender, recipient = STREAM
    held = await tables[recipient].cases(sender)
    not_closed = sum(held.get(c) != ("receiving", "closed") for c in case_ids)
    # The stream was queued first: it is the first rows of the sender's queue to the receiver.
    last_ms = await tables[sender].scalar(
        "SELECT CAST(1000 * max(receipted_at) AS INTEGER) FROM (SELECT receipted_at FROM outbox "
        "WHERE peer = :p ORDER BY seq LIMIT :n) AS stream",
        p=recipient,
        n=2 * len(case_ids),
    )
    elapsed = last_ms / 1000 - started
    return {
        "stream_cases_not_closed": not_closed,
        "stream_drain_s": round(elapsed, 1),
        "stream_msgs_per_s": round(2 * len(case_ids) / elapsed, 1) if elapsed > 0 else None,
    }


async def refused_but_kept(tables: TablesByCity, stats: Stats, stream: set[bytes]) -> int:
    """Cases a home node holds that no 201 answered: a refused request that kept something."""
    opened = {case_id for _, _, case_id in stats.accepted_inquiries} | stream
    kept = 0
    for city, peer in pairs():
        held = await tables[city].cases(peer)
        kept += sum(1 for c, (role, _) in held.items() if role == "home" and c not in opened)
    return kept


def status_mib(federation: LocalFederation, city: str, key: str) -> float | None:
    """A memory figure (``VmHWM``, ``VmRSS``) of the node's ``serve`` process, in MiB."""
    pid = federation.pid(city)
    with contextlib.suppress(OSError, TypeError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


@dataclass
class RssSampler:
    """The largest ``VmRSS`` of each node seen while it runs, sampled every ``every_s``."""

    federation: LocalFederation
    every_s: float = 0.2
    peaks: dict[str, float] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> dict[str, float | None]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return {city: self.peaks.get(city) for city in CITIES}

    async def _sample(self) -> None:
        while True:
            for city in CITIES:
                rss = status_mib(self.federation, city, "VmRSS")
                if rss is not None:
                    self.peaks[city] = max(rss, self.peaks.get(city, 0.0))
            await asyncio.sleep(self.every_s)


# --- the run -----------------------------------------------------------------------------------


async def provision(root: Path, stream: int) -> tuple[LocalFederation, dict, list[bytes]]:
    """The federation, its accounts' tokens by city and unit, and the queued stream's cases."""
    federation = LocalFederation.create(
        root, CITIES, secret=SECRET, limits={"max_queue_length": stream}
    )
    try:
        # One node at a time: Alembic's migration context is process-global.
        tokens = {city: await add_accounts(federation, city, ALL_UNITS[city]) for city in CITIES}
        case_ids = await queue_cases(federation, *STREAM, stream // 2)
    except BaseException:
        federation.destroy()
        raise
    return federation, tokens, case_ids


async def overload(clients: dict[str, dict[str, Client]], burst: int, stats: Stats) -> dict:
    """``burst`` concurrent inquiries at a sender whose queue to the (stopped) receiver is full."""
    sender, recipient = STREAM
    client = clients[sender]["jarva"]
    body = inquiry_body("jarva", recipient, WORKER_UNITS[recipient][0])
    answers = await asyncio.gather(*(client.call("POST", "/cases", body) for _ in range(burst)))
    for answer in answers:
        if answer.status == 201:
            stats.accepted_inquiries.append((sender, recipient, uuid.UUID(answer.body["id"]).bytes))
    return {
        "overload_requests": burst,
        "overload_503": sum(a.status == 503 for a in answers),
        "overload_503_with_retry_after": sum(
            a.status == 503 and bool(a.retry_after) for a in answers
        ),
        "overload_retry_after_s": sorted({a.retry_after for a in answers if a.retry_after}),
    }


def latency_ms(latencies: list[float], q: int) -> float | None:
    if len(latencies) < 2:
        return None
    return round(1000 * statistics.quantiles(latencies, n=100)[q - 1], 1)


def make_clients(
    session: aiohttp.ClientSession, federation: LocalFederation, tokens: dict, stats: Stats
) -> dict[str, dict[str, Client]]:
    """A client per city and account (unit or ``coordinator``), recording into ``stats``."""
    return {
        city: {
            unit: Client(session, federation.api_url(city), token, stats)
            for unit, token in tokens[city].items()
        }
        for city in CITIES
    }


async def drive(
    federation: LocalFederation,
    tokens: dict,
    sizes: dict[str, Any],
    result: dict[str, Any],
    sampler: RssSampler,
) -> tuple[Stats, float]:
    """Overload, then the workers; return the workers' stats and when the receiver started."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        burst_stats, stats = Stats(), Stats()
        clients = make_clients(session, federation, tokens, burst_stats)
        for city in CITIES:
            if city != STREAM[1]:
                federation.start(city)
        for city in CITIES:
            if city != STREAM[1]:
                await asyncio.to_thread(federation.wait_healthy, city)
        result.update(await overload(clients, sizes["burst"], burst_stats))
        started_wall = time.time()
        await asyncio.to_thread(federation.start_all)
        result["rss_ready_mib"] = {c: status_mib(federation, c, "VmRSS") for c in CITIES}
        sampler.start()  # after the start-up (the keystore unlock's 64 MiB is in VmHWM only)
        clients = make_clients(session, federation, tokens, stats)
        workers = [
            w
            for i, city in enumerate(CITIES)
            for w in workers_of(city, sizes["workers"], clients[city], stats, 1000 * i)
        ]
        started = time.monotonic()
        await asyncio.gather(*(w.run(started + sizes["duration"]) for w in workers))
        result["duration_s"] = round(time.monotonic() - started, 1)
        stats.accepted_inquiries += burst_stats.accepted_inquiries
        stats.statuses.update({f"burst {k}": v for k, v in burst_stats.statuses.items()})
    return stats, started_wall


def summarise(stats: Stats, result: dict[str, Any]) -> None:
    total = sum(n for s, n in stats.statuses.items() if not s.startswith("burst"))
    result["api_requests"] = total
    result["api_requests_per_s"] = round(total / result["duration_s"], 1)
    result["api_latency_ms_p50"] = latency_ms(stats.latencies, 50)
    result["api_latency_ms_p99"] = latency_ms(stats.latencies, 99)
    result["api_statuses"] = dict(sorted(stats.statuses.items()))
    result["api_errors"] = dict(sorted(stats.errors.items()))
    result["api_503"] = stats.unavailable
    result["api_503_with_retry_after"] = stats.unavailable_with_retry_after
    result["server_errors_not_503"] = sum(
        n
        for s, n in stats.statuses.items()
        if s[-3:].isdigit() and s[-3:] >= "500" and s[-3:] != "503"
    )
    result["inquiries_accepted"] = len(stats.accepted_inquiries)
    result["replies_accepted"] = len(stats.accepted_replies)


async def account(
    federation: LocalFederation, stats: Stats, case_ids: list[bytes], started_wall: float
) -> dict[str, Any]:
    """What the nodes stored, once every outbox has drained (see the module docstring)."""
    tables = {city: await e2e_support.Tables.open(federation, city) for city in CITIES}
    inboxes: dict[tuple[str, str], Counter[bytes]] = {}
    try:
        await drained(tables, DRAIN_TIMEOUT_S)
        found: dict[str, Any] = await delivery(tables, inboxes)
        found.update(await stream_outcome(tables, case_ids, started_wall))
        found["refused_but_kept"] = await refused_but_kept(tables, stats, set(case_ids))
    finally:
        for table in tables.values():
            await table.close()
    missing, extra = accepted_once(inboxes, stats.accepted_inquiries)
    found["inquiries_missing"], found["inquiries_duplicated"] = missing, extra
    missing, extra = accepted_once(inboxes, stats.accepted_replies)
    found["replies_missing"], found["replies_duplicated"] = missing, extra
    found["lost"] += found["inquiries_missing"] + found["replies_missing"]
    found["duplicated"] += found["inquiries_duplicated"] + found["replies_duplicated"]
    return found


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = {k: getattr(args, k) or v for k, v in (QUICK if args.quick else FULL).items()}
    root = Path(tempfile.mkdtemp(prefix="citynode-bench-load-", dir=args.workdir))
    result: dict[str, Any] = {"quick": args.quick, **sizes, "rss_bound_mib": RSS_BOUND_MIB}
    result["workers_total"] = len(CITIES) * sizes["workers"]
    result["load_1m_start"] = round(os.getloadavg()[0], 2)
    try:
        queued = time.monotonic()
        federation, tokens, case_ids = await provision(root / "federation", sizes["stream"])
        result["stream_queue_s"] = round(time.monotonic() - queued, 1)
        sampler = RssSampler(federation)
        try:
            stats, started_wall = await drive(federation, tokens, sizes, result, sampler)
            summarise(stats, result)
            result.update(await account(federation, stats, case_ids, started_wall))
            result["rss_sampled_peak_mib"] = await sampler.stop()
            result["peak_rss_mib"] = {c: status_mib(federation, c, "VmHWM") for c in CITIES}
            result["log_errors"] = {c: log_errors(federation, c) for c in CITIES}
        finally:
            federation.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for key in ("peak_rss_mib", "rss_sampled_peak_mib", "rss_ready_mib"):
        peaks = [v for v in result[key].values() if v is not None]
        result[f"{key}_max"] = max(peaks) if len(peaks) == len(CITIES) else None
    result["overload_without_503_retry_after"] = (
        result["burst"] - result["overload_503_with_retry_after"]
    )
    result["targets"] = {key: met(result[key]) for key, (met, _) in TARGETS.items()}
    result["load_1m_end"] = round(os.getloadavg()[0], 2)
    result["python"] = sys.version.split()[0]
    result["cpus"] = os.cpu_count()
    return result


def log_errors(federation: LocalFederation, city: str) -> int:
    """Lines logged at ERROR or worse by the node (an unexpected failure is logged so)."""
    try:
        lines = federation.log_path(city).read_text(errors="replace").splitlines()
    except OSError:
        return -1
    return sum(1 for line in lines if '"level": "error"' in line or '"level": "critical"' in line)


ROWS = (
    ("RSS per node when ready (MiB): stockholm / goteborg / malmo", "rss_ready_mib"),
    ("peak RSS per node after start-up, sampled every 0.2 s (MiB)", "rss_sampled_peak_mib"),
    ("peak RSS after start-up, largest node (MiB)", "rss_sampled_peak_mib_max"),
    ("VmHWM per node, incl. the keystore unlock at start (MiB)", "peak_rss_mib"),
    ("VmHWM, largest node (MiB)", "peak_rss_mib_max"),
    ("case workers (all nodes) / seconds they ran", ("workers_total", "duration_s")),
    ("API requests/s", "api_requests_per_s"),
    ("API latency p50 / p99 (ms)", ("api_latency_ms_p50", "api_latency_ms_p99")),
    ("API answers by status", "api_statuses"),
    ("API errors by status and code", "api_errors"),
    ("5xx other than 503", "server_errors_not_503"),
    ("overload burst: requests / answered 503 + Retry-After", ("burst", "overload_503")),
    ("overload burst answered otherwise", "overload_without_503_retry_after"),
    ("503 under load: with Retry-After / all", ("api_503_with_retry_after", "api_503")),
    ("refused requests that left a case behind", "refused_but_kept"),
    ("inquiries / replies accepted (2xx)", ("inquiries_accepted", "replies_accepted")),
    ("stream messages / seconds to deliver them all", ("stream", "stream_drain_s")),
    ("stream rate under the API load (msgs/s)", "stream_msgs_per_s"),
    ("federation messages checked (all directions)", "messages"),
    ("lost (accepted but not once at the receiver)", "lost"),
    ("processed twice", "duplicated"),
    ("failed for good", "failed"),
)


def table(r: dict[str, Any]) -> str:
    """The figures as a Markdown table (for ``bench/report.py``)."""
    lines = ["| measure | value | target | met |", "|---|---:|---|---|"]
    for label, keys in ROWS:
        value = " / ".join(_shown(r[k]) for k in ((keys,) if isinstance(keys, str) else keys))
        target = TARGETS[keys][1] if keys in TARGETS else ""
        met = ("yes" if r["targets"][keys] else "NO") if keys in TARGETS else ""
        lines.append(f"| {label} | {value} | {target} | {met} |")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        if set(value) == set(CITIES):
            return " / ".join(str(value[c]) for c in CITIES)
        return ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"CI sizes: {QUICK}")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--workers", type=int, help="case workers per node (default 10)")
    parser.add_argument("--duration", type=float, help="seconds the workers run")
    parser.add_argument("--stream", type=int, help="federation stream messages (even)")
    parser.add_argument("--burst", type=int, help="concurrent requests of the overload burst")
    parser.add_argument("--workdir", help="where the federation's files go (default: $TMPDIR)")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(table(result))
        print()
        print(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
