"""Thousands of virtual nodes in one process, speaking the wire contract over MQTT.

A virtual node is not a site with Modbus devices and an agent: it is the
agent's side of the wire contract (docs/wire-contract.md) and nothing else.
Per node: the retained ``state`` with a Will (offline), a ``birth`` after
every connect, ``telemetry`` every ``telemetry_s`` (the depth at its level
sensor ``lvl-1`` and the rain at its gauge ``rain-1``), a ``heartbeat``
every ``heartbeat_s`` with its open episodes (``health.alerts``), and
``alert`` transitions (warning, danger, clear, one episode id from the first
rise to the clear, with threshold, rate and the board and gate actions) when
a storm cell of ``simulators.city`` passes over it.

The end-to-end acknowledgement of the contract is kept: a message stays
until the collector confirms it on the node's ``ack`` topic (resent at once
for a gap, or at a doubling deadline), or at the broker's PUBACK when the
collector's state says it does not confirm (``acks`` absent). Each node keeps
a ledger, one byte per ``seq``: sent, acknowledged by the broker (PUBACK),
confirmed by the collector, shed (the bound on unconfirmed messages).
``Fleet.ledger()`` gives it as ranges, for a test or a chaos run to compare
with what the collector stored.

Roles, drawn from the seed: most nodes are steady; a ``flapping`` node drops
its connection without a goodbye every so often (the broker publishes its
Will: offline) and comes back; a ``silent`` node sends its birth and then
nothing, connected.

Connections: by default one MQTT connection per node (``simulators.mqtt_lite``,
a minimal asyncio client: one protocol object each, no task). With
``per_connection`` > 1 several steady nodes share one connection: it
carries one Will only (the first node's), so when such a connection dies only
that node is marked offline; the others stay "online" in their retained
state until the silence checker notices. Flapping nodes always get a
connection of their own, so their Will is exact.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from floodgate.broker import reconnect_delays
from floodgate.ids import new_ulid
from simulators import city as citymap
from simulators.city import CitySite, StormCell
from simulators.mqtt_lite import Connection, Endpoint, MqttError, Will

log = logging.getLogger("floodgate.sim.fleet")

PREFIX = "floodgate/v1"
HOST_STATE = f"{PREFIX}/_host/state"  # the collectors' shared state (older ones)
HOST_STATES = f"{PREFIX}/_host/#"  # both: the shared one and each collector's own (wire contract)
AGENT_VERSION = "sim-fleet-1"
# The ledger's flags, one byte per seq of a node's boot.
SENT, PUBACKED, CONFIRMED, SHED = 1, 2, 4, 8
_encode = msgspec.json.encode


class FleetArgumentError(ValueError):
    """An option of the fleet is wrong; the text says which and why."""


@dataclass(frozen=True)
class FleetOptions:
    """What ``floodgate sim fleet`` takes; ``check()`` raises FleetArgumentError saying what is wrong."""

    urls: tuple[str, ...]
    nodes: int = 100
    seed: int = 0
    speed: float = 1.0  # scenario seconds per real second (storms move this much faster)
    telemetry_s: float = 5.0
    heartbeat_s: float = 60.0
    storms: int = 3
    storm_every_s: float = 1800.0  # scenario seconds between storm cells
    flapping: float = 0.0  # fraction of the nodes
    silent: float = 0.0
    flap_up_s: tuple[float, float] = (20.0, 60.0)  # connected this long (uniform), real seconds
    flap_down_s: tuple[float, float] = (5.0, 20.0)
    per_connection: int = 1
    boot: int | None = None  # None: seconds since the epoch (goes up at every run)
    connect_rate: float = 500.0  # new connections per second at the start
    # Connections in their handshake (CONNECT to SUBACK) at once: a broker slow to take them
    # (NATS: a session record and a JetStream consumer per QoS 1 subscription) sets the pace,
    # rather than timeouts and reconnects that add to its work.
    handshakes: int = 100
    confirm_timeout_s: float = 60.0
    confirm_timeout_max_s: float = 900.0
    max_unconfirmed: int = 5000  # per node: beyond it, the oldest telemetry is shed
    keepalive_s: int = 30
    # QoS of the node's subscriptions (ack, _host/state). 1 as the edge does; 0 spares a broker
    # that keeps a store per QoS 1 subscription (NATS: a JetStream consumer each), and a report
    # lost with it only means a resend at the deadline.
    sub_qos: int = 1
    reconnect_max_s: float = 5.0
    username: str | None = None
    password: str | None = None
    prefix: str = "gz"

    def check(self) -> None:
        if not self.urls:
            raise FleetArgumentError("--broker: at least one broker URL is needed")
        problems = []
        for u in self.urls:
            try:
                Endpoint.parse(u)
            except ValueError as exc:
                problems.append(f"--broker: {exc}")
        if self.nodes < 1:
            problems.append(f"--nodes must be at least 1, not {self.nodes}")
        for name, v in (("--flapping", self.flapping), ("--silent", self.silent)):
            if not 0.0 <= v <= 1.0:
                problems.append(f"{name} is a fraction of the nodes, from 0 to 1, not {v}")
        if self.flapping + self.silent > 1.0:
            problems.append(f"--flapping + --silent is more than every node ({self.flapping + self.silent})")
        for name, v in (
            ("--speed", self.speed),
            ("--telemetry-s", self.telemetry_s),
            ("--heartbeat-s", self.heartbeat_s),
            ("--connect-rate", self.connect_rate),
        ):
            if not v > 0:
                problems.append(f"{name} must be more than 0, not {v}")
        if self.sub_qos not in (0, 1):
            problems.append(f"--sub-qos is 0 or 1, not {self.sub_qos}")
        if self.handshakes < 1:
            problems.append(f"--handshakes must be at least 1, not {self.handshakes}")
        if self.per_connection < 1:
            problems.append(f"--per-connection must be at least 1, not {self.per_connection}")
        if self.storms < 0:
            problems.append(f"--storms must be 0 or more, not {self.storms}")
        if self.boot is not None and self.boot < 0:
            problems.append(f"--boot must be 0 or more, not {self.boot}")
        if problems:
            raise FleetArgumentError("; ".join(problems))


class _Msg:
    """One message of a node's outbox: the same bytes every time it is sent."""

    __slots__ = ("deadline", "payload", "pid", "puback_at", "sent_at", "telemetry", "timeout", "topic")

    def __init__(self, topic: str, payload: bytes, telemetry: bool, timeout: float) -> None:
        self.topic = topic
        self.payload = payload
        self.telemetry = telemetry
        self.pid: int | None = None  # in flight on the connection under this packet id
        self.sent_at = 0.0
        self.puback_at = 0.0
        self.timeout = timeout
        self.deadline = 0.0


