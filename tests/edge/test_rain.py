"""The ``rain`` kind over real Modbus (TCP) against the simulated gauges, on a manual clock.

A tipping-bucket counter that wraps, a gauge that restarts, a bucket stuck and a
gauge that stops answering (faults), an intensity register (and one out of range),
and the simulator's rain following the same storm as the water.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edge.agent import Agent
from edge.bus.owner import Counters, DeviceIO
from edge.config.profile import load_profile
from edge.config.site import Device
from edge.devices.drivers import RainGauge, make_driver
from edge.rules.alerts import Transition
from edge.rules.faults import FaultChange
from floodgate.clock import ManualClock
from floodgate.errors import BusError, ConfigError
from floodgate.wire import AlertKind, Quality
from simulators.devices import DepthSource, SimRain
from simulators.scenarios import Scenario
from tests.conftest import PROFILES, SiteFactory, running, site_yaml
from tests.edge.test_agent_local import said
from tests.edge.test_config import issues_for, line_of
from tests.edge.test_status_points import readings
from tests.helpers import modbus_tcp, wait_until


class Said:
    """A sink that keeps what the gauge reports."""

    def __init__(self) -> None:
        self.readings: list[tuple[str, float, str]] = []
        self.alerts: list[tuple[str, str, str | None]] = []
        self.faults: list[tuple[bool, str | None]] = []

    def reading(self, dev: str, ts: int, metric: str, value: float, quality: Quality) -> None:
        self.readings.append((metric, value, quality))

    def transition(
        self, dev: str, kind: AlertKind, t: Transition, unit: str | None, reason: str | None = None
    ) -> None:
        self.alerts.append((kind, t.level, reason))

    def fault(self, dev: str, change: FaultChange, detail: dict[str, Any]) -> None:
        self.faults.append((change.faulted, change.reason))

    def last(self, metric: str) -> tuple[float, str]:
        value, quality = next((v, q) for m, v, q in reversed(self.readings) if m == metric)
        return value, quality

    def total(self) -> float:
        return round(sum(v for m, v, q in self.readings if m == "rainfall_mm" and q == "good"), 2)


class Gauge:
    def __init__(self, sim: SimRain, driver: RainGauge, io: DeviceIO, clock: ManualClock, said: Said) -> None:
        self.sim, self.driver, self.io, self.clock, self.said = sim, driver, io, clock, said

    async def poll(self, after_s: float = 60.0) -> None:
        self.clock.advance(round(after_s * 1000))
        try:
            await self.driver.poll(self.io)
        except BusError as exc:  # what the bus owner does with a failed poll
            self.driver.on_failure(exc, self.clock.now_ms())


GaugeFactory = Callable[..., Any]


@pytest.fixture
async def gauge() -> AsyncIterator[GaugeFactory]:
    async with contextlib.AsyncExitStack() as links:

        async def make(model: str, counter_start: int = 0, scenario: str = "dry") -> Gauge:
            prof = load_profile(PROFILES / f"{model}.yaml")
            clock = ManualClock()
            source = DepthSource(Scenario.named(scenario, noise_mm=0.0), clock=lambda: clock.now_ms() / 1000)
            sim = SimRain(prof, 1, source, counter_start=counter_start)
            link = await links.enter_async_context(modbus_tcp(sim.slave))
            said = Said()
            dev = Device(id="rain-1", profile=prof.model, bus="b", unit=1)
            driver = make_driver(dev, prof, said, clock)
            assert isinstance(driver, RainGauge)
            return Gauge(sim, driver, DeviceIO(link, 1, Counters()), clock, said)

        yield make


async def test_a_tip_counter_counts_across_its_roll_over(gauge: GaugeFactory) -> None:
    g = await gauge("rain-gauge-tb", counter_start=65_530)
    g.sim.manual_mm = 0.0
    await g.poll()  # the first count is where counting starts: no rain yet
    assert g.said.last("rainfall_mm") == (0.0, "good")
    g.sim.manual_mm = 1.0  # 5 tips: 65530 -> 65535
    await g.poll()
    assert g.said.last("rainfall_mm") == (1.0, "good")
    g.sim.manual_mm = 3.0  # 10 more tips: the 16-bit counter wraps (65545 is 9)
    await g.poll()
    assert int(g.sim.get_point("tips")) == 9
    assert g.said.last("rainfall_mm") == (2.0, "good")
    assert g.said.total() == 3.0
    # 3 mm in the 120 s since the first poll (the 5 min window is not full yet): 90 mm/h.
    assert g.said.last("rain_intensity_mm_h") == (90.0, "good")
    for _ in range(5):  # dry for 5 minutes: the window empties
        await g.poll()
    assert g.said.last("rain_intensity_mm_h") == (0.0, "good") and g.said.total() == 3.0
    assert g.said.faults == []


async def test_a_gauge_that_restarts_counts_nothing_for_the_jump(gauge: GaugeFactory) -> None:
    g = await gauge("rain-gauge-tb", counter_start=40_000)
    g.sim.manual_mm = 0.0
    await g.poll()
    g.sim.counter_start = 0  # power cut: it counts from zero again (a huge jump modulo 65536)
    g.sim.manual_mm = 0.4
    await g.poll()
    assert g.said.last("rainfall_mm") == (0.0, "good")
    g.sim.manual_mm = 1.0
    await g.poll()
    assert g.said.last("rainfall_mm") == (0.6, "good")


async def test_a_faulted_gauge_is_a_sensor_fault_and_its_readings_bad(gauge: GaugeFactory) -> None:
    g = await gauge("rain-gauge-tb")
    g.sim.manual_mm = 0.0
    await g.poll()
    g.sim.inject("bucket_stuck")
    g.sim.manual_mm = 0.6
    await g.poll()
    assert g.said.faults == [(True, "bucket_stuck")]
    assert g.said.alerts == [("sensor_fault", "warning", "bucket_stuck")]
    assert g.said.last("rainfall_mm") == (0.0, "bad")
    g.sim.inject("bucket_stuck", False)
    await g.poll()  # recovered: counting starts again from here
    assert g.said.faults[-1][0] is False
    assert g.said.alerts[-1][:2] == ("sensor_fault", "clear")
    g.sim.inject("no_answer")
    await g.poll()
    assert g.said.faults[-1] == (True, "timeout")
    assert [a[0] for a in g.said.alerts] == ["sensor_fault"] * 3  # a gauge raises no flood alert


async def test_an_intensity_register_and_the_rain_it_integrates(gauge: GaugeFactory) -> None:
    g = await gauge("rain-intensity-ri")
    g.sim.manual_mm_h = 30.0
    await g.poll()
    assert g.said.last("rain_intensity_mm_h") == (30.0, "good")
    g.sim.manual_mm_h = 42.5
    await g.poll(after_s=120)  # 2 min at a mean of 36.25 mm/h
    assert g.said.last("rain_intensity_mm_h") == (42.5, "good")
    assert g.said.last("rainfall_mm") == (1.21, "good")
    g.sim.inject("out_of_range")
    await g.poll()
    assert g.said.faults == [(True, "out_of_range")]
    assert g.said.last("rain_intensity_mm_h") == (0.0, "bad")
    g.sim.inject("out_of_range", False)
    await g.poll()
    assert g.said.faults[-1][0] is False and g.said.last("rain_intensity_mm_h") == (42.5, "good")
    g.sim.inject("head_fault")  # bit 0 of its status register
    await g.poll()
    assert g.said.faults[-1] == (True, "head_fault")
    assert g.said.last("rainfall_mm") == (0.0, "bad")


async def test_the_simulated_rain_is_the_storms_and_leads_the_water(gauge: GaugeFactory) -> None:
    g = await gauge("rain-gauge-tb", scenario="flash-flood")
    storm = Scenario.named("flash-flood", noise_mm=0.0)
    await g.poll(after_s=0)
    for _ in range(12):
        await g.poll(after_s=10)
    # 120 s into the flash flood: the rain gauge counted the storm's rain (to a 0.2 mm tip) ...
    fallen = storm.rain_mm(120)
    assert fallen > 2.0
    assert abs(g.said.total() - fallen) < 0.2 + 1e-9
    # ... which started before the water on the road did.
    first_rain = next(t for t in range(0, 120) if storm.rain_mm_h(t) > 0)
    first_water = next(t for t in range(0, 120) if storm.true_depth(t) > 0)
    assert first_rain < first_water


async def test_the_agent_sends_a_gauges_rain_as_telemetry(sim_site: SiteFactory, node_id: str) -> None:
    """A rain gauge on the site's bus: its readings go out through the wire contract, its kind in birth."""
    text = site_yaml(node=node_id).replace(
        "responses:",
        "  - {id: rain-1, profile: rain-gauge-tb, bus: bus-1, unit: 30, poll_s: 0.2}\nresponses:",
        1,
    )
    sim, site = await sim_site(yaml_text=text)
    gauge = sim["rain-1"]
    assert isinstance(gauge, SimRain)
    agent = Agent(site)
    async with running(agent):
        await wait_until(lambda: readings(agent, "rain-1"), 10, "the gauge's first readings")

        async def fallen() -> float:
            rs = await readings(agent, "rain-1")
            return round(sum(r["value"] for r in rs if r["metric"] == "rainfall_mm"), 2)

        for tips in range(1, 7):  # six tips, one at a time (as a bucket tips: never faster than rain falls)
            gauge.manual_mm = 0.2 * tips
            want = round(0.2 * tips, 2)
            await wait_until(lambda w=want: _at_least(fallen, w), 10, f"{tips} tips counted")  # type: ignore[misc]
        await agent.queue_birth()  # as on every connect to the broker (none here)
        births = await wait_until(lambda: _births(agent), 10, "the birth")
        total = await fallen()
        rs = await readings(agent, "rain-1")
    assert total == 1.2
    assert {r["metric"] for r in rs} == {"rainfall_mm", "rain_intensity_mm_h"}
    assert all(r["quality"] == "good" for r in rs)
    assert (
        births
        and {"id": "rain-1", "kind": "rain", "model": "rain-gauge-tb"}.items()
        <= next(d for d in births[-1]["devices"] if d["id"] == "rain-1").items()
    )


