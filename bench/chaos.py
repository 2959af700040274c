"""The chaos suite (issue 13 §6): faults in turn during a storm, measured from outside.

One world for the whole run: a broker engine, three collectors (``floodgate cloud run``
processes) on one PostgreSQL database, a few real agents (``floodgate edge run``) on
simulated Modbus sites in a repeating storm, one of them inside a network namespace of
its own, and an independent tap (a persistent MQTT session that records every envelope).
The engine is pluggable:

- ``mosquitto``: one persistent mosquitto, the collectors sharing ``$share/chaos/…``
  (what a district runs today; the broker is itself the single point of failure).
- ``nats``: a 3-node NATS cluster (JetStream, its MQTT listener on every node), the
  collectors sharing one durable pull consumer on ``$MQTT_msgs``.

The faults, in turn (each waits until the world has recovered from the one before):

- ``leader``: ``kill -9`` of the broker node leading ``$MQTT_msgs``, restarted after
  ``--down-s``. On mosquitto, the broker.
- ``consumer-leader``: the same for the node leading the collectors' consumer (when the
  stream's leader led it too, this is the node that took over). Skipped on mosquitto.
- ``collector``: ``kill -9`` of a collector at the storm's full rate (mid-batch), restarted
  after ``--down-s``.
- ``partition``: the namespaced agent cut off from every broker (its link down) for
  ``--cut-s``, then let back; it keeps its backlog in its outbox meanwhile.
- ``backlog``: every collector stopped for ``--down-s`` while the edges go on sending,
  then started again on the backlog.

Per fault it prints: what the edges sent (each boot's sequence up to the highest seq seen;
what the broker acknowledged is within it, and how many of the virtual sites' messages went
again) against what the tap saw on the wire and what is stored, lost (sent, never stored:
target 0), messages stored twice, duplicate reading rows and duplicate tickets (0), each
collector's share of the messages stored in the phase
(its /metrics ``floodgate_messages_stored_total``, read every 0.5 s, added up over its
restarts), alert → ticket p50/p99 (edge stamp to ticket timeline entry) during the fault and
after it, the stall (fault until every other edge is stored again) and the recovery (the
part back until every edge's fresh messages and everything sent before are stored). What is
still missing when that last wait begins is looked up by key (a row's ``received_ms`` is
when a collector fetched it, not when it committed), and a wait that fails says of each
missing message whether it is stored after all, a dead letter, what a virtual site's
ledger says of it, and where ``$MQTT_msgs`` and the collectors' consumer have it.

The tap is a QoS 1 subscriber: on the cluster it is a second consumer of the edges'
messages, and nats-server 2.9.10 drops some that it acknowledges before the collectors
have them (docs/deployment.md); the edges' resends make them good.

    .venv/bin/python bench/chaos.py [--engine mosquitto|nats] [--sites 4] [--faults leader,partition]
        [--down-s 10] [--cut-s 180] [--fleet 500]

Needs root for the partition (``ip netns``); without it that fault is skipped and says why.
PostgreSQL: as the tests find it (``FLOODGATE_TEST_PG_URL``); a database of its own, dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import netns
from bench.rig import (
    Key,
    Tap,
    agent_cmd,
    collector_cmd,
    collector_yaml,
    database,
    dead_letters_of,
    fresh_from_all,
    kill,
    new_site,
    rows,
    scalar,
    sent_and_stored,
    stored,
    stored_keys,
    storm,
    terminate,
    wait_stored,
)
from floodgate.demo import free_port
from simulators.site import SimSite
from simulators.vfleet import CONFIRMED, PUBACKED, SENT, SHED, Fleet, FleetOptions
from tests.helpers import Mosquitto, NatsCluster, wait_until

FAULTS = ("leader", "consumer-leader", "collector", "partition", "backlog")
STREAM = "$MQTT_msgs"  # where the cluster's MQTT gateway keeps what it acknowledged
SUBJECT = "$MQTT.msgs.floodgate.v1."  # its subjects for the edges' topics, then <node>.<kind>
DURABLE = "floodgate-collectors"  # the consumer every collector shares
log = logging.getLogger("chaos")


def now_ms() -> int:
    return int(time.time() * 1000)


class Engine(Protocol):
    """The brokers the edges publish to and the collectors consume from."""

    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...

    @property
    def mqtt_urls(self) -> list[str]: ...

    def collector_config(self) -> str:
        """The ``broker:`` value and any other keys a collector needs for this engine."""
        ...

    async def kill_leader(self, of: str) -> str | None:
        """``kill -9`` the node leading ``of`` ("stream" or "consumer"); says which, or None
        when the engine has no such leader of its own."""
        ...

    async def restart(self) -> None:
        """Start again what ``kill_leader`` killed."""
        ...

    async def whereabouts(self, keys: set[Key]) -> tuple[str, dict[Key, str]]:
        """What the engine says of messages not stored: a line on the collectors' queue, and per
        key where the message is. Empty when it cannot tell."""
        ...


class MosquittoEngine:
    """One persistent mosquitto; the collectors share ``$share/chaos/…``."""

    name = "mosquitto"

    def __init__(self, folder: Path) -> None:
        self.broker = Mosquitto(folder, persistence=True)

    def start(self) -> None:
        self.broker.start()

    def stop(self) -> None:
        self.broker.stop()

    @property
    def mqtt_urls(self) -> list[str]:
        return [self.broker.url]

    def collector_config(self) -> str:
        return f"{{url: '{self.broker.url}', reconnect_max_s: 1}}\nshared_group: chaos\n"

    async def kill_leader(self, of: str) -> str | None:
        if of != "stream":
            return None  # one broker: the stream's leader fault is the broker's
        await asyncio.to_thread(self.broker.kill)
        return "mosquitto (the only broker)"

    async def restart(self) -> None:
        await asyncio.to_thread(self.broker.start)

    async def whereabouts(self, keys: set[Key]) -> tuple[str, dict[Key, str]]:
        return "", {}  # mosquitto does not show what it holds for a shared subscription


class NatsEngine:
    """A 3-node NATS cluster (JetStream, MQTT on every node); the collectors share one durable
    pull consumer on ``$MQTT_msgs``. The edges and the tap know every node's MQTT listener."""

    name = "nats"

    def __init__(
        self,
        folder: Path,
        mqtt: dict[str, str | int | bool] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cluster = NatsCluster(folder / "nats", size=3, mqtt=mqtt, env=env)
        self.killed: list[int] = []

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    @property
    def mqtt_urls(self) -> list[str]:
        return self.cluster.mqtt_urls

    def collector_config(self) -> str:
        mqtt = ", ".join(f"'{u}'" for u in self.cluster.mqtt_urls)
        nats = ", ".join(f"'{u}'" for u in self.cluster.nats_urls)
        return f"{{urls: [{mqtt}], reconnect_max_s: 1}}\nnats: {{urls: [{nats}]}}\n"

    def consumer_leader(self) -> int | None:
        """The node leading the collectors' consumer on ``$MQTT_msgs`` (as a live node reports it)."""
        names = {f"n{i}": i for i in range(self.cluster.size)}
        for i in self.cluster.alive():
            jsz = self.cluster.monitor(i, "jsz?accounts=true&streams=true&consumers=true")
            for account in jsz.get("account_details") or []:
                for s in account.get("stream_detail") or []:
                    if s.get("name") != STREAM:
                        continue
                    for c in s.get("consumer_detail") or []:
                        leader = (c.get("cluster") or {}).get("leader")
                        if c.get("name") == DURABLE and leader in names:
                            return names[leader]
        return None

    async def kill_leader(self, of: str) -> str | None:
        """One node at a time (an R3 cluster survives one): the stream's leader, or the consumer's."""
        stream = await asyncio.to_thread(self.cluster.leader_of, STREAM)
        consumer = await asyncio.to_thread(self.consumer_leader)
        node = stream if of == "stream" else consumer
        if node is None:
            raise AssertionError(f"no leader of the {of} found")
        self.killed = [node]
        await asyncio.to_thread(self.cluster.kill, node)
        return f"n{node}, leader of " + " and of ".join(
            w for w, n in ((STREAM, stream), (f"the consumer {DURABLE}", consumer)) if n == node
        )

    async def restart(self) -> None:
        for i in self.killed:
            await asyncio.to_thread(self.cluster.restart, i)

    async def whereabouts(self, keys: set[Key]) -> tuple[str, dict[Key, str]]:
        """The collectors' consumer (its delivered and ack floor stream seqs, acks pending,
        redeliveries) and, per key, whether ``$MQTT_msgs`` still holds the message and where it
        stands against that consumer: at or below its ack floor (acknowledged by a collector,
        or the floor moved past it), delivered and not yet acknowledged, or not yet delivered."""
        import nats  # noqa: PLC0415
        import nats.errors  # noqa: PLC0415
        import nats.js.errors  # noqa: PLC0415

        try:
            nc = await nats.connect(
                servers=self.cluster.nats_urls, connect_timeout=2, max_reconnect_attempts=3
            )
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            return f"  NATS: not reachable ({type(exc).__name__}: {exc})", {}
        try:
            js = nc.jetstream(timeout=10)
            try:
                ci = await js.consumer_info(STREAM, DURABLE)
                si = await js.stream_info(STREAM)
            except (TimeoutError, nats.errors.Error) as exc:
                return f"  NATS: consumer or stream info failed ({type(exc).__name__}: {exc})", {}
            floor = ci.ack_floor.stream_seq if ci.ack_floor is not None else 0
            delivered = ci.delivered.stream_seq if ci.delivered is not None else 0
            leader = ci.cluster.leader if ci.cluster is not None else None
            line = (
                f"  {STREAM}: seqs {si.state.first_seq}..{si.state.last_seq}, {si.state.messages} held;"
                f" consumer {DURABLE} (leader {leader}): delivered up to stream seq {delivered},"
                f" ack floor {floor}, {ci.num_ack_pending} awaiting ack, {ci.num_redelivered}"
                f" redelivered, {ci.num_pending} not yet delivered, {ci.num_waiting} pulls waiting"
            )
            at: dict[Key, int] = {}
            budget = 5000  # messages read at most: the stream holds what some consumer has not acked
            for node in sorted({k[0] for k in keys}):
                want = {(k[1], k[2]) for k in keys if k[0] == node}
                seq = si.state.first_seq
                while budget > 0:
                    budget -= 1
                    try:
                        m = await js.get_msg(STREAM, seq, subject=f"{SUBJECT}{node}.*", next=True)
                    except nats.js.errors.NotFoundError:
                        break
                    except (TimeoutError, nats.errors.Error) as exc:
                        line += f"\n  (looking {node} up in {STREAM} failed: {type(exc).__name__}: {exc})"
                        break
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        env = json.loads(m.data or b"")
                        if (int(env["boot"]), int(env["seq"])) in want:
                            at[(node, int(env["boot"]), int(env["seq"]))] = int(m.seq or 0)
                    seq = int(m.seq or seq) + 1
            where: dict[Key, str] = {}
            for k in keys:
                s = at.get(k)
                if s is None and budget <= 0:
                    where[k] = f"not found in {STREAM} (stopped after reading 5000 messages)"
                elif s is None:
                    where[k] = f"not in {STREAM} (acknowledged by every consumer, or never there)"
                elif s <= floor:
                    where[k] = f"in {STREAM} at seq {s}, at or below the consumer's ack floor (acknowledged)"
                elif s <= delivered:
                    where[k] = f"in {STREAM} at seq {s}, delivered to a collector (acknowledged or not)"
                else:
                    where[k] = f"in {STREAM} at seq {s}, not yet delivered to a collector"
            return line, where
        finally:
            with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                await asyncio.wait_for(nc.close(), 5)


ENGINES: dict[str, Callable[[Path], Engine]] = {"mosquitto": MosquittoEngine, "nats": NatsEngine}


@dataclass
class Phase:
    """One fault's figures."""

    fault: str
    what: str = ""
    start_ms: int = 0
    back_ms: int = 0
    recovered_ms: int = 0
    end_ms: int = 0
    sent: int = 0
    wire: int = 0
    stored: int = 0
    lost: int = 0
    pubacked: int | None = None  # fleet: seqs the broker acknowledged (PUBACK) in the phase
    pubacked_lost: int | None = None  # of those, never stored (0)
    # fleet: messages sent again (a gap below what the collectors confirmed, a deadline): the
    # broker lost them after its PUBACK, or another collector was still committing them
    resent: int | None = None
    stored_twice: int = 0
    duplicate_rows: int = 0
    duplicate_tickets: int = 0
    share: dict[str, int] | None = None
    during_ms: tuple[float, float, int] | None = None  # p50, p99, count
    after_ms: tuple[float, float, int] | None = None
    stall_s: float | None = None
    cut_leak: int | None = None  # partition: envelopes of the cut-off agent the tap got while cut (0)
    held: int | None = None  # partition: its messages stamped while cut off, stored after (> 0)
    recovery_s: float | None = None
    skipped: str | None = None
    missing: str = ""  # what is known of the messages not stored (missing_report), when any
    # Missing when the wait for everything sent began, stored with a received_ms (the fetch)
    # over 30 s before it: the old check (rows received in the last 30 s) never saw them.
    waited: int = 0  # messages missing when the wait for everything sent began
    late: int = 0
    late_lag_s: float = 0.0  # the longest fetch-to-seen-stored of what was missing then

    def line(self) -> str:
        if self.skipped:
            return f"{self.fault:9} skipped: {self.skipped}"

        def lat(x: tuple[float, float, int] | None) -> str:
            return "n/a" if x is None else f"p50 {x[0]:.0f} / p99 {x[1]:.0f} ms (n={x[2]})"

        share = (
            "n/a (no /metrics)"
            if self.share is None
            else " ".join(
                f"{k} {100 * v / max(1, sum(self.share.values())):.0f}%" for k, v in self.share.items()
            )
        )
        return (
            f"{self.fault:9} {self.what}\n"
            f"          sent {self.sent}  on the wire {self.wire}  stored {self.stored}  lost {self.lost}  "
            + (
                ""
                if self.pubacked is None
                else f"(fleet: broker-acknowledged {self.pubacked}, of them lost {self.pubacked_lost},"
                f" sent again {self.resent})  "
            )
            + f"stored twice {self.stored_twice}  duplicate rows {self.duplicate_rows}  "
            f"duplicate tickets {self.duplicate_tickets}\n"
            f"          share {share}\n"
            f"          alert->ticket during {lat(self.during_ms)}, after {lat(self.after_ms)}\n"
            f"          stall {self.stall_s if self.stall_s is None else round(self.stall_s, 1)} s  "
            f"recovery {self.recovery_s if self.recovery_s is None else round(self.recovery_s, 1)} s"
            + (
                ""
                if self.held is None
                else f"  (while cut off: {self.held} of its messages held and stored after,"
                f" {self.cut_leak} reached the broker)"
            )
            + (
                f"\n          missing when the wait for everything sent began: {self.waited}, stored after"
                f" it (longest fetch to seen stored {self.late_lag_s:.0f} s); fetched over"
                f" {OLD_WINDOW_MS // 1000} s before it: {self.late}"
                if self.waited
                else ""
            )
            + (f"\n{self.missing}" if self.missing else "")
        )


@dataclass
class World:
    folder: Path
    engine: Engine
    db_url: str
    args: argparse.Namespace
    log: Any
    sites: list[SimSite] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    agents: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    collectors: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    ns: netns.Netns | None = None
    fleet: Fleet | None = None  # the virtual sites of `floodgate sim fleet`, in this process
    acked_counted: set[Key] = field(default_factory=set)  # fleet seqs PUBACKed, counted by earlier phases
    resent_counted: int = 0  # the fleet's resends, counted by earlier phases
    cut_agent: int | None = None  # the agent inside the namespace
    tap: Tap | None = None
    counted: set[Key] = field(default_factory=set)  # sent keys counted by earlier phases
    api_ports: list[int] = field(default_factory=list)
    # Messages each collector stored, over its restarts (its /metrics counter starts again at 0).
    stored_by: dict[str, int] = field(default_factory=dict)
    _last: dict[str, int] = field(default_factory=dict)
    has_metrics: bool = False

    async def watch_metrics(self) -> None:
        """Every collector's ``floodgate_messages_stored_total``, added up across its restarts."""
        async with httpx.AsyncClient(timeout=2) as http:
            while True:
                for i, port in enumerate(self.api_ports):
                    name = f"chaos-c{i}"
                    try:
                        r = await http.get(f"http://127.0.0.1:{port}/metrics")
                    except httpx.HTTPError:
                        continue  # away (killed, stopped, starting)
                    value = next(
                        (
                            int(float(line.split()[-1]))
                            for line in r.text.splitlines()
                            if line.startswith("floodgate_messages_stored_total")
                        ),
                        None,
                    )
                    if r.status_code != 200 or value is None:
                        continue
                    self.has_metrics = True
                    last = self._last.get(name, 0)
                    self.stored_by[name] = self.stored_by.get(name, 0) + (
                        value - last if value >= last else value
                    )
                    self._last[name] = value
                await asyncio.sleep(0.5)

    def start_collector(self, i: int) -> None:
        cfg = self.folder / f"collector-{i}.yaml"
        while len(self.api_ports) <= i:
            self.api_ports.append(free_port())
        api = f"api: {{host: 127.0.0.1, port: {self.api_ports[i]}}}\n"
        cfg.write_text(collector_yaml(self.db_url, self.engine.collector_config(), f"chaos-c{i}", api))
        p = subprocess.Popen(collector_cmd(cfg), stdout=self.log, stderr=self.log)
        if i < len(self.collectors):
            self.collectors[i] = p
        else:
            self.collectors.append(p)

    def start_agent(self, i: int) -> None:
        prefix = self.ns.prefix() if self.ns is not None and i == self.cut_agent else []
        p = subprocess.Popen([*prefix, *agent_cmd(self.configs[i])], stdout=self.log, stderr=self.log)
        if i < len(self.agents):
            self.agents[i] = p
        else:
            self.agents.append(p)

    async def add_site(self, i: int, inside: bool) -> None:
        node = f"chaos-{i}"
        urls = self.engine.mqtt_urls
        if inside:
            assert self.ns is not None
            urls = [await self.ns.forward(int(u.rsplit(":", 1)[1])) for u in urls]
            self.cut_agent = i
        # A short keepalive: a link cut is noticed in seconds, as the collector's is.
        sim, config = await new_site(
            self.folder, node, urls, self.args.telemetry_s, **{"broker.keepalive_s": 5}
        )
        self.sites.append(sim)
        self.configs.append(config)
        self.nodes.append(node)
        self.start_agent(i)

    async def stop(self) -> None:
        await asyncio.gather(*(terminate(p) for p in [*self.agents, *self.collectors]))
        for s in self.sites:
            await s.stop()
        if self.tap is not None:
            await self.tap.stop()
        if self.fleet is not None:
            await self.fleet.stop()
        if self.ns is not None:
            await self.ns.close()
        self.engine.stop()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def alert_to_ticket(db_url: str, lo_ms: int, hi_ms: int) -> tuple[float, float, int] | None:
    """p50, p99 and count of (timeline entry time - alert transition's edge stamp), for
    transitions stamped in [lo, hi) that reached a ticket (reconciled ones left out)."""
    got: list[float] = []
    for ts, detail in await rows(
        db_url, "SELECT ts, detail FROM ticket_timeline WHERE detail LIKE '%alert_id%'"
    ):
        with contextlib.suppress(ValueError, TypeError, KeyError):
            d = json.loads(detail)
            if "reconciled" not in d and lo_ms <= int(d["ts"]) < hi_ms:
                got.append(float(ts - int(d["ts"])))
    if not got:
        return None
    return statistics.median(got), pct(got, 0.99), len(got)


async def metrics_share(world: World) -> dict[str, int] | None:
    """Messages each collector has stored so far, from its /metrics (None without them).

    Read every 0.5 s: what a collector stored in its last half second before a ``kill -9``
    is not counted for it."""
    await asyncio.sleep(0.6)  # one more reading of every collector
    return dict(world.stored_by) if world.has_metrics else None


def _spans(seqs: list[int]) -> str:
    """``[1, 2, 3, 7]`` as ``1-3,7`` (at most 12 spans shown)."""
    out: list[list[int]] = []
    for q in sorted(seqs):
        if out and q == out[-1][1] + 1:
            out[-1][1] = q
        else:
            out.append([q, q])
    text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in out[:12])
    return text + (f",… ({len(out) - 12} more spans)" if len(out) > 12 else "")


