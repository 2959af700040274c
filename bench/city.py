"""City-scale bench (issue 13 §7): N virtual sites -> broker -> 1, 2 and 3 collectors on PostgreSQL.

For each collector count, a fresh world: the engine's brokers, a PostgreSQL database of its
own, the collectors (``floodgate cloud run`` processes sharing the intake) with the city's
site registry, and ``floodgate sim fleet``'s virtual nodes in this process (``--sites``,
default 10,000; a telemetry message every ``--telemetry-s`` and a heartbeat every
``--heartbeat-s`` each: about 2,000 messages/s for 10,000 sites). Once every node is
connected and the start-up surge (every node's birth at once) is taken in (the backlog under
2 s of traffic, at most ``--settle-max-s``; both times printed), for ``--duration`` seconds
it measures, per ``--window-s`` window (its real length: the loop may run late):

- offered: messages the nodes made (msg/s);
- stored: rows the collectors added to ``messages`` (msg/s);
- the backlog: made but not stored yet, at each window's end; its growth over the run
  (a least-squares slope, msg/s): about 0 when the collectors keep up.

Halfway (``--storm-at-s``), a cloudburst: the ``--storm-sites`` sites nearest the city centre
go to danger one after another within ``--storm-s`` seconds, each alerting at once. Alert ->
ticket: the ticket timeline entry's time (the collector's clock when it applied the
transition) minus the alert's edge stamp, p50 and p99 over the burst's transitions (as
bench/chaos.py measures it).

Printed per collector count: offered and stored rates (median and p99 over windows, and the
lowest stored window), backlog at the start and end and its growth, alert -> ticket p50/p99,
the CPU this process (the fleet) took, and the machine's load average (the bench shares two
cores with everything else on the box: quote the load with the figures).

    .venv/bin/python bench/city.py [--sites 10000] [--duration 600] [--collectors 1,2,3]
        [--engine mosquitto|nats] [--storm-sites 1000 --storm-s 10]
    .venv/bin/python bench/city.py --part clients [--connections 1000]

``--part clients``: what one connection costs, ``simulators.mqtt_lite`` against aiomqtt
(paho), in the same process: the memory per connection and the CPU per QoS 1 message.

Engines: ``mosquitto`` (one broker, the collectors on ``$share``) and ``nats`` (a 3-node
cluster, the collectors sharing the JetStream durable consumer), as bench/chaos.py has them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiomqtt

from bench.chaos import ENGINES, Engine, NatsEngine, alert_to_ticket, pct
from bench.rig import collector_cmd, collector_yaml, database, kill, rows, scalar
from simulators.city import KM_PER_DEG_LAT, km_per_deg_lon, registry_yaml
from simulators.mqtt_lite import Connection, Endpoint
from simulators.vfleet import Fleet, FleetOptions
from tests.helpers import Mosquitto, wait_until

CENTRE = (23.13, 113.32)  # Tianhe, downtown: where the cloudburst falls
# The cluster's MQTT settings for a city (docs/deployment.md): a QoS 1 subscription is a JetStream
# consumer; at the default (R3 on file, a Raft group each) 1,000 nodes' subscriptions were
# refused or timed out; in memory on one replica 10,000 nodes subscribed.
CITY_NATS_MQTT: dict[str, str | int | bool] = {"consumer_replicas": 1, "consumer_memory_storage": True}


HZ = os.sysconf("SC_CLK_TCK")


async def in_consumers(nc: Any) -> str:
    """On NATS, what of the backlog the collectors' consumers hold (the rest is not in the
    stream yet: in the nodes' sockets or the gateway's): not delivered, and delivered but not
    acknowledged, for the shared durable and the alert lane's. ``nc``: the bench's own
    connection (None: not NATS, or it could not connect)."""
    if nc is None:
        return ""
    js = nc.jetstream(timeout=3)
    parts = []
    for durable in ("floodgate-collectors", "floodgate-collectors-alerts"):
        try:
            info = await asyncio.wait_for(js.consumer_info("$MQTT_msgs", durable), 5)
        except Exception as exc:  # a window's figure lost, not the run
            parts.append(f"{durable.removeprefix('floodgate-')}: {type(exc).__name__}")
            continue
        parts.append(f"{durable.removeprefix('floodgate-')} {info.num_pending}+{info.num_ack_pending}")
    return "  in consumers: " + ", ".join(parts)


async def watch_consumers(engine: Engine) -> Any:
    """The bench's connection to the cluster for ``in_consumers`` (None when not NATS, or the
    cluster does not take it within 5 s: the windows then go without the figure)."""
    if not isinstance(engine, NatsEngine):
        return None
    import nats  # noqa: PLC0415 - the nats engine only

    async def quiet(_exc: Exception) -> None:
        return None

    try:
        return await asyncio.wait_for(
            nats.connect(
                engine.cluster.nats_urls, connect_timeout=2, max_reconnect_attempts=3, error_cb=quiet
            ),
            5,
        )
    except Exception:
        return None


Used = dict[int, tuple[str, float]]  # pid -> (part, CPU seconds so far)


def cpu_parts(db_url: str) -> Used:
    """CPU seconds used so far by the processes of the run, by pid: this bench's children (the
    brokers, the collectors) and PostgreSQL's backends serving the run's database."""
    me, db = os.getpid(), db_url.rsplit("/", 1)[-1]
    found: Used = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        comm, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        used = (int(fields[11]) + int(fields[12])) / HZ  # utime + stime
        if int(fields[1]) == me:  # ppid
            part = "collectors" if "cloud run" in cmd else "brokers" if comm != "python" else ""
        else:
            part = "database" if cmd.startswith("postgres:") and f" {db} " in cmd else ""
        if part:
            found[int(entry.name)] = (part, used)
    return found


def cpu_between(before: Used, after: Used) -> dict[str, float]:
    """CPU seconds each part used between two ``cpu_parts`` (a process that ended is not counted)."""
    spent: dict[str, float] = {}
    for pid, (part, used) in after.items():
        spent[part] = spent.get(part, 0.0) + used - before.get(pid, (part, 0.0))[1]
    return spent


@dataclass
class Result:
    collectors: int
    offered: list[float] = field(default_factory=list)  # msg/s per window
    stored: list[float] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)  # at each window's end
    times: list[float] = field(default_factory=list)  # each window's end, s from the start
    latency: tuple[float, float, int] | None = None
    to_collector: tuple[float, float, int] | None = None  # the burst's alerts: edge stamp -> received
    cpu_fleet: float = 0.0  # this process's CPU, share of one core
    cpu: dict[str, float] = field(default_factory=dict)  # part -> its CPU, share of one core
    stored_in_run: int = 0  # rows stored while measured
    duration_s: float = 0.0  # the measured time
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    connect_s: float = 0.0
    settle_s: float = 0.0
    settled: bool = True  # the start-up backlog taken in within --settle-max-s
    sent: int = 0
    stored_total: int = 0
    confirmed: int = 0
    resent: int = 0

    def settle_text(self) -> str:
        if self.settled:
            return f"taken in {self.settle_s:.1f} s"
        return f"NOT taken in within {self.settle_s:.1f} s (measured from then)"

    def growth(self) -> float:
        """The backlog's least-squares slope over the run, msg/s."""
        n = len(self.backlog)
        if n < 2:
            return 0.0
        mx, my = statistics.fmean(self.times), statistics.fmean(self.backlog)
        num = sum((x - mx) * (y - my) for x, y in zip(self.times, self.backlog, strict=True))
        return num / sum((x - mx) ** 2 for x in self.times)

    def lines(self) -> list[str]:
        def rate(v: list[float]) -> str:
            return f"median {statistics.median(v):7.0f}  p99 {pct(v, 0.99):7.0f}" if v else "n/a"

        lat = (
            "n/a"
            if self.latency is None
            else (
                f"p50 {self.latency[0]:.0f} ms  p99 {self.latency[1]:.0f} ms  ({self.latency[2]} transitions)"
            )
        )
        leg = (
            "n/a"
            if self.to_collector is None
            else f"p50 {self.to_collector[0]:.0f} ms  p99 {self.to_collector[1]:.0f} ms"
            f"  ({self.to_collector[2]} alerts; the rest is the collector's)"
        )
        # keeping up: the backlog grows by less than 1 % of the offered rate
        keeping = self.growth() < 0.01 * max(1.0, statistics.fmean(self.offered or [1]))
        keeps = "keeps up" if keeping else "FALLS BEHIND"
        b0, b1 = (self.backlog[0], self.backlog[-1]) if self.backlog else (0, 0)
        load = " ".join(f"{x:.2f}" for x in self.load)
        per_message = ""
        if self.stored_in_run and self.duration_s and "collectors" in self.cpu:
            us = self.cpu["collectors"] * self.duration_s / self.stored_in_run * 1e6
            per_message = f"; collectors {us:.0f} us per stored message"
        return [
            f"collectors {self.collectors}: all connected in {self.connect_s:.1f} s,"
            f" start-up backlog {self.settle_text()} after",
            f"  offered msg/s  {rate(self.offered)}",
            f"  stored  msg/s  {rate(self.stored)}  lowest {min(self.stored, default=0):.0f}",
            f"  backlog        start {b0}  end {b1}  growth {self.growth():+.1f} msg/s  -> {keeps}",
            f"  alert->ticket  {lat}",
            f"    of which edge -> a collector's intake  {leg}",
            f"  totals         made {self.sent}  stored {self.stored_total}"
            f"  confirmed to the nodes {self.confirmed}  resent {self.resent}",
            f"  fleet CPU {self.cpu_fleet:.0%} of a core; load average {load}",
            "  CPU (share of a core)  "
            + "  ".join(f"{part} {share:.0%}" for part, share in sorted(self.cpu.items()))
            + per_message,
        ]


