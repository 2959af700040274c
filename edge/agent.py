"""The edge agent: wires buses, drivers, rules, actuation, outbox and uplink together.

Data flow::

    BusOwner (one per bus) --poll--> drivers --Sink--> Agent
        Agent --alerts/faults--> ResponseController --writes--> BusOwner
        Agent --messages--> queue --stamp envelope--> Outbox --> Uplink --> broker
        broker --cmd--> Uplink --> CommandHandler --> ResponseController
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from edge.actuation import ResponseController
from edge.bus.budget import bus_budget
from edge.bus.link import ModbusLink, PymodbusLink
from edge.bus.owner import BusOwner
from edge.commands import CommandHandler
from edge.config.site import LoadedSite, RtuBus, TcpBus
from edge.devices.drivers import (
    Driver,
    GateDevice,
    LevelSensor,
    SignDevice,
    make_driver,
)
from edge.outbox import PRIORITY_BIRTH, PRIORITY_BULK, PRIORITY_URGENT, Outbox
from edge.rules.alerts import Transition
from edge.rules.faults import FaultChange
from edge.status import StatusServer
from edge.uplink import Uplink
from floodgate import __version__, wire
from floodgate.broker import BrokerSettings
from floodgate.clock import Clock, SystemClock
from floodgate.wire import (
    MAX_READINGS,
    AlertKind,
    Kind,
    Quality,
    Sequencer,
    Topic,
)

log = logging.getLogger("floodgate.edge.agent")
LinkFactory = Callable[[RtuBus | TcpBus], ModbusLink]


def rss_bytes() -> int:
    """Resident set size from /proc (no psutil on the box)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return 0


def broker_settings(site: LoadedSite) -> BrokerSettings:
    b = site.config.broker
    tls = b.tls
    return BrokerSettings(
        url=b.all_urls[0],
        urls=tuple(b.all_urls),
        username=b.username,
        password=site.broker_password(),
        ca_file=str(site.resolve(tls.ca_file)) if tls and tls.ca_file else None,
        cert_file=str(site.resolve(tls.cert_file)) if tls and tls.cert_file else None,
        key_file=str(site.resolve(tls.key_file)) if tls and tls.key_file else None,
        tls_insecure=bool(tls and tls.insecure),
        keepalive_s=b.keepalive_s,
        protocol=b.protocol,
        reconnect_max_s=b.reconnect_max_s,
    )


