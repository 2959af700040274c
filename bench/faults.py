"""Faults, one at a time, measured from outside (issue 14 §5).

Real agents (``floodgate edge run`` processes) on simulated sites in a repeating
storm (each site's water up and down, staggered), a PostgreSQL collector
(``floodgate cloud run``, a process), mosquitto, and an independent tap: a
subscriber with its own persistent session that records every message on the
wire. Each fault gets a fresh broker, database and agents:

- ``broker-unsaved``: mosquitto persistent but with its default 30-minute
  autosave, ``kill -9`` while the collector is paused (SIGSTOP), restarted;
  the edges are back first, the collector resumed after them.
- ``broker-volatile``: the same with persistence off.
- ``collector``: the collector ``kill -9`` at the agents' full rate, restarted.
- ``agent``: one agent ``kill -9`` with its water up (mid-episode), restarted.

At the end the water goes down everywhere and the run settles; then per fault:
messages on the wire (distinct ids the tap saw) vs stored, lost (sent by an
agent, per its boots' sequences, and never stored; target 0), stored twice
(readings doubled; 0), duplicate tickets (a second ticket for one site and
kind; 0), stale active episodes (0, and how many the collector reconciled),
and the recovery time: from the last part back (the collector resumed once
the tap has seen every edge back on the restarted broker, the collector
restarted, the agent restarted) until every agent's fresh messages are stored
(target <= 5 s); for the broker faults also how long after the broker's
restart the tap saw every edge again.

    .venv/bin/python bench/faults.py [--sites 4] [--faults broker-unsaved,collector] [--down-s 8]

PostgreSQL: as the tests find it (``FLOODGATE_TEST_PG_URL``, default
postgresql://postgres@127.0.0.1:5432/test); each fault gets a database of its own, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rig import (
    Tap,
    agent_cmd,
    collector_cmd,
    collector_yaml,
    database,
    duplicates,
    fresh_from_all,
    new_site,
    rows,
    scalar,
    send_signal,
    sent_and_stored,
    storm,
    terminate,
)
from bench.rig import kill as kill9
from simulators.site import SimSite
from tests.helpers import Mosquitto, wait_until

FAULTS = ("broker-unsaved", "broker-volatile", "collector", "agent")


@dataclass
class Rig:
    """One fault's world: broker, collector process, sites and agent processes, tap."""

    folder: Path
    broker: Mosquitto
    db_url: str
    sites: list[SimSite] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    collector: subprocess.Popen[bytes] | None = None
    tap: Tap | None = None
    log: Any = None

    def start_collector(self) -> None:
        cfg = self.folder / "cloud.yaml"
        cfg.write_text(
            collector_yaml(
                self.db_url, f"{{url: '{self.broker.url}', reconnect_max_s: 2}}", "bench-collector"
            )
        )
        self.collector = subprocess.Popen(collector_cmd(cfg), stdout=self.log, stderr=self.log)

    def start_agent(self, i: int) -> None:
        p = subprocess.Popen(agent_cmd(self.configs[i]), stdout=self.log, stderr=self.log)
        if i < len(self.agents):
            self.agents[i] = p
        else:
            self.agents.append(p)

    def signal(self, p: subprocess.Popen[bytes] | None, sig: int) -> None:
        send_signal(p, sig)

    async def kill(self, p: subprocess.Popen[bytes] | None) -> None:
        await kill9(p)

    async def stop(self) -> None:
        for p in [*self.agents, self.collector]:
            await terminate(p)
        for s in self.sites:
            await s.stop()
        if self.tap is not None:
            await self.tap.stop()
        self.broker.stop()