def _outbox_state(db: Path, boot: int, seqs: list[int]) -> str:
    """What an agent's outbox says of these seqs: still held (awaiting the collector or
    not yet acknowledged by the broker), times sent again, when the next resend is due."""
    if not db.exists():
        return "no outbox"
    import sqlite3  # noqa: PLC0415

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        marks = ",".join("?" * len(seqs))
        got = con.execute(
            f"SELECT seq, awaiting, tries, due_ms FROM outbox WHERE boot = ? AND seq IN ({marks})",
            (boot, *seqs),
        ).fetchall()
    except sqlite3.Error as exc:
        return f"outbox unreadable ({exc})"
    finally:
        con.close()
    held = {int(r[0]): r for r in got}
    awaiting = [r for r in held.values() if r[1]]
    due = [int(r[3]) - now_ms() for r in awaiting if r[3] is not None]
    return (
        f"outbox holds {len(held)} of them ({len(awaiting)} awaiting the collector, "
        f"{len(held) - len(awaiting)} not yet acknowledged by the broker"
        + (f"; resends due in {min(due) / 1000:.0f}..{max(due) / 1000:.0f} s" if due else "")
        + (f"; sent again up to {max(int(r[2]) for r in held.values())} times" if held else "")
        + f"), {len(seqs) - len(held)} gone from it (confirmed, or forgotten)"
    )


