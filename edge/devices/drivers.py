"""Device drivers: what to read from each kind of device, and how to drive actuators.

Sensors turn registers into depth or wetness, filter it and run it through the
alert and fault state machines; what comes out goes to a :class:`Sink`
(synchronously: the sink queues, so a poll never waits on the disk). Sign and
gate drivers report what they read to a listener and offer writes with
read-back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from edge.bus.owner import DeviceIO
from edge.config.profile import UNIT_TO_MM, Point, Profile, Table
from edge.config.site import Device, Thresholds
from edge.devices.codec import Value, decode_raw, encode_raw, engineering, plausible
from edge.rules.alerts import ContactAlarm, LevelAlarm, Transition
from edge.rules.faults import FaultChange, FaultTracker
from edge.rules.filters import LevelFilter
from edge.rules.urgency import LevelUrgency
from floodgate.clock import Clock, SystemClock
from floodgate.errors import BusError, LinkDown, ModbusException, NoResponse
from floodgate.wire import AlertKind, Level, Quality

MAX_SPAN = 32


class Sink(Protocol):
    def reading(self, dev: str, ts: int, metric: str, value: float, quality: Quality) -> None: ...
    def transition(
        self, dev: str, kind: AlertKind, t: Transition, unit: str | None, reason: str | None = None
    ) -> None: ...
    def fault(self, dev: str, change: FaultChange, detail: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Read:
    """One request of a poll: a span of a table, and the points it carries."""

    table: Table
    address: int
    count: int
    points: tuple[tuple[str, Point, int], ...]  # name, point, offset in the span


def plan_reads(profile: Profile, names: Iterable[str]) -> list[Read]:
    """The requests that read ``names``: one per table where their addresses are close."""
    by_table: dict[Table, list[tuple[str, Point]]] = {}
    for n in names:
        p = profile.points[n]
        by_table.setdefault(p.table, []).append((n, p))
    out: list[Read] = []
    for table, pts in by_table.items():
        addrs = [(profile.protocol_address(p), p.width) for _, p in pts]
        lo = min(a for a, _ in addrs)
        hi = max(a + w for a, w in addrs)
        if hi - lo <= MAX_SPAN:
            carried = tuple((n, p, a - lo) for (n, p), (a, _) in zip(pts, addrs, strict=True))
            out.append(Read(table, lo, hi - lo, carried))
        else:
            out.extend(Read(table, a, w, ((n, p, 0),)) for (n, p), (a, w) in zip(pts, addrs, strict=True))
    return out


async def read_points(io: DeviceIO, profile: Profile, names: Iterable[str]) -> dict[str, Value]:
    """Read several points, one request per table where their addresses are close."""
    out: dict[str, Value] = {}
    for r in plan_reads(profile, names):
        words = await io.read(r.table, r.address, r.count)
        for n, p, off in r.points:
            out[n] = decode_raw(p, words[off : off + p.width])
    return out


def depth_mm(profile: Profile, dev: Device, value: float) -> float:
    """Water depth on the road in mm from a level point's value in its unit.

    A distance-mode sensor looks down: depth = ``mount_height_mm`` - distance.
    ``zero_offset_mm`` (what ``calibrate`` measured on a dry road) is taken off.
    """
    mm = value * UNIT_TO_MM.get(profile.points["level"].unit or "mm", 1.0)
    if profile.level_mode == "distance":
        mm = (dev.mount_height_mm or 0.0) - mm
    return mm - dev.zero_offset_mm


def tenth(value: float) -> float | None:
    """A value to 0.1 as it goes out (telemetry, alerts, fault details); None when not a number."""
    return round(value, 1) if math.isfinite(value) else None


def failure_reason(exc: BusError) -> str:
    if isinstance(exc, NoResponse):
        return "timeout"
    if isinstance(exc, ModbusException):
        return f"modbus_exception_{exc.code}"
    if isinstance(exc, LinkDown):
        return "link_down"
    return "bus_error"


class _Driver:
    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        self.dev = dev
        self.clock = clock or SystemClock()  # readings, alerts and faults are stamped by it
        self.id = dev.id
        self.unit = dev.unit
        self.poll_s = dev.poll_s
        self.poll_fast_s = dev.poll_s
        self.profile = profile
        self.sink = sink
        self.faults = FaultTracker(stuck_after_s=dev.filter.stuck_after_s)

    @property
    def urgency(self) -> str | None:
        """Why the device should be polled at ``poll_fast_s`` now (None: at ``poll_s``)."""
        return None

    def poll_reads(self) -> list[Read]:
        """The requests of one steady-state poll (what the bus budget counts)."""
        return plan_reads(self.profile, self._poll_names())

    def _poll_names(self) -> Sequence[str]:
        raise NotImplementedError

    def _set_fault(self, ts: int, reason: str | None, detail: dict[str, Any] | None = None) -> None:
        change = self.faults.update(ts, reason)
        if change is not None:
            self.sink.fault(self.id, change, detail or {})

    def on_failure(self, exc: BusError, ts_ms: int) -> None:
        self._set_fault(ts_ms, failure_reason(exc), {"error": str(exc)})


class _Sensor(_Driver):
    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        self.status = profile.status_points()

    def _with_status(self, names: list[str]) -> list[str]:
        return names + [n for n in self.status if n not in names]

    def status_fault(self, raws: dict[str, Value]) -> tuple[str, dict[str, Any]] | None:
        """The first fault a status point of the profile reads, with its point and code."""
        for name, point in self.status.items():
            if name not in raws:
                continue
            reason = point.fault_reason(raws[name])
            if reason is not None:
                raw = raws[name]
                code = int(raw) if isinstance(raw, bool | int | float) else raw
                return reason, {"point": name, "code": code}
        return None

    def _set_fault(self, ts: int, reason: str | None, detail: dict[str, Any] | None = None) -> None:
        change = self.faults.update(ts, reason)
        if change is None:
            return
        self.sink.fault(self.id, change, detail or {})
        level: Level = "warning" if change.faulted else "clear"
        prev: Level = "clear" if change.faulted else "warning"
        t = Transition(change.episode, level, prev, 0.0, None, None, ts)
        self.sink.transition(self.id, "sensor_fault", t, None, reason=change.reason)

    @property
    def level(self) -> Level:
        raise NotImplementedError


class LevelSensor(_Sensor):
    """Depth on the road in mm, from a pressure or radar level sensor."""

    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        assert dev.thresholds is not None
        self.point = profile.points["level"]
        self.metric = self.point.metric or "depth_mm"
        self.alarm = LevelAlarm(dev.thresholds)
        self.filter = LevelFilter(dev.filter)
        names = ["level"] + ([self.point.decimals_from] if self.point.decimals_from else [])
        self.names = self._with_status(names)
        self.poll_fast_s = dev.poll_fast_s
        self.urgent = LevelUrgency(dev.fast_poll, dev.thresholds)
        self._accepted: float | None = None
        self._suspect = False

    @property
    def urgency(self) -> str | None:
        return self.urgent.reason

    def poll_reads(self) -> list[Read]:
        return plan_reads(self.profile, self.names) * self.dev.filter.samples

    @property
    def level(self) -> Level:
        return self.alarm.level

    def set_thresholds(self, thresholds: Thresholds) -> None:
        self.alarm.thresholds = thresholds
        self.urgent.thresholds = thresholds

    def _to_mm(self, raws: dict[str, Value]) -> tuple[float, bool]:
        """Depth in mm and whether the reading is inside the profile's plausible range."""
        value = float(engineering(self.profile, "level", raws))
        return depth_mm(self.profile, self.dev, value), plausible(self.point, value)

    async def poll(self, io: DeviceIO) -> None:
        self._accepted, self._suspect = None, False
        await self._poll(io)
        self.urgent.feed(self.clock.now_ms(), self._accepted, self.alarm.level, self._suspect)

    async def _poll(self, io: DeviceIO) -> None:
        samples: list[float] = []
        raw0: object = None
        in_range = True
        status: tuple[str, dict[str, Any]] | None = None
        for _ in range(self.dev.filter.samples):
            raws = await read_points(io, self.profile, self.names)
            raw0 = raw0 if raw0 is not None else raws["level"]
            status = status or self.status_fault(raws)
            mm, ok = self._to_mm(raws)
            in_range = in_range and ok
            samples.append(mm)
        ts = self.clock.now_ms()
        first = tenth(samples[0])  # as telemetry and alerts carry it: mm to 0.1, or None
        if status is not None:
            # The device says its reading is not valid: a fault, whatever the value reads.
            self._set_fault(ts, status[0], status[1])
            if first is not None:
                self.sink.reading(self.id, ts, self.metric, first, "bad")
            return
        stuck = self.faults.raw_value(ts, raw0)
        if not in_range or stuck is not None:
            self._set_fault(ts, stuck if in_range else "out_of_range", {"value": first})
            if first is not None:
                self.sink.reading(self.id, ts, self.metric, first, "bad")
            return
        self._set_fault(ts, None)
        f = self.filter.feed(ts, samples)
        self.sink.reading(self.id, ts, self.metric, round(f.value, 1), f.quality)
        self._suspect = f.quality == "suspect"
        if f.quality == "good":
            self._accepted = f.value
            t = self.alarm.feed(ts, f.value)
            if t is not None:
                self.sink.transition(self.id, "flood", replace(t, value=round(t.value, 1)), "mm")


