"""Fixtures of the outbox tests: fakes, a manual clock, and a sender factory that cleans up.

``fakes.py`` beside this file is registered as the module ``outbox_fakes`` (a unique name, so
that it cannot clash with another directory's ``fakes.py`` whatever pytest's import mode).
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_FAKES = Path(__file__).resolve().parent / "fakes.py"
if "outbox_fakes" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("outbox_fakes", _FAKES)
    assert _spec is not None
    assert _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["outbox_fakes"] = _module
    _spec.loader.exec_module(_module)

from outbox_fakes import DAY, HOUR, PEER, ManualClock, MemoryOutbox, ScriptedTransport  # noqa: E402

from node.metrics import NodeMetrics  # noqa: E402
from node.outbox import Backoff, OutboxSettings, PeerSender  # noqa: E402


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def outbox() -> Iterator[MemoryOutbox]:
    queue = MemoryOutbox()
    yield queue
    assert queue.violations == []


@pytest.fixture
def transport() -> ScriptedTransport:
    return ScriptedTransport()


@pytest.fixture
def metrics() -> NodeMetrics:
    return NodeMetrics()


@pytest.fixture
def settings() -> OutboxSettings:
    # Housekeeping far away unless a test asks for it, so waits show the backoff alone.
    return OutboxSettings(
        batch_size=3,
        alert_age_s=HOUR,
        max_retry_age_s=6 * DAY,
        housekeeping_interval_s=DAY,
        alert_repeat_s=4 * HOUR,
        stop_grace_s=0.05,
    )


@pytest.fixture
def backoff() -> Backoff:
    return Backoff(base=1.0, cap=60.0, rng=random.Random(2026))


@pytest.fixture
async def make_sender(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    metrics: NodeMetrics,
    settings: OutboxSettings,
    backoff: Backoff,
) -> AsyncIterator[Callable[..., PeerSender]]:
    """Build (and start) senders wired to the fakes; every one is stopped after the test."""
    made: list[PeerSender] = []

    def factory(peer: str = PEER, *, start: bool = True, **overrides: Any) -> PeerSender:
        kwargs: dict[str, Any] = {
            "settings": settings,
            "backoff": backoff,
            "metrics": metrics,
            "clock": clock,
            "wait": clock.wait,
        }
        kwargs.update(overrides)
        sender = PeerSender(peer, outbox, transport, **kwargs)
        made.append(sender)
        if start:
            sender.start()
        return sender

    yield factory
    for sender in made:
        await sender.stop()