def next_level(level: str, depth: float) -> str:
    """The alarm with hysteresis: the demo sites' thresholds (warning 150/120, danger 270/240 mm)."""
    if depth >= citymap.DANGER_ON or (level == "danger" and depth >= citymap.DANGER_CLEAR):
        return "danger"
    if depth >= citymap.WARNING_ON or (level != "clear" and depth >= citymap.WARNING_CLEAR):
        return "warning"
    return "clear"


def _actions(prev: str, level: str) -> list[dict[str, str]]:
    out = []
    if level == "danger":
        out += [{"dev": "sign-1", "do": "show", "arg": "road-closed"}, {"dev": "gate-1", "do": "close"}]
    else:
        if prev == "danger":
            out.append({"dev": "gate-1", "do": "open"})
        out.append(
            {"dev": "sign-1", "do": "show", "arg": "前方积水 减速慢行"}
            if level == "warning"
            else {"dev": "sign-1", "do": "clear"}
        )
    return out


def seq_ranges(ledger: bytearray, flag: int) -> list[list[int]]:
    """The seqs whose ledger byte has ``flag``, as ``[first, last]`` ranges."""
    out: list[list[int]] = []
    for seq, v in enumerate(ledger):
        if v & flag:
            if out and out[-1][1] == seq - 1:
                out[-1][1] = seq
            else:
                out.append([seq, seq])
    return out


def _covering(starts: list[int], ranges: list[tuple[int, int]]) -> Callable[[int], bool]:
    """Whether a seq is in one of ``ranges`` (sorted; ``starts`` their first seqs)."""

    def covered(seq: int) -> bool:
        i = bisect.bisect_right(starts, seq) - 1
        return i >= 0 and seq <= ranges[i][1]

    return covered