class ImmersionSensor(_Sensor):
    """A wet contact; a cable break or the controller's own comms-loss bit is a fault."""

    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        self.alarm = ContactAlarm(dev.wet_level)
        self.names = self._with_status(["wet"])
        self.poll_fast_s = dev.poll_fast_s

    @property
    def level(self) -> Level:
        return self.alarm.level

    @property
    def urgency(self) -> str | None:
        return "wet" if self.alarm.level != "clear" else None

    def _poll_names(self) -> Sequence[str]:
        return self.names

    async def poll(self, io: DeviceIO) -> None:
        raws = await read_points(io, self.profile, self.names)
        ts = self.clock.now_ms()
        wet_point = self.profile.points["wet"]
        wet_raw = raws["wet"]
        status = self.status_fault(raws)
        if status is not None:
            self._set_fault(ts, status[0], status[1])
        elif wet_point.range is not None and not (wet_point.range[0] <= float(wet_raw) <= wet_point.range[1]):
            self._set_fault(ts, "out_of_range", {"value": float(wet_raw)})
        else:
            stuck = self.faults.raw_value(ts, wet_raw)
            self._set_fault(ts, stuck, {"value": float(wet_raw)} if stuck else None)
        if self.faults.faulted:
            self.sink.reading(self.id, ts, "wet", float(bool(wet_raw)), "bad")
            return
        wet = bool(wet_raw)
        self.sink.reading(self.id, ts, "wet", 1.0 if wet else 0.0, "good")
        t = self.alarm.feed(ts, wet)
        if t is not None:
            self.sink.transition(self.id, "immersion", t, None)


