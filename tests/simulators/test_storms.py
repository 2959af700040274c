"""Design storms: the Guangzhou formula as data, Chicago and multi-peak hyetographs, their forecasts."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from floodgate.errors import ConfigError
from simulators.storms import chicago, load_idf, multi_peak, storm_library
from simulators.storms.hyetograph import DURATIONS_MIN, RETURN_PERIODS
from simulators.storms.idf import GUANGZHOU
from simulators.storms.rain_forecast import ForecastErrors, issue_forecasts, seed_for


def test_the_confirmed_formula_gives_the_published_intensity() -> None:
    table = load_idf()
    p50 = table[50]
    assert p50.status == "confirmed"
    # q = 3623.4 / (t + 6.274)^0.598 L/(s·ha), worked by hand for t = 60 min
    assert p50.q(60) == pytest.approx(3623.4 / 66.274**0.598, rel=1e-12)
    assert p50.q(60) == pytest.approx(295.1, abs=0.05)  # e^(0.598·ln 66.274) = 12.279
    assert p50.intensity_mm_min(60) == pytest.approx(p50.q(60) / 167)
    assert p50.depth_mm(60) == pytest.approx(60 * p50.q(60) / 167)
    assert table.interval_i_n(2) == pytest.approx(0.856 - 0.057 * math.log(1.88))


def test_every_period_says_where_it_comes_from_and_derived_ones_grow_with_the_period() -> None:
    table = load_idf()
    assert "2011" in table.source and "2018" in table.correction
    assert set(table.periods) == set(RETURN_PERIODS)
    assert all(p.status == "derived" for k, p in table.periods.items() if k != 50)
    depths = [table[p].depth_mm(60) for p in RETURN_PERIODS]
    assert depths == sorted(depths) and len(set(depths)) == len(depths)
    # the frequency factor (1 + 0.533 lg P) / (1 + 0.533 lg 50)
    assert table[2].a / table[50].a == pytest.approx(
        (1 + 0.533 * math.log10(2)) / (1 + 0.533 * math.log10(50))
    )


def test_a_bad_formula_file_says_where(tmp_path: Path) -> None:
    bad = tmp_path / "storms.yaml"
    text = GUANGZHOU.read_text(encoding="utf-8")
    bad.write_text(text.replace("b: 6.274", "b: six"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"storms.yaml:21: periods.0.b: must be a number"):
        load_idf(bad)
    bad.write_text(text.replace("status: confirmed", "status: sure"), encoding="utf-8")
    with pytest.raises(
        ConfigError, match=r"storms.yaml:21: periods.0.status: must be confirmed, unconfirmed or derived"
    ):
        load_idf(bad)


@pytest.mark.parametrize("p", RETURN_PERIODS)
@pytest.mark.parametrize("minutes", DURATIONS_MIN)
def test_a_chicago_storm_holds_the_idf_depth_of_its_duration(p: float, minutes: int) -> None:
    idf = load_idf()[p]
    for ratio in (0.3, 0.35, 0.4):
        storm = chicago(idf, minutes, ratio)
        assert storm.duration_min == minutes
        assert storm.total_mm == pytest.approx(idf.depth_mm(minutes), rel=1e-9)
        peak = max(range(minutes), key=lambda k: storm.mm[k])
        assert abs(peak - ratio * minutes) <= 1
        # the heaviest 30 minutes around the peak hold at least the IDF depth's share (Chicago's property)
        assert sum(sorted(storm.mm, reverse=True)[:30]) == pytest.approx(idf.depth_mm(30), rel=0.02)


def test_multi_peak_storms_keep_every_bursts_rain() -> None:
    table = load_idf()
    a, b = chicago(table[1], 60, 0.4), chicago(table[10], 60, 0.3)
    both = multi_peak([(a, 0), (b, 45)], "two")
    assert both.duration_min == 165 and both.p == 10
    assert both.total_mm == pytest.approx(a.total_mm + b.total_mm)
    assert all(v == 0 for v in both.mm[60:105])
    library = storm_library()
    assert len({s.name for s in library}) == len(library)
    assert {s.kind for s in library} == {"chicago", "multi-peak"}


def _mae_by_lead(scale: float, seeds: range) -> dict[int, float]:
    storm = storm_library()[10]
    truth = [0.0] * 180 + storm.mm_h() + [0.0] * 180
    errs: dict[int, list[float]] = {0: [], 1: [], 2: []}
    errors = ForecastErrors(p_miss=0.0, members=4).scaled(scale)
    for seed in seeds:
        for fc in issue_forecasts(truth, seed_for("mae", seed), errors, every_min=30):
            for s, value in enumerate(fc.mm_h):
                lead_h = s * fc.step_min // 60
                start = fc.issued_min + s * fc.step_min
                real = sum(truth[start : start + fc.step_min]) / fc.step_min if start < len(truth) else 0.0
                if real > 0 or value > 0:
                    errs[lead_h].append(abs(value - real))
    return {k: statistics.fmean(v) for k, v in errs.items()}


def test_forecast_errors_grow_with_lead_time() -> None:
    mae = _mae_by_lead(1.0, range(30))
    assert mae[0] < mae[1] < mae[2]
    assert mae[2] > 1.5 * mae[0]
    perfect = _mae_by_lead(0.0, range(2))
    assert max(perfect.values()) < 1e-9  # with no error the forecast is the truth, step by step


def test_forecasts_are_seeded_and_carry_members_quantiles_misses_and_false_storms() -> None:
    storm = storm_library()[10]
    truth = [0.0] * 180 + storm.mm_h() + [0.0] * 180
    one = issue_forecasts(truth, seed_for("c", 1))
    assert one == issue_forecasts(truth, seed_for("c", 1))
    assert one != issue_forecasts(truth, seed_for("c", 2))
    fc = one[12]
    assert len(fc.members) == ForecastErrors().members
    lo, mid, hi = (fc.quantiles[q] for q in (0.1, 0.5, 0.9))
    assert all(a <= b <= c for a, b, c in zip(lo, mid, hi, strict=True))
    # a storm every forecast misses shows only once it is within see_lead_min
    missed = issue_forecasts(truth, 7, ForecastErrors(p_miss=1.0))
    assert all(v == 0 for f in missed if f.issued_min < 150 for v in f.mm_h)
    assert any(v > 0 for f in missed if f.issued_min >= 170 for v in f.mm_h[:2])
    # a false storm is forecast far ahead and never seen close in
    dry = [0.0] * len(truth)
    false = issue_forecasts(dry, 7, ForecastErrors(p_miss=0.0), phantom_mm_h=truth)
    assert any(v > 10 for f in false if f.issued_min < 150 for v in f.mm_h)
    assert all(v == 0 for f in false if f.issued_min >= 300 for v in f.mm_h)
    doc = fc.to_document(
        "th-1", __import__("datetime").datetime(2026, 6, 1, tzinfo=__import__("datetime").UTC)
    )
    assert doc["format"] == "floodgate.rainfall/1" and len(doc["steps"]) == len(fc.mm_h) + 1
    assert set(doc["sites"][0]) == {"node", "mm_h", "members", "quantiles"}
