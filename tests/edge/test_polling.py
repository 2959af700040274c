"""Adaptive polling: which sensors are urgent, what the owner polls next, and the bus budget.

The rules and the schedule are pure and driven by explicit times; the last
test runs the agent on a real RTU pty bus with simulators.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.agent import Agent
from edge.bus.budget import read_frames, transaction_s
from edge.bus.schedule import PollSchedule
from edge.cli import main
from edge.commission.budget import site_budgets
from edge.config.site import FastPoll, RtuBus, Threshold, Thresholds, load_site
from edge.rules.urgency import HOLD_S, LevelUrgency
from floodgate.errors import ConfigError
from simulators.devices import DepthSource, SimLevel
from simulators.scenarios import Scenario
from tests.conftest import SiteFactory, running, site_yaml
from tests.helpers import wait_until

TH = Thresholds(warning=Threshold(on=150, clear=120), danger=Threshold(on=270, clear=240))


def urgency(**kw: float) -> LevelUrgency:
    return LevelUrgency(FastPoll(**kw), TH)  # type: ignore[arg-type]


# --- which sensors are urgent -------------------------------------------------------------


def test_a_dry_steady_sensor_is_not_urgent() -> None:
    u = urgency()
    assert all(u.feed(i * 1000, 0.0, "clear", False) is None for i in range(60))


def test_rising_water_is_noticed_within_a_few_slow_polls() -> None:
    u = urgency(rise_mm_per_min=60)
    reasons = [u.feed(i * 1000, 5.0 * i, "clear", False) for i in range(10)]  # 5 mm/s = 300 mm/min
    first = reasons.index("rising")
    assert first <= 3, reasons
    assert u.feed(10_000, 50.0, "clear", False) == "rising"


def test_near_wet_and_confirming_are_urgent() -> None:
    assert urgency(near_mm=50).feed(0, 101.0, "clear", False) == "near"
    assert urgency(near_mm=50).feed(0, 99.0, "clear", False) is None
    assert urgency().feed(0, 10.0, "warning", False) == "wet"
    assert urgency().feed(0, None, "danger", False) == "wet"
    assert urgency().feed(0, None, "clear", True) == "confirming"


def test_urgency_holds_then_lets_go() -> None:
    u = urgency(near_mm=50)
    assert u.feed(0, 120.0, "clear", False) == "near"
    assert u.feed(1000, 20.0, "clear", False) == "near", "held for HOLD_S after the reason goes"
    assert u.feed(int(HOLD_S * 1000) - 1, 20.0, "clear", False) == "near"
    assert u.feed(int(HOLD_S * 1000) + 1, 20.0, "clear", False) is None


def test_noise_on_standing_water_rarely_looks_like_a_rise() -> None:
    u = urgency(rise_mm_per_min=60, near_mm=0)
    rng = random.Random(3)
    fast = sum(u.feed(i * 1000, 60 + rng.gauss(0, 2.0), "clear", False) is not None for i in range(600))
    assert fast < 60, f"{fast} of 600 polls fast on standing water with 2 mm noise"


# --- what the owner polls next (driven clock) ------------------------------------------------

Dev = tuple[float, float, float, Callable[[float], bool]]  # cost, slow, fast, urgent(t)


def simulate(devices: dict[str, Dev], until: float) -> dict[str, list[float]]:
    """Run the schedule against a bus whose polls take exactly their cost; poll start times."""
    s = PollSchedule()
    for i, (k, (cost, slow, _, _)) in enumerate(devices.items()):
        s.add(k, i * 0.001, cost, slow)
    starts: dict[str, list[float]] = {k: [] for k in devices}
    now = 0.0
    while now < until:
        dev, at = s.next(now)
        if dev is None:
            assert at > now, "the schedule must not spin"
            now = at
            continue
        cost, slow, fast, urgent = devices[dev]
        starts[dev].append(now)
        end = now + cost
        hot = urgent(end)
        s.polled(dev, now, end, fast if hot else slow, hot)
        now = end
    return starts


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def never(t: float) -> bool:
    return False


def bench_bus(urgent: Callable[[float], bool], n_urgent: int = 1) -> dict[str, Dev]:
    """Eight level sensors, a board and a gate at 9600 baud (costs as the budget computes them)."""
    devs: dict[str, Dev] = {
        f"lvl-{i + 1}": (0.035, 1.0, 0.2, urgent if i < n_urgent else never) for i in range(8)
    }
    devs["sign-1"] = (0.118, 2.0, 2.0, never)
    devs["gate-1"] = (0.064, 1.0, 1.0, never)
    return devs


def test_an_urgent_sensor_is_polled_at_its_fast_interval_whatever_the_others_do() -> None:
    starts = simulate(bench_bus(lambda t: t >= 5.0), 60.0)
    hot = [t for t in starts["lvl-1"] if t >= 5.2]
    assert max(gaps(hot)) <= 0.2 + 1e-9, "no slow poll ever delays the urgent one"
    assert len(hot) >= (60 - 5.2) / 0.2 - 1
    for k in ("lvl-2", "lvl-8", "gate-1"):
        assert max(gaps(starts[k])) <= 1.0 + 0.2 + 1e-6, f"{k} slips by less than one fast interval"
    assert max(gaps(starts["sign-1"])) <= 2.0 + 0.2 + 1e-6, "the board is still read back"
    # Before the rise, every sensor is polled at its slow interval.
    assert len([t for t in starts["lvl-1"] if t < 5.0]) <= 6


def test_without_priority_a_board_read_would_delay_the_urgent_sensor() -> None:
    """The rule that matters: a slow poll starts only if it ends before the next urgent one."""
    s = PollSchedule()
    s.add("lvl-1", 0.0, 0.035, 0.2)
    s.add("sign-1", 0.0, 0.118, 2.0)
    s.polled("lvl-1", 0.0, 0.035, 0.2, urgent=True)  # next urgent poll due at 0.2
    assert s.next(0.1) == (None, 0.2), "the board read (118 ms) would end after 0.2: wait"
    assert s.next(0.05) == ("sign-1", 0.05), "from 0.05 it ends at 0.168: go"
    assert s.next(0.2) == ("lvl-1", 0.2)


def test_a_slow_device_is_never_starved_by_urgent_ones() -> None:
    """Over budget (eight sensors fast at 0.1 s is 2.8 s of polls a second): all still get turns."""
    devs = bench_bus(lambda t: True, n_urgent=8)
    devs = {k: (c, s, 0.1 if k.startswith("lvl") else f, u) for k, (c, s, f, u) in devs.items()}
    starts = simulate(devs, 60.0)
    for i in range(8):
        g = gaps(starts[f"lvl-{i + 1}"][2:])
        assert max(g) <= 8 * 0.035 + 0.118 + 1e-9, "urgent sensors share the bus in turn"
    assert max(gaps(starts["gate-1"])) <= 2 * 1.0 + 0.3, "a starved device goes after one interval"
    assert max(gaps(starts["sign-1"])) <= 2 * 2.0 + 0.3


def test_everyone_takes_turns_when_every_interval_is_shorter_than_the_bus_allows() -> None:
    """Board and gate at 0.05 s are always overdue; they must not crowd out wet sensors."""
    devs = bench_bus(lambda t: True, n_urgent=8)
    devs = {k: (c, 0.05, 0.05, u) for k, (c, _, _, u) in devs.items()}
    starts = simulate(devs, 30.0)
    cycle = 8 * 0.035 + 0.118 + 0.064
    for k, times in starts.items():
        assert max(gaps(times)) <= cycle + 1e-9, f"{k} waits no longer than one round of the bus"


def test_soon_brings_a_device_forward() -> None:
    s = PollSchedule()
    s.add("gate-1", 0.0, 0.064, 1.0)
    s.polled("gate-1", 0.0, 0.064, 1.0, urgent=False)
    assert s.next(0.5) == (None, 1.0)
    s.soon("gate-1", 0.5)
    assert s.next(0.5) == ("gate-1", 0.5)


def test_measured_poll_times_replace_the_estimate() -> None:
    s = PollSchedule()
    s.add("lvl-1", 0.0, 0.035, 1.0)
    for i in range(30):
        s.polled("lvl-1", i * 1.0, i * 1.0 + 0.1, 1.0, urgent=False)
    assert s.slots["lvl-1"].expected_s == pytest.approx(0.1, abs=0.001)


# --- the budget -------------------------------------------------------------------------------


def test_frame_times_at_9600_baud() -> None:
    bus = RtuBus(id="b", port="/dev/null", baud=9600)
    char = 10 / 9600
    # Reading 2 registers: an 8-byte request and a 9-byte reply, 3.5 characters of silence
    # before each, and the slave's turnaround.
    assert read_frames("holding", 2) == (8, 9)
    assert transaction_s(bus, 0.010, 8, 9) == pytest.approx((8 + 9 + 7) * char + 0.010)
    assert read_frames("discrete", 3) == (8, 6)
    odd = RtuBus(id="b", port="/dev/null", baud=9600, parity="O")
    assert odd.char_time_s() == pytest.approx(11 / 9600)


def bench_site(tmp_path: Path, fast: float = 0.2, baud: int = 9600) -> Path:
    sensors = "".join(
        f"""  - id: lvl-{i + 1}
    profile: generic-rs485-level
    bus: rs485-1
    unit: {i + 1}
    poll_s: 1
    fast_poll: {{interval_s: {fast}}}
    thresholds: {{warning: {{on: 150, clear: 120}}, danger: {{on: 270, clear: 240}}}}