async def stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = 20.0) -> None:
    """SIGTERM each collector; one still running after ``grace_s`` gets ``kill -9`` (by its PID)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            await asyncio.to_thread(p.wait, grace_s)
        except subprocess.TimeoutExpired:
            print(f"collector {p.pid} still running {grace_s:g} s after SIGTERM: kill -9", flush=True)
            await kill(p)


async def alerts_received(db_url: str, lo_ms: int, hi_ms: int) -> tuple[float, float, int] | None:
    """p50, p99 and count of (received - edge stamp) of the alerts stamped in [lo, hi): the
    broker's part of alert -> ticket (the broker, the stream, the fetch)."""
    got = [
        float(received - ts)
        for ts, received in await rows(
            db_url,
            "SELECT ts, received_ms FROM messages WHERE kind = 'alert' AND ts >= :lo AND ts < :hi",
            {"lo": lo_ms, "hi": hi_ms},
        )
    ]
    return (statistics.median(got), pct(got, 0.99), len(got)) if got else None


async def backlog_below(db_url: str, fleet: Fleet, limit: float) -> bool:
    return fleet.sent - int(await scalar(db_url, "SELECT count(*) FROM messages")) < limit


STATE = "floodgate/v1/_host/state"


async def collectors_online(url: str) -> None:
    """Until a collector's retained online state is on the broker (it has subscribed): a node's
    first messages would otherwise find nobody, and come again only as the ack contract's resends."""
    ep = Endpoint.parse(url)
    async with aiomqtt.Client(ep.host, ep.port, identifier=f"city-watch-{os.getpid()}") as c:
        async with asyncio.timeout(60):
            # A loaded nats-server may refuse a SUBSCRIBE (SUBACK 0x80): then ask again, or
            # this would wait for an online state it can never be sent.
            delay = 0.2
            while any(int(getattr(q, "value", q)) >= 0x80 for q in await c.subscribe(STATE, qos=1)):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            async for m in c.messages:
                if isinstance(m.payload, bytes) and b'"online":true' in m.payload.replace(b" ", b""):
                    break