FLAGS = ((SENT, "sent"), (PUBACKED, "PUBACKed"), (CONFIRMED, "confirmed by a collector"), (SHED, "shed"))
DETAILED = 20  # missing messages given one by one in a report


async def missing_report(world: World, missing: set[Key], fault: str) -> str:
    """Which edges' messages are missing and what is known of them: on the wire (the tap),
    acknowledged by the broker (the fleet's ledger), still in the agent's outbox; then, one by
    one (the first ``DETAILED``), whether ``messages`` holds it after all (looked up by key),
    whether it is a dead letter, what a virtual site's ledger says of it (sent, PUBACKed,
    confirmed by a collector: then a collector committed it) and where the engine has it."""
    if not missing:
        return f"{fault}: nothing missing"
    by: dict[tuple[str, int], list[int]] = {}
    for node, boot, seq in missing:
        by.setdefault((node, boot), []).append(seq)
    wire = set(world.tap.seen.values()) if world.tap is not None else set()
    ledger = world.fleet.ledger() if world.fleet is not None else {}
    lines = [
        f"{fault}: {len(missing)} messages of {len(by)} edge boots not stored"
        f" (collectors alive: {[p is not None and p.poll() is None for p in world.collectors]})"
    ]
    for (node, boot), seqs in sorted(by.items(), key=lambda kv: -len(kv[1]))[:10]:
        seen = sum((node, boot, q) in wire for q in seqs)
        line = f"  {node} boot {boot}: {len(seqs)} (seq {_spans(seqs)}), {seen} seen on the wire"
        if node in world.nodes:
            db = world.folder / node / "outbox.db"
            line += "; agent " + _outbox_state(db, boot, seqs)
        elif node in ledger:
            acked = {q for a, b in ledger[node]["pubacked"] for q in range(a, b + 1)}
            line += f"; virtual site: {sum(q in acked for q in seqs)} acknowledged by the broker"
        lines.append(line)
    if len(by) > 10:
        lines.append(f"  … and {len(by) - 10} more edge boots")
    some = sorted(missing)[:DETAILED]
    ids = {k: i for i, k in world.tap.seen.items()} if world.tap is not None else {}
    try:
        stored_now = await stored_keys(world.db_url, some)
        letters = await dead_letters_of(world.db_url, some)
    except Exception as exc:  # the report must come out whatever the database does
        stored_now, letters = {}, {}
        lines.append(f"  (the database could not be asked: {type(exc).__name__}: {exc})")
    try:
        queue, where = await asyncio.wait_for(world.engine.whereabouts(set(some)), 60)
    except Exception as exc:
        queue, where = f"  (the engine could not be asked: {type(exc).__name__}: {exc})", {}
    if queue:
        lines.append(queue)
    for key in some:
        node, boot, seq = key
        said = []
        if key in stored_now:
            said.append(f"in messages after all (received_ms {stored_now[key]})")
        else:
            said.append("not in messages")
        said.append(f"dead letter {letters[key]}" if key in letters else "no dead letter")
        n = world.fleet.by_node.get(node) if world.fleet is not None else None
        if n is not None and n.boot == boot and seq < len(n.ledger):
            flags = [w for f, w in FLAGS if n.ledger[seq] & f]
            state = (
                "to send"
                if seq in n.pending
                else "awaiting confirmation"
                if seq in n.awaiting
                else "no longer kept"
            )
            said.append(f"virtual site: {', '.join(flags) or 'not sent'} ({state})")
        if key in where:
            said.append(where[key])
        mid = f" msg_id {ids[key]}" if key in ids else ""
        lines.append(f"  {node} boot {boot} seq {seq}{mid}: " + "; ".join(said))
    if len(missing) > len(some):
        lines.append(f"  … and {len(missing) - len(some)} more messages")
    return "\n".join(lines)