"""
        for i in range(8)
    )
    text = (
        site_yaml()
        .split("devices:")[0]
        .replace(
            "  - {id: bus-1, type: rtu, port: /dev/null, timeout_s: 0.2, retries: 1, backoff_max_s: 2}",
            f"  - {{id: rs485-1, type: rtu, port: /dev/ttyUSB0, baud: {baud}}}",
        )
    )
    text += f"""devices:
{sensors}  - {{id: sign-1, profile: led-board-vms, bus: rs485-1, unit: 20, poll_s: 2}}
  - {{id: gate-1, profile: relay-gate-spm, bus: rs485-1, unit: 21, poll_s: 1}}
responses:
  - id: all
    sensors: [{", ".join(f"lvl-{i + 1}" for i in range(8))}]
    sign: sign-1
    gate: gate-1
    messages: {{clear: "", warning: 前方积水, danger: 禁止通行}}
broker: {{url: "mqtt://127.0.0.1:1"}}
command_key: test-command-key-0123456789abcdef
"""
    p = tmp_path / "site.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_budget_of_eight_sensors_a_board_and_a_gate_at_9600(tmp_path: Path) -> None:
    (b,) = site_budgets(load_site(bench_site(tmp_path)))
    char = 10 / 9600
    gap = 3.5 * char
    level = (8 + 9) * char + 2 * gap + 0.010  # decimals + level: one FC03 of 2 registers
    assert {d.id: d.poll_time_s for d in b.devices}["lvl-1"] == pytest.approx(level)
    assert b.polls_needed() == pytest.approx(8 + 0.5 + 1)
    assert b.fits(), "all dry: well inside the budget"
    assert not b.fits(b.adaptive_ids), "all eight fast at 0.2 s does not fit at 9600 baud"
    assert 1 <= b.max_fast() < 8
    assert b.fits(b.adaptive_ids[: b.max_fast()])
    assert not b.fits(b.adaptive_ids[: b.max_fast() + 1])
    # At 115200 baud the same site fits with every sensor fast.
    (fast_bus,) = site_budgets(load_site(bench_site(tmp_path, baud=115200)))
    assert fast_bus.fits(fast_bus.adaptive_ids)


def test_explain_prints_the_budget_per_bus(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--explain", str(bench_site(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "Bus rs485-1 (rtu 9600 8N1): time budget" in out
    assert "lvl-1 (level): 35 ms per poll, every 1 s, 0.2 s when wet, rising or near a threshold" in out
    assert "all dry and steady: 9.5 polls/s needed" in out and ": fits" in out
    assert "every sensor fast: " in out and "OVER BUDGET" in out
    assert "sensors can be fast at once" in out


def test_a_fast_interval_slower_than_poll_s_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_site(bench_site(tmp_path, fast=2.0))
    assert "devices[0].fast_poll.interval_s: the fast interval (2 s) must not be slower than poll_s" in str(
        e.value
    )


# --- end to end: a rising sensor on a real RTU bus ------------------------------------------------


async def test_a_rising_sensor_is_polled_fast_on_a_real_rtu_bus(sim_site: SiteFactory) -> None:
    sim, site = await sim_site(poll_s=1.0, extra_sensors=1)
    rising = sim["lvl-1"]
    assert isinstance(rising, SimLevel)
    rising.source = src = DepthSource(Scenario.named("dry", noise_mm=0.0), manual=0.0)
    agent = Agent(site)
    async with running(agent):
        owner = agent.owners["bus-1"]
        c = owner.counters
        await wait_until(lambda: c["lvl-1"].requests >= 2 and c["lvl-2"].requests >= 2, 10, "first polls")
        assert agent.drivers["lvl-1"].urgency is None
        # Water rises at 5 mm/s on lvl-1 only; lvl-2 stays dry.
        src.scenario = Scenario("rise", [(60.0, 300.0)], noise_mm=0.0)
        src.restart()
        src.manual = None
        await wait_until(lambda: agent.drivers["lvl-1"].urgency is not None, 15, "lvl-1 urgent")
        a0, b0 = c["lvl-1"].requests, c["lvl-2"].requests
        await wait_until(lambda: c["lvl-1"].requests - a0 >= 15, 20, "15 fast polls of lvl-1")
        fast, slow = c["lvl-1"].requests - a0, c["lvl-2"].requests - b0
        assert fast >= 3 * max(slow, 1), f"rising lvl-1 polled {fast} times while dry lvl-2 {slow}"
        assert owner.schedule.slots["lvl-1"].interval_s == 0.2
        assert owner.schedule.slots["lvl-2"].interval_s == 1.0
