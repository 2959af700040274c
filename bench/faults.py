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
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud.db.store import Store
from edge.config.site import load_site
from simulators.scenarios import Scenario
from simulators.site import SimSite
from tests.cloud.conftest import _pg_admin, pg_database
from tests.conftest import site_yaml
from tests.helpers import Mosquitto, wait_until

FAULTS = ("broker-unsaved", "broker-volatile", "collector", "agent")


@contextlib.asynccontextmanager
async def database() -> AsyncIterator[str]:
    """A database of its own for one fault (the test fixtures' way), dropped after."""
    async with pg_database(await _pg_admin(), "fg_faults") as url:
        yield url


class Tap:
    """An independent subscriber with its own persistent session: every envelope on the wire."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[str, tuple[str, int, int]] = {}  # msg_id -> (node, boot, seq)
        self.newest: dict[str, int] = {}  # node -> the newest envelope ts seen
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="bench-tap", clean_session=False
                ) as c:
                    await c.subscribe("floodgate/v1/+/+", qos=1)
                    async for m in c.messages:
                        kind = str(m.topic).rsplit("/", 1)[-1]
                        if kind in ("state", "cmd", "ack") or not isinstance(m.payload, bytes):
                            continue
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            p = json.loads(m.payload)
                            self.seen[p["msg_id"]] = (p["node"], int(p["boot"]), int(p["seq"]))
                            self.newest[p["node"]] = max(self.newest.get(p["node"], 0), int(p["ts"]))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)  # the broker is down: try again

    def start(self) -> Tap:
        self.task = asyncio.create_task(self.run())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


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
            f"database: {self.db_url}\n"
            f"broker: {{url: '{self.broker.url}', reconnect_max_s: 2}}\n"
            "client_id: bench-collector\napi: null\n"
        )
        cmd = [sys.executable, "-m", "floodgate.cli", "cloud", "run", "-c", str(cfg)]
        self.collector = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)

    def start_agent(self, i: int) -> None:
        cmd = [sys.executable, "-m", "floodgate.cli", "edge", "run", "--config", str(self.configs[i])]
        p = subprocess.Popen(cmd, stdout=self.log, stderr=self.log)
        if i < len(self.agents):
            self.agents[i] = p
        else:
            self.agents.append(p)

    def signal(self, p: subprocess.Popen[bytes] | None, sig: int) -> None:
        if p is not None and p.poll() is None:
            os.kill(p.pid, sig)

    async def kill(self, p: subprocess.Popen[bytes] | None) -> None:
        self.signal(p, signal.SIGKILL)
        if p is not None:
            await asyncio.to_thread(p.wait)

    async def stop(self) -> None:
        for p in [*self.agents, self.collector]:
            if p is not None and p.poll() is None:
                p.terminate()
                await asyncio.to_thread(p.wait)
        for s in self.sites:
            await s.stop()
        if self.tap is not None:
            await self.tap.stop()
        self.broker.stop()


async def storm(rig: Rig, period_s: float) -> None:
    """Each site's water up and down, staggered: alerts, boards and gates all the time."""
    t0 = time.monotonic()
    while True:
        for i, s in enumerate(rig.sites):
            phase = ((time.monotonic() - t0) / period_s + i / max(1, len(rig.sites))) % 1.0
            s.source.manual = 400.0 if phase < 0.5 else 0.0
        await asyncio.sleep(0.2)


async def scalar(db_url: str, sql: str) -> Any:
    s = Store(db_url)
    try:
        async with s.engine.connect() as conn:
            from sqlalchemy import text  # noqa: PLC0415

            return (await conn.execute(text(sql))).scalar()
    finally:
        await s.close()


async def rows(db_url: str, sql: str) -> list[Any]:
    s = Store(db_url)
    try:
        async with s.engine.connect() as conn:
            from sqlalchemy import text  # noqa: PLC0415

            return list((await conn.execute(text(sql))).all())
    finally:
        await s.close()


async def fresh_from_all(rig: Rig, since_ms: int) -> bool:
    """Every node has a message stored that it stamped after ``since_ms``."""
    got = await rows(rig.db_url, f"SELECT DISTINCT node FROM messages WHERE ts > {since_ms}")
    return {r[0] for r in got} >= set(rig.nodes)


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
        rig.tap = Tap(broker.port).start()
        storm_task: asyncio.Task[None] | None = None
        try:
            s = Store(db_url)
            await s.migrate()
            await s.close()
            rig.start_collector()
            for i in range(args.sites):
                node = f"bench-{name}-{i}"
                d = folder / node
                d.mkdir()
                src = d / "src.yaml"
                src.write_text(
                    site_yaml(node=node, poll_s=0.1, telemetry_interval_s=args.telemetry_s), encoding="utf-8"
                )
                sim = SimSite(load_site(src), Scenario.named("dry", noise_mm=0.0), gate_travel_s=0.3)
                await sim.start(d)
                rig.sites.append(sim)
                rig.configs.append(
                    sim.write_config(
                        d / "site.yaml",
                        {"broker.url": broker.url, "outbox.path": str(d / "outbox.db"), "heartbeat_s": 2},
                    )
                )
                rig.nodes.append(node)
                rig.start_agent(i)
            storm_task = asyncio.create_task(storm(rig, args.period_s))
            start_ms = int(time.time() * 1000)
            await wait_until(lambda: fresh_from_all(rig, start_ms), 60, "every agent stored")
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
                storm_task = asyncio.create_task(storm(rig, args.period_s))
            back_ms = int((time.time() - (time.monotonic() - back)) * 1000)
            await wait_until(lambda: fresh_from_all(rig, back_ms), 120, "every agent stored again")
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

    # The agents go on sending (telemetry, heartbeats): what counts is what they had sent
    # by now, each boot's sequence up to the highest seq seen anywhere, and whether the
    # collector has all of it once the last of it had time to arrive.
    async def stored() -> set[tuple[str, int, int]]:
        return {(r[0], int(r[1]), int(r[2])) for r in await rows(db, "SELECT node, boot, seq FROM messages")}

    top: dict[tuple[str, int], int] = {}
    for node, boot, seq in [*await stored(), *rig.tap.seen.values()]:
        top[(node, boot)] = max(top.get((node, boot), -1), seq)
    sent = {(n, b, s) for (n, b), hi in top.items() for s in range(hi + 1)}

    async def complete() -> bool:
        return sent <= await stored()

    with contextlib.suppress(AssertionError):
        await wait_until(complete, 30, "everything sent stored")
    have = await stored() & sent
    wire = {k for k in rig.tap.seen.values() if k in sent}
    twice = await scalar(
        db, "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM readings GROUP BY series, ts) x"
    )
    dup_tickets = await scalar(
        db, "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM tickets GROUP BY node, kind) x"
    )
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
