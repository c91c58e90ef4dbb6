"""The nodes of one fault test: start them (in their namespaces), probe them, check the stream.

Owns :class:`Nodes`, a :class:`~node.localnet.LocalFederation` copy plus the
:class:`~chaos_support.Topology` its nodes run in (or ``None`` on loopback). The only things a
test does to a node are what a supervisor or the fault does: start, SIGKILL, SIGTERM. The final
check is the end-to-end one (``e2e_support.assert_stream_delivered``): every message receipted
at the sender, stored once at the receiver, each case's messages in order, every case closed.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from chaos_support import Topology
from e2e_support import POLL_S, Sent, Tables, assert_stream_delivered, read, wait_drained

from node.localnet import LocalFederation

SENDER, RECEIVER = "stockholm", "goteborg"
# Envelopes per inbox request in the fault tests (the default is 64): more batch boundaries in a
# stream, so that a fault lands inside it at more points, and a bounded stream lasts long enough.
BATCH_SIZE = 16
RECEIPTED = "SELECT count(*) FROM outbox WHERE peer = :peer AND state = 'receipted'"
STORED = "SELECT count(*) FROM inbox WHERE sender = :sender"
HEALTH_TIMEOUT_S = 60.0


class Nodes:
    """A federation under test and where its nodes run."""

    def __init__(self, federation: LocalFederation, topology: Topology | None) -> None:
        self.federation = federation
        self.topology = topology

    def start(self, *cities: str) -> None:
        """Start the nodes (in their namespaces) and wait until each is healthy.

        Raises:
            LocalNetError: a node exited or did not get healthy in time.
        """
        for city in cities:
            prefix = self.topology.prefix(city) if self.topology else ()
            self.federation.start(city, prefix=prefix)
        for city in cities:
            self._near(city, lambda c=city: self.federation.wait_healthy(c, HEALTH_TIMEOUT_S))

    def kill(self, *cities: str) -> None:
        """SIGKILL the nodes, as a crash or the OOM killer would."""
        for city in cities:
            self.federation.kill(city)

    def pids(self) -> dict[str, int | None]:
        """Each node's process id (unchanged across a fault: the node did not restart)."""
        return {city: self.federation.pid(city) for city in self.federation.nodes}

    def health(self, city: str) -> tuple[int, dict[str, Any]]:
        """One ``/healthz`` probe: the HTTP status and the document (``-1`` if no answer)."""
        url = f"{self.federation.api_url(city)}/healthz"

        def probe() -> tuple[int, dict[str, Any]]:
            try:
                with urllib.request.urlopen(url, timeout=2.0) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read() or b"{}")
            except (OSError, ValueError):
                return -1, {}

        status, doc = self._near(city, probe)
        return int(status), dict(doc)

    def log_lines(self, city: str, needle: str) -> int:
        """How many lines of ``city``'s log contain ``needle`` (e.g. ``": 503 "``)."""
        log = self.federation.log_path(city).read_text(errors="replace")
        return sum(1 for line in log.splitlines() if needle in line)

    async def counts(self) -> tuple[int, int]:
        """(messages receipted at the sender, messages stored at the receiver)."""
        sender, receiver = (
            await read(self.federation, SENDER),
            await read(self.federation, RECEIVER),
        )
        try:
            receipted = await sender.scalar(RECEIPTED, peer=RECEIVER)
            stored = await receiver.scalar(STORED, sender=SENDER)
        finally:
            await sender.close()
            await receiver.close()
        return receipted, stored

    async def resumed(self, since: float, after: int, total: int, timeout_s: float) -> float:
        """Seconds from ``since`` (a ``time.monotonic()``) until the sender holds more than
        ``after`` receipts (or all ``total``): how long the stream took to move again.

        Raises:
            AssertionError: it did not move within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while (await self.counts())[0] <= min(after, total - 1):
            assert time.monotonic() < deadline, f"the stream stayed at {after} receipts"
            await asyncio.sleep(POLL_S)
        return time.monotonic() - since

    async def drain(self, total: int, timeout_s: float) -> float:
        """Wait until the sender holds a receipt for all ``total`` messages; return the seconds.

        Raises:
            AssertionError: a message was refused for good, or the time ran out.
        """
        return await wait_drained(self.federation, SENDER, RECEIVER, total, timeout_s)

    async def check(self, case_ids: Sequence[bytes]) -> list[Sent]:
        """Stop the nodes and check the stream: 0 lost, 0 twice, in order per case, drained.

        Returns:
            The sender's outbox rows.

        Raises:
            AssertionError: any of those does not hold, or a node did not stop cleanly.
        """
        statuses = self.federation.stop_all()
        assert all(s in (0, None) for s in statuses.values()), f"unclean stop: {statuses}"
        return await assert_stream_delivered(self.federation, SENDER, RECEIVER, case_ids)

    async def case_ids(self) -> list[bytes]:
        """The stream's cases, in the order queued (from the sender's outbox)."""
        tables: Tables = await read(self.federation, SENDER)
        try:
            rows = await tables.outbox(RECEIVER)
        finally:
            await tables.close()
        return list(dict.fromkeys(row.case_id for row in rows))

    def _near(self, city: str, work: Any) -> Any:
        """Run ``work`` where ``city``'s address is reachable (inside its namespace)."""
        return self.topology.call_in(city, work) if self.topology else work()
