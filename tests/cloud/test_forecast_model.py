"""The per-site storage model: a fit recovers known parameters from simulated noisy history; too
little history says so; the band and the crossing probability behave."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from cloud.forecast.model import (
    Fit,
    Params,
    Sample,
    Scenario,
    TooLittle,
    band,
    fit,
    scenarios_from,
    simulate,
)

DT = 300.0
TRUE = Params(initial_loss_mm=6.0, lag_min=20.0, drain_mm_h=18.0, fill_mm=40.0, shape=1.6)


def storm(peak_mm_h: float, hours: float, rng: random.Random) -> list[float]:
    """A Chicago-like storm: a sharp peak a third of the way in, on 5-min steps."""
    n = int(hours * 3600 / DT)
    at = n / 3
    return [peak_mm_h * math.exp(-abs(i - at) / (n / 8)) * rng.uniform(0.85, 1.15) for i in range(n)]


def history(p: Params, seed: int, days: int = 12, noise_mm: float = 5.0, scale: float = 1.0) -> list[Sample]:
    """``days`` of 5-min samples: a storm every day or so (some small), dry in between."""
    rng = random.Random(seed)
    rain: list[float] = []
    for _ in range(days):
        rain += storm(scale * rng.choice([10.0, 35.0, 60.0, 90.0, 120.0]), rng.uniform(1.0, 3.0), rng)
        rain += [0.0] * int(rng.uniform(14, 22) * 3600 / DT)
    out = []
    t0 = 1_780_000_000_000
    # simulated storm by storm: the initial loss is full again after a dry day
    starts = [0] + [k for k in range(1, len(rain)) if rain[k] > 0 and rain[k - 1] == 0]
    depth: list[float] = []
    for a, b in zip(starts, [*starts[1:], len(rain)], strict=True):
        depth += simulate(p, rain[a:b], DT)
    for k, (i, d) in enumerate(zip(rain, depth, strict=True)):
        measured = max(0.0, d + rng.gauss(0, noise_mm)) if d > 0 else max(0.0, rng.gauss(0, 1.0))
        out.append(Sample(t0 + int(k * DT * 1000), measured, i))
    return out


def test_fit_recovers_known_parameters_from_noisy_history() -> None:
    got = fit(history(TRUE, seed=1), dt_s=DT, fitted_at_ms=1)
    assert isinstance(got, Fit), got
    p = got.params
    assert p.drain_mm_h == pytest.approx(TRUE.drain_mm_h, rel=0.15)
    assert p.fill_mm == pytest.approx(TRUE.fill_mm, rel=0.25)
    assert p.shape == pytest.approx(TRUE.shape, abs=0.25)
    assert p.lag_min == pytest.approx(TRUE.lag_min, rel=0.3)
    assert p.initial_loss_mm == pytest.approx(TRUE.initial_loss_mm, abs=3.0)
    assert got.rmse_mm < 8.0  # the noise is 5 mm
    assert got.events >= 10
    assert got.fitted_at_ms == 1


def test_fit_of_another_site_finds_its_own_parameters() -> None:
    other = Params(initial_loss_mm=2.0, lag_min=45.0, drain_mm_h=35.0, fill_mm=120.0, shape=2.2)
    got = fit(history(other, seed=7, days=15, scale=1.6), dt_s=DT)
    assert isinstance(got, Fit), got
    assert got.params.drain_mm_h == pytest.approx(35.0, rel=0.15)
    assert got.params.lag_min == pytest.approx(45.0, rel=0.3)
    # and it forecasts a new storm close to the truth
    rain = storm(100.0, 2.0, random.Random(3))
    truth = simulate(other, rain, DT)
    pred = got.forward(0.0, rain, DT)
    assert max(pred) == pytest.approx(max(truth), rel=0.15)


def test_too_little_history_says_so() -> None:
    short = history(TRUE, seed=2, days=12)[:150]
    got = fit(short, dt_s=DT)
    assert isinstance(got, TooLittle)
    assert got.reason == "too short a history" and got.need == 24
    dry = [Sample(s.t_ms, 0.0, 0.0) for s in history(TRUE, seed=2, days=3)]
    got = fit(dry, dt_s=DT)
    assert isinstance(got, TooLittle) and "wet events" in got.reason and got.have == 0
    no_rain = [Sample(s.t_ms, s.depth_mm, None) for s in history(TRUE, seed=2, days=3)]
    got = fit(no_rain, dt_s=DT)
    assert isinstance(got, TooLittle) and "rain samples" in str(got)
    drizzle = [Sample(s.t_ms, 0.0, 1.0 if (s.rain_mm_h or 0) > 0 else 0.0) for s in history(TRUE, 2, 6)]
    got = fit(drizzle, dt_s=DT)
    assert isinstance(got, TooLittle) and "ponded" in got.reason


def test_forward_from_water_now_and_dry_rain_drains() -> None:
    f = Fit(TRUE, 4.0, (0, 1), 100, 3, 0)
    down = f.forward(300.0, [0.0] * 24, DT)
    assert down[0] < 300.0 and all(b <= a for a, b in itertools.pairwise(down))
    assert down[-1] == 0.0  # 40 mm of storage over the catchment drains at 18 mm/h within 2 h
    # rain below the drain's capacity never ponds from dry
    assert max(f.forward(0.0, [15.0] * 24, DT)) == 0.0


def test_band_and_crossing_probability() -> None:
    f = Fit(TRUE, 10.0, (0, 1), 100, 3, 0)
    rng = random.Random(5)
    heavy = storm(120.0, 2.0, rng)
    light = [x / 10 for x in heavy]
    levels = {"warning": 150.0, "danger": 300.0}
    sure = band(f, 0.0, [Scenario(1.0, heavy)], DT, levels)
    assert all(a <= b <= c for a, b, c in zip(sure.p10, sure.p50, sure.p90, strict=True))
    w = {c.level: c for c in sure.crossings}
    assert w["warning"].probability == pytest.approx(1.0)
    truth = simulate(TRUE, heavy, DT)
    first = next(k for k, d in enumerate(truth) if d >= 150.0)
    assert w["warning"].eta_s == pytest.approx((first + 1) * DT, abs=2 * DT)
    half = band(f, 0.0, [Scenario(0.5, heavy), Scenario(0.5, light)], DT, levels)
    assert {c.level: c.probability for c in half.crossings}["warning"] == pytest.approx(0.5)
    never = band(f, 0.0, [Scenario(1.0, light)], DT, levels)
    assert all(c.probability == 0.0 and c.eta_s is None for c in never.crossings)
    assert max(never.p90) < 150.0


def test_scenarios_from_quantiles_and_members() -> None:
    qs = scenarios_from([5.0], quantiles={0.1: [1.0], 0.9: [9.0]})
    assert [(round(s.weight, 3), s.mm_h) for s in qs] == [(0.3, [1.0]), (0.4, [5.0]), (0.3, [9.0])]
    ms = scenarios_from([5.0], members=[[1.0], [2.0], [3.0], [4.0]])
    assert [s.weight for s in ms] == [0.25] * 4
    assert scenarios_from([5.0]) == [Scenario(1.0, [5.0])]


def test_warm_start_counts_the_runoff_already_on_its_way() -> None:
    # Heavy rain for 30 min that has just stopped: the water is still rising when the forecast runs.
    past = [0.0] * 12 + [90.0] * 6
    truth = simulate(TRUE, past + [0.0] * 24, DT)
    now = truth[len(past) - 1]
    ahead = truth[len(past) :]
    assert max(ahead) > now + 20.0  # the storm's premise: the sag keeps filling after the rain
    f = Fit(TRUE, 1.0, (0, 1), 100, 4, 0)
    warm = f.forward(now, [0.0] * 24, DT, past_mm_h=past)
    assert max(warm) == pytest.approx(max(ahead), rel=1e-6)
    assert warm == pytest.approx(ahead, abs=1e-6)
    cold = f.forward(now, [0.0] * 24, DT)
    assert max(cold) <= now  # without the past the forecast only drains: the rise is missed
    b = band(f, now, [Scenario(1.0, [0.0] * 24)], DT, {"danger": now + 10.0}, past_mm_h=past)
    assert b.crossings[0].probability > 0.5


def test_warm_start_after_light_rain_has_used_part_of_the_initial_loss() -> None:
    # 3 mm fell in the past hour (under the 6 mm initial loss) on a dry sag: all of it held, the
    # catchment owes 3 mm more before the next rain runs off, as ``rained_mm=3`` says.
    f = Fit(TRUE, 1.0, (0, 1), 100, 4, 0)
    past = [0.0] * 6 + [6.0] * 6  # 6 mm/h for 30 min
    ahead = [90.0] * 6 + [0.0] * 18
    warm = f.forward(0.0, ahead, DT, past_mm_h=past)
    assert warm == pytest.approx(f.forward(0.0, ahead, DT, rained_mm=3.0), abs=1e-9)
    assert max(warm) > max(f.forward(0.0, ahead, DT)) + 1.0  # cold: the whole loss still owed


def test_a_fit_worker_ignores_ctrl_c() -> None:
    """Ctrl-C reaches the terminal's whole process group: the collector stops its fit workers
    itself, and a worker taking SIGINT would print a KeyboardInterrupt traceback each."""
    import signal

    from cloud.forecast.service import fit_pool

    pool = fit_pool(1)
    try:
        assert pool.submit(signal.getsignal, signal.SIGINT).result(timeout=60) == signal.SIG_IGN
    finally:
        pool.shutdown()
