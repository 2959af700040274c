"""The chaos suite's short run (issue 13 §6), in CI: ``bench/chaos.py`` with fewer agents
and shorter faults, on each engine.

One world per test: the engine's brokers, three collectors on PostgreSQL, real agents on
simulated sites in a storm, and 60 virtual sites of ``floodgate sim fleet`` (the first test).
Faults in turn: the broker leader ``kill -9`` and restarted (on the cluster, then the
consumer's leader), a
collector ``kill -9`` mid-stream, every collector stopped and started on a backlog, and (its
own test, root needed) an agent cut off from every broker in its own network namespace.
After each: nothing the edges sent is lost or stored twice, no duplicate reading or ticket,
and the world recovers. ``bench/chaos.py`` runs the same with the figures (minutes-long cut).
Each test takes one to two minutes on a quiet machine (up to six at a load of 12).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from bench import chaos, netns

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.timeout(900)]

ENGINES = [
    "mosquitto",
    pytest.param(
        "nats",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("cloud.jetstream") is None, reason="no JetStream intake in the collector"
        ),
    ),
]

# Both engines. On mosquitto with $share this was an expected failure (2 of 5 runs left
# messages unstored for over 60 s after a fault): a collector's commit cancelled at the
# wrong moment (its broker link lost) left its PostgreSQL connection in a transaction in
# the pool, holding its nodes' row locks (every collector waited on them) or taking the
# next batch into it with a no-op COMMIT (confirmed, never stored). Fixed in cloud/db/store.py.
FAULT_ENGINES = ENGINES


def options(engine: str, *more: str) -> argparse.Namespace:
    return chaos.parser().parse_args(["--engine", engine, *more])


def check(ph: chaos.Phase) -> None:
    print(ph.line())
    assert ph.skipped is None
    assert ph.sent > 0, "the storm sent nothing during the fault"
    assert ph.lost == 0, f"{ph.fault}: {ph.lost} of {ph.sent} sent never stored\n{ph.missing}"
    assert ph.stored == ph.sent
    assert ph.stored_twice == 0
    assert ph.duplicate_rows == 0
    assert ph.duplicate_tickets == 0
    assert ph.recovery_s is not None
    assert ph.recovery_s < 120  # on a loaded 2-core box, a NATS leader kill took up to 51 s
    assert ph.during_ms is not None, "no alert reached a ticket during the fault"


@pytest.mark.parametrize("engine", FAULT_ENGINES)
async def test_broker_and_collector_faults_in_turn_lose_nothing(engine: str, tmp_path: Path) -> None:
    # On the cluster, one node at a time: the stream's leader, then the consumer's.
    names = ["leader", *(["consumer-leader"] if engine == "nats" else []), "collector", "backlog"]
    faults = "--faults=" + ",".join(names)
    times = ("--down-s=4", "--warm-s=3", "--after-s=3")
    fleet = ("--fleet=60", "--fleet-telemetry-s=2")
    phases = await chaos.run(options(engine, "--sites=3", faults, *times, *fleet), tmp_path)
    assert [ph.fault for ph in phases] == names
    for ph in phases:
        check(ph)
        # The virtual sites: everything the broker acknowledged to them is stored.
        assert ph.pubacked
        assert ph.pubacked_lost == 0, ph.missing
    # Every collector away: nothing is stored until they are back (the backlog was real).
    backlog = phases[-1]
    assert backlog.stall_s is not None
    assert backlog.stall_s >= 4


@pytest.mark.parametrize("engine", ENGINES)
async def test_an_agent_cut_off_in_its_namespace_loses_nothing(engine: str, tmp_path: Path) -> None:
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    times = ("--cut-s=15", "--warm-s=3", "--after-s=2")
    (ph,) = await chaos.run(options(engine, "--sites=2", "--faults=partition", *times), tmp_path)
    check(ph)
    assert ph.cut_leak == 0, "the agent reached a broker while cut off"
    assert ph.held is not None
    assert ph.held > 0, "nothing the agent sent while cut off was stored after"
    # The other agent went on being stored while its neighbour was cut off.
    assert ph.stall_s is not None
    assert ph.stall_s < 10
