"""Status points: a sensor that says its reading is not valid is a fault, never water or dry.

End to end over RTU on a socat pty pair (real framing) with the radar profile
``radar-level-f32`` (float32 distance in metres, word order CDAB, input
registers, a status register 0 ok / 1 no echo / 2 over range) mounted 3 m
above the road. Without the status point, "no echo" reads as distance 0.000 m:
water up to the sensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.agent import Agent
from edge.config.profile import load_profile
from floodgate.errors import ConfigError
from simulators.devices import SimLevel, SimSign
from tests.conftest import KEY, PROFILES, SiteFactory, running
from tests.edge.test_agent_local import said
from tests.helpers import wait_until

FAULT_TEXT = "水位监测故障"


def radar_site(node: str) -> str:
    return f"""\
node: {node}
site: {{name: Radar underpass, address: test, lat: 23.17, lon: 113.45}}
profiles_dir: {PROFILES}
buses:
  - {{id: bus-1, type: rtu, port: /dev/null, timeout_s: 0.2, retries: 1, backoff_max_s: 2}}
devices:
  - id: radar-1
    profile: radar-level-f32
    bus: bus-1
    unit: 1
    poll_s: 0.1
    mount_height_mm: 3000
    thresholds:
      warning: {{on: 150, clear: 120}}
      danger: {{on: 270, clear: 240}}
  - id: sign-1
    profile: led-board-vms
    bus: bus-1
    unit: 10
    poll_s: 0.2
responses:
  - id: entrance
    sensors: [radar-1]
    sign: sign-1
    messages: {{clear: "", warning: 前方积水 减速慢行, danger: 隧道积水 禁止通行, fault: {FAULT_TEXT}}}
broker: {{url: "mqtt://127.0.0.1:1", reconnect_max_s: 0.5}}
command_key: {KEY}
telemetry_interval_s: 0.2
heartbeat_s: 3600
"""


async def events(agent: Agent, etype: str) -> list[dict[str, Any]]:
    """Events of a type, each with its envelope's ts."""
    msgs = await said(agent)
    return [{**m["event"], "ts": m["ts"]} for m in msgs if "event" in m and m["event"]["type"] == etype]


async def readings(agent: Agent, dev: str) -> list[dict[str, Any]]:
    agent.flush_readings()
    out = [r for m in await said(agent) if "readings" in m for r in m["readings"] if r["dev"] == dev]
    return sorted(out, key=lambda r: int(r["ts"]))


async def test_no_echo_is_a_sensor_fault_never_water_and_recovers(
    sim_site: SiteFactory, node_id: str
) -> None:
    sim, site = await sim_site(yaml_text=radar_site(node_id))
    radar, sign = sim["radar-1"], sim["sign-1"]
    assert isinstance(radar, SimLevel) and isinstance(sign, SimSign)
    sim.source.manual = 0.0  # a dry road: 3.000 m from the antenna
    agent = Agent(site)
    async with running(agent):
        counters = agent.owners["bus-1"].counters["radar-1"]

        async def good_dry() -> bool:
            rs = await readings(agent, "radar-1")
            return len(rs) >= 3 and all(r["quality"] == "good" and abs(r["value"]) < 1 for r in rs)

        await wait_until(good_dry, 10, "good dry readings through the float32 CDAB distance")
        radar.inject("no_echo")

        async def fault_events() -> list[dict[str, Any]]:
            return [e for e in await events(agent, "device.fault") if e["dev"] == "radar-1"]

        [fault] = await wait_until(fault_events, 10, "device.fault for no echo")
        assert fault["detail"]["reason"] == "no_echo"
        assert fault["detail"]["point"] == "status" and fault["detail"]["code"] == 1
        # A while of "no echo": 20 more polls, each reading distance 0.000 m (3 m of water).
        polls = counters.requests
        await wait_until(lambda: counters.requests >= polls + 20, 20, "20 polls of no echo")
        assert agent.drivers["radar-1"].level == "clear"
        await wait_until(lambda: sign.text == FAULT_TEXT, 10, "the board shows the fault message")
        radar.inject("no_echo", False)

        async def recovered() -> list[dict[str, Any]]:
            return [e for e in await events(agent, "device.recovered") if e["dev"] == "radar-1"]

        [back] = await wait_until(recovered, 10, "device.recovered once the echo is back")
        assert back["detail"]["reason"] == "no_echo"
        await wait_until(lambda: sign.text != FAULT_TEXT, 10, "the board back to its default")
        polls = counters.requests
        await wait_until(lambda: counters.requests >= polls + 3, 10, "polls after recovery")
        rs = await readings(agent, "radar-1")
        alerts = [m["alert"] for m in await said(agent) if "alert" in m]
    t0, t1 = int(fault["ts"]), int(back["ts"])
    during = [r for r in rs if t0 <= int(r["ts"]) < t1]
    assert len(during) >= 20
    assert all(r["quality"] == "bad" for r in during), "no reading in the fault is good"
    after = [r for r in rs if int(r["ts"]) >= t1]
    assert after and all(r["quality"] == "good" and abs(r["value"]) < 1 for r in after)
    assert [(a["kind"], a["level"], a.get("reason")) for a in alerts] == [
        ("sensor_fault", "warning", "no_echo"),
        ("sensor_fault", "clear", "no_echo"),
    ], "a fault, and no alert of water"
    assert sign.shown and all("积水" not in text for _, text in sign.shown)