class VirtualNode:
    """The wire side of one edge agent: its envelope, outbox, alarm and ledger."""

    def __init__(self, fleet: Fleet, site: CitySite, boot: int, role: str, phase: float = 0.0) -> None:
        self.fleet = fleet
        self.phase = phase  # 0..1: where in each period this node's heartbeat falls
        self.site = site
        self.node = site.node
        self.boot = boot
        self.role = role  # steady, flapping, silent
        self.seq = 0
        self.ledger = bytearray()
        self.pending: dict[int, _Msg] = {}  # to send, or in flight until the PUBACK
        self.awaiting: dict[int, _Msg] = {}  # PUBACKed, awaiting the collector's confirmation
        self.progress_at = 0.0  # when the collector last confirmed something new of this node
        self.level = "clear"
        self.flooded: float | None = None  # water put there by ``flood()``, over what the storms make
        self.episode: str | None = None
        self.last_depth = 0.0
        self.last_t = 0.0
        self.link: Link | None = None
        self.next_hb = 0.0
        self.births = 0
        self.resent = 0
        self.collector_acks = 0
        self.shed = 0
        self.topics = {
            k: f"{PREFIX}/{self.node}/{k}" for k in ("state", "birth", "telemetry", "alert", "event")
        }

    # -- sending

    def _send(self, kind: str, body: dict[str, Any], now_ms: int) -> None:
        seq = self.seq
        self.seq += 1
        env = {
            "v": 1,
            "node": self.node,
            "msg_id": new_ulid(now_ms),
            "boot": self.boot,
            "seq": seq,
            "ts": now_ms,
        }
        env.update(body)
        m = _Msg(self.topics[kind], _encode(env), kind == "telemetry", self.fleet.opts.confirm_timeout_s)
        self.ledger.append(SENT)
        self.pending[seq] = m
        self.fleet.sent += 1
        self._bound()
        self._publish(seq, m)

    def _publish(self, seq: int, m: _Msg) -> None:
        link = self.link
        if link is None or link.conn is None or not link.conn.connected:
            return
        try:
            m.pid = link.conn.publish(m.topic, m.payload)
        except MqttError:
            return
        m.sent_at = self.fleet.loop.time()
        link.pids[m.pid] = (self, seq)

    def _bound(self) -> None:
        """Over the bound: shed the oldest telemetry (sent or not); alerts and events are never shed."""
        over = len(self.pending) + len(self.awaiting) - self.fleet.opts.max_unconfirmed
        for box in (self.awaiting, self.pending):
            if over <= 0:
                return
            for seq in [s for s, m in box.items() if m.telemetry][:over]:
                del box[seq]
                self.ledger[seq] |= SHED
                self.shed += 1
                over -= 1

    def on_connect(self, link: Link) -> None:
        """A new connection: online state (retained), a birth, then every message not yet acknowledged."""
        self.link = link
        now = self.fleet.loop.time()
        ms = self.fleet.now_ms()
        assert link.conn is not None
        link.conn.publish(
            self.topics["state"], _encode({"online": True, "boot": self.boot, "ts": ms}), retain=True
        )
        self.births += 1
        self._send("birth", self._birth(ms, now), ms)
        for seq, m in list(self.pending.items()):
            if m.pid is None:
                self._publish(seq, m)
        if self.next_hb == 0.0:  # the nodes' heartbeats spread over the period, as agents started apart
            self.next_hb = now + self.fleet.opts.heartbeat_s * (1.0 + self.phase)

    def on_disconnect(self) -> None:
        for m in self.pending.values():
            m.pid = None  # to send again on the next connection

    def on_puback(self, seq: int) -> None:
        m = self.pending.pop(seq, None)
        if m is None:
            return  # confirmed or shed meanwhile
        if not self.ledger[seq] & PUBACKED:
            self.fleet.pubacked += 1
        self.ledger[seq] |= PUBACKED
        m.pid = None
        if self.fleet.host_acks is False:  # an older collector: the PUBACK is all there is
            return
        now = self.fleet.loop.time()
        m.puback_at = now
        m.deadline = now + m.timeout
        self.awaiting[seq] = m

    def on_ack(self, report: dict[str, Any]) -> None:
        """The collector's report: forget what it covers; send a gap below it again at once."""
        self.collector_acks += 1
        for b in report.get("boots", ()):
            if b.get("boot") != self.boot:
                continue
            ranges = sorted((int(r[0]), int(r[1])) for r in b.get("ranges", ()))
            if not ranges:
                continue
            starts = [r[0] for r in ranges]
            covered = _covering(starts, ranges)
            last_sent = -1.0
            for box in (self.awaiting, self.pending):
                for seq in [s for s in box if covered(s)]:
                    m = box.pop(seq)
                    self.ledger[seq] |= CONFIRMED
                    self.fleet.confirmed += 1
                    last_sent = max(last_sent, m.sent_at)
            if last_sent < 0:
                continue  # nothing newly confirmed: no message to tell a gap by
            last = ranges[-1][1]
            now = self.fleet.loop.time()
            wait = self.fleet.gap_wait
            self.progress_at = now  # slow, not losing: no deadline resend for a timeout from now
            gaps = [
                s
                for s, m in self.awaiting.items()
                if s < last and m.puback_at < last_sent - wait and now - m.puback_at >= 1.0 and not covered(s)
            ]
            for seq in gaps:
                self._resend(seq)

    def _resend(self, seq: int) -> None:
        m = self.awaiting.pop(seq)
        self.pending[seq] = m
        self.resent += 1
        self.fleet.resent += 1
        self._publish(seq, m)

    def check_deadlines(self, now: float) -> None:
        """Send again what is unconfirmed past its deadline, each time waiting twice as long.

        Only once the collector has confirmed nothing new for a timeout: one that
        keeps confirming is behind, not losing (gaps it reports go back at once).
        """
        if now - self.progress_at < self.fleet.opts.confirm_timeout_s:
            return
        for seq in [s for s, m in self.awaiting.items() if now >= m.deadline]:
            m = self.awaiting[seq]
            m.timeout = min(m.timeout * 2, self.fleet.opts.confirm_timeout_max_s)
            self._resend(seq)

    def forget_awaiting(self) -> None:
        self.awaiting.clear()

    # -- what it measures

    def tick(self, now: float, t: float, ms: int) -> None:
        """One telemetry period: read the water and the rain, raise or clear alerts, heartbeat when due."""
        if self.role == "silent":
            return
        depth = self.depth(t)
        rain = round(citymap.rain_mm_h(self.site, self.fleet.cells, t), 1)
        readings = [
            {"dev": "lvl-1", "ts": ms, "metric": "depth_mm", "value": depth, "quality": "good"},
            {"dev": "rain-1", "ts": ms, "metric": "rain_intensity_mm_h", "value": rain, "quality": "good"},
        ]
        self._send("telemetry", {"readings": readings}, ms)
        level = next_level(self.level, depth)
        if level != self.level:
            self._alert(level, depth, t, ms)
        self.last_depth, self.last_t = depth, t
        if now >= self.next_hb > 0:
            self.next_hb = now + self.fleet.opts.heartbeat_s
            self._send("event", {"event": {"type": "heartbeat", "detail": self._health(now)}}, ms)

    def depth(self, t: float) -> float:
        d = citymap.depth_mm(self.site, self.fleet.cells, t)
        return round(d if self.flooded is None else max(d, self.flooded), 1)

    def flood(self, depth_mm: float | None) -> None:
        """Water to ``depth_mm`` at once (None: back to what the storms make); the alarm reacts at
        once, as an agent's poll would, without waiting for the next telemetry."""
        self.flooded = depth_mm
        if self.role == "silent" or not self.births:
            return
        now = self.fleet.loop.time()
        t = self.fleet.scenario_s(now)
        depth = self.depth(t)
        level = next_level(self.level, depth)
        if level != self.level:
            self._alert(level, depth, t, self.fleet.now_ms())
            self.last_depth, self.last_t = depth, t

    def _alert(self, level: str, depth: float, t: float, ms: int) -> None:
        prev = self.level
        if self.episode is None:
            self.episode = new_ulid(ms)
        minutes = (t - self.last_t) / 60
        alert: dict[str, Any] = {
            "id": self.episode,
            "dev": "lvl-1",
            "kind": "flood",
            "level": level,
            "prev": prev,
            "value": depth,
            "unit": "mm",
            "rate_per_min": round((depth - self.last_depth) / minutes, 2) if minutes > 0 else 0.0,
            "ts": ms,
            "actions": _actions(prev, level),
        }
        if level != "clear":
            alert["threshold"] = citymap.DANGER_ON if level == "danger" else citymap.WARNING_ON
        self.fleet.alerts.append((self.node, self.episode, level, ms))
        self.level = level
        if level == "clear":
            self.episode = None
        self._send("alert", {"alert": alert}, ms)

    def open_alerts(self) -> list[dict[str, str]]:
        if self.episode is None:
            return []
        return [{"id": self.episode, "dev": "lvl-1", "kind": "flood", "level": self.level}]

    def _health(self, now: float) -> dict[str, Any]:
        oldest = min((m.puback_at for m in self.awaiting.values()), default=now)
        link = self.link
        return {
            "uptime_s": round(now - self.fleet.started),
            "outbox": {
                "depth": len(self.pending),
                "awaiting_confirmation": len(self.awaiting),
                "oldest_awaiting_s": round(now - oldest, 1),
                "dropped": self.shed,
            },
            "uplink": {
                "connected": bool(link and link.conn and link.conn.connected),
                "broker": link.url if link else None,
                "collector_acks": self.collector_acks,
                "resent": self.resent,
            },
            "alerts": self.open_alerts(),
        }

    def _birth(self, ms: int, now: float) -> dict[str, Any]:
        s = self.site
        th = {"warning": citymap.WARNING_ON, "danger": citymap.DANGER_ON}
        return {
            "agent_version": AGENT_VERSION,
            "config_hash": f"fleet-{self.fleet.opts.seed}",
            "site": {"name": s.name_zh, "lat": s.lat, "lon": s.lon, "address": s.name_en, "exercise": True},
            "devices": [
                {"id": "lvl-1", "kind": "level", "model": "virtual level", "unit": "mm", "thresholds": th},
                {"id": "rain-1", "kind": "rain", "model": "virtual rain gauge", "unit": "mm/h"},
                {"id": "sign-1", "kind": "sign", "model": "virtual board"},
                {"id": "gate-1", "kind": "gate", "model": "virtual gate"},
            ],
            "health": self._health(now),
        }


