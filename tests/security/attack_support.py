"""What every attack case of the table stands on: the attack record, the world it runs in, and the
one way each layer checks that a refused attack changed nothing.

An :class:`Attack` is one row of ``docs/security-tests.md``: a name, what the attacker does, the
exact code it must get, what the peer is told (the cryptographic refusals are answered with the
opaque ``rejected``; the precise code is in the receiver's log and metric), and an async ``run``
that performs it and returns the observed ``(code, answer)``.

The worlds:

* :class:`World` — Stockholm, Göteborg and Malmö provisioned by the operators' procedure
  (``node_fixtures``), opened in-process on SQLite; Göteborg receives. :meth:`World.refused`
  delivers one envelope through the node's real inbox processor and checks that nothing changed
  (inbox rows, replay records, cases) and that the node still accepts a good envelope after.
* ``LiveFederation`` (``tests/node/api/api_fixtures.py``) — two serving nodes with users of every
  role, for the case API rows.

Invariant: ``run`` never catches the failure of its own checks; a case passes only when the code
observed is exactly the one in the table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from node_fixtures import (
    UNITS,
    Federation,
    inbox_processor,
    inquiry,
    new_case_id,
    seal,
    stored,
)

from node.delivery import ACCEPTED
from node.service import Node
from node.trust import TrustState

Observed = tuple[str, str]
"""``(code, answer)``: the precise code (log and metric) and what the peer is told."""


@dataclass(frozen=True)
class Attack:
    """One row of the attack table.

    Attributes:
        name: a stable scenario name (the test id and the row's name).
        layer: where it is delivered: ``inbox``, ``listener``, ``agreement``, ``attachment``,
            ``api``.
        attack: what the attacker does, one sentence.
        code: the exact code it must get.
        answer: what the peer or client is told (the code itself unless the refusal is opaque).
        run: performs the attack in its world and returns the observed ``(code, answer)``.
    """

    name: str
    layer: str
    attack: str
    code: str
    answer: str
    run: Callable[[Any], Awaitable[Observed]]


def attack(
    name: str, layer: str, what: str, code: str, answer: str | None = None
) -> Callable[[Callable[[Any], Awaitable[Observed]]], Attack]:
    """Decorator: make an :class:`Attack` row of an async function."""

    def make(run: Callable[[Any], Awaitable[Observed]]) -> Attack:
        return Attack(name, layer, what, code, answer or code, run)

    return make


@dataclass
class World:
    """Three provisioned cities in-process; Göteborg receives, Stockholm is the usual peer."""

    fed: Federation

    async def open(self) -> World:
        """Open every city's node."""
        for city in self.fed.configs:
            await self.fed.open(city)
        return self

    def node(self, city: str) -> Node:
        """The open node of ``city`` (after a restart, the new one)."""
        return self.fed.nodes[city]

    @property
    def stockholm(self) -> Node:
        """The sending peer."""
        return self.node("stockholm")

    @property
    def goteborg(self) -> Node:
        """The receiver."""
        return self.node("goteborg")

    @property
    def malmo(self) -> Node:
        """The third city."""
        return self.node("malmo")

    async def deliver(
        self,
        envelopes: Sequence[bytes],
        *,
        peer: str = "stockholm",
        receiver: str = "goteborg",
        trust: TrustState | None = None,
    ) -> list[Observed]:
        """Hand envelopes to the receiver's real inbox processor as authenticated ``peer``."""
        node = self.node(receiver)
        processor = inbox_processor(node, trust=(lambda: trust) if trust else None)
        observed = []
        for envelope in envelopes:
            before = refusal_counts(node, peer)
            [result] = await processor.handle_batch(peer, [envelope])
            after = refusal_counts(node, peer)
            counted = [code for code, n in after.items() if n > before.get(code, 0)]
            assert len(counted) <= 1, counted
            code = counted[0] if counted else result.status
            observed.append((str(code), str(result.status)))
        return observed

    async def refused(
        self,
        envelope: bytes,
        *,
        peer: str = "stockholm",
        receiver: str = "goteborg",
        trust: TrustState | None = None,
    ) -> Observed:
        """Deliver one hostile envelope; check it changed nothing and the node still serves."""
        node = self.node(receiver)
        before = await stored(node)
        [observed] = await self.deliver([envelope], peer=peer, receiver=receiver, trust=trust)
        assert await stored(node) == before, "a refused envelope changed what the node holds"
        await self.still_serving(receiver)
        return observed

    async def still_serving(self, receiver: str = "goteborg") -> None:
        """A good envelope from Stockholm right after is accepted."""
        good = seal(self.stockholm, receiver, inquiry(new_case_id(), to_unit=UNITS[receiver]))
        [(code, answer)] = await self.deliver([good], receiver=receiver)
        assert (code, answer) == (ACCEPTED, ACCEPTED), (receiver, code, answer)


def refusal_counts(node: Node, peer: str) -> dict[str, float]:
    """``citynode_refusals_total{peer=peer}`` of the node, by code."""
    counts: dict[str, float] = {}
    for metric in node.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "citynode_refusals_total" and sample.labels.get("peer") == peer:
                counts[sample.labels["code"]] = sample.value
    return counts
