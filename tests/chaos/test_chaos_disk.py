"""A full disk under the receiver's SQLite database, mid-stream, and then space again (as root).

The receiver's data directory is a small tmpfs (its provisioned files copied in). Mid-stream a
file fills the tmpfs until writes fail, so the receiver can no longer store what arrives. It must
refuse rather than acknowledge (the sender keeps the messages and retries), keep running (no
crash loop: the same process throughout) and keep its database intact. Once the file is deleted,
with no step taken on either node, the stream must drain: 0 lost, 0 twice, in order per case,
and ``PRAGMA integrity_check`` says ``ok``. Skipped without root; the tmpfs is unmounted after,
also on failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import time
from collections.abc import Iterator

import pytest
from chaos_nodes import RECEIVER, SENDER, Nodes
from chaos_support import Settings, Tmpfs
from e2e_support import POLL_S

DRAIN_TIMEOUT_S = 120.0
DISK_MIB = 24  # plus room for what the stream adds to the receiver's database


@pytest.fixture
def small_disk(sqlite_nodes: Nodes, settings: Settings) -> Iterator[Tmpfs]:
    """The receiver's data directory on a small tmpfs; unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    size = f"{DISK_MIB + settings.messages // 128}m"  # 8 KiB per message
    disk = Tmpfs(sqlite_nodes.federation.data_dir(RECEIVER), size)
    try:
        disk.mount()
        yield disk
    finally:
        sqlite_nodes.federation.stop_all()
        disk.unmount()


def _integrity(path: str) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


async def test_full_disk_under_receiver_refuses_then_drains_exactly_once(
    sqlite_nodes: Nodes, small_disk: Tmpfs, settings: Settings
) -> None:
    rng = random.Random(f"{settings.seed}:disk")
    nodes = sqlite_nodes
    total = settings.messages
    case_ids = await nodes.case_ids()
    nodes.start(RECEIVER, SENDER)
    pids = nodes.pids()
    point = int(total * rng.uniform(0.1, 0.5))
    while (await nodes.counts())[0] < point:
        await asyncio.sleep(POLL_S)
    filled = await asyncio.to_thread(small_disk.fill)
    try:
        at_full = await nodes.counts()
        await asyncio.sleep(rng.uniform(settings.hold_s, 1.5 * settings.hold_s))
        during = await nodes.counts()
        alive = nodes.pids() == pids
    finally:
        small_disk.free()
    freed = time.monotonic()
    resumed_s = await nodes.resumed(freed, during[0], total, DRAIN_TIMEOUT_S)
    await nodes.drain(total, DRAIN_TIMEOUT_S)
    drain_s = time.monotonic() - freed
    assert alive, "a node died while the disk was full: a crash, not a refusal"
    assert nodes.pids() == pids, "a node restarted: it did not recover by itself"
    await nodes.check(case_ids)

    assert at_full[0] < total, "the disk filled after the stream had ended"
    # The receiver said why: 503 (the sender keeps the batch), never an unhandled error.
    refused = nodes.log_lines(RECEIVER, ": 503 storage_unavailable")
    assert refused >= 1, "the receiver never refused while its disk was full"
    unhandled = nodes.log_lines(RECEIVER, "Error handling request")  # a 500
    assert unhandled == 0, nodes.federation.log_tail(RECEIVER)
    database = nodes.federation.data_dir(RECEIVER) / "citynode.sqlite3"
    assert _integrity(str(database)) == "ok"
    print(
        f"\ndisk full at {at_full[0]}/{total} receipted ({filled >> 20} MiB filler, seed "
        f"{settings.seed}); {during[0]} receipted and {during[1]} stored while full, {refused} "
        f"batches refused with 503; "
        f"moving {resumed_s:.1f} s and drained {drain_s:.1f} s after freeing"
    )