def nearest(fleet: Fleet, k: int) -> list[str]:
    lat0, lon0 = CENTRE
    kx = km_per_deg_lon(lat0)

    def dist(i: int) -> float:
        s = fleet.sites[i]
        return math.hypot((s.lat - lat0) * KM_PER_DEG_LAT, (s.lon - lon0) * kx)

    order = sorted(range(len(fleet.sites)), key=dist)
    return [fleet.nodes[i].node for i in order if fleet.nodes[i].role == "steady"][:k]


async def run_one(args: argparse.Namespace, k: int, folder: Path) -> Result:
    engine: Engine = (
        NatsEngine(
            folder,
            mqtt=CITY_NATS_MQTT if args.nats_consumers == "memory-r1" else None,
            env={"GOMAXPROCS": str(args.nats_procs)} if args.nats_procs else None,
        )
        if args.engine == "nats"
        else ENGINES[args.engine](folder)
    )
    await asyncio.to_thread(engine.start)
    procs: list[subprocess.Popen[bytes]] = []
    res = Result(k)
    try:
        async with database("fg_city") as db_url:
            try:
                opts = FleetOptions(
                    urls=tuple(engine.mqtt_urls),
                    nodes=args.sites,
                    seed=args.seed,
                    telemetry_s=args.telemetry_s,
                    heartbeat_s=args.heartbeat_s,
                    storms=0,
                    per_connection=args.per_connection,
                    sub_qos=args.sub_qos if args.sub_qos is not None else (0 if args.engine == "nats" else 1),
                    connect_rate=args.connect_rate,
                    handshakes=args.handshakes,
                    prefix="city",
                )
                fleet = Fleet(opts)
                reg = folder / "registry.yaml"
                reg.write_text(registry_yaml(fleet.sites), encoding="utf-8")
                for i in range(k):
                    cfg = folder / f"collector-{i}.yaml"
                    extra = f"api: null\nregistry: {reg}\n"
                    cfg.write_text(collector_yaml(db_url, engine.collector_config(), f"city-{i}", extra))
                    log = (folder / f"collector-{i}.log").open("wb")
                    procs.append(subprocess.Popen(collector_cmd(cfg), stdout=log, stderr=subprocess.STDOUT))
                try:
                    await collectors_online(engine.mqtt_urls[0])
                except TimeoutError:
                    for i, p in enumerate(procs):
                        tail = (folder / f"collector-{i}.log").read_text(errors="replace")[-1500:]
                        print(f"collector {i} ({'running' if p.poll() is None else p.returncode}):\n{tail}")
                    if not all(p.poll() is None for p in procs):
                        raise SystemExit("a collector ended") from None
                    print("no collector's online state within 60 s; the fleet starts anyway", flush=True)
                t0 = time.monotonic()
                await fleet.start()
                try:
                    await wait_until(
                        lambda: fleet.stats().connected == len(fleet.links),
                        args.connect_max_s,
                        "all connected",
                        every=0.5,
                    )
                except AssertionError:
                    # A few links stuck retrying their handshakes on a loaded cluster: measure what
                    # there is when nearly all are there, and say so.
                    if fleet.stats().connected < 0.99 * len(fleet.links):
                        raise
                res.connect_s = time.monotonic() - t0
                print(
                    f"  {fleet.stats().connected} of {len(fleet.links)} nodes connected and subscribed"
                    f" in {res.connect_s:.1f} s",
                    flush=True,
                )
                # The start-up surge (every node's birth at once) is not the steady state: measure from
                # when the backlog is under 2 s of traffic (or --settle-max-s has passed).
                t1 = time.monotonic()
                try:
                    await wait_until(
                        lambda: backlog_below(db_url, fleet, 2 * args.sites / args.telemetry_s),
                        args.settle_max_s,
                        "the start-up backlog taken in",
                        every=2.0,
                    )
                except AssertionError:
                    res.settled = False
                res.settle_s = time.monotonic() - t1
                print(f"  start-up backlog {res.settle_text()}", flush=True)
                base = int(await scalar(db_url, "SELECT count(*) FROM messages"))
                nc = await watch_consumers(engine)
                cpu0, wall0, parts0 = time.process_time(), time.monotonic(), cpu_parts(db_url)
                storm_at = args.storm_at_s if args.storm_at_s is not None else args.duration / 2
                storm_lo = storm_hi = 0
                prev_sent, prev_stored, prev_at = fleet.sent, base, time.monotonic()
                end = wall0 + args.duration
                stormed = False
                while time.monotonic() < end:
                    await asyncio.sleep(min(args.window_s, max(0.0, end - time.monotonic())))
                    if not stormed and time.monotonic() - wall0 >= storm_at:
                        stormed = True
                        storm_lo = int(time.time() * 1000)
                        fleet.cloudburst(nearest(fleet, args.storm_sites), args.storm_s)
                        storm_hi = storm_lo + int(args.storm_s * 1000) + 1000
                    try:
                        stored = int(await scalar(db_url, "SELECT count(*) FROM messages"))
                    except Exception as exc:  # a window lost, not the run
                        print(f"  window count failed: {exc!r}", flush=True)
                        continue
                    at = time.monotonic()
                    span = at - prev_at  # the window as it was (the loop or the query may run late)
                    res.offered.append((fleet.sent - prev_sent) / span)
                    res.stored.append((stored - prev_stored) / span)
                    res.times.append(at - wall0)
                    res.backlog.append(fleet.sent - stored)  # the database holds this fleet's messages only
                    prev_sent, prev_stored, prev_at = fleet.sent, stored, at
                    held = await in_consumers(nc)
                    print(
                        f"  [{k} collectors, {time.monotonic() - wall0:5.0f} s]"
                        f" offered {res.offered[-1]:6.0f}  stored {res.stored[-1]:6.0f}"
                        f"  backlog {res.backlog[-1]}{held}",
                        flush=True,
                    )
                res.duration_s = time.monotonic() - wall0
                res.cpu_fleet = (time.process_time() - cpu0) / res.duration_s
                spent = cpu_between(parts0, cpu_parts(db_url))
                res.cpu = {part: used / res.duration_s for part, used in spent.items()}
                res.stored_in_run = prev_stored - base
                res.load = os.getloadavg()
                if stormed:
                    await asyncio.sleep(2.0)  # the last of the burst's tickets
                    res.latency = await alert_to_ticket(db_url, storm_lo, storm_hi)
                    res.to_collector = await alerts_received(db_url, storm_lo, storm_hi)
                if nc is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(nc.close(), 5)
                s = fleet.stats()
                res.sent, res.confirmed, res.resent = s.sent, s.confirmed, s.resent
                res.stored_total = int(await scalar(db_url, "SELECT count(*) FROM messages"))
                await fleet.stop()
            finally:
                await stop_all(procs)  # before the database goes
    finally:
        await stop_all(procs)
        await asyncio.to_thread(engine.stop)
    return res


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class _Acks:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, _pid: int) -> None:
        self.count += 1


