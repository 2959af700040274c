"""The ``immersion`` kind: a wet contact at a set height."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from edge.bus.owner import DeviceIO
from edge.config.profile import Profile
from edge.config.site import Device
from edge.devices.base import Sensor, Sink, read_points
from edge.rules.alerts import ContactAlarm
from edge.rules.gate import SensorState
from floodgate.clock import Clock
from floodgate.vocab import DeviceKind
from floodgate.wire import Level


class ImmersionSensor(Sensor):
    """A wet contact; a cable break or the controller's own comms-loss bit is a fault."""

    kind: ClassVar[DeviceKind] = "immersion"

    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        self.alarm = ContactAlarm(dev.wet_level, dev.dry_hold_s)
        self.names = self._with_status(["wet"])
        self.poll_fast_s = dev.poll_fast_s

    @staticmethod
    def explain(dev: Device, profile: Profile) -> dict[str, Any]:
        return {"wet_means": dev.wet_level, "dry_hold_s": dev.dry_hold_s}

    @property
    def level(self) -> Level:
        return self.alarm.level

    @property
    def urgency(self) -> str | None:
        return "wet" if self.alarm.level != "clear" else None

    def _poll_names(self) -> Sequence[str]:
        return self.names

    async def snapshot(self, io: DeviceIO, reopen_below_mm: float | None) -> tuple[SensorState, str]:
        raws = await read_points(io, self.profile, self.names)
        if (status := self.status_fault(raws)) is not None:
            return SensorState(fault=status[0], known=True), f"{self.id} reports {status[0]}"
        wet = bool(raws["wet"])
        state = SensorState(level=self.dev.wet_level if wet else "clear", wet=wet, known=True)
        return state, f"{self.id} is {'wet' if wet else 'dry'}"

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