class Link:
    """One MQTT connection carrying one node (or several steady ones: one Will, the first node's)."""

    def __init__(self, fleet: Fleet, nodes: list[VirtualNode], index: int, flapping: bool) -> None:
        self.fleet = fleet
        self.nodes = nodes
        self.by_ack = {f"{PREFIX}/{n.node}/ack": n for n in nodes}
        self.index = index
        self.flapping = flapping
        self.client_id = f"fleet-{nodes[0].node}" + (f"-x{len(nodes)}" if len(nodes) > 1 else "")
        self.conn: Connection | None = None
        self.up = False  # connected, subscribed and its nodes' hellos sent
        self.pids: dict[int, tuple[VirtualNode, int]] = {}
        self.url = fleet.opts.urls[index % len(fleet.opts.urls)]
        self._url_index = index % len(fleet.opts.urls)  # spread the fleet over the brokers
        self.rng = random.Random(f"{fleet.opts.seed}:{nodes[0].node}")
        self.connects = 0
        self.flaps = 0
        for n in nodes:
            n.link = self

    def _on_puback(self, pid: int) -> None:
        entry = self.pids.pop(pid, None)
        if entry is not None:
            entry[0].on_puback(entry[1])

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == HOST_STATE:
            self.fleet.on_host_state(payload)
            return
        if topic.startswith(f"{PREFIX}/_host/") and topic.endswith("/state"):
            self.fleet.on_host_state(payload, topic.split("/")[3])
            return
        node = self.by_ack.get(topic)
        if node is None:
            return
        try:
            report = json.loads(payload)
        except ValueError:
            log.warning("%s: an ack report that is not JSON, ignored", node.node)
            return
        if isinstance(report, dict):
            node.on_ack(report)

    async def run(self) -> None:
        opts = self.fleet.opts
        delays = reconnect_delays(0.2, opts.reconnect_max_s)
        first = self.nodes[0]
        will = Will(first.topics["state"], _encode({"online": False, "boot": first.boot}))
        while True:
            self.url = opts.urls[self._url_index % len(opts.urls)]
            try:
                async with self.fleet.handshaking:
                    self.conn = await Connection.open(
                        Endpoint.parse(self.url),
                        self.client_id,
                        on_message=self._on_message,
                        on_puback=self._on_puback,
                        will=will,
                        username=opts.username,
                        password=opts.password,
                        keepalive_s=opts.keepalive_s,
                    )
                    await self.conn.subscribe([HOST_STATES, *self.by_ack], qos=opts.sub_qos)
            except MqttError as exc:
                self.fleet.failed(self, str(exc))
                self._drop()
                self._url_index += 1  # the next broker of the list
                await asyncio.sleep(next(delays))
                continue
            self.fleet.recovered(self)
            delays = reconnect_delays(0.2, opts.reconnect_max_s)
            self.connects += 1
            try:
                for n in self.nodes:
                    n.on_connect(self)
            except MqttError:  # lost while saying hello: the wait below sees it
                pass
            self.up = True
            flapped = False
            if self.flapping:
                up = self.rng.uniform(*opts.flap_up_s)
                try:
                    await asyncio.wait_for(self.conn.lost.wait(), up)
                except TimeoutError:
                    flapped = True
                    self.flaps += 1
                    self.conn.abort()  # no DISCONNECT: the broker publishes the Will
            else:
                await self.conn.lost.wait()
            if not flapped:
                self.fleet.failed(self, f"{self.url}: connection lost ({self.conn.error})")
                self._url_index += 1
            self._drop()
            await asyncio.sleep(self.rng.uniform(*opts.flap_down_s) if flapped else next(delays))

    def _drop(self) -> None:
        self.up = False
        self.conn = None
        self.pids.clear()
        for n in self.nodes:
            n.on_disconnect()

    def close(self, goodbye: bool) -> None:
        conn = self.conn
        if conn is None or not conn.connected:
            return
        if goodbye:
            for n in self.nodes:
                conn.publish(n.topics["state"], _encode({"online": False, "boot": n.boot}), retain=True)
            conn.disconnect()
        else:
            conn.abort()