async def _lite(url: str, n: int, per: int) -> tuple[float, int]:
    """n mqtt_lite connections, then ``per`` QoS 1 messages on each: (CPU s, RSS KiB) after connecting."""
    acks = _Acks()
    ep = Endpoint.parse(url)
    conns = [
        await Connection.open(ep, f"lite-{i}", on_message=lambda t, p: None, on_puback=acks) for i in range(n)
    ]
    after = time.process_time(), rss_kb()
    for _ in range(per):
        for c in conns:
            c.publish("bench/lite", b"x" * 200)
    await wait_until(lambda: acks.count >= n * per, 120, "every PUBACK")
    for c in conns:
        c.disconnect()
    return after


async def _paho(port: int, n: int, per: int) -> tuple[float, int]:
    """The same with n aiomqtt (paho) clients."""
    async with contextlib.AsyncExitStack() as stack:
        cl = [
            await stack.enter_async_context(aiomqtt.Client("127.0.0.1", port, identifier=f"paho-{i}"))
            for i in range(n)
        ]
        after = time.process_time(), rss_kb()
        for _ in range(per):
            await asyncio.gather(*(c.publish("bench/paho", b"x" * 200, qos=1) for c in cl))
    return after


async def clients(args: argparse.Namespace, folder: Path) -> None:
    """The cost of a connection: mqtt_lite vs aiomqtt, RSS per connection and CPU per QoS 1 message."""
    broker = Mosquitto(folder)
    await asyncio.to_thread(broker.start)
    n, per = args.connections, args.messages_per_connection
    try:
        for name in ("mqtt_lite", "aiomqtt"):
            gc.collect()
            rss0, cpu0 = rss_kb(), time.process_time()
            if name == "mqtt_lite":
                cpu1, rss1 = await _lite(broker.url, n, per)
            else:
                cpu1, rss1 = await _paho(broker.port, n, per)
            cpu2 = time.process_time()
            print(
                f"{name:9}: {n} connections, {(rss1 - rss0) / n:6.1f} KiB"
                f" and {(cpu1 - cpu0) / n * 1e3:5.2f} ms CPU each to connect;"
                f" {(cpu2 - cpu1) / (n * per) * 1e6:6.1f} us CPU per QoS 1 message",
                flush=True,
            )
    finally:
        await asyncio.to_thread(broker.stop)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["run", "clients"], default="run")
    p.add_argument("--engine", choices=sorted(ENGINES), default="mosquitto")
    p.add_argument("--sites", type=int, default=10_000)
    p.add_argument("--collectors", default="1,2,3", help="collector counts to run, e.g. 1,2,3")
    p.add_argument("--duration", type=float, default=600.0, help="seconds measured per collector count")
    p.add_argument("--window-s", type=float, default=10.0)
    p.add_argument("--telemetry-s", type=float, default=5.0)
    p.add_argument("--heartbeat-s", type=float, default=60.0)
    p.add_argument("--per-connection", type=int, default=1)
    p.add_argument(
        "--sub-qos",
        type=int,
        choices=[0, 1],
        help="QoS of the nodes' subscriptions (default: 0 on nats, where QoS 1 is a consumer each; else 1)",
    )
    p.add_argument("--connect-rate", type=float, default=500.0)
    p.add_argument(
        "--connect-max-s",
        type=float,
        default=600.0,
        help="wait this long for every node to connect; then measure if 99%% are (printed)",
    )
    p.add_argument("--handshakes", type=int, default=100, help="nodes between CONNECT and SUBACK at once")
    p.add_argument(
        "--nats-consumers",
        choices=["memory-r1", "default"],
        default="memory-r1",
        help="the MQTT sessions' consumers: in memory on one replica (for a city) or nats-server's default",
    )
    p.add_argument(
        "--nats-procs",
        type=int,
        default=0,
        help="GOMAXPROCS of each nats-server (0: Go's default, every core); see the deployment guide",
    )
    p.add_argument("--settle-max-s", type=float, default=180.0, help="at most this for the start-up backlog")
    p.add_argument("--storm-sites", type=int, default=1000)
    p.add_argument("--storm-s", type=float, default=10.0)
    p.add_argument("--storm-at-s", type=float, help="when the cloudburst falls (default: halfway)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--connections", type=int, default=1000, help="--part clients: connections of each kind")
    p.add_argument("--messages-per-connection", type=int, default=10)
    return p


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="fg-city-") as tmp:
        if args.part == "clients":
            await clients(args, Path(tmp))
            return
        counts = [int(x) for x in args.collectors.split(",")]
        print(
            f"city bench: {args.sites} sites, telemetry every {args.telemetry_s} s, heartbeat every"
            f" {args.heartbeat_s} s, engine {args.engine}, {args.duration:.0f} s per run;"
            f" load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
            flush=True,
        )
        results = []
        for k in counts:
            folder = Path(tmp) / f"k{k}"
            folder.mkdir()
            results.append(await run_one(args, k, folder))
            print("\n".join(results[-1].lines()), flush=True)  # at once: a later run may not end well
        print()
        for r in results:
            print("\n".join(r.lines()))


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
