"""The ``level`` kind: water depth on the road from a pressure or radar level sensor."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from edge.bus.owner import DeviceIO
from edge.config.profile import Profile
from edge.config.site import Device, Thresholds
from edge.devices.base import Read, Sensor, Sink, depth_mm, plan_reads, read_points, tenth
from edge.devices.codec import Value, engineering, plausible
from edge.rules.alerts import LevelAlarm
from edge.rules.filters import LevelFilter
from edge.rules.forecast import RiseForecast
from edge.rules.gate import SensorState
from edge.rules.urgency import LevelUrgency
from floodgate.clock import Clock
from floodgate.vocab import DeviceKind
from floodgate.wire import Level


class LevelSensor(Sensor):
    """Depth on the road in mm, from a pressure or radar level sensor."""

    kind: ClassVar[DeviceKind] = "level"

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
        self.forecast = RiseForecast(dev.forecast, dev.thresholds) if dev.forecast.horizon_s else None
        self._accepted: float | None = None
        self._suspect = False

    @staticmethod
    def explain(dev: Device, profile: Profile) -> dict[str, Any]:
        th = dev.thresholds
        if th is None:
            return {}
        return {
            "warning": {"on_mm": th.warning.on, "clear_mm": th.warning.clear, "dwell_s": th.warning.dwell_s},
            "danger": {"on_mm": th.danger.on, "clear_mm": th.danger.clear, "dwell_s": th.danger.dwell_s},
            "confirm_readings": dev.filter.confirm,
            "level_mode": profile.level_mode,
            "mount_height_mm": dev.mount_height_mm,
            "zero_offset_mm": dev.zero_offset_mm,
            "forecast_horizon_s": dev.forecast.horizon_s,
        }

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
        if self.forecast is not None:
            self.forecast.thresholds = thresholds
        self.urgent.thresholds = thresholds

    def _to_mm(self, raws: dict[str, Value]) -> tuple[float, bool]:
        """Depth in mm and whether the reading is inside the profile's plausible range."""

        value = float(engineering(self.profile, "level", raws))
        return depth_mm(self.profile, self.dev, value), plausible(self.point, value)

    async def snapshot(self, io: DeviceIO, reopen_below_mm: float | None) -> tuple[SensorState, str]:
        th = self.alarm.thresholds
        raws = await read_points(io, self.profile, self.names)
        if (status := self.status_fault(raws)) is not None:
            return SensorState(fault=status[0], known=True), f"{self.id} reports {status[0]}"
        mm, ok = self._to_mm(raws)
        if not ok:
            return SensorState(fault="out_of_range", known=True), f"{self.id} reads an impossible {mm:g} mm"
        state = SensorState(
            level=snapshot_level(mm, th),
            wet=reopen_below_mm is not None and mm >= reopen_below_mm,
            known=True,
        )
        return state, f"{self.id} reads {mm:g} mm of water (warning at {th.warning.on:g})"

    def _set_fault(self, ts: int, reason: str | None, detail: dict[str, Any] | None = None) -> None:
        super()._set_fault(ts, reason, detail)
        if reason is not None and self.forecast is not None:
            # No depth to forecast from: an open forecast is cleared, not left standing.
            ft = self.forecast.drop(ts)
            if ft is not None:
                self.sink.transition(self.id, "forecast", replace(ft, value=round(ft.value, 1)), "mm")

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
            if self.forecast is not None:
                ft = self.forecast.feed(ts, f.value, self.alarm.level)
                if ft is not None:
                    self.sink.transition(self.id, "forecast", replace(ft, value=round(ft.value, 1)), "mm")


def snapshot_level(mm: float, th: Thresholds) -> Level:
    """One reading's level, read on the safe side: the hysteresis band counts as the higher level."""
    if mm >= th.danger.clear:
        return "danger"
    if mm >= th.warning.clear:
        return "warning"
    return "clear"
