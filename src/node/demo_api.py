"""The demo's view of the federation: case API calls, bounded waits, and the narrated timeline.

Owns what ``citynode demo`` (``node.demo``) needs to drive real nodes as their users would: a
small case API client (bearer tokens, JSON), waits that poll a node's API until a message has
arrived or been receipted, and the :class:`Narrator` that records each step as a
:class:`DemoEvent` and prints it as one readable line. Invariants:

* Everything goes through the nodes' public interfaces: the case API, and operator commands run
  as real ``citynode`` processes (:meth:`~node.localnet.LocalFederation.citynode`). Nothing reads
  a node's database.
* Every wait is bounded (:data:`WAIT_S`) and fails with :class:`DemoError` saying what it waited
  for and the last answer seen; a case API error answer is reported by its code, never its body.
* An event line never carries a person: the narrated fields are cities, units, message types,
  delivery states, error codes and the nodes' own refusal sentences (which hold no personal
  data by the node's rules).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Final, TextIO

import aiohttp

from node.errors import NodeError

API: Final = "/api/v1"
WAIT_S: Final = 30.0
POLL_S: Final = 0.05
REQUEST_TIMEOUT_S: Final = 30.0


class DemoError(NodeError):
    """The demo could not go on: a step failed or a wait ran out."""

    code: ClassVar[str] = "demo_failed"


@dataclass(frozen=True, slots=True)
class Answer:
    """A case API answer: its status and decoded JSON body (``{}`` when there is none)."""

    status: int
    body: dict[str, Any]

    @property
    def code(self) -> str | None:
        """The error code of an error answer."""
        error = self.body.get("error")
        return str(error["code"]) if isinstance(error, dict) and "code" in error else None


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One step of the demo, as printed.

    Attributes:
        at_s: seconds since the scenario started.
        actor: who acted: ``stockholm/jarva``, ``goteborg operator``.
        action: what they did: ``inquiry``, ``reply: accept``, ``keys rotate --kind identity``.
        target: the other city, if any.
        case: the case's label in the demo (``case 1``), if any.
        outcome: what came of it: ``receipted in 0.05 s``, ``refused: quota_exceeded``.
        detail: one more sentence (a refusal's reason, a quota count), or ``""``.
    """

    at_s: float
    actor: str
    action: str
    target: str | None
    case: str | None
    outcome: str
    detail: str = ""

    def line(self) -> str:
        """The event as one line of the printed timeline."""
        where = f" → {self.target}" if self.target else ""
        case = f"[{self.case}] " if self.case else ""
        text = f"{self.at_s:6.1f} s  {case}{self.actor}{where}: {self.action} — {self.outcome}"
        return f"{text}\n{'':10}{self.detail}" if self.detail else text


class Narrator:
    """Records the demo's events and prints each one as it happens (unless quiet)."""

    def __init__(self, *, out: TextIO | None = sys.stdout, clock: Callable[[], float]) -> None:
        self._out = out
        self._clock = clock
        self._started = clock()
        self.events: list[DemoEvent] = []

    def elapsed(self) -> float:
        """Seconds since the narrator was made."""
        return self._clock() - self._started

    def say(self, text: str) -> None:
        """Print a heading or a note that is not an event."""
        if self._out is not None:
            print(text, file=self._out, flush=True)

    def event(
        self,
        actor: str,
        action: str,
        outcome: str,
        *,
        target: str | None = None,
        case: str | None = None,
        detail: str = "",
    ) -> DemoEvent:
        """Record and print one event."""
        event = DemoEvent(
            at_s=round(self.elapsed(), 2),
            actor=actor,
            action=action,
            target=target,
            case=case,
            outcome=outcome,
            detail=detail,
        )
        self.events.append(event)
        self.say(event.line())
        return event

    def as_json(self) -> list[dict[str, Any]]:
        """The events as JSON objects."""
        return [asdict(event) for event in self.events]


class CaseApi:
    """The case APIs of the demo's nodes, called with each account's bearer token."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: Mapping[str, str],
        tokens: Mapping[str, Mapping[str, str]],
    ) -> None:
        """Args:
        session: the HTTP client session.
        urls: each city's case API base URL (``http://127.0.0.1:PORT``).
        tokens: each city's tokens by account (``coordinator`` or a unit id).
        """
        self._session = session
        self._urls = urls
        self._tokens = tokens

    async def call(
        self,
        city: str,
        account: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        """Call ``path`` under ``/api/v1`` at ``city`` as ``account``.

        Raises:
            DemoError: the node could not be reached.
        """
        url = f"{self._urls[city]}{API}{path}"
        sent = {"Authorization": f"Bearer {self._tokens[city][account]}", **(headers or {})}
        try:
            async with self._session.request(
                method, url, json=json, data=data, headers=sent, params=params
            ) as response:
                body = await response.json() if response.content_type == "application/json" else {}
                return Answer(response.status, body if isinstance(body, dict) else {})
        except (aiohttp.ClientError, TimeoutError) as e:
            raise DemoError(f"{city}'s case API did not answer {method} {path}") from e

    async def expect(
        self, status: int, city: str, account: str, method: str, path: str, **kw: Any
    ) -> dict[str, Any]:
        """Call and insist on ``status``; return the body.

        Raises:
            DemoError: another status (named with its error code).
        """
        answer = await self.call(city, account, method, path, **kw)
        if answer.status != status:
            raise DemoError(
                f"{city} answered {method} {path} with {answer.status} {answer.code or ''}".strip()
            )
        return answer.body

    async def case(
        self, city: str, account: str, case_id: str, *, purpose: str | None = None
    ) -> Answer:
        """``GET /cases/{id}`` (with a purpose: the person too, where the account may see it)."""
        params = {"purpose": purpose} if purpose else None
        return await self.call(city, account, "GET", f"/cases/{case_id}", params=params)

    async def wait_case(
        self,
        city: str,
        account: str,
        case_id: str,
        done: Callable[[dict[str, Any]], bool],
        what: str,
    ) -> dict[str, Any]:
        """Poll the case at ``city`` until ``done(view)``; return the view.

        Raises:
            DemoError: not done within :data:`WAIT_S`.
        """
        return await _poll(lambda: self.case(city, account, case_id), done, f"{city}: {what}")


async def _poll(
    probe: Callable[[], Awaitable[Answer]], done: Callable[[dict[str, Any]], bool], what: str
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    last = "no answer"
    while time.monotonic() < deadline:
        answer = await probe()
        if answer.status == 200 and done(answer.body):
            return answer.body
        last = f"{answer.status} {answer.code or answer.body.get('state', '')}".strip()
        await asyncio.sleep(POLL_S)
    raise DemoError(f"waited {WAIT_S:g} s for {what}; last answer: {last}")


def last_sent(view: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The newest timeline entry of type ``kind`` that this node sent, if any."""
    entries = [
        e for e in view.get("timeline", ()) if e["type"] == kind and e["direction"] == "sent"
    ]
    return entries[-1] if entries else None


def receipted(kind: str) -> Callable[[dict[str, Any]], bool]:
    """A wait condition: the newest sent ``kind`` message of the case holds its receipt."""

    def done(view: dict[str, Any]) -> bool:
        entry = last_sent(view, kind)
        return entry is not None and entry["delivery"] == "receipted"

    return done


def in_state(state: str) -> Callable[[dict[str, Any]], bool]:
    """A wait condition: the case is in ``state``."""
    return lambda view: view.get("state") == state
