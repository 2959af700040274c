"""A site's gate safety, driven step by step in one process: the model behind the safety suite.

The agent's own decision path runs unchanged: drivers, bus owners, the agent's
sink (alerts, faults, readings, actions), the :class:`ResponseController` and
the gate policy, against simulated devices over :class:`InProcessLink` (real
Modbus request PDUs, answered at once) with a :class:`ManualClock`. Nothing
waits on real time, so a run takes 100,000 steps in minutes.

Left out, and covered elsewhere: the wire (RTU framing, CRC and timing; TCP),
by the end-to-end tests over ptys; the outbox and the MQTT uplink (the
broker's state has no input into deciding: :meth:`World.broker` toggles it
and the invariants must hold all the same); the signature, expiry and replay
checks of remote commands, which enter here at the controller the way
:class:`edge.commands.CommandHandler` passes them on.

Each step applies one :class:`Action`, lets the agent poll every device and
act (:meth:`World.settle`), then :class:`Checker` checks the invariants
against what the simulated devices saw (their writes, in order, at their
times) and what the agent said (its events, alerts and readings):

1. the gate is never closed unless the board has shown a warning, without a
   power cut in between, for ``gate_min_warning_s``;
2. the gate is never opened automatically while a sensor of the response is
   faulted, detects water or is not clear, nor before every one has been clear
   and dry for ``gate_reopen_hold_s``; a person's open needs the same, or a
   recorded force by a role that may force;
3. while the override key is on (once the agent has read it) nothing is
   written and every board or gate command is refused;
4. after every step the board shows what the policy wants (so a message lost
   in a power cut is written again);
5. every write to the board or the relay is an ``actuator.state`` event, and
   every event names its true cause: the command being handled, the alert
   that last changed the response's level, ``reassert``; the gate's moves name
   the cause of the write that moved it;
6. a forecast never closes the gate: it closes by itself only while the
   measured water (flood and immersion alerts) is at ``close_gate_at``, never
   for a ``forecast`` alert (lvl-1 forecasts, with a 120 s horizon), and a
   forecast alert names no actions;
7. a close the policy announces (``closing: pending``) names its true cause
   and does not come before the time it announced; only an announced close is
   called off.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.actuation import Outcome, ResponseController
from edge.agent import Agent
from edge.config.site import LoadedSite, RtuBus, TcpBus, load_site
from edge.devices.drivers import GateDevice, GateState
from edge.rules.gate import FORCE_ROLES, SensorState, blockers, warning_texts
from floodgate.clock import ManualClock
from floodgate.errors import BusError
from floodgate.wire import Kind, Level, level_rank
from simulators.devices import DepthSource, SimGate, SimImmersion, SimLevel, SimSign
from simulators.inproc import InProcessLink
from simulators.scenarios import Scenario
from simulators.site import SimSite

WARN, DANGER, FAULT = "前方积水 减速慢行", "隧道积水 禁止通行", "水位监测故障"
AHEAD = "前方可能积水 注意"  # the forecast's pre-warning
LEVELS = ("lvl-1", "radar-1")
SENSORS = (*LEVELS, "imm-1")
SITE_YAML = f"""\
node: model-site-01
site: {{name: Model underpass, lat: 23.17, lon: 113.45}}
buses:
  - {{id: bus-1, type: rtu, port: /dev/null, gap_ms: 0}}
devices:
  - id: lvl-1
    profile: generic-rs485-level
    bus: bus-1
    unit: 1
    thresholds: {{warning: {{on: 150, clear: 120}}, danger: {{on: 270, clear: 240, dwell_s: 2}}}}
    filter: {{stuck_after_s: 30, max_rise_mm_s: 1000}}
    forecast: {{horizon_s: 120, window_s: 20, min_rise_mm_min: 5}}
  - id: radar-1
    profile: radar-level-f32
    bus: bus-1
    unit: 3
    mount_height_mm: 3000
    thresholds: {{warning: {{on: 150, clear: 120}}, danger: {{on: 270, clear: 240}}}}
  - {{id: imm-1, profile: immersion-contact-ld, bus: bus-1, unit: 2, wet_level: warning}}
  - {{id: sign-1, profile: led-board-vms, bus: bus-1, unit: 10}}
  - {{id: gate-1, profile: relay-gate-spm, bus: bus-1, unit: 11}}
