"""``citynode demo``, run: set up Stockholm, Göteborg and Malmö on loopback and play their year.

Owns the command around the scenario (``node.demo``): where the scratch federation lives, its
case-worker and coordinator accounts, and what is printed. Invariants:

* The scratch directory (``--root``, default ``var/demo`` under the working directory) holds
  only what the demo made: a directory with another federation's manifest is replaced only when
  none of its nodes runs, and a directory without one is never touched.
* Accounts are added the way ``citynode users add`` and ``users token`` add them (the same
  ``UserStore`` calls as the console), before the nodes start: per city a coordinator and a case
  worker for every unit of the agreement draft. Tokens are printed only with ``--keep`` (the
  nodes then outlive the command); the operator secret of the scratch nodes is kept in
  ``ROOT/secret`` (0600) so the operator commands can be tried on them.
* Without ``--keep`` every process started is stopped before the command returns, also when the
  scenario fails; ``--stop`` stops the nodes a ``--keep`` run left (and drops their PostgreSQL
  databases when given the server URL).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import shutil
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Final

import aiohttp

from node.access import UserRole
from node.audit import AuditTrail
from node.config import load_config
from node.demo import Scenario, check_no_node_holds_all, identity_table
from node.demo_api import CaseApi, DemoError, Narrator
from node.localnet import MANIFEST, LocalFederation, LocalNetError
from node.localnet_support import write_private
from node.secrets_source import OperatorSecret
from node.service import Node
from node.users import CONSOLE, UserStore

SECRET_FILE: Final = "secret"  # noqa: S105 (the file name, not a secret)
TOKEN_TTL_S: Final = 7 * 86_400
CITIES: Final = ("stockholm", "goteborg", "malmo")


def _units(draft: Path) -> dict[str, list[str]]:
    """Each demo city's units, from the agreement draft."""
    try:
        doc = tomllib.loads(draft.read_text())
        units = {m["city"]: [u["id"] for u in m["units"]] for m in doc["members"]}
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        raise DemoError(f"cannot read the agreement draft {draft}") from e
    if set(units) != set(CITIES):
        raise DemoError(f"the demo needs a draft with exactly {', '.join(CITIES)}")
    return units


async def add_accounts(federation: LocalFederation, city: str, units: list[str]) -> dict[str, str]:
    """A coordinator and one case worker per unit at ``city``; their tokens by unit id."""
    config = load_config(federation.config_path(city))
    node = await Node.open(config, OperatorSecret(federation.secret.encode()))
    try:
        store = UserStore(node.db, node.clock, audit=AuditTrail(node.db, node.clock))
        tokens = {}
        for unit in [None, *units]:
            name = f"{city}-{unit or 'coordinator'}"
            role = UserRole.CASEWORKER if unit else UserRole.COORDINATOR
            await store.add(name, role, unit, units, actor=CONSOLE)
            tokens[unit or "coordinator"] = await store.issue_token(
                name, TOKEN_TTL_S, actor=CONSOLE
            )
        return tokens
    finally:
        await node.close()


def clear(root: Path, pg_url: str | None) -> None:
    """Remove a previous demo at ``root``; refuse if it runs or is not a demo."""
    if not root.exists() or not any(root.iterdir()):
        return
    if not (root / MANIFEST).exists():
        raise DemoError(f"{root} is not empty and holds no demo: choose another --root")
    old = LocalFederation.load(root, secret="", pg_url=pg_url)
    running = [city for city in old.nodes if old.is_running(city)]
    if running:
        raise DemoError(f"a demo runs in {root} ({', '.join(running)}): `citynode demo --stop`")
    old.destroy()
    shutil.rmtree(root, ignore_errors=True)


def _provision(args: argparse.Namespace, narrator: Narrator) -> tuple[LocalFederation, Any]:
    units = _units(args.config)
    clear(args.root, args.pg_url)
    narrator.say(f"Setting up {', '.join(CITIES)} in {args.root}, as their operators would:")
    federation = LocalFederation.create(
        args.root,
        CITIES,
        database=args.database,
        pg_url=args.pg_url,
        draft=args.config,
        on_step=lambda step: narrator.say(f"  {step}"),
        detach=args.keep,
    )
    try:
        write_private(federation.root / SECRET_FILE, federation.secret + "\n")

        async def accounts() -> dict[str, dict[str, str]]:
            # One node at a time: Alembic's migration context is process-global.
            return {city: await add_accounts(federation, city, units[city]) for city in CITIES}

        tokens = asyncio.run(accounts())
        narrator.say("  users add: a coordinator and a case worker per unit at every city")
        narrator.say("  serve: three nodes with mutual TLS on loopback")
        federation.start_all()
    except BaseException:
        federation.destroy()
        raise
    return federation, tokens


