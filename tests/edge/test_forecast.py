"""The edge's rise-rate forecast: a ``forecast`` alert with ``eta_s`` before the water crosses a threshold.

A level sensor over real Modbus (TCP) against the simulator, on a manual clock;
the water rises, the agent's driver forecasts, the rise stops and it clears. The
gate side (a forecast never closes a gate) is in the gate safety suite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge.bus.owner import Counters, DeviceIO
from edge.config.profile import load_profile
from edge.config.site import Device, ForecastCfg, Threshold, Thresholds
from edge.devices.drivers import LevelSensor
from edge.rules.alerts import Transition
from edge.rules.faults import FaultChange
from floodgate.clock import ManualClock
from floodgate.errors import BusError
from floodgate.wire import AlertKind, Quality
from simulators.devices import DepthSource, SimLevel
from simulators.scenarios import Scenario
from tests.conftest import PROFILES, site_yaml
from tests.edge.test_config import issues_for, line_of
from tests.helpers import modbus_tcp

TH = Thresholds(warning=Threshold(on=150, clear=120), danger=Threshold(on=270, clear=240))


class Alerts:
    """A sink that keeps the alerts a driver raises."""

    def __init__(self) -> None:
        self.alerts: list[tuple[AlertKind, Transition]] = []

    def reading(self, dev: str, ts: int, metric: str, value: float, quality: Quality) -> None: ...

    def transition(
        self, dev: str, kind: AlertKind, t: Transition, unit: str | None, reason: str | None = None
    ) -> None:
        self.alerts.append((kind, t))

    def fault(self, dev: str, change: FaultChange, detail: dict[str, Any]) -> None: ...

    def of(self, kind: str) -> list[Transition]:
        return [t for k, t in self.alerts if k == kind]


class Rig:
    def __init__(
        self, sensor: LevelSensor, io: DeviceIO, source: DepthSource, clock: ManualClock, sim: SimLevel
    ) -> None:
        self.sensor, self.io, self.source, self.clock, self.sim = sensor, io, source, clock, sim

    async def poll_at(self, depth_mm: float, step_ms: int = 2000) -> None:
        self.clock.advance(step_ms)
        self.source.manual = depth_mm
        try:
            await self.sensor.poll(self.io)
        except BusError as exc:  # as the bus owner does when the device does not answer
            self.sensor.on_failure(exc, self.clock.now_ms())


@pytest.fixture
async def rig() -> AsyncIterator[tuple[Rig, Alerts]]:
    prof = load_profile(PROFILES / "generic-rs485-level.yaml")
    source = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=20.0)
    sim = SimLevel(prof, 1, source)
    dev = Device(
        id="lvl-1", profile=prof.model, bus="b", unit=1, thresholds=TH, forecast=ForecastCfg(horizon_s=120)
    )
    clock = ManualClock()
    sink = Alerts()
    async with modbus_tcp(sim.slave) as link:
        yield (
            Rig(LevelSensor(dev, prof, sink, clock), DeviceIO(link, 1, Counters()), source, clock, sim),
            sink,
        )


async def test_a_rise_forecasts_the_next_threshold_then_clears_when_it_stops(rig: tuple[Rig, Alerts]) -> None:
    r, sink = rig
    # 30 mm/min (1 mm per 2 s poll; the generic sensor reads whole cm) from 20 mm: warning (150) is
    # 260 s away, beyond the 120 s horizon, so nothing is forecast yet.
    depth = 20.0
    for _ in range(10):
        depth += 10.0 if _ % 10 == 9 else 0.0
        await r.poll_at(depth)
    assert sink.of("forecast") == []
    # Faster: 60 mm/min (10 mm every 10 s as whole cm): at 100 mm, warning is 50 s away.
    while depth < 100:
        depth += 10
        await r.poll_at(depth, step_ms=10_000)
    [up] = sink.of("forecast")
    assert (up.level, up.prev, up.threshold) == ("warning", "clear", 150.0)
    assert up.eta_s is not None and 0 < up.eta_s <= 120
    assert up.rate_per_min is not None and up.rate_per_min >= 30
    assert sink.of("flood") == []  # a forecast, not measured water
    # The rise stops: the level holds for a window, and the forecast clears (same episode).
    for _ in range(8):
        await r.poll_at(depth, step_ms=10_000)
    kinds = [(t.level, t.prev) for t in sink.of("forecast")]
    assert kinds == [("warning", "clear"), ("clear", "warning")]
    assert {t.episode for t in sink.of("forecast")} == {up.episode}
    assert sink.of("forecast")[-1].eta_s is None


async def test_past_warning_it_forecasts_danger(rig: tuple[Rig, Alerts]) -> None:
    r, sink = rig
    depth = 20.0
    while depth < 260:  # 60 mm/min: warning is measured on the way, danger forecast
        depth += 10
        await r.poll_at(depth, step_ms=10_000)
    levels = [t.level for t in sink.of("forecast")]
    assert levels[0] == "warning" and "danger" in levels, levels
    assert [t.level for t in sink.of("flood")] == ["warning"]
    danger = next(t for t in sink.of("forecast") if t.level == "danger")
    assert danger.threshold == 270.0 and danger.eta_s is not None and danger.eta_s <= 120
    # Measured danger: nothing is left to forecast, so the forecast clears.
    for _ in range(3):
        depth += 10
        await r.poll_at(depth, step_ms=10_000)
    assert sink.of("flood")[-1].level == "danger"
    assert sink.of("forecast")[-1].level == "clear"


async def _forecasting(r: Rig, sink: Alerts) -> tuple[float, Transition]:
    """Water rising at 60 mm/min to 100 mm: warning is forecast."""
    depth = 20.0
    while depth < 100:
        depth += 10
        await r.poll_at(depth, step_ms=10_000)
    [up] = sink.of("forecast")
    assert up.level == "warning"
    return depth, up


@pytest.mark.parametrize("fault", ["out_of_range", "no_answer"])
async def test_a_forecast_clears_when_the_sensor_faults_or_stops_answering(
    rig: tuple[Rig, Alerts], fault: str
) -> None:
    r, sink = rig
    depth, up = await _forecasting(r, sink)
    r.sim.inject(fault)
    await r.poll_at(depth + 10, step_ms=10_000)
    [faulted] = sink.of("sensor_fault")
    assert faulted.level == "warning"
    [_, down] = sink.of("forecast")
    assert (down.level, down.prev, down.episode, down.eta_s) == ("clear", "warning", up.episode, None)
    assert down.ts == r.clock.now_ms()
    # Still faulted: nothing more.
    await r.poll_at(depth + 20, step_ms=10_000)
    assert len(sink.of("forecast")) == 2
    # Back, the water steady: no forecast from the readings before the fault.
    r.sim.inject(fault, on=False)
    for _ in range(3):
        await r.poll_at(depth, step_ms=10_000)
    assert [t.level for t in sink.of("sensor_fault")] == ["warning", "clear"]
    assert len(sink.of("forecast")) == 2


def test_a_forecast_on_a_board_is_refused_with_its_line(tmp_path: Path) -> None:
    text = site_yaml().replace("    unit: 10\n", "    unit: 10\n    forecast: {horizon_s: 60}\n", 1)
    assert "forecast" in text
    issues = issues_for(tmp_path, text)
    assert issues == [
        (line_of(text, "forecast:"), "devices[2].forecast", "only a level sensor forecasts; sign-1 is a sign")
    ]


def test_a_horizon_out_of_range_is_refused_with_its_line(tmp_path: Path) -> None:
    text = site_yaml().replace("    thresholds:", "    forecast: {horizon_s: 0}\n    thresholds:", 1)
    [(line, key, message)] = issues_for(tmp_path, text)
    assert (line, key) == (line_of(text, "horizon_s"), "devices[0].forecast.horizon_s")
    assert "> 0" in message or "greater" in message, message
