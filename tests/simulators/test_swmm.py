"""EPA SWMM as ground truth: the underpass models run, hold their mass balance, and drive the simulators.

Each SWMM run is in a child process of its own (SWMM allows one simulation per process).
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from edge.agent import Agent
from simulators.cli import main as sim_main
from simulators.cli import swmm_scenario
from simulators.devices import SimRain
from simulators.storms import load_idf, storm_library
from simulators.storms.hyetograph import chicago
from simulators.swmm import CATCHMENTS, build_inp, scenario_from, simulate_isolated, simulate_many
from tests.conftest import SiteFactory, running, site_yaml
from tests.edge.test_agent_local import said
from tests.helpers import wait_until

DANGER_MM = 270.0


def _padded(mm_h: list[float], before: int = 10, after: int = 120) -> list[float]:
    return [0.0] * before + mm_h + [0.0] * after


def test_the_models_hold_their_mass_and_each_floods_differently() -> None:
    storm = {s.name: s for s in storm_library()}["chicago-p5-120min"]
    rain = _padded(storm.mm_h())
    truths = simulate_many([(c, rain) for c in CATCHMENTS.values()], processes=2)
    assert [t.catchment for t in truths] == list(CATCHMENTS)
    for t in truths:
        # continuity read in add_after_end (it reads 0.0 inside and after the `with` block): not NaN, small
        assert not math.isnan(t.runoff_error_pct) and not math.isnan(t.routing_error_pct)
        assert abs(t.runoff_error_pct) < 1.0 and abs(t.routing_error_pct) < 1.0
        assert len(t.depth_mm) == len(rain) + 1 and t.rain_mm_h == tuple(rain)
        assert t.depth_mm[0] == 0.0 and t.depth_mm[10] == 0.0  # dry before the rain
        assert t.peak_mm > DANGER_MM  # a 5-year, 2-hour storm floods every one of these underpasses
        first_wet = next(k for k, d in enumerate(t.depth_mm) if d > 0)
        assert first_wet > 10  # the water comes after the rain starts (the sewer fills first)
        assert t.depth_mm[-1] < 5  # and drains away after it
    assert len({round(t.peak_mm) for t in truths}) == len(truths)


def test_a_light_storm_leaves_the_road_dry_to_the_millimetre() -> None:
    """The sag's invert is the road: while the sewer copes, its depth is exactly 0, as a sensor reads."""
    light = chicago(load_idf()[1], 60, 0.35)
    truth = simulate_isolated(CATCHMENTS["underpass-b"], _padded(light.mm_h()))
    assert truth.peak_mm == 0.0
    assert truth.runoff_error_pct != 0.0  # read after the end: a real figure, not the 0.0 read too late


def test_the_input_text_is_swmm_5_2s() -> None:
    text = build_inp(CATCHMENTS["bridge-c"], [12.0, 30.0])
    assert "TABULAR  SAGCURVE" in text and "[CONDUITS]" in text and "[PUMPS]" not in text
    assert "RAIN  0:01  30.0000" in text and "RAIN  0:02  0" in text  # the series ends dry
    assert "END_TIME 00:03:00" in text  # one step past the rain's end (step_advance drops the last)
    assert "[PUMPS]" in build_inp(CATCHMENTS["tunnel-a"], [1.0])


def test_a_scenario_from_swmm_plays_its_depth_and_rain_on_the_scenario_clock() -> None:
    storm = chicago(load_idf()[10], 30, 0.35)
    truth = simulate_isolated(CATCHMENTS["bridge-c"], _padded(storm.mm_h(), 5, 30))
    sc = scenario_from(truth, noise_mm=0.0)
    for k in range(len(truth.rain_mm_h)):
        assert sc.true_depth(60 * k) == pytest.approx(truth.depth_mm[k])
        assert sc.rain_mm_h(60 * k + 30) == pytest.approx(truth.rain_mm_h[k])
        assert sc.rain_mm(60 * k) == pytest.approx(sum(truth.rain_mm_h[:k]) / 60)
    mid = next(k for k, d in enumerate(truth.depth_mm) if d > 0)
    assert sc.true_depth(60 * mid - 30) == pytest.approx((truth.depth_mm[mid - 1] + truth.depth_mm[mid]) / 2)


