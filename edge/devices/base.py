"""The shared base of every device kind's driver (one module per kind in :mod:`edge.devices.kinds`).

Sensors turn registers into readings, filter them and run them through the
alert and fault state machines; what comes out goes to a :class:`Sink`
(synchronously: the sink queues, so a poll never waits on the disk). Sign and
gate drivers report what they read to a listener and offer writes with
read-back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from edge.bus.owner import DeviceIO
from edge.config.profile import UNIT_TO_MM, Point, Profile, Table
from edge.config.site import Device
from edge.devices.codec import Value, decode_raw
from edge.rules.alerts import Transition
from edge.rules.faults import FaultChange, FaultTracker
from edge.rules.gate import SensorState
from floodgate.clock import Clock, SystemClock
from floodgate.errors import BusError, LinkDown, ModbusException, NoResponse
from floodgate.vocab import DeviceKind
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


class DeviceDriver:
    """What every kind's driver shares; a kind's module subclasses it and names its ``kind``."""

    kind: ClassVar[DeviceKind]

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

    def write_frames(self) -> Sequence[tuple[int, int]]:
        """Request and reply bytes of an actuator's write with its read-back (none for a sensor)."""
        return ()

    @staticmethod
    def explain(dev: Device, profile: Profile) -> dict[str, Any]:
        """What ``check-config --explain`` adds for a sensor of this kind."""
        return {}

    async def poll(self, io: DeviceIO) -> None:
        raise NotImplementedError

    def _set_fault(self, ts: int, reason: str | None, detail: dict[str, Any] | None = None) -> None:
        change = self.faults.update(ts, reason)
        if change is not None:
            self.sink.fault(self.id, change, detail or {})

    def on_failure(self, exc: BusError, ts_ms: int) -> None:
        self._set_fault(ts_ms, failure_reason(exc), {"error": str(exc)})


class Sensor(DeviceDriver):
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

    async def snapshot(self, io: DeviceIO, reopen_below_mm: float | None) -> tuple[SensorState, str]:
        """One read as the gate policy sees it (``floodgate-edge gate`` checks), and what it read in words."""
        raise NotImplementedError