async def test_over_range_and_an_undocumented_code_are_faults_too(
    sim_site: SiteFactory, node_id: str
) -> None:
    sim, site = await sim_site(yaml_text=radar_site(node_id))
    radar = sim["radar-1"]
    assert isinstance(radar, SimLevel)
    agent = Agent(site)
    async with running(agent):
        radar.inject("over_range")

        async def faults() -> list[str]:
            return [e["detail"]["reason"] for e in await events(agent, "device.fault")]

        assert await wait_until(faults, 10, "over_range") == ["over_range"]
        radar.inject("over_range", False)
        await wait_until(lambda: events(agent, "device.recovered"), 10, "recovery")
        # A code the datasheet does not list ('ok: [0]' in the profile) is a fault with its code.
        radar.set_point("status", 7)
        radar.stuck = True  # keep the simulator from writing its own status over it
        await wait_until(lambda: len(agent.drivers["radar-1"].faults.reason or "") > 0, 10, "status 7")
        assert agent.drivers["radar-1"].faults.reason == "status_7"


# ---------------------------------------------------------------- the profile side

PROFILE = """\
model: {model}
kind: level
level_mode: distance
points:
  level: {{table: input, address: 0, type: float32, order: CDAB, unit: m, metric: depth_mm}}
  status:
    table: input
    address: 2
    type: uint16
{status}
"""


def profile_issues(tmp_path: Path, status: str) -> list[tuple[int | None, str, str]]:
    p = tmp_path / "radar-x.yaml"
    text = PROFILE.format(model="radar-x", status=status)
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_profile(p)
    assert all(i.file == str(p) for i in e.value.issues)
    return [(i.line, i.key, i.message) for i in e.value.issues]


def test_status_keys_are_checked_with_file_line_and_key(tmp_path: Path) -> None:
    [(line, key, msg)] = profile_issues(tmp_path, "    fault: {1: no_echo}")
    assert (line, key) == (10, "points.status.fault") and "did you mean 'faults'" in msg
    [(line, key, msg)] = profile_issues(tmp_path, "    faults: {1: No Echo}")
    assert (line, key) == (10, "points.status.faults[1]") and "matching regex" in msg
    [(line, key, msg)] = profile_issues(tmp_path, "    fault_bits: {3: lens_dirty, 16: no_echo}")
    assert key == "points.status.fault_bits[16]" and "bits 0 to 15" in msg and line == 10
    [(_, key, msg)] = profile_issues(tmp_path, "    ok: [0]")
    assert key == "points.status.ok" and "needs faults" in msg
    [(_, key, msg)] = profile_issues(tmp_path, "    ok: [0, 1]\n    faults: {1: no_echo}")
    assert key == "points.status.ok" and "code 1 is listed as ok and as a fault" in msg
    found = profile_issues(tmp_path, "    faults: {1: no_echo}\n    fault_bits: {1: no_echo}")
    assert [k for _, k, _ in found] == ["points.status.fault_bits"]
    p = tmp_path / "radar-y.yaml"
    p.write_text(
        PROFILE.format(model="radar-y", status="    faults: {1: no_echo}").replace(
            "  level: {table: input, address: 0, type: float32,",
            "  level: {table: input, address: 0, type: float32, faults: {0: no_echo},",
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as e:
        load_profile(p)
    [issue] = e.value.issues
    assert issue.key == "points.level.faults" and "integer type or bit, not float32" in issue.message


def test_codes_bits_and_the_legacy_names_map_to_reasons(tmp_path: Path) -> None:
    radar = load_profile(PROFILES / "radar-level-f32.yaml").points["status"]
    assert [radar.fault_reason(c) for c in (0, 1, 2, 7)] == [None, "no_echo", "over_range", "status_7"]
    p = tmp_path / "radar-z.yaml"
    p.write_text(PROFILE.format(model="radar-z", status="    fault_bits: {3: lens_dirty, 5: no_echo}"))
    bits = load_profile(p).points["status"]
    assert [bits.fault_reason(v) for v in (0, 0b1, 0b1000, 0b101000, 0b100000)] == [
        None,
        None,
        "lens_dirty",
        "lens_dirty",
        "no_echo",
    ]
    p.write_text(PROFILE.format(model="radar-z", status="    faults: {1: no_echo}"))
    assert load_profile(p).points["status"].fault_reason(9) is None  # without 'ok', unlisted codes are ok
    imm = load_profile(PROFILES / "immersion-contact-ld.yaml")
    assert list(imm.status_points()) == ["cable_break", "comms_loss"]
    assert imm.status_points()["comms_loss"].fault_reason(True) == "comms_loss"
    assert imm.status_points()["cable_break"].fault_reason(False) is None