OLD_WINDOW_MS = 30_000  # how far back the check once looked, by received_ms, for what was missing


async def recovered(world: World, since_ms: int, fault: str = "") -> tuple[int, int, float]:
    """Every edge's fresh messages stored (stamped after ``since_ms``), then everything the
    edges had sent by then.

    Returns how many messages were missing when that second wait began, how many of them
    were stored with a ``received_ms`` (the time a collector fetched them, not the commit's)
    over ``OLD_WINDOW_MS`` before it, and the longest lag from a fetch to its row seen
    stored (``wait_stored``: the missing messages looked up by key; the wait once polled
    only the rows received in the last 30 s, and never saw those)."""

    async def fresh() -> bool:
        for i, p in enumerate(world.agents):
            if p is not None and p.poll() is not None:
                raise AssertionError(f"agent {world.nodes[i]} exited with {p.returncode}")
        return await fresh_from_all(world.db_url, world.nodes, since_ms)

    try:
        await wait_until(fresh, 300, "every edge stored again", every=0.2)
    except AssertionError as exc:
        stale = [n for n in world.nodes if not await fresh_from_all(world.db_url, [n], since_ms)]
        raise AssertionError(f"{fault}: {exc} (nothing new stored from {stale})") from None
    assert world.tap is not None
    top: dict[tuple[str, int], int] = {}
    for node, boot, seq in [*await stored(world.db_url), *world.tap.seen.values()]:
        top[(node, boot)] = max(top.get((node, boot), -1), seq)
    want = {(n, b, s) for (n, b), hi in top.items() for s in range(hi + 1)}
    window = now_ms() - OLD_WINDOW_MS
    missing = want - await stored(world.db_url)
    left = set(missing)
    try:
        late, lag_s = await wait_stored(world.db_url, left, window, 300)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{await missing_report(world, left, fault)}") from None
    return len(missing), late, lag_s