async def run_fault(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    persistent = name != "broker-volatile"
    broker = Mosquitto(folder, persistence=persistent)
    if name == "broker-unsaved":  # mosquitto's default autosave: nothing on disk at the kill
        broker.conf.write_text(
            broker.conf.read_text().replace("autosave_interval 1", "autosave_interval 1800")
        )
    broker.start()
    async with database() as db_url:
        rig = Rig(folder, broker, db_url, log=(folder / "processes.log").open("w"))
        rig.tap = Tap([broker.url]).start()
        storm_task: asyncio.Task[None] | None = None
        try:
            rig.start_collector()
            for i in range(args.sites):
                node = f"bench-{name}-{i}"
                sim, config = await new_site(folder, node, [broker.url], args.telemetry_s)
                rig.sites.append(sim)
                rig.configs.append(config)
                rig.nodes.append(node)
                rig.start_agent(i)
            storm_task = asyncio.create_task(storm(rig.sites, args.period_s))
            start_ms = int(time.time() * 1000)
            await wait_until(lambda: fresh_from_all(db_url, rig.nodes, start_ms), 60, "every agent stored")
            await asyncio.sleep(args.warm_s)  # the storm going on before the fault
            back, edges = time.monotonic(), None
            if name.startswith("broker"):
                rig.signal(rig.collector, signal.SIGSTOP)  # the collector away: the edges back first
                broker.kill()
                await asyncio.sleep(args.down_s)
                broker.start()
                restarted, restarted_ms = time.monotonic(), int(time.time() * 1000)
                tap = rig.tap
                assert tap is not None
                # The edges back first: every node's fresh messages on the wire, the collector still away.
                await wait_until(
                    lambda: all(tap.newest.get(n, 0) > restarted_ms for n in rig.nodes), 60, "edges back"
                )
                edges = time.monotonic() - restarted
                rig.signal(rig.collector, signal.SIGCONT)
                back = time.monotonic()  # the last part back
            elif name == "collector":
                await rig.kill(rig.collector)
                await asyncio.sleep(args.down_s)
                rig.start_collector()
                back = time.monotonic()
            elif name == "agent":
                up = next((i for i, s in enumerate(rig.sites) if s.source.manual), 0)
                storm_task.cancel()
                rig.sites[up].source.manual = 400.0
                await asyncio.sleep(2)
                await rig.kill(rig.agents[up])
                rig.start_agent(up)
                back = time.monotonic()
                storm_task = asyncio.create_task(storm(rig.sites, args.period_s))
            back_ms = int((time.time() - (time.monotonic() - back)) * 1000)
            await wait_until(
                lambda: fresh_from_all(db_url, rig.nodes, back_ms), 120, "every agent stored again"
            )
            recovery = time.monotonic() - back
            await asyncio.sleep(args.after_s)
            storm_task.cancel()
            for sim in rig.sites:
                sim.source.manual = 0.0

            async def settled() -> bool:
                n = await scalar(
                    db_url, "SELECT COUNT(*) FROM alerts WHERE level <> 'clear' AND kind <> 'comms_lost'"
                )
                return n == 0

            with contextlib.suppress(AssertionError):
                await wait_until(settled, 60, "every episode clear")
            await asyncio.sleep(3)
            return {**await measure(rig, name, recovery), "edges_s": edges}
        except AssertionError:
            if os.environ.get("FLOODGATE_BENCH_DEBUG"):
                rig.log.flush()
                print((folder / "processes.log").read_text()[-6000:], file=sys.stderr)
            raise
        finally:
            if storm_task is not None:
                storm_task.cancel()
            await rig.stop()
            rig.log.close()


async def measure(rig: Rig, name: str, recovery: float) -> dict[str, Any]:
    db = rig.db_url
    assert rig.tap is not None

    sent, wire, have = await sent_and_stored(db, rig.tap)
    twice, dup_tickets = await duplicates(db)
    stale = await scalar(db, "SELECT COUNT(*) FROM alerts WHERE level <> 'clear' AND kind <> 'comms_lost'")
    reconciled = await scalar(db, "SELECT COUNT(*) FROM alert_transitions WHERE reason LIKE 'reconciled:%'")
    if os.environ.get("FLOODGATE_BENCH_DEBUG"):
        print("lost:", sorted(sent - have)[:20], file=sys.stderr)
        for r in await rows(
            db,
            "SELECT a.node, a.dev, a.kind, t.level, t.prev, t.ts, t.reason, t.msg_id FROM alert_transitions t"
            " JOIN alerts a ON a.id = t.alert_id WHERE t.reason IS NOT NULL ORDER BY a.id, t.ts",
        ):
            print(" ", *r, file=sys.stderr)
    return {
        "fault": name,
        "wire": len(wire),
        "stored": len(have),
        "lost": len(sent - have),
        "stored_twice": int(twice),
        "duplicate_tickets": int(dup_tickets),
        "stale_active": int(stale),
        "reconciled": int(reconciled),
        "recovery_s": round(recovery, 1),
    }


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # the tap's client: a broker killed is expected here
    for name in args.faults.split(","):
        if name not in FAULTS:
            raise SystemExit(f"unknown fault {name!r}; one of {', '.join(FAULTS)}")
        with tempfile.TemporaryDirectory(prefix="fg-faults-") as tmp:
            r = await run_fault(name, args, Path(tmp))
        print(
            f"{r['fault']:16} wire {r['wire']:6d}  stored {r['stored']:6d}  lost {r['lost']:4d}  "
            f"stored twice {r['stored_twice']:3d}  duplicate tickets {r['duplicate_tickets']:2d}  "
            f"stale active {r['stale_active']:2d}  (reconciled {r['reconciled']})  "
            f"recovery {r['recovery_s']:.1f} s"
            + (
                f" (edges on the wire {r['edges_s']:.1f} s after the broker)"
                if r["edges_s"] is not None
                else ""
            ),
            flush=True,
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--down-s", type=float, default=8.0, help="how long the broker or collector is away")
    ap.add_argument("--warm-s", type=float, default=8.0, help="storm before the fault")
    ap.add_argument("--after-s", type=float, default=8.0, help="storm after recovery")
    ap.add_argument("--period-s", type=float, default=12.0, help="one wet-and-dry cycle of a site")
    ap.add_argument("--telemetry-s", type=float, default=0.2)
    asyncio.run(main(ap.parse_args()))