async def test_the_agent_runs_on_swmm_water(sim_site: SiteFactory, node_id: str) -> None:
    """A short storm through SWMM; the site's level sensor, immersion contact and rain gauge read its
    results (played 60 times faster than real time); the real agent warns, then alerts danger, and
    sends the gauge's rain, over Modbus TCP."""
    storm = chicago(load_idf()[10], 30, 0.35)
    truth = await asyncio.to_thread(simulate_isolated, CATCHMENTS["bridge-c"], _padded(storm.mm_h(), 2, 20))
    danger_at = next(k for k, d in enumerate(truth.depth_mm) if d >= DANGER_MM)
    text = site_yaml(bus="tcp", node=node_id, poll_s=0.1).replace(
        "responses:",
        "  - {id: rain-1, profile: rain-intensity-ri, bus: bus-1, unit: 30, poll_s: 0.1}\nresponses:",
        1,
    )
    sim, site = await sim_site(yaml_text=text, scenario=scenario_from(truth, noise_mm=1.0), speed=60.0)
    assert isinstance(sim["rain-1"], SimRain)
    agent = Agent(site)

    async def alerts() -> list[tuple[str, str]]:
        return [(m["alert"]["dev"], m["alert"]["level"]) for m in await said(agent) if "alert" in m]

    async def danger_alert() -> bool:
        return ("lvl-1", "danger") in await alerts()

    async with running(agent):
        await wait_until(danger_alert, 60, "a danger alert from SWMM's water")
        scenario_s = sim.source.scenario_time()
        msgs = await said(agent)
    assert scenario_s >= 60 * (danger_at - 1)  # not before SWMM's water got there
    levels = [lvl for dev, lvl in await _alerts_of(msgs) if dev == "lvl-1"]
    assert levels.index("warning") < levels.index("danger")
    assert ("imm-1", "warning") in await _alerts_of(msgs)  # the contact got wet
    rain = [
        r["value"]
        for m in msgs
        for r in m.get("readings", [])
        if r.get("dev") == "rain-1" and r["metric"] == "rain_intensity_mm_h"
    ]
    assert rain and max(rain) > 100  # SWMM's rain reached the gauge: the storm's burst is over 100 mm/h
    assert max(rain) <= max(truth.rain_mm_h) + 1


async def _alerts_of(msgs: list[dict[str, object]]) -> list[tuple[str, str]]:
    out = []
    for m in msgs:
        alert = m.get("alert")
        if isinstance(alert, dict):
            out.append((str(alert["dev"]), str(alert["level"])))
    return out


def test_truth_is_json_round_trip_clean() -> None:
    truth = simulate_isolated(CATCHMENTS["tunnel-a"], [0.0, 50.0, 0.0])
    assert json.loads(json.dumps(truth.depth_mm)) == list(truth.depth_mm)


def test_floodgate_sim_plays_a_storm_through_swmm(capsys: pytest.CaptureFixture[str]) -> None:
    sc = swmm_scenario("bridge-c:chicago-p10-60min", noise_mm=0.0)
    assert sc.name == "swmm:bridge-c" and max(d for _, d in sc.segments) > DANGER_MM
    assert sc.true_depth(0) == 0.0 and sc.rain_mm_h(10 * 60 + 30) > 0  # rain from minute 10
    assert sim_main(["site", "x.yaml", "--out", "y.yaml", "--swmm", "tunnel-z:chicago-p10-60min"]) == 2
    assert "unknown catchment 'tunnel-z'; known: tunnel-a" in capsys.readouterr().err
    assert sim_main(["device", "--profile", "x:1", "--tcp", "0", "--swmm", "tunnel-a:nope"]) == 2
    assert "unknown storm 'nope'; known: chicago-p1-60min" in capsys.readouterr().err