async def run_phase(world: World, fault: str) -> Phase:
    args = world.args
    ph = Phase(fault)
    if fault == "partition" and world.ns is None:
        ph.skipped = world.args.no_netns or "no namespace"
        return ph
    others = [n for i, n in enumerate(world.nodes) if not (fault == "partition" and i == world.cut_agent)]
    share0 = await metrics_share(world)
    ph.start_ms = now_ms()
    stall_task: asyncio.Task[None] | None = None

    def injected() -> None:
        """The fault is in: from now, how long until every other edge is stored again."""
        nonlocal stall_task
        t0, t0_ms = time.monotonic(), now_ms()

        async def stalled() -> None:
            await wait_until(lambda: fresh_from_all(world.db_url, others, t0_ms), 300, "others stored")
            ph.stall_s = time.monotonic() - t0

        stall_task = asyncio.create_task(stalled())

    if fault == "consumer-leader" and world.engine.name == "mosquitto":
        ph.skipped = "one broker: no consumer leader apart from it (the leader fault kills it)"
        return ph
    if fault in ("leader", "consumer-leader"):
        ph.what = "kill -9 " + str(
            await world.engine.kill_leader("stream" if fault == "leader" else "consumer")
        )
        injected()
        await asyncio.sleep(args.down_s)
        await world.engine.restart()
    elif fault == "collector":
        await kill(world.collectors[0])
        injected()
        ph.what = "kill -9 collector chaos-c0 at the storm's rate"
        await asyncio.sleep(args.down_s)
        world.start_collector(0)
    elif fault == "partition":
        assert world.ns is not None
        assert world.tap is not None
        node = world.nodes[world.cut_agent or 0]
        await asyncio.to_thread(world.ns.cut)
        injected()
        cut_ms = now_ms()
        ph.what = f"agent {node} cut off from every broker for {args.cut_s:g} s"
        await asyncio.sleep(1.0)  # what was on its way when the link went down has arrived
        before = world.tap.arrived.get(node, 0)
        await asyncio.sleep(max(0.0, args.cut_s - 1.0))
        ph.cut_leak = world.tap.arrived.get(node, 0) - before
        await asyncio.to_thread(world.ns.heal)
        healed_ms = now_ms()
    elif fault == "backlog":
        await asyncio.gather(*(terminate(p) for p in world.collectors))
        injected()
        ph.what = f"every collector stopped for {args.down_s:g} s, then started on the backlog"
        await asyncio.sleep(args.down_s)
        for i in range(len(world.collectors)):
            world.start_collector(i)
    ph.back_ms = now_ms()
    t_back = time.monotonic()
    try:
        ph.waited, ph.late, ph.late_lag_s = await recovered(world, ph.back_ms, fault)
    except BaseException:
        if stall_task is not None:  # its own timeout is not the news: the failure above is
            stall_task.cancel()
            await asyncio.gather(stall_task, return_exceptions=True)
        raise
    ph.recovery_s = time.monotonic() - t_back
    ph.recovered_ms = now_ms()
    if fault == "partition":
        ph.held = int(
            await scalar(
                world.db_url,
                f"SELECT COUNT(*) FROM messages WHERE node = '{node}' AND ts > {cut_ms + 1000}"
                f" AND ts < {healed_ms}",
            )
        )
    assert stall_task is not None
    with contextlib.suppress(AssertionError, TimeoutError):
        await asyncio.wait_for(stall_task, 10)
    await asyncio.sleep(args.after_s)  # the storm after the fault
    ph.end_ms = now_ms()
    await count(world, ph, share0)
    return ph


