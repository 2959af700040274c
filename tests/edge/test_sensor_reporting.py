"""How sensors are reported: alert values, fault details, status, explain and calibrate.

Issue 16's smaller points: alert values rounded like telemetry; ``device.fault``
carries its value as a number for out-of-range and stuck alike; ``edge status``
shows a faulted sensor as faulted; ``check-config --explain`` names the model,
the distance mode and the mount height; ``calibrate`` speaks the range's unit.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from edge.agent import Agent
from edge.bus.link import PymodbusLink
from edge.bus.owner import Counters, DeviceIO
from edge.cli import main
from edge.commission.modbus import bus_for
from edge.config.profile import load_profile
from edge.config.site import Device, FilterCfg, Threshold, Thresholds
from edge.devices.drivers import LevelSensor
from edge.rules.alerts import Transition
from edge.rules.faults import FaultChange
from floodgate.wire import AlertKind, Quality
from simulators.devices import DepthSource, SimLevel
from simulators.scenarios import Scenario
from simulators.slave import SimBus, serve_tcp
from tests.conftest import PROFILES, SiteFactory, running, with_its_files
from tests.edge.test_agent_local import said
from tests.edge.test_commission import EXAMPLE, run_cli
from tests.edge.test_commission_units import Radar, radar  # noqa: F401 - the fixture
from tests.edge.test_status_points import events, radar_site, readings
from tests.helpers import free_port, wait_until

TH = Thresholds(warning=Threshold(on=150, clear=120), danger=Threshold(on=270, clear=240))


async def test_alert_values_are_rounded_like_telemetry(sim_site: SiteFactory, node_id: str) -> None:
    """A float32 distance: 3000 mm - 2812.74 mm is 187.26000977 mm; both say 187.3."""
    sim, site = await sim_site(yaml_text=radar_site(node_id))
    sim.source.manual = 187.26
    agent = Agent(site)
    async with running(agent):

        async def alert() -> list[dict[str, Any]]:
            return [m["alert"] for m in await said(agent) if "alert" in m]

        [warning] = await wait_until(alert, 10, "a warning")
        rs = await wait_until(lambda: readings(agent, "radar-1"), 10, "telemetry")
    assert warning["kind"] == "flood" and warning["level"] == "warning"
    assert warning["value"] == 187.3
    assert {r["value"] for r in rs if r["quality"] == "good"} == {187.3}


class Recorded:
    """A sink that keeps what a driver reports."""

    def __init__(self) -> None:
        self.faults: list[tuple[FaultChange, dict[str, Any]]] = []

    def reading(self, dev: str, ts: int, metric: str, value: float, quality: Quality) -> None: ...

    def transition(
        self, dev: str, kind: AlertKind, t: Transition, unit: str | None, reason: str | None = None
    ) -> None: ...

    def fault(self, dev: str, change: FaultChange, detail: dict[str, Any]) -> None:
        self.faults.append((change, detail))


async def test_fault_details_carry_the_value_as_a_number() -> None:
    """Out of range and stuck alike: ``value`` is the depth in mm, a number."""
    prof = load_profile(PROFILES / "generic-rs485-level.yaml")
    source = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=50.0)
    sim = SimLevel(prof, 1, source)
    server = await serve_tcp(SimBus([sim.slave]))
    link = PymodbusLink(bus_for(f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}"))
    dev = Device(
        id="lvl-1", profile=prof.model, bus="b", unit=1, thresholds=TH, filter=FilterCfg(stuck_after_s=0.2)
    )
    sink = Recorded()
    sensor = LevelSensor(dev, prof, sink)
    try:
        await link.connect()
        io = DeviceIO(link, 1, Counters())
        sim.inject("out_of_range")
        await sensor.poll(io)
        sim.inject("out_of_range", False)
        await sensor.poll(io)  # recovered; from now on the dry road's value never changes

        async def stuck() -> bool:
            await sensor.poll(io)
            return sensor.faults.reason == "stuck"

        await wait_until(stuck, 10, "a stuck value")
    finally:
        await link.close()
        server.close()
        await server.wait_closed()
    faults = [(c.reason, d) for c, d in sink.faults if c.faulted]
    assert [r for r, _ in faults] == ["out_of_range", "stuck"]
    values = [d["value"] for _, d in faults]
    assert all(type(v) is float for v in values), values
    assert values[0] == 6500.0 and values[1] == 50.0  # 650 cm read back; 5 cm on the dry road
    assert json.loads(json.dumps(values)) == values


async def test_edge_status_shows_a_faulted_sensor_as_faulted(sim_site: SiteFactory, node_id: str) -> None:
    port = free_port()
    sim, site = await sim_site(yaml_text=radar_site(node_id), overrides={"status_port": port})
    async with running(Agent(site)) as agent:
        await wait_until(lambda: agent.owners["bus-1"].counters["radar-1"].requests > 2, 10, "polls")
        sim["radar-1"].inject("no_echo")
        await wait_until(lambda: events(agent, "device.fault"), 10, "the fault")
        got = await asyncio.to_thread(run_cli, "status", "--port", str(port), "--json")
        table = await asyncio.to_thread(run_cli, "status", "--port", str(port))
    data = json.loads(got.stdout)
    assert data["devices"]["radar-1"]["fault"] == "no_echo"
    assert data["devices"]["radar-1"]["state"] == "ok", "the bus itself is fine"
    assert data["devices"]["sign-1"]["fault"] is None
    [row] = [line.split() for line in table.stdout.splitlines() if line.startswith("radar-1")]
    assert row[1:3] == ["faulted:", "no_echo"]
    [sign] = [line.split() for line in table.stdout.splitlines() if line.startswith("sign-1")]
    assert sign[1] == "ok"


def test_explain_names_the_model_the_distance_mode_and_the_mount_height(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    example = with_its_files(EXAMPLE, tmp_path)
    assert main(["check-config", "--explain", str(example)]) == 0
    text = capsys.readouterr().out
    assert "model radar-level-lx80, distance mode: mounted 4500 mm above the road" in text
    assert "model generic-rs485-level, depth mode" in text
    assert "model immersion-contact-ld; faults its status reports: cable_break, comms_loss" in text
    assert main(["check-config", "--explain", "--json", str(example)]) == 0
    sensors = {s["id"]: s for s in json.loads(capsys.readouterr().out)["responses"][0]["sensors"]}
    assert sensors["lvl-2"]["model"] == "radar-level-lx80"
    assert sensors["lvl-2"]["level_mode"] == "distance" and sensors["lvl-2"]["mount_height_mm"] == 4500
    assert sensors["imm-1"]["status_faults"] == ["cable_break", "comms_loss"]
    assert sensors["lvl-1"]["status_faults"] == []


async def test_calibrate_says_the_range_in_its_own_unit(radar: Radar) -> None:  # noqa: F811
    args = ["calibrate", str(radar.config), "--device", "radar-1", "--samples", "2", "--interval", "0"]
    radar.sim.inject("out_of_range")
    got = await asyncio.to_thread(run_cli, *args, "--yes")
    assert got.returncode == 2
    assert "reading 1 is 60 m, outside the profile's plausible range 0 to 30 m" in got.stderr
    radar.sim.inject("out_of_range", False)
    radar.sim.inject("no_echo")
    got = await asyncio.to_thread(run_cli, *args, "--yes")
    assert got.returncode == 2 and "radar-1 reports no_echo (status = 1)" in got.stderr
    assert "zero_offset_mm: 20" in Path(radar.config).read_text(), "the config is unchanged"