class Agent:
    """One site's agent. ``run()`` until cancelled."""

    def __init__(
        self, site: LoadedSite, link_factory: LinkFactory = PymodbusLink, clock: Clock | None = None
    ) -> None:
        self.site = site
        self.clock = clock or SystemClock()
        cfg = site.config
        self.node = cfg.node
        self.link_factory = link_factory
        self.started = time.monotonic()
        self.outbox = Outbox(site.resolve(cfg.outbox.path), cfg.outbox.max_bytes)
        self.boot = 0
        self.seq: Sequencer | None = None
        self._queue: asyncio.Queue[tuple[Kind, dict[str, Any], int, int]] = asyncio.Queue()
        self._readings: list[dict[str, Any]] = []
        self._flush = asyncio.Event()
        self.drivers: dict[str, Driver] = {}
        self.owners: dict[str, BusOwner] = {}
        self.controllers: dict[str, ResponseController] = {}
        self.by_sensor: dict[str, list[ResponseController]] = {}
        self.uplink: Uplink | None = None
        self.commands: CommandHandler | None = None
        self.ready = asyncio.Event()
        self.last_alert: dict[str, Any] | None = None
        # Every episode not clear, by id: the health's ``alerts`` (the collector reconciles by it).
        self.open_alerts: dict[str, dict[str, Any]] = {}
        self.status_server: StatusServer | None = None
        # Messages (or telemetry readings) the contract refused before they were stored.
        self.refused_total = 0
        self._refusals_logged: set[tuple[str, str | None, str]] = set()

    # --- Sink: what the drivers report --------------------------------------------

    def reading(self, dev: str, ts: int, metric: str, value: float, quality: Quality) -> None:
        self._readings.append({"dev": dev, "ts": ts, "metric": metric, "value": value, "quality": quality})
        if quality == "good":
            for ctl in self.by_sensor.get(dev, ()):
                ctl.sensor_value(dev, metric, value)
        if len(self._readings) >= MAX_READINGS:
            self._flush.set()

    def transition(
        self, dev: str, kind: AlertKind, t: Transition, unit: str | None, reason: str | None = None
    ) -> None:
        ctls = self.by_sensor.get(dev, [])
        if kind in ("flood", "immersion"):
            for ctl in ctls:
                ctl.sensor_level(dev, t.level, f"alert:{t.episode} {dev} {t.level}")
        elif kind == "forecast":  # the board's pre-warning only: a forecast never drives the gate
            for ctl in ctls:
                ctl.sensor_forecast(dev, t.level != "clear", f"alert:{t.episode} {dev} forecast {t.level}")
        alert: dict[str, Any] = {
            "id": t.episode,
            "dev": dev,
            "kind": kind,
            "level": t.level,
            "prev": t.prev,
            "ts": t.ts,
            # What the policy did because of it: a forecast drives nothing (only measured water does).
            "actions": self._actions(ctls) if kind in ("flood", "immersion") else [],
        }
        if kind != "sensor_fault":
            alert.update(value=t.value, unit=unit, threshold=t.threshold, rate_per_min=t.rate_per_min)
        if t.eta_s is not None:
            alert["eta_s"] = t.eta_s
        if reason:
            alert["reason"] = reason
        self.last_alert = alert
        if t.level == "clear":
            self.open_alerts.pop(t.episode, None)
        else:
            self.open_alerts[t.episode] = {"id": t.episode, "dev": dev, "kind": kind, "level": t.level}
        log.info(
            "alert %s %s %s -> %s",
            dev,
            kind,
            t.prev,
            t.level,
            extra={"episode": t.episode, "value": t.value},
        )
        self._enqueue(Kind.ALERT, {"alert": alert}, PRIORITY_URGENT, t.ts)

    def fault(self, dev: str, change: FaultChange, detail: dict[str, Any]) -> None:
        for ctl in self.by_sensor.get(dev, []):
            ctl.sensor_fault(dev, change.faulted, change.reason)
        etype = "device.fault" if change.faulted else "device.recovered"
        self.event(etype, dev, {"reason": change.reason, **detail}, change.ts)

    # --- messages ---------------------------------------------------------------------

    def event(self, etype: str, dev: str | None, detail: dict[str, Any], ts: int | None = None) -> None:
        body: dict[str, Any] = {"type": etype, "detail": detail}
        if dev is not None:
            body["dev"] = dev
        prio = PRIORITY_BULK if etype == "heartbeat" else PRIORITY_URGENT
        self._enqueue(Kind.EVENT, {"event": body}, prio, ts or self.clock.now_ms())

    def _enqueue(self, kind: Kind, body: dict[str, Any], priority: int, ts: int) -> None:
        self._queue.put_nowait((kind, body, priority, ts))

    def _actions(self, ctls: list[ResponseController]) -> list[dict[str, Any]]:
        """The targets the policy sets for each response's board and gate (none under override)."""
        out: list[dict[str, Any]] = []
        for ctl in ctls:
            r, d = ctl.resp, ctl.decision()
            if r.sign is not None and d.board is not None:
                out.append({"dev": r.sign, "do": "show", "arg": d.board})
            if r.gate is not None and d.gate is not None:
                out.append({"dev": r.gate, "do": "close" if d.gate == "closed" else "open"})
        return out

    async def _writer(self) -> None:
        """Stamp envelopes in order and store every message before it can be sent."""
        while True:
            kind, body, priority, ts = await self._queue.get()
            await self._store(kind, body, priority, ts)

    async def _store(self, kind: Kind, body: dict[str, Any], priority: int, ts: int) -> None:
        assert self.seq is not None
        stamp = self.seq.envelope(ts)
        try:
            message = self._valid(kind, {**stamp, **body})
        except msgspec.ValidationError:
            self.seq.take_back(stamp)
            return
        topic = str(Topic(self.node, kind))
        env = message
        assert isinstance(env, wire.Envelope)
        dropped = await self.outbox.put(
            kind.value, topic, wire.encode(message), priority, ts, boot=env.boot, seq=env.seq
        )
        if dropped:
            log.warning("outbox full: shed %d telemetry messages", dropped)

    def _valid(self, kind: Kind, fields: dict[str, Any]) -> Any:
        """The message, or the part of it the contract accepts; raise if none of it.

        A value the contract refuses (a driver's reading out of its metric's
        range, say) must not stop the agent: the refused reading is left out of
        its telemetry and counted, any other refused message is counted and
        dropped. Each kind of refusal is logged once at ERROR, then at DEBUG.
        """
        try:
            return wire.build(wire.MODELS[kind], fields)
        except msgspec.ValidationError as exc:
            if kind is not Kind.TELEMETRY:
                self._refused(kind, exc)
                raise
        kept = []
        for r in fields["readings"]:
            try:
                wire.build(wire.Reading, r)
            except msgspec.ValidationError as exc:
                self._refused(kind, exc, r.get("dev"))
            else:
                kept.append(r)
        if not kept:
            raise msgspec.ValidationError("every reading refused")
        try:
            return wire.build(wire.MODELS[kind], {**fields, "readings": kept})
        except msgspec.ValidationError as exc:
            self._refused(kind, exc)
            raise

    def _refused(self, kind: Kind, exc: msgspec.ValidationError, dev: str | None = None) -> None:
        self.refused_total += 1
        path, why = wire.describe(exc)
        key = (kind.value, dev, path)
        level = logging.DEBUG if key in self._refusals_logged else logging.ERROR
        self._refusals_logged.add(key)
        log.log(
            level,
            "not sent: the contract refuses %s %s: %s",
            kind.value,
            path or dev or "",
            why,
            extra={"dev": dev},
        )

    async def _telemetry(self) -> None:
        interval = self.site.config.telemetry_interval_s
        while True:
            self._flush.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush.wait(), interval)
            self.flush_readings()
            if self.outbox.unreported_drops:
                n, self.outbox.unreported_drops = self.outbox.unreported_drops, 0
                self.event("outbox.dropped", None, {"telemetry": n, "total": self.outbox.dropped_total})

    def flush_readings(self) -> None:
        while self._readings:
            chunk, self._readings = self._readings[:MAX_READINGS], self._readings[MAX_READINGS:]
            self._enqueue(Kind.TELEMETRY, {"readings": chunk}, PRIORITY_BULK, self.clock.now_ms())

    async def health(self) -> dict[str, Any]:
        stats = await self.outbox.stats()
        devices: dict[str, Any] = {}
        for owner in self.owners.values():
            devices.update(owner.health()["devices"])
        for dev_id, counters in devices.items():  # the bus answers, yet the device may be faulted
            counters["fault"] = self.drivers[dev_id].faults.reason if dev_id in self.drivers else None
        return {
            "uptime_s": round(time.monotonic() - self.started, 1),
            "rss_bytes": rss_bytes(),
            "outbox": {
                "depth": stats.depth,
                "bytes": stats.bytes,
                "dropped_total": stats.dropped_total,
                # Refused by the contract before they were stored (never sent).
                "refused_total": self.refused_total,
                # The broker has these; the collector has not confirmed them yet.
                "awaiting_confirmation": stats.awaiting,
                "oldest_awaiting_s": (
                    None
                    if stats.oldest_awaiting_ms is None
                    else round(max(0, self.clock.now_ms() - stats.oldest_awaiting_ms) / 1000, 1)
                ),
            },
            "buses": {k: o.connected for k, o in self.owners.items()},
            "devices": devices,
            "uplink": {
                "connected": bool(self.uplink and self.uplink.connected),
                "connects": self.uplink.connects if self.uplink else 0,
                "collector_acks": bool(self.uplink and self.uplink.collector_acks),
                "resent": self.uplink.resent if self.uplink else 0,
            },
            "responses": {c.resp.id: c.snapshot() for c in self.responses()},
            "alerts": list(self.open_alerts.values()),
        }

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.site.config.heartbeat_s)
            self.event("heartbeat", None, await self.health())

    async def queue_birth(self) -> None:
        cfg = self.site.config
        devices = []
        for d in cfg.devices:
            prof = self.site.profiles[d.profile]
            info: dict[str, Any] = {"id": d.id, "kind": prof.kind, "model": prof.model}
            drv = self.drivers.get(d.id)
            if isinstance(drv, LevelSensor):
                th = drv.alarm.thresholds
                info.update(unit="mm", thresholds={"warning": th.warning.on, "danger": th.danger.on})
            devices.append(info)
        body = {
            "agent_version": __version__,
            "config_hash": self.site.config_hash,
            "site": msgspec.to_builtins(cfg.site),
            "devices": devices,
            "health": await self.health(),
        }
        self._enqueue(Kind.BIRTH, body, PRIORITY_BIRTH, self.clock.now_ms())

    async def _on_command(self, payload: bytes) -> None:
        assert self.commands is not None
        result = await self.commands.handle(payload)
        log.info("command %s: %s %s", result.cmd_id, result.status, result.reason)
        self._enqueue(
            Kind.CMD_RESULT,
            {"cmd_id": result.cmd_id, "status": result.status, "reason": result.reason},
            PRIORITY_URGENT,
            self.clock.now_ms(),
        )

    # --- wiring -------------------------------------------------------------------------

    def _build(self) -> None:
        cfg = self.site.config
        for d in cfg.devices:
            self.drivers[d.id] = make_driver(d, self.site.profiles[d.profile], self, self.clock)
        for bus in cfg.buses:
            devs = [self.drivers[d.id] for d in cfg.devices if d.bus == bus.id]
            budget = bus_budget(bus, devs)
            self.owners[bus.id] = BusOwner(
                bus.id,
                self.link_factory(bus),
                list(devs),
                frame_gap_s=bus.frame_gap_s(),
                backoff_max_s=bus.backoff_max_s,
                expected_s={c.id: c.poll_time_s for c in budget.devices},
                clock=self.clock,
            )
        bus_of = {d.id: d.bus for d in cfg.devices}
        for r in cfg.responses:
            sign = gate = None
            if r.sign is not None:
                s = self.drivers[r.sign]
                assert isinstance(s, SignDevice)
                sign = (s, self.owners[bus_of[r.sign]])
            if r.gate is not None:
                g = self.drivers[r.gate]
                assert isinstance(g, GateDevice)
                gate = (g, self.owners[bus_of[r.gate]])
            ctl = ResponseController(r, sign, gate, self.event, cfg.presets, self.clock)
            for dev in (r.sign, r.gate):
                if dev is not None:
                    self.controllers[dev] = ctl
            for s_id in r.sensors:
                self.by_sensor.setdefault(s_id, []).append(ctl)
        levels = {k: v for k, v in self.drivers.items() if isinstance(v, LevelSensor)}

        async def rebirth() -> None:
            await self.queue_birth()

        def config_applied(dev: str, detail: dict[str, Any]) -> None:
            self.event("config.applied", dev, detail)

        self.commands = CommandHandler(
            self.site.command_key(),
            self.outbox,
            self.controllers,
            levels,
            rebirth,
            config_applied,
            self.clock.now_ms,
        )

    async def status(self) -> dict[str, Any]:
        """What ``floodgate edge status`` shows: health, responses, the last alert."""
        return {
            "node": self.node,
            "boot": self.boot,
            "now_ms": self.clock.now_ms(),  # the agent's time, for the times in its responses
            **await self.health(),
            "last_alert": self.last_alert,
        }

    def responses(self) -> list[ResponseController]:
        seen: list[ResponseController] = []
        for c in self.controllers.values():
            if c not in seen:
                seen.append(c)
        return seen

    async def run(self) -> None:
        await self.outbox.open()
        try:
            self.boot = await self.outbox.next_boot()
            self.seq = Sequencer(self.node, self.boot)
            self._build()
            self.uplink = Uplink(
                broker_settings(self.site),
                self.node,
                self.boot,
                self.outbox,
                on_connect=self.queue_birth,
                on_command=self._on_command,
                batch=self.site.config.outbox.batch,
                confirm_timeout_s=self.site.config.outbox.confirm_timeout_s,
                confirm_timeout_max_s=self.site.config.outbox.confirm_timeout_max_s,
                clock_ms=self.clock.now_ms,
            )
            log.info("agent started", extra={"node": self.node, "boot": self.boot})
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._writer(), name="writer")
                for owner in self.owners.values():
                    tg.create_task(owner.run(), name=f"bus:{owner.bus_id}")
                for ctl in self.responses():
                    tg.create_task(ctl.run(), name=f"response:{ctl.resp.id}")
                tg.create_task(self._telemetry(), name="telemetry")
                tg.create_task(self._heartbeat(), name="heartbeat")
                tg.create_task(self.uplink.run(), name="uplink")
                if self.site.config.status_port:
                    self.status_server = StatusServer(self.site.config.status_port, self.status)
                    tg.create_task(self.status_server.run(), name="status")
                self.ready.set()
        finally:
            await self._drain()
            await self.outbox.close()

    async def _drain(self) -> None:
        """On a clean stop, store what is still queued so nothing is lost."""
        self.flush_readings()
        if self.seq is None:
            return
        while not self._queue.empty():
            await self._store(*self._queue.get_nowait())


def run_agent(
    config: Path, log_level: str = "info", log_format: str = "text", profile_dirs: Sequence[Path] = ()
) -> int:
    """Entry point for ``floodgate edge run``."""
    from edge.config.site import load_site  # noqa: PLC0415
    from floodgate import logs  # noqa: PLC0415
    from floodgate.runner import run_until_signal  # noqa: PLC0415

    logs.setup(log_level, log_format)
    site = load_site(config, profile_dirs)

    run_until_signal(lambda: Agent(site).run())
    return 0