def _cities(federation: LocalFederation, tokens: Any, keep: bool) -> dict[str, Any]:
    return {
        city: {
            "api": federation.api_url(city),
            "cafile": None,
            "data_dir": str(federation.data_dir(city)),
            "federation": federation.federation_url(city),
            **({"tokens": tokens[city]} if keep else {}),
        }
        for city in CITIES
    }


async def _play(federation: LocalFederation, tokens: Any, narrator: Narrator) -> dict[str, Any]:
    urls = {city: federation.api_url(city) for city in CITIES}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        today = datetime.datetime.now(datetime.UTC).date()
        scenario = Scenario(federation, CaseApi(session, urls, tokens), narrator, today)
        outcome = await scenario.run()
    held = check_no_node_holds_all(outcome.identities)
    narrator.say("\nWhere each identity is stored (each coordinator asked its own node):")
    narrator.say(identity_table(outcome.cases, outcome.identities))
    counts = ", ".join(f"{city} {n} of {len(outcome.cases)}" for city, n in held.items())
    narrator.say(f"No node can decrypt every identity: {counts} cases.")
    return {
        "cases": {label: case.id for label, case in outcome.cases.items()},
        "identities": outcome.identities,
        "identities_decryptable": held,
        "balance": outcome.balance,
        "chart": str(outcome.chart),
        "rotations_s": outcome.rotations,
    }


def run_command(args: argparse.Namespace) -> int:
    """Run ``citynode demo`` with its parsed options (see ``node.cli_demo``)."""
    if args.database == "postgresql" and not args.pg_url:
        raise DemoError("--database postgresql needs --pg-url")
    if args.stop:
        return _stop(args)
    narrator = Narrator(out=sys.stderr if args.json else sys.stdout, clock=time.monotonic)
    federation, tokens = _provision(args, narrator)
    kept = False
    try:
        narrator.say(f"Ready after {narrator.elapsed():.1f} s. The year's cases:")
        result = asyncio.run(_play(federation, tokens, narrator))
        kept = args.keep
    finally:
        if not kept:
            with contextlib.suppress(LocalNetError):
                federation.stop_all()
    doc = {
        "cities": _cities(federation, tokens, kept),
        **result,
        "events": narrator.as_json(),
        "elapsed_s": round(narrator.elapsed(), 1),
    }
    if args.json:
        print(json.dumps(doc, ensure_ascii=False, sort_keys=True))
    else:
        _print_end(doc, federation, kept)
    return 0


def _print_end(doc: dict[str, Any], federation: LocalFederation, kept: bool) -> None:
    print(f"\nDone in {doc['elapsed_s']} s. Balance chart: {doc['chart']}")
    if not kept:
        print(f"Every node is stopped; their data and logs are in {federation.root}.")
        return
    print("The nodes keep running. Case API and tokens (Authorization: Bearer TOKEN):")
    for city, info in doc["cities"].items():
        print(f"  {city}: {info['api']}/api/v1  (data in {info['data_dir']})")
        for account, token in info["tokens"].items():
            print(f"    {account:<22} {token}")
    print(
        f"Operator commands: CITYNODE_SECRET=$(cat {federation.root / SECRET_FILE}) "
        f"citynode keys show --config {federation.config_path('stockholm')}\n"
        "Stop them with: citynode demo --stop"
    )


def _stop(args: argparse.Namespace) -> int:
    if not (args.root / MANIFEST).exists():
        raise DemoError(f"no demo in {args.root}")
    federation = LocalFederation.load(args.root, secret="", pg_url=args.pg_url)
    stopped = [city for city, status in federation.stop_all().items() if status is not None]
    if args.pg_url:
        federation.destroy()
    doc = {"stopped": stopped, "root": str(args.root)}
    text = f"Stopped {', '.join(stopped)}." if stopped else "No demo node was running."
    print(json.dumps(doc) if args.json else text)
    return 0