@dataclass
class FleetStats:
    sent: int = 0
    pubacked: int = 0
    confirmed: int = 0
    resent: int = 0
    awaiting: int = 0
    pending: int = 0
    connected: int = 0  # links connected and subscribed, their nodes' hellos sent
    links: int = 0
    alerts: int = 0
    flaps: int = 0


@dataclass
class Fleet:
    """The virtual nodes of a city, their connections, and the clock that drives them."""

    opts: FleetOptions
    sites: list[CitySite] = field(default_factory=list)
    cells: list[StormCell] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.opts.check()
        if not self.sites:
            self.sites = citymap.city(self.opts.nodes, self.opts.seed, self.opts.prefix)
        if not self.cells:
            self.cells = citymap.storms(self.sites, self.opts.storms, self.opts.seed, self.opts.storm_every_s)
        boot = self.opts.boot if self.opts.boot is not None else int(time.time())
        rng = random.Random(self.opts.seed)
        order = list(range(len(self.sites)))
        rng.shuffle(order)
        n_flap = round(self.opts.flapping * len(order))
        n_silent = round(self.opts.silent * len(order))
        roles = ["steady"] * len(order)
        for i in order[:n_flap]:
            roles[i] = "flapping"
        for i in order[n_flap : n_flap + n_silent]:
            roles[i] = "silent"
        count = len(self.sites)
        self.nodes = [VirtualNode(self, s, boot, roles[i], i / count) for i, s in enumerate(self.sites)]
        self.by_node = {n.node: n for n in self.nodes}
        self.links: list[Link] = []
        shared: list[VirtualNode] = []
        for n in self.nodes:
            if n.role == "flapping" or self.opts.per_connection == 1:
                self.links.append(Link(self, [n], len(self.links), n.role == "flapping"))
                continue
            shared.append(n)
            if len(shared) == self.opts.per_connection:
                self.links.append(Link(self, shared, len(self.links), False))
                shared = []
        if shared:
            self.links.append(Link(self, shared, len(self.links), False))
        self.sent = 0
        self.pubacked = 0
        self.confirmed = 0
        self.resent = 0
        self.alerts: list[tuple[str, str, str, int]] = []  # (node, episode, level, ts ms) as sent
        self.host_acks: bool | None = None  # the collector's state: confirms (True), not (False), unseen
        self.host_online = False
        self.host_online_since = 0.0
        self._collectors: dict[str, bool] = {}  # each collector's own state, as the edge keeps it
        self.ack_wait: dict[str, float] = {}  # each online collector's ``ack_wait_s`` (its own topic)
        # With two or more online, the longest of them: how long before a confirmed message a hole
        # must have been acknowledged to be a gap (as the edge's Uplink.on_ack, Outbox.confirm).
        self.gap_wait = 0.0
        self._shared_online = False
        self._failing_links: set[int] = set()
        self._failures: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._handshaking: asyncio.Semaphore | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.started = 0.0
        self.t0 = 0.0
        self.wall0 = 0.0

    @property
    def handshaking(self) -> asyncio.Semaphore:
        """Held by a link from its CONNECT to its SUBACK (``handshakes`` at once)."""
        if self._handshaking is None:
            self._handshaking = asyncio.Semaphore(self.opts.handshakes)
        return self._handshaking

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def now_ms(self) -> int:
        """Wall-clock ms, advancing with the loop's clock (one clock for the whole fleet)."""
        return int(self.wall0 + (self.loop.time() - self.t0) * 1000)

    def scenario_s(self, now: float) -> float:
        return (now - self.started) * self.opts.speed

    # -- the collector's state and broker failures

    def _set_ack_wait(self, collector: str, wait: float | None) -> None:
        """An online collector's ``ack_wait_s`` (None: it is gone), and ``gap_wait`` from them."""
        if wait is None:
            self.ack_wait.pop(collector, None)
        else:
            self.ack_wait[collector] = wait
        self.gap_wait = max(self.ack_wait.values()) if len(self.ack_wait) > 1 else 0.0

    def on_host_state(self, payload: bytes, collector: str | None = None) -> None:
        """A collector's state (``collector``: from its own topic): online while any is, as the edge.

        Only a state that says online tells whether the collector confirms (``acks``), as on the
        edge: one going offline (its goodbye, its Will) says nothing of it. Taken from an offline
        state, one collector of several stopping switched the nodes to the broker's PUBACK while
        the others went on: what was awaiting confirmation was forgotten, and what the broker
        acknowledged from then on too, never sent again when the broker had lost it."""
        if collector is not None and not payload:
            self._collectors.pop(collector, None)
            self._set_ack_wait(collector, None)
            return
        try:
            state = json.loads(payload)
        except ValueError:
            return
        if not isinstance(state, dict):
            return
        if collector is None:
            self._shared_online = state.get("online") is True
        else:
            self._collectors[collector] = state.get("online") is True
        online = any(self._collectors.values()) if self._collectors else self._shared_online
        if online and not self.host_online:
            self.host_online_since = self.loop.time()
        self.host_online = online
        if collector is not None:
            wait = state.get("ack_wait_s")
            if state.get("online") is not True:
                self._set_ack_wait(collector, None)
            else:  # an older collector says none: it holds nothing back, but it is one more
                ok = isinstance(wait, int | float) and 0 <= wait <= 600
                self._set_ack_wait(collector, float(wait) if ok and wait is not None else 0.0)
        if state.get("online") is True:
            acks = state.get("acks") is True
            if not acks and self.host_acks is not False:
                for n in self.nodes:
                    n.forget_awaiting()
            self.host_acks = acks

    def failed(self, link: Link, why: str) -> None:
        """A connection failed: logged at ERROR when the first link starts failing, then counted
        (by kind) until every failing link is connected again."""
        if not self._failing_links:
            log.error("fleet: %s (further failures are counted until every link is back)", why)
        self._failing_links.add(link.index)
        kind = why.split(": ", 1)[-1][:60]
        self._failures[kind] = self._failures.get(kind, 0) + 1

    def recovered(self, link: Link) -> None:
        if link.index not in self._failing_links:
            return
        self._failing_links.discard(link.index)
        if not self._failing_links:
            log.info("fleet: every link connected again after %s", self._failures)
            self._failures.clear()

    # -- running

    async def start(self) -> Fleet:
        self.t0 = self.loop.time()
        self.wall0 = time.time() * 1000
        self.started = self.t0
        self._tasks.append(asyncio.create_task(self._connect_all()))
        self._tasks.append(asyncio.create_task(self._clock()))
        return self

    async def _connect_all(self) -> None:
        gap = 1.0 / self.opts.connect_rate
        next_at = self.loop.time()
        for link in self.links:
            self._tasks.append(asyncio.create_task(link.run()))
            next_at += gap
            if next_at > self.loop.time() + 0.01:
                await asyncio.sleep(next_at - self.loop.time())

    async def _clock(self, tick_s: float = 0.1) -> None:
        """Telemetry of each node every ``telemetry_s``, the nodes spread over the period's ticks."""
        slots = max(1, round(self.opts.telemetry_s / tick_s))
        buckets: list[list[VirtualNode]] = [[] for _ in range(slots)]
        for i, n in enumerate(self.nodes):
            buckets[i % slots].append(n)
        done = 0  # ticks handled
        next_deadlines = self.loop.time() + 1.0
        while True:
            now = self.loop.time()
            due = int((now - self.started) / tick_s) + 1
            t = self.scenario_s(now)
            ms = self.now_ms()
            # Behind by more than a period (a loaded machine): each node ticks once, not once
            # per missed period with one stamp (two telemetry messages of one node with the
            # same reading time, stored as two rows of one reading).
            for k in range(max(done, due - slots), due):
                for n in buckets[k % slots]:
                    if n.births:  # measures once it has come up the first time
                        n.tick(now, t, ms)
            done = due
            if now >= next_deadlines:
                next_deadlines = now + 1.0
                if self.host_acks is None or (
                    self.host_online and now - self.host_online_since >= self.opts.confirm_timeout_s
                ):
                    for n in self.nodes:
                        if n.awaiting:
                            n.check_deadlines(now)
            await asyncio.sleep(max(0.0, self.started + due * tick_s - self.loop.time()))

    def cloudburst(
        self, nodes: list[str], within_s: float, depth_mm: float = 300.0, hold_s: float = 60.0
    ) -> None:
        """The water at ``nodes`` rises to ``depth_mm`` one after another, evenly over ``within_s``
        (each alerting at once), and goes down ``hold_s`` later."""
        now = self.loop.time()
        for i, name in enumerate(nodes):
            n = self.by_node[name]
            at = now + within_s * i / max(1, len(nodes))
            self._timers.append(self.loop.call_at(at, n.flood, depth_mm))
            self._timers.append(self.loop.call_at(at + hold_s, n.flood, None))

    async def stop(self, goodbye: bool = True) -> None:
        """Stop: each node says offline and disconnects (``goodbye``), or every connection drops (Wills)."""
        for h in self._timers:
            h.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for link in self.links:
            link.close(goodbye)

    # -- what happened

    def stats(self) -> FleetStats:
        s = FleetStats(
            sent=self.sent,
            pubacked=self.pubacked,
            confirmed=self.confirmed,
            resent=self.resent,
            alerts=len(self.alerts),
            links=len(self.links),
        )
        for n in self.nodes:
            s.awaiting += len(n.awaiting)
            s.pending += len(n.pending)
        for link in self.links:
            s.connected += bool(link.up and link.conn and link.conn.connected)
            s.flaps += link.flaps
        return s

    def ledger(self) -> dict[str, dict[str, Any]]:
        """Per node: its boot, how many it sent, and the seqs the broker acknowledged (PUBACK),
        the collector confirmed, and the bound shed, as ranges."""
        return {
            n.node: {
                "boot": n.boot,
                "sent": n.seq,
                "pubacked": seq_ranges(n.ledger, PUBACKED),
                "confirmed": seq_ranges(n.ledger, CONFIRMED),
                "shed": seq_ranges(n.ledger, SHED),
            }
            for n in self.nodes
        }