responses:
  - id: entrance
    sensors: [lvl-1, radar-1, imm-1]
    sign: sign-1
    gate: gate-1
    messages: {{clear: "", warning: {WARN}, danger: {DANGER}, fault: {FAULT}, forecast: {AHEAD}}}
    close_gate_at: danger
    gate_min_warning_s: 5
    gate_travel_s: 4
    gate_reopen_hold_s: 10
    gate_reopen_below_mm: 40
    override: {{device: gate-1, point: override}}
presets: {{road-closed: {DANGER}}}
command_key: model-command-key-0123456789
"""


def model_site(folder: Path) -> LoadedSite:
    path = folder / "model-site.yaml"
    path.write_text(SITE_YAML, encoding="utf-8")
    return load_site(path)


@dataclass(frozen=True)
class Action:
    name: str
    args: tuple[Any, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}({', '.join(map(repr, self.args))})"


DEPTHS = (0.0, 20.0, 39.0, 41.0, 100.0, 125.0, 140.0, 160.0, 230.0, 250.0, 275.0, 400.0)
STEPS_MS = (0, 200, 1000, 2000, 4000, 6000, 11000, 31000)
RAMP_MM, RAMP_MS = 10.0, 2000  # a steady rise (the ``rise`` step): 300 mm/min
FAULTS = (  # what can go wrong with each device, as the simulators inject it
    ("lvl-1", "no_answer"),
    ("lvl-1", "stuck"),
    ("lvl-1", "out_of_range"),
    ("radar-1", "no_echo"),  # its status register
    ("radar-1", "over_range"),
    ("radar-1", "no_answer"),
    ("imm-1", "cable_break"),  # its status bit
    ("imm-1", "no_answer"),
    ("sign-1", "no_answer"),
    ("gate-1", "no_answer"),
)
COMMANDS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("sign.show", {"message": "road-closed"}),
    ("sign.show", {"message": "测试 TEST"}),
    ("sign.clear", {}),
    ("gate.close", {}),
    ("gate.open", {}),
    ("gate.open", {"force": True, "role": "dispatcher", "reason": "police on site"}),
    ("gate.open", {"force": True, "role": "operator", "reason": "in a hurry"}),
    ("gate.open", {"force": True, "role": "admin", "reason": " "}),
)


# How often each kind of step comes, before a sequence scales each by its own factor.
MIX = {
    "depth": 22,
    "rise": 6,
    "contact": 8,
    "advance": 25,
    "fault": 7,
    "power_cycle": 4,
    "limits": 4,
    "override": 5,
    "broker": 3,
    "link": 1.5,
    "calm": 2.5,
    "command": 18,
}


def sequence_mix(rng: random.Random) -> dict[str, float]:
    """A sequence's own mix: some are storms of commands, some of faults, some long and quiet."""
    return {k: w * rng.uniform(0.1, 3.0) for k, w in MIX.items()}


def random_action(rng: random.Random, mix: dict[str, float] = MIX) -> Action:
    """One step of a random sequence, drawn from ``mix``."""
    [kind] = rng.choices(list(mix), weights=list(mix.values()))
    if kind == "depth":
        return Action("depth", (rng.choice(LEVELS), rng.choice(DEPTHS) if rng.random() < 0.7 else 0.0))
    if kind == "rise":
        return Action("rise", (rng.choice(LEVELS), rng.choice(DEPTHS)))
    if kind == "contact":
        return Action("contact", (rng.random() < 0.5,))
    if kind == "advance":
        return Action("advance", (rng.choice(STEPS_MS),))
    if kind == "fault":
        dev, fault = rng.choice(FAULTS)
        return Action("fault", (dev, fault, rng.random() < 0.5))
    if kind == "limits":
        return Action("limits", (rng.choice(["ok", "ok", "both", "jammed"]),))
    if kind == "override":
        return Action("override", (rng.random() < 0.4,))
    if kind == "broker":
        return Action("broker", (rng.random() < 0.5,))
    if kind == "link":
        return Action("link", (rng.random() < 0.7,))
    if kind == "command":
        name, args = rng.choice(COMMANDS)
        return Action("command", (name, args, rng.random() < 0.3))  # True: interleaved with a poll
    return Action(kind)  # power_cycle, calm


