"""Messages queued by another process: an idle sender loop finds them within ``outbox_poll_s``.

The node's own enqueues ring the loop's doorbell; an operator tool writing the same database
cannot, so an idle loop that is not backing off looks at the queue every ``poll_interval_s``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from outbox_fakes import (
    PEER,
    ManualClock,
    MemoryOutbox,
    ScriptedTransport,
    all_done,
    settle,
    unavailable,
    until,
)

from node.config import ConfigError, NodeLimits, load_config
from node.outbox import OutboxSettings, PeerSender

MakeSender = Callable[..., PeerSender]
CONFIG = """\
city = "stockholm"
data_dir = "data"
agreement = "agreement.toml"

[federation]
port = 8443

[api]
port = 8081

[limits]
"""


def _config_with(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(CONFIG + line + "\n", encoding="utf-8")
    return path


async def test_an_idle_loop_sends_what_another_process_queued_within_the_poll_interval(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    settings: OutboxSettings,
    make_sender: MakeSender,
) -> None:
    make_sender(settings=dataclasses.replace(settings, poll_interval_s=2.0))
    await settle()
    outbox.enqueue(PEER, clock.now)  # no wake(): written by another process
    await settle()
    assert transport.calls == []

    clock.advance(2.0)
    await until(all_done(outbox))
    assert transport.calls_to(PEER) == [(1,)]


async def test_a_loop_backing_off_does_not_poll_its_peer_sooner(
    clock: ManualClock,
    outbox: MemoryOutbox,
    transport: ScriptedTransport,
    settings: OutboxSettings,
    make_sender: MakeSender,
) -> None:
    transport.then(PEER, unavailable())
    outbox.enqueue(PEER, clock.now)
    sender = make_sender(settings=dataclasses.replace(settings, poll_interval_s=0.01))
    await until(lambda: sender.status().failures == 1)
    outbox.enqueue(PEER, clock.now)  # queued during the outage, by another process
    clock.advance(0.02)
    await settle()
    assert len(transport.calls) == 1  # the backoff decides, not the poll


def test_the_poll_interval_is_configured_and_bounded(tmp_path: Path) -> None:
    assert NodeLimits().outbox_poll_s == 5.0
    assert OutboxSettings.from_limits(NodeLimits(outbox_poll_s=0.25)).poll_interval_s == 0.25
    config = load_config(_config_with(tmp_path, "outbox_poll_s = 0.05"))
    assert config.limits.outbox_poll_s == 0.05
    with pytest.raises(ConfigError) as caught:
        load_config(_config_with(tmp_path, "outbox_poll_s = 7200"))
    assert "limits.outbox_poll_s" in str(caught.value)
    assert "from 0.001 to 3600 seconds" in str(caught.value)
    with pytest.raises(ValueError, match="poll_interval_s"):
        dataclasses.replace(OutboxSettings.from_limits(NodeLimits()), poll_interval_s=0.0)
