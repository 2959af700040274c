"""The durable outbox: order, acknowledgement, bounds, boot counter, kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from edge.outbox import PRIORITY_BULK, PRIORITY_URGENT, Outbox


async def test_urgent_first_then_oldest_and_ack_deletes(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    await ob.open()
    try:
        for i in range(3):
            await ob.put("telemetry", "t", f"tel{i}".encode(), PRIORITY_BULK, i)
        await ob.put("alert", "a", b"alert0", PRIORITY_URGENT, 10)
        head = await ob.peek(10)
        assert [p.payload for p in head] == [b"alert0", b"tel0", b"tel1", b"tel2"]
        await ob.ack([head[0].id, head[2].id])
        assert [p.payload for p in await ob.peek(10)] == [b"tel0", b"tel2"]
        assert (await ob.stats()).depth == 2
    finally:
        await ob.close()


async def test_bound_sheds_oldest_telemetry_never_alerts(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", max_bytes=64 * 1024)
    await ob.open()
    try:
        blob = b"x" * 1024
        for i in range(40):
            await ob.put("alert", "a", blob, PRIORITY_URGENT, i)
        dropped = 0
        for i in range(60):
            dropped += await ob.put("telemetry", "t", blob, PRIORITY_BULK, i)
        kinds = [p.kind for p in await ob.peek(1000)]
        assert kinds.count("alert") == 40
        assert dropped == 60 - kinds.count("telemetry") > 0
        assert (await ob.stats()).bytes <= 64 * 1024
        assert ob.dropped_total == dropped
        # Only alerts left and still over the bound: alerts are kept anyway.
        for i in range(30):
            await ob.put("alert", "a", blob, PRIORITY_URGENT, i)
        assert [p.kind for p in await ob.peek(1000)].count("alert") == 70
    finally:
        await ob.close()


async def test_boot_counter_and_replay_memory_persist(tmp_path: Path) -> None:
    for expected in (1, 2, 3):
        ob = Outbox(tmp_path / "o.db")
        await ob.open()
        assert await ob.next_boot() == expected
        fresh = await ob.remember_command("01JD000000000000000000000A", 10**13, 0)
        assert fresh is (expected == 1)
        await ob.close()


WRITER = """
import asyncio, sys
from edge.outbox import Outbox, PRIORITY_BULK
async def main():
    ob = Outbox(sys.argv[1]); await ob.open()
    i = 0
    while True:
        await ob.put("telemetry", "t", str(i).encode(), PRIORITY_BULK, i)
        print(i, flush=True)
        i += 1
asyncio.run(main())
"""


async def test_every_acknowledged_put_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    confirmed = -1
    for line in proc.stdout:
        confirmed = int(line)
        if confirmed >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ob = Outbox(db)
    await ob.open()
    try:
        stored = [int(p.payload) for p in await ob.peek(100_000)]
    finally:
        await ob.close()
    assert stored[: confirmed + 1] == list(range(confirmed + 1))  # every put that returned is there
    assert stored == list(range(len(stored)))  # and nothing half-written