@dataclass
class Write:
    """A write the simulated board or gate took, with what the checker knew at that moment."""

    dev: str
    ms: int
    value: Any  # the text shown, or True/False for the relay
    under_override: bool = False
    against: tuple[str, ...] = ()  # what spoke against opening
    dry_ms: int | None = None  # how long every sensor had been clear and dry
    warned_ms: int | None = None  # how long the board had shown a warning


@dataclass
class Checker:
    """The invariants, over one ordered stream of what the devices saw and what the agent said."""

    world: World
    violations: list[str] = field(default_factory=list)
    sensors: dict[str, SensorState] = field(default_factory=dict)
    clear_since: int | None = None
    response_level: Level = "clear"
    auto_cause: str = "startup"
    board_warn_since: int | None = None
    shown_by_people: set[str] = field(default_factory=set)
    relay_closed: bool | None = None
    gate_cause: str | None = None
    override_seen: bool = False
    command_cause: str | None = None  # the command being handled, if any
    pending: dict[str, list[Write]] = field(default_factory=lambda: {"sign-1": [], "gate-1": []})
    moves: list[dict[str, Any]] = field(default_factory=list)  # gate moves waiting for their write's event
    seen: Counter[str] = field(default_factory=Counter)  # what the invariants were checked on
    forecasts: set[str] = field(default_factory=set)  # episode ids of forecast alerts
    forecast_alerts: list[dict[str, Any]] = field(default_factory=list)  # as the agent said them
    announced: bool = False  # a close by the policy is announced (invariant 7)
    announced_at: int | None = None  # the time it announced

    def fail(self, what: str) -> None:
        self.violations.append(f"t={self.world.clock.now_ms() - self.world.t0} ms: {what}")

    # --- the stream ---------------------------------------------------------------------

    def reading(self, r: dict[str, Any]) -> None:
        if r["quality"] != "good" or r["dev"] not in SENSORS:
            return
        reopen = self.world.resp.gate_reopen_below_mm
        wet = r["value"] > 0 if r["metric"] == "wet" else reopen is not None and r["value"] >= reopen
        self._sensor(r["dev"], wet=wet)

    def alert(self, alert: dict[str, Any]) -> None:
        dev = alert["dev"]
        if alert["kind"] == "forecast":
            # Expected water, not measured: it changes no sensor's level (invariant 6).
            self.seen[f"forecast {alert['level']}"] += 1
            self.forecasts.add(alert["id"])
            self.forecast_alerts.append(alert)
            expected = alert["level"] != "clear"
            if self.sensors.get(dev, SensorState()).forecast != expected:
                had = any(s.forecast for s in self.sensors.values())
                self._sensor(dev, forecast=expected)
                now = any(s.forecast for s in self.sensors.values())
                if now != had and self.response_level == "clear":
                    self.auto_cause = f"alert:{alert['id']} {dev} forecast {alert['level']}"
            if alert.get("actions"):
                self.fail(f"a forecast alert names actions: {alert['actions']}")
            return
        if alert["kind"] == "sensor_fault":
            self._sensor(dev, fault=alert.get("reason", "fault") if alert["level"] != "clear" else None)
            return
        before = self.response_level
        self._sensor(dev, level=alert["level"])
        levels = [self.sensors.get(d, SensorState()).level for d in SENSORS]
        self.response_level = max(levels, key=level_rank)
        if self.response_level != before:
            self.auto_cause = f"alert:{alert['id']} {dev} {alert['level']}"

    def _sensor(self, dev: str, **change: Any) -> None:
        s = self.sensors.get(dev, SensorState())
        self.sensors[dev] = SensorState(
            level=change.get("level", s.level),
            wet=change.get("wet", s.wet),
            fault=change.get("fault", s.fault),
            known=True,
            forecast=change.get("forecast", s.forecast),
        )
        if self._against():
            self.clear_since = None
        elif self.clear_since is None:
            self.clear_since = self.world.clock.now_ms()

    def _against(self) -> tuple[str, ...]:
        return tuple(blockers({d: self.sensors.get(d, SensorState()) for d in SENSORS}))

    def wrote(self, dev: str, value: Any) -> None:
        now = self.world.clock.now_ms()
        w = Write(
            dev,
            now,
            value,
            under_override=self.override_seen and self.world.sim_gate.override,
            against=self._against(),
            dry_ms=None if self.clear_since is None else now - self.clear_since,
        )
        if w.under_override:
            self.fail(f"{dev} written ({value!r}) under the override key")
        if dev == "sign-1":
            warns = warning_texts(self.world.resp) | self.shown_by_people
            if value not in warns:
                self.board_warn_since = None
            elif self.board_warn_since is None:
                self.board_warn_since = now
        else:
            since = self.board_warn_since
            w.warned_ms = None if since is None else now - since
        self.pending[dev].append(w)

    def power_cut(self) -> None:
        self.board_warn_since = None

    def gate_polled(self, state: GateState) -> None:
        self.override_seen = bool(state.override)

    def event(self, e: dict[str, Any]) -> None:
        dev, d = e.get("dev"), e["detail"]
        if e["type"] != "actuator.state" or dev not in self.pending:
            return
        if "closing" in d and "confirmed" not in d:  # an announcement: no write, no move
            self._announced(d)
            return
        if "do" in d:
            self._cause(dev, d)
            if "error" in d:
                return
            if not self.pending[dev]:
                self.fail(f"{dev}: an actuator.state event ({d}) for a write the device never saw")
                return
            w = self.pending[dev].pop(0)
            if dev == "gate-1":
                self._relay(w, d)
        elif self.pending["gate-1"]:
            self.moves.append(d)  # the write that moved it has not said its cause yet
        else:
            self._moved(d)

    def end_of_step(self) -> None:
        for dev, left in self.pending.items():
            if left:
                self.fail(f"{dev}: {len(left)} writes with no actuator.state event")
                left.clear()
        for d in self.moves:
            self._moved(d)
        self.moves.clear()
        self._board_is_what_the_policy_wants()

    # --- the invariants ---------------------------------------------------------------

    def _cause(self, dev: str, d: dict[str, Any]) -> None:
        allowed = {self.auto_cause} | ({self.command_cause} if self.command_cause else set())
        if dev == "sign-1" and d["cause"] == "reassert":
            self.seen["board re-asserted after a power cut"] += 1
            return
        if d["cause"] in allowed:
            return
        self.fail(f"{dev} {d['do']} names cause {d['cause']!r}; the true causes: {sorted(allowed)}")

    def _announced(self, d: dict[str, Any]) -> None:
        self.seen[f"gate close {d['closing']}"] += 1
        allowed = {self.auto_cause} | ({self.command_cause} if self.command_cause else set())
        if d["cause"] not in allowed:
            self.fail(f"gate close {d['closing']} names {d['cause']!r}; the true causes: {sorted(allowed)}")
        if d["closing"] == "called_off" and not self.announced:
            self.fail("a close called off that was never announced")
        self.announced = d["closing"] == "pending"
        self.announced_at = d.get("closes_at") if self.announced else None

    def _relay(self, w: Write, d: dict[str, Any]) -> None:
        resp = self.world.resp
        was_closed, self.relay_closed = self.relay_closed, bool(w.value)
        self.gate_cause = d["cause"]
        for m in self.moves:
            self._moved(m)
        self.moves.clear()
        if w.value and not was_closed:
            self.seen["gate closed"] += 1
            if self.announced and self.announced_at is not None and w.ms < self.announced_at:
                self.fail(f"gate closed {self.announced_at - w.ms} ms before the time it announced")
            self.announced, self.announced_at = False, None
            need = round(resp.gate_min_warning_s * 1000)
            if w.warned_ms is None or w.warned_ms < need:
                self.fail(f"gate closed with the board warning for {w.warned_ms} ms (< {need})")
            cause = str(d["cause"])
            if any(ep in cause for ep in self.forecasts):
                self.fail(f"gate closed by a forecast ({cause})")
            if not cause.startswith("cmd:") and level_rank(self.response_level) < level_rank(
                resp.close_gate_at
            ):
                self.fail(
                    f"gate closed by itself ({cause}) while the measured water is {self.response_level}"
                )
        if w.value or was_closed is False:
            return
        cause = str(d["cause"])
        by = "force" if d.get("forced") else "a person" if cause.startswith("cmd:") else "itself"
        self.seen[f"gate opened by {by}"] += 1
        if d.get("forced"):
            if not cause.startswith("cmd:") or d.get("role") not in FORCE_ROLES:
                self.fail(f"forced open without a command by a role that may force: {d}")
            if not str(d.get("reason", "")).strip():
                self.fail("forced open without a reason")
        elif w.against:
            self.fail(f"gate opened ({cause}) while {'; '.join(w.against)}")
        elif not cause.startswith("cmd:"):
            hold = round(resp.gate_reopen_hold_s * 1000)
            if w.dry_ms is None or w.dry_ms < hold:
                self.fail(f"gate opened by itself after {w.dry_ms} ms clear and dry (< {hold})")

    def _moved(self, d: dict[str, Any]) -> None:
        target = "closed" if self.relay_closed else "open"
        if "error" in d:  # did not arrive in time: the move that was asked for
            if self.gate_cause is not None and d["cause"] != self.gate_cause:
                self.fail(f"travel fault names {d['cause']!r}; it was moved by {self.gate_cause!r}")
        elif d["state"] in (target, "moving") and self.gate_cause is not None:
            if d["cause"] != self.gate_cause:
                self.fail(f"gate {d['state']} names {d['cause']!r}; it was moved by {self.gate_cause!r}")
        elif not d["cause"].startswith(("override:", "unexpected:")):
            self.fail(f"gate reads {d['state']} (relay {target}) and names {d['cause']!r}")

    def command_done(self, kind: str, outcome: Outcome, under_override: bool) -> None:
        self.seen[f"command {outcome.status}"] += 1
        if under_override:
            self.seen["command under the override key"] += 1
        if under_override and outcome.status != "rejected":
            self.fail(f"{kind} was {outcome.status} under the override key")

    def _board_is_what_the_policy_wants(self) -> None:
        w = self.world
        if w.sim_gate.override or not w.link.up or w.sim_sign.slave.faults.no_answer:
            return
        want = w.ctl.decision().board
        self.seen["board checked against the policy"] += 1
        if want is not None and w.sim_sign.text != want:
            self.fail(f"board shows {w.sim_sign.text!r}, the policy wants {want!r}")