async def count(world: World, ph: Phase, share0: dict[str, int] | None) -> None:
    assert world.tap is not None
    # The virtual sites' own word for what the broker acknowledged (taken first: the wait
    # below is then for it too).
    acked = frozenset(
        (node, int(n["boot"]), seq)
        for node, n in (world.fleet.ledger() if world.fleet is not None else {}).items()
        for a, b in n["pubacked"]
        for seq in range(a, b + 1)
    )
    sent, wire, have = await sent_and_stored(world.db_url, world.tap, wait_s=60, also=acked)
    new = sent - world.counted
    world.counted |= sent
    ph.sent, ph.wire, ph.stored = len(new), len(wire & new), len(have & new)
    ph.lost = len(new - have)
    unstored = new - have
    if world.fleet is not None:
        fresh = acked - world.acked_counted
        world.acked_counted |= acked
        ph.pubacked, ph.pubacked_lost = len(fresh), len(fresh - have)
        ph.resent, world.resent_counted = world.fleet.resent - world.resent_counted, world.fleet.resent
        unstored |= fresh - have
    if unstored:
        ph.missing = await missing_report(world, unstored, ph.fault)
    ph.stored_twice = int(
        await scalar(
            world.db_url,
            "SELECT COALESCE(SUM(c - 1), 0) FROM"
            " (SELECT COUNT(*) AS c FROM messages GROUP BY node, boot, seq) x",
        )
    )
    ph.duplicate_rows = int(
        await scalar(
            world.db_url,
            "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM readings GROUP BY series, ts) x",
        )
    )
    ph.duplicate_tickets = int(
        await scalar(
            world.db_url,
            "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM tickets GROUP BY node, kind) x",
        )
    )
    share1 = await metrics_share(world)
    if share0 is not None and share1 is not None:
        ph.share = {k: v - share0.get(k, 0) for k, v in share1.items()}
    ph.during_ms = await alert_to_ticket(world.db_url, ph.start_ms, ph.recovered_ms)
    ph.after_ms = await alert_to_ticket(world.db_url, ph.recovered_ms, ph.end_ms)


