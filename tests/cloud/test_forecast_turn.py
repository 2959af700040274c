"""The turns of jobs one collector runs at a time (PostgreSQL: the forecast round, the InfluxDB
export) are bounded: a collector that hangs with the turn, frozen or stuck in its round, loses
it on a lease and another takes it; one alive and working keeps it past the lease."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from cloud import influx
from cloud.db import forecast as fdb
from cloud.db import turns
from cloud.db.store import Store
from floodgate.clock import ManualClock
from tests.helpers import wait_until

LEASE_MS = 1000


async def turn(store: Store, clock: ManualClock) -> str:
    """One try of the turn, as a woken collector makes it (a round is due)."""
    async with fdb.round_turn(store, clock.now_ms, 60_000, True, lease_ms=LEASE_MS) as got:
        return got


async def takes(store: Store, clock: ManualClock) -> bool:
    return await turn(store, clock) == "run"


@pytest.fixture
def pg(db_url: str) -> str:
    if not db_url.startswith("postgresql"):
        pytest.skip("collectors take turns on PostgreSQL (SQLite has one)")
    return db_url


async def test_a_round_stuck_past_its_longest_loses_the_turn_to_another_collector(
    pg: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    a, b = Store(pg), Store(pg)
    await a.migrate()
    release = asyncio.Event()
    held = asyncio.Event()

    async def stuck() -> str:
        async with fdb.round_turn(a, clock.now_ms, 60_000, True, lease_ms=LEASE_MS, max_round_ms=1500) as got:
            held.set()
            await release.wait()  # a round that never ends (awaiting something that never comes)
            return got

    task = asyncio.create_task(stuck())
    try:
        await wait_until(held.is_set, 10, "collector A's turn")
        assert await turn(b, clock) == "busy"
        # Past its longest, A's round is stopped (it would go on writing after B's), and says so.
        with pytest.raises(turns.LeaseLost, match=r"ran past its longest, 1\.5 s"):
            await asyncio.wait_for(task, 10)
        assert not release.is_set()
        assert await takes(b, clock), "the turn is free at once: A let it go on its way out"
        assert await turn(a, clock) == "run", "A's pool gives it a working connection again"
    finally:
        release.set()
        await asyncio.gather(task, return_exceptions=True)
        await a.close()
        await b.close()


async def test_a_collector_alive_in_a_long_round_keeps_its_turn(pg: str) -> None:
    clock = ManualClock()
    a, b = Store(pg), Store(pg)
    await a.migrate()
    done = asyncio.Event()
    held = asyncio.Event()

    async def long_round() -> None:
        async with fdb.round_turn(a, clock.now_ms, 60_000, True, lease_ms=LEASE_MS) as got:
            assert got == "run"
            held.set()
            await done.wait()

    task = asyncio.create_task(long_round())
    try:
        await wait_until(held.is_set, 10, "collector A's turn")
        end = time.monotonic() + 4 * LEASE_MS / 1000  # four leases long: renewed, still A's
        while time.monotonic() < end:
            assert await turn(b, clock) == "busy"
            await asyncio.sleep(0.25)
        done.set()
        await task
        assert await turn(b, clock) == "run"
    finally:
        done.set()
        await asyncio.gather(task, return_exceptions=True)
        await a.close()
        await b.close()


FROZEN = """
import asyncio, sys
from cloud.db import forecast as fdb, turns
from cloud.db.store import Store
from cloud.influx import NAME

async def main() -> None:
    s = Store(sys.argv[1])
    lease = int(sys.argv[3])
    if sys.argv[2] == "round":
        holding = fdb.round_turn(s, lambda: 0, 60_000, True, lease_ms=lease)
    else:  # the InfluxDB export's turn, as InfluxExport.run_once takes it
        holding = turns.turn(s, NAME, lease_ms=lease)
    try:
        async with holding as got:
            print(got, flush=True)
            await asyncio.Event().wait()
    except turns.LeaseLost as exc:
        print("stopped:", exc, flush=True)

asyncio.run(main())
"""


async def export_turn(store: Store) -> bool:
    async with turns.turn(store, influx.NAME, lease_ms=LEASE_MS) as got:
        return got


@pytest.mark.parametrize("job", ["round", "export"])
async def test_a_frozen_collector_loses_the_turn_within_its_lease(pg: str, job: str) -> None:
    """A collector process stopped (SIGSTOP: not dead, its connection open) with the turn."""
    clock = ManualClock()
    b = Store(pg)
    await b.migrate()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", FROZEN, pg, job, str(LEASE_MS)], stdout=subprocess.PIPE, text=True, env=env
    )

    async def mine() -> bool:
        return await takes(b, clock) if job == "round" else await export_turn(b)

    try:
        line = await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        assert line.strip() == ("run" if job == "round" else "True")
        assert not await mine()
        os.kill(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        await wait_until(mine, 15, "the turn taken from the frozen one", every=0.2)
        assert time.monotonic() - started < 10 * LEASE_MS / 1000
        # Thawed, it finds its lock connection ended and stops its job (which, going on, would
        # write after the collector that took the turn).
        os.kill(proc.pid, signal.SIGCONT)
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 15)  # type: ignore[union-attr]
        assert line.startswith("stopped:") and "lock connection ended" in line, line
    finally:
        proc.kill()
        proc.wait(10)
        await b.close()