class World:
    """One simulated site and its agent, in-process, on a manual clock."""

    def __init__(self, site: LoadedSite) -> None:
        self.site = site
        self.clock = ManualClock()
        self.t0 = self.clock.now_ms()

        def seconds() -> float:
            return self.clock.now_ms() / 1000

        self.sim = SimSite(site, Scenario.named("dry"), wire_timing=False, gate_travel_s=2.0, clock=seconds)
        self.sources = {d: DepthSource(Scenario.named("dry"), clock=seconds, manual=0.0) for d in LEVELS}
        for d in LEVELS:
            dev = self.sim[d]
            assert isinstance(dev, SimLevel)
            dev.source = self.sources[d]
        contact = self.sim["imm-1"]
        assert isinstance(contact, SimImmersion)
        self.contact_source = DepthSource(Scenario.named("dry"), clock=seconds, manual=0.0)
        contact.source = self.contact_source
        sign, gate = self.sim["sign-1"], self.sim["gate-1"]
        assert isinstance(sign, SimSign)
        assert isinstance(gate, SimGate)
        self.sim_sign, self.sim_gate = sign, gate
        self.link = InProcessLink(self.sim.buses["bus-1"])
        self.broker_up = True
        self.commands = 0
        self.events: list[dict[str, Any]] = []  # every event the agent said, in order
        self.outcomes: list[Outcome] = []  # every command's outcome, in order
        self.checker = Checker(self)
        self._limits = "ok"
        self._gate_refresh = gate.slave.before_read
        self._watch_writes()

    def _watch_writes(self) -> None:
        for dev_id in ("sign-1", "gate-1"):
            sim = self.sim[dev_id]
            orig = sim.slave.on_write
            assert orig is not None

            def logged(
                table: Any, addr: int, values: list[int], dev_id: str = dev_id, orig: Any = orig
            ) -> None:
                orig(table, addr, values)
                if dev_id == "sign-1" and table == "holding":
                    self.checker.wrote(dev_id, self.sim_sign.text)
                elif dev_id == "gate-1" and table == "coil":
                    self.checker.wrote(dev_id, bool(values[0]))

            sim.slave.on_write = logged

    async def start(self) -> None:
        def link_factory(bus: RtuBus | TcpBus) -> InProcessLink:
            return self.link

        self.agent = Agent(self.site, link_factory=link_factory, clock=self.clock)
        self.agent._build()  # the wiring of run(), without its tasks: this world drives every step
        self.owner = self.agent.owners["bus-1"]
        [self.ctl] = self.agent.responses()
        self.ctl_typed: ResponseController = self.ctl
        gate = self.agent.drivers["gate-1"]
        assert isinstance(gate, GateDevice)
        listener = gate.listener
        assert listener is not None

        def watched(dev: str, state: GateState) -> None:
            listener(dev, state)
            self.checker.gate_polled(state)

        gate.listener = watched
        agent = self.agent
        enqueue, reading = agent._enqueue, agent.reading

        def said(kind: Kind, body: dict[str, Any], priority: int, ts: int) -> None:
            enqueue(kind, body, priority, ts)
            if kind is Kind.ALERT:
                self.checker.alert(body["alert"])
            elif kind is Kind.EVENT:
                self.events.append(body["event"])
                self.checker.event(body["event"])

        def read(dev: str, ts: int, metric: str, value: float, quality: Any) -> None:
            reading(dev, ts, metric, value, quality)
            self.checker.reading({"dev": dev, "metric": metric, "value": value, "quality": quality})

        agent._enqueue = said  # type: ignore[method-assign]
        agent.reading = read  # type: ignore[method-assign]
        await self.link.connect()
        self.owner.connected = True
        await self.settle()
        self.drain()
        self.checker.end_of_step()

    @property
    def resp(self) -> Any:
        return self.ctl.resp

    # --- one step ---------------------------------------------------------------------

    async def poll_all(self) -> None:
        if not self.owner.connected:
            try:
                await self.link.connect()
            except BusError:
                return
            self.owner.connected = True
        for dev in self.owner.devices.values():
            if self.owner.connected:
                await self.owner.poll_once(dev)

    async def settle(self) -> None:
        """The agent's turn: poll every device, act, poll board and gate again, act again."""
        await self.poll_all()
        await self.ctl.step()
        await self.poll_all()
        await self.ctl.step()

    def drain(self) -> None:
        """Forget what the agent queued for the outbox: the checker has heard it as it was said."""
        self.agent._readings.clear()
        while not self.agent._queue.empty():
            self.agent._queue.get_nowait()

    async def apply(self, action: Action) -> None:
        a = action.args
        if action.name == "depth":
            self.sources[a[0]].manual = a[1]
        elif action.name == "rise":
            await self._rise(a[0], a[1])
        elif action.name == "contact":
            self.contact_source.manual = 100.0 if a[0] else 0.0
        elif action.name == "advance":
            self.clock.advance(a[0])
        elif action.name == "fault":
            self.sim[a[0]].inject(a[1], a[2])
        elif action.name == "power_cycle":
            self.sim_sign.power_cycle()
            self.checker.power_cut()
        elif action.name == "limits":
            self._set_limits(a[0])
        elif action.name == "override":
            self.sim_gate.override = a[0]
        elif action.name == "broker":
            self.broker_up = a[0]  # nothing in deciding listens: the invariants must hold either way
        elif action.name == "link":
            self.link.up = a[0]
        elif action.name == "calm":
            self._calm()
        elif action.name == "command":
            await self._command(a[0], a[1], interleaved=a[2])
        else:
            raise ValueError(f"unknown action {action}")
        if action.name != "command" or not a[2]:
            await self.settle()
        self.drain()
        self.checker.end_of_step()

    async def _command(self, kind: str, args: dict[str, Any], interleaved: bool) -> None:
        self.commands += 1
        cause = f"cmd:{self.commands:08d} by user:model"
        if kind == "sign.show":
            text = self.ctl.presets.get(args["message"], args["message"])
            self.checker.shown_by_people.add(text)
        under_override = self.checker.override_seen and bool(self.sim_gate.override)
        self.checker.command_cause = cause
        try:
            run = self.ctl.command(kind, dict(args), cause)
            if interleaved:
                outcome, _ = await asyncio.gather(run, self.settle())
            else:
                outcome = await run
        finally:
            self.checker.command_cause = None
        self.outcomes.append(outcome)
        self.checker.command_done(kind, outcome, under_override)

    async def _rise(self, dev: str, to_mm: float) -> None:
        """Water that rises (or falls) steadily, 10 mm every 2 s, to ``to_mm``: what a forecast sees."""
        source = self.sources[dev]
        now = source.manual if source.manual is not None else 0.0
        while abs(to_mm - now) > RAMP_MM:
            now += RAMP_MM if to_mm > now else -RAMP_MM
            source.manual = now
            self.clock.advance(RAMP_MS)
            await self.settle()
            self.drain()
            self.checker.end_of_step()
        source.manual = to_mm

    def _calm(self) -> None:
        """The storm has passed and the crew has fixed everything: dry, no faults, key off, link up."""
        for source in (*self.sources.values(), self.contact_source):
            source.manual = 0.0
        for dev, fault in FAULTS:
            self.sim[dev].inject(fault, False)
        self._set_limits("ok")
        self.sim_gate.override = False
        self.link.up = True

    def _set_limits(self, mode: str) -> None:
        """``both``: both limit switches read made; ``jammed``: the arm never arrives."""
        self._limits = mode
        self.sim_gate.jammed = mode == "jammed"
        refresh = self._gate_refresh
        assert refresh is not None
        if mode == "both":

            def both() -> None:
                refresh()
                self.sim_gate.set_point("open_limit", True)
                self.sim_gate.set_point("closed_limit", True)

            self.sim_gate.slave.before_read = both
        else:
            self.sim_gate.slave.before_read = refresh


