"""read, watch and scan speak engineering units, through the real CLI against the simulators.

The radar profile ``radar-level-f32`` reads a float32 distance in metres
(CDAB); with the site config the CLI shows the depth on the road the agent
would compute (mount height - distance - zero offset).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.config.profile import load_profile
from simulators.devices import DepthSource, SimLevel
from simulators.scenarios import Scenario
from simulators.slave import SimBus, serve_tcp
from tests.conftest import KEY, PROFILES
from tests.edge.test_commission_bus import cli
from tests.helpers import wait_until
from tests.simulators.test_simulators import Rig, rig  # noqa: F401 - the fixture


class Radar:
    def __init__(self, port: int, sim: SimLevel, source: DepthSource, config: Path) -> None:
        self.url, self.sim, self.source, self.config = f"tcp://127.0.0.1:{port}", sim, source, config


@pytest.fixture
async def radar(tmp_path: Path) -> AsyncIterator[Radar]:
    """A radar-level-f32 mounted 3 m above the road, on Modbus TCP, and a site config naming it."""
    source = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=250.0)
    sim = SimLevel(load_profile(PROFILES / "radar-level-f32.yaml"), 1, source, mount_height_mm=3000)
    server = await serve_tcp(SimBus([sim.slave]))
    port = server.sockets[0].getsockname()[1]
    config = tmp_path / "site.yaml"
    config.write_text(
        f"""\
node: units-test
site: {{name: Radar underpass, lat: 23.17, lon: 113.45}}
profiles_dir: {PROFILES}
buses:
  - {{id: gw, type: tcp, host: 127.0.0.1, port: {port}}}
devices:
  - id: radar-1
    profile: radar-level-f32
    bus: gw
    unit: 1
    mount_height_mm: 3000
    zero_offset_mm: 20
    thresholds: {{warning: {{on: 150, clear: 120}}, danger: {{on: 270, clear: 240}}}}
command_key: {KEY}
""",
        encoding="utf-8",
    )
    yield Radar(port, sim, source, config)
    server.close()
    await server.wait_closed()


async def test_read_scales_through_the_profile(rig: Rig) -> None:  # noqa: F811
    rig.source.manual = 123.0  # 12.3 cm: register 123 with 1 decimal place
    got = await cli("read", "--port", rig.path, "--unit", "1", "--profile", "generic-rs485-level", "--json")
    assert got.returncode == 0, got.stderr
    values = json.loads(got.stdout)
    assert values["level"] == {"value": 12.3, "unit": "cm"}
    assert values["decimals"] == {"value": 1, "unit": None}
    raw = await cli("read", "--port", rig.path, "--unit", "1", "--profile", "generic-rs485-level", "--raw")
    [level] = [line.split() for line in raw.stdout.splitlines() if line.startswith("level")]
    assert level == ["level", "12.3", "cm", "0x007b"]  # 123 on the wire


async def test_read_with_the_site_config_shows_depth(radar: Radar) -> None:
    args = ["read", "--config", str(radar.config), "--device", "radar-1"]
    got = await cli(*args, "--json", "--raw")
    assert got.returncode == 0, got.stderr
    values = json.loads(got.stdout)
    assert values["level"]["value"] == 2.75 and values["level"]["unit"] == "m"
    assert values["level"]["registers"] == [0x0000, 0x4030]  # 2.75 as float32 0x40300000, CDAB
    assert values["status"] == {"value": 0, "unit": None, "status": "ok", "registers": [0]}
    # depth = 3000 mount - 2750 distance - 20 zero offset
    assert values["depth"]["value"] == 230.0 and values["depth"]["unit"] == "mm"
    table = await cli(*args)
    assert "mount_height_mm 3000 - level - zero_offset_mm 20" in table.stdout
    [depth] = [line.split()[:3] for line in table.stdout.splitlines() if line.startswith("depth")]
    assert depth == ["depth", "230", "mm"]
    radar.sim.inject("no_echo")
    faulted = json.loads((await cli(*args, "--json")).stdout)
    assert faulted["status"]["status"] == "no_echo" and faulted["status"]["value"] == 1
    wrong = await cli("read", "--config", str(radar.config), "--device", "radar-9")
    assert wrong.returncode == 2 and "devices: radar-1" in wrong.stderr


async def test_read_says_when_a_value_is_outside_its_plausible_range(radar: Radar) -> None:
    radar.sim.inject("out_of_range")
    got = await cli("read", "--port", radar.url, "--unit", "1", "--profile", "radar-level-f32")
    assert got.returncode == 0, got.stderr
    [level] = [line for line in got.stdout.splitlines() if line.startswith("level")]
    assert "outside the plausible range 0 to 30" in level


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by ./dev test")
async def test_watch_shows_the_depth_live(radar: Radar) -> None:
    session = f"fg-watch-{uuid.uuid4().hex[:6]}"
    cmd = f"{sys.executable} -m floodgate.cli edge watch --config {radar.config} --device radar-1"
    cmd += " --interval 0.2"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "110", "-y", "20", cmd], check=True)

    def screen() -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True, check=False
        ).stdout

    def depth_row() -> list[str]:
        return next((line.split() for line in screen().splitlines() if line.startswith("depth")), [])

    try:
        await wait_until(lambda: depth_row()[:3] == ["depth", "230", "mm"], 15, "the depth row")
        radar.source.manual = 400.0  # deeper water: the radar reads 2.6 m
        await wait_until(lambda: depth_row()[:3] == ["depth", "380", "mm"], 15, "the depth to follow")
        assert any(line.split()[:3] == ["level", "2.6", "m"] for line in screen().splitlines())
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)


async def test_scan_judges_plausibility_on_scaled_values(tmp_path: Path) -> None:
    """A level in 0.001 m steps: raw 2750 is 2.75 m, inside a range of 0 to 5 m."""
    text = """\
model: level-milli
kind: level
points:
  level: {table: holding, address: 0, type: uint16, scale: 0.001, unit: m, metric: depth_mm, range: [0, 5]}
"""
    (tmp_path / "level-milli.yaml").write_text(text, encoding="utf-8")
    prof = load_profile(tmp_path / "level-milli.yaml")
    source = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=2750.0)
    sim = SimLevel(prof, 1, source)
    server = await serve_tcp(SimBus([sim.slave]))
    scan = ["scan", "--port", f"tcp://127.0.0.1:{server.sockets[0].getsockname()[1]}", "--ids", "1"]
    scan += ["--profiles", str(tmp_path), "--json"]
    try:
        [found] = json.loads((await cli(*scan)).stdout)
        assert sim.slave.regs.holding[0] == 2750
        assert "level-milli" in found["matches"]
        source.manual = 6000.0  # 6 m: outside, as the agent would judge it
        [found] = json.loads((await cli(*scan)).stdout)
        assert "level-milli" not in found["matches"]
    finally:
        server.close()
        await server.wait_closed()