async def run(
    args: argparse.Namespace, folder: Path, report: Callable[[Phase], Awaitable[None] | None] | None = None
) -> list[Phase]:
    """The whole run; ``report`` is called with each phase as it ends."""
    faults = [f for f in args.faults.split(",") if f]
    for f in faults:
        if f not in FAULTS:
            raise SystemExit(f"unknown fault {f!r}; one of {', '.join(FAULTS)}")
    args.no_netns = netns.available() if "partition" in faults else None
    engine = ENGINES[args.engine](folder)
    engine.start()
    out: list[Phase] = []
    async with database("fg_chaos") as db_url:
        world = World(folder, engine, db_url, args, log=(folder / "processes.log").open("w"))
        storm_task: asyncio.Task[None] | None = None
        metrics_task: asyncio.Task[None] | None = None
        try:
            if "partition" in faults and args.no_netns is None:
                world.ns = await asyncio.to_thread(netns.Netns(0).open)
            world.tap = Tap(engine.mqtt_urls).start()
            metrics_task = asyncio.create_task(world.watch_metrics())
            for i in range(args.collectors):
                world.start_collector(i)
            for i in range(args.sites):
                await world.add_site(i, inside=world.ns is not None and i == args.sites - 1)
            if args.fleet:
                world.fleet = Fleet(
                    FleetOptions(
                        urls=tuple(engine.mqtt_urls),
                        nodes=args.fleet,
                        seed=1,
                        speed=args.fleet_speed,
                        storm_every_s=600.0,
                        telemetry_s=args.fleet_telemetry_s,
                        heartbeat_s=30.0,
                        flapping=0.01,
                        confirm_timeout_s=60.0,  # the edge's default: deadline resends as real edges do
                        reconnect_max_s=2.0,
                        prefix="city",
                    )
                )
                await world.fleet.start()
            storm_task = asyncio.create_task(storm(world.sites, args.period_s))
            start = now_ms()
            try:
                await wait_until(
                    lambda: fresh_from_all(db_url, world.nodes, start), 300, "every edge stored", every=0.2
                )
            except AssertionError as exc:
                stale = [n for n in world.nodes if not await fresh_from_all(db_url, [n], start)]
                total = await scalar(db_url, "SELECT COUNT(*) FROM messages")
                alive = [p is not None and p.poll() is None for p in world.collectors]
                raise AssertionError(
                    f"start: {exc} (nothing stored from {stale}; {total} messages stored in all;"
                    f" collectors alive: {alive}; load {os.getloadavg()})"
                ) from None
            await asyncio.sleep(args.warm_s)  # the storm going on before the first fault
            for f in faults:
                ph = await run_phase(world, f)
                out.append(ph)
                if report is not None:
                    r = report(ph)
                    if r is not None:
                        await r
            return out
        except AssertionError:
            world.log.flush()
            print("the processes' logs, the end:", file=sys.stderr)
            print((folder / "processes.log").read_text()[-8000:], file=sys.stderr)
            raise
        finally:
            for t in (storm_task, metrics_task):
                if t is not None:
                    t.cancel()
            await world.stop()
            world.log.close()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=sorted(ENGINES), default="mosquitto")
    ap.add_argument("--sites", type=int, default=4, help="real agents on simulated sites")
    ap.add_argument("--collectors", type=int, default=3)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--down-s", type=float, default=10.0, help="how long a broker node or collector is away")
    ap.add_argument("--cut-s", type=float, default=180.0, help="how long the namespaced agent is cut off")
    ap.add_argument("--warm-s", type=float, default=8.0, help="storm before the first fault")
    ap.add_argument("--after-s", type=float, default=8.0, help="storm after each recovery")
    ap.add_argument("--period-s", type=float, default=12.0, help="one wet-and-dry cycle of a site")
    ap.add_argument("--telemetry-s", type=float, default=0.2)
    ap.add_argument(
        "--fleet", type=int, default=0, help="virtual sites (floodgate sim fleet) beside the agents"
    )
    ap.add_argument("--fleet-speed", type=float, default=30.0, help="storm seconds per real second")
    ap.add_argument("--fleet-telemetry-s", type=float, default=5.0)
    return ap


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # the tap's client: a broker killed is expected here
    print(
        f"engine {args.engine}, {args.sites} agents, {args.fleet} virtual sites,"
        f" {args.collectors} collectors, load {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory(prefix="fg-chaos-") as tmp:
        await run(args, Path(tmp), lambda ph: print(ph.line(), flush=True))
    print(f"load at the end {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