async def _births(agent: Agent) -> list[dict[str, Any]]:
    return [m for m in await said(agent) if "devices" in m]


async def _at_least(value: Callable[[], Awaitable[float]], want: float) -> bool:
    return await value() >= want


def test_a_rain_gauge_is_no_sensor_of_a_response(tmp_path: Path) -> None:
    """Board and gate answer to the water only: a gauge among a response's sensors is refused."""
    text = site_yaml().replace(
        "responses:", "  - {id: rain-1, profile: rain-gauge-tb, bus: bus-1, unit: 30}\nresponses:", 1
    )
    text = text.replace("sensors: [lvl-1, imm-1]", "sensors: [lvl-1, imm-1, rain-1]", 1)
    assert "rain-1]" in text
    issues = issues_for(tmp_path, text)
    assert issues == [
        (
            line_of(text, "sensors: [lvl-1"),
            "responses[0].sensors[2]",
            "'rain-1' is a rain, not a water sensor (level or immersion)",
        )
    ]


def test_a_rain_profile_needs_a_counter_or_an_intensity(tmp_path: Path) -> None:
    text = (PROFILES / "rain-gauge-tb.yaml").read_text(encoding="utf-8").replace("  tips:", "  count:", 1)
    path = tmp_path / "rain-gauge-tb.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="a rain profile needs a point named 'tips' or 'intensity'"):
        load_profile(path)


def test_a_looped_delayed_storm_rains_every_loop() -> None:
    once = Scenario.named("storm-cycle", loop=True)
    late = Scenario.named("storm-cycle", loop=True, delay_s=100.0)
    d = once.duration_s
    assert once.rain_mm(2 * d) == pytest.approx(2 * once.rain_mm(d))
    assert once.rain_mm(d) > 10
    assert late.rain_mm(100.0) == 0.0 and late.rain_mm_h(50.0) == 0.0
    assert late.rain_mm(100.0 + d) == pytest.approx(once.rain_mm(d))
    assert late.rain_mm_h(100.0 + d + 30) == once.rain_mm_h(30)