@dataclass
class Run:
    sequences: int = 0
    steps: int = 0
    violations: list[tuple[int, list[str], list[Action]]] = field(default_factory=list)
    seen: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)


async def run_sequence(
    site: LoadedSite, actions: Iterator[Action], run: Run, index: int, keep: int = 40
) -> None:
    """Play actions on a fresh world; stop at the first violation and keep the actions before it."""
    world = World(site)
    await world.start()
    done: list[Action] = []
    for action in actions:
        done.append(action)
        run.actions[action.name] += 1
        await world.apply(action)
        if world.checker.violations:
            run.violations.append((index, world.checker.violations, done[-keep:]))
            break
    run.sequences += 1
    run.steps += len(done)
    run.seen.update(world.checker.seen)


def random_actions(rng: random.Random, n: int) -> Iterator[Action]:
    mix = sequence_mix(rng)
    return (random_action(rng, mix) for _ in range(n))


def quiet() -> None:
    """A device that fails on purpose thousands of times is not news here."""
    for name in ("floodgate.edge", "floodgate.edge.bus", "floodgate.edge.actuation"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


async def explore(
    site: LoadedSite, seed: int, sequences: int, steps: int, progress: Callable[[Run], None] | None = None
) -> Run:
    run = Run()
    for i in range(sequences):
        rng = random.Random(f"{seed}:{i}")
        await run_sequence(site, random_actions(rng, steps), run, i)
        if progress is not None:
            progress(run)
    return run