@dataclass
class SignState:
    text: str
    default_text: str | None


@dataclass
class GateState:
    position: str  # open | closed | moving | fault
    relay: bool
    override: bool | None


class SignDevice(_Driver):
    """An LED board: reads what it shows; writes a message and reads it back."""

    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        self.point = profile.points["text"]
        self.names = ["text"] + (["default_text"] if "default_text" in profile.points else [])
        self.listener: Callable[[str, SignState], None] | None = None
        self.state: SignState | None = None

    def _poll_names(self) -> Sequence[str]:
        return ["text"]

    async def poll(self, io: DeviceIO) -> None:
        # The stored default never changes on its own: read it once, then only the text.
        names = self.names if self.state is None else ["text"]
        raws = await read_points(io, self.profile, names)
        self._set_fault(self.clock.now_ms(), None)
        dft = raws.get("default_text", None if self.state is None else self.state.default_text)
        self.state = SignState(str(raws["text"]), None if dft is None else str(dft))
        if self.listener is not None:
            self.listener(self.id, self.state)

    async def show(self, io: DeviceIO, text: str) -> bool:
        """Write ``text`` and read it back; True when the board holds exactly that."""
        words = encode_raw(self.point, text)
        addr = self.profile.protocol_address(self.point)
        await io.write_registers(addr, words)
        back = decode_raw(self.point, await io.read("holding", addr, len(words)))
        return back == text


class GateDevice(_Driver):
    """A barrier through a relay: close/open by coil, position from the limit switches."""

    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        self.relay = profile.points["close_relay"]
        self.inputs = [n for n in ("open_limit", "closed_limit", "override") if n in profile.points]
        self.listener: Callable[[str, GateState], None] | None = None
        self.state: GateState | None = None

    def _poll_names(self) -> Sequence[str]:
        return [*self.inputs, "close_relay"]

    async def poll(self, io: DeviceIO) -> None:
        raws = await read_points(io, self.profile, self._poll_names())
        self._set_fault(self.clock.now_ms(), None)
        opened, closed = bool(raws["open_limit"]), bool(raws["closed_limit"])
        position = "fault" if opened and closed else "open" if opened else "closed" if closed else "moving"
        override = bool(raws["override"]) if "override" in raws else None
        self.state = GateState(position, bool(raws["close_relay"]), override)
        if self.listener is not None:
            self.listener(self.id, self.state)

    async def set_closed(self, io: DeviceIO, closed: bool) -> bool:
        """Energise (close) or release (open) the relay and read the coil back."""
        addr = self.profile.protocol_address(self.relay)
        await io.write_coil(addr, closed)
        return bool((await io.read("coil", addr, 1))[0]) == closed


Driver = LevelSensor | ImmersionSensor | SignDevice | GateDevice


def make_driver(dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> Driver:
    if profile.kind == "level":
        return LevelSensor(dev, profile, sink, clock)
    if profile.kind == "immersion":
        return ImmersionSensor(dev, profile, sink, clock)
    if profile.kind == "sign":
        return SignDevice(dev, profile, sink, clock)
    return GateDevice(dev, profile, sink, clock)
