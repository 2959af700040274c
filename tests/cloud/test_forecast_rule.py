"""The forecast alert rule (cloud.forecast.rule): raised when likely and the storm has begun at the
site, held while the risk stays, the water rises or the rain falls, cleared when the risk passes."""

from __future__ import annotations

from cloud.forecast.rule import Measured, Settings, holds, measured, raises

MIN = 60_000
DRY = Measured(depth_mm=0.0, rising=False, rain_1h_mm=0.0, rain_30min_mm=0.0)
S = Settings(probability=0.3, hysteresis=0.1, confirm_rain_mm=1.0)


def test_likely_alone_raises_nothing_until_the_storm_is_confirmed_at_the_site() -> None:
    assert not raises(0.95, DRY, S), "a forecast storm that has not begun: at risk, no alert"
    assert raises(0.3, Measured(0.0, False, 1.0, 1.0), S), "1 mm measured in the last hour"
    assert not raises(0.3, Measured(0.0, False, 0.9, 0.9), S)
    assert raises(0.3, Measured(20.0, False, 0.0, 0.0), S), "water there now confirms it too"
    assert not raises(0.3, Measured(8.0, False, 0.0, 0.0), S), "a dry road's sensor noise does not"
    assert not raises(0.29, Measured(5.0, True, 20.0, 20.0), S), "not likely enough"
    off = Settings(0.3, 0.1, None)
    assert raises(0.3, DRY, off) and not raises(0.2, DRY, off)


def test_an_alert_is_held_while_likely_rising_or_raining_and_cleared_when_none_holds() -> None:
    assert holds(0.2, DRY, S), "probability - hysteresis"
    assert not holds(0.19, DRY, S), "the risk has passed: cleared"
    assert holds(0.0, Measured(80.0, True, 0.0, 0.0), S), "the water measured is still rising"
    assert not holds(0.0, Measured(80.0, False, 0.0, 0.0), S), "water, but falling and no rain"
    assert holds(0.0, Measured(0.0, False, 1.0, 1.0), S), "the rain is still falling"
    assert not holds(0.0, Measured(0.0, False, 30.0, 0.5), S), "it rained, but not in the last 30 min"


def test_measured_reads_rising_depth_and_the_rain_of_the_last_hour_and_half_hour() -> None:
    now = 100 * MIN
    depth = [(now - 15 * MIN, 10.0), (now - 10 * MIN, 20.0), (now - 5 * MIN, 25.0), (now, 30.0)]
    rain = [(now - 65 * MIN, 60.0), (now - 40 * MIN, 12.0), (now - 20 * MIN, 6.0), (now, 99.0)]
    m = measured(depth, rain, now, 300.0)  # 5-min means: 12 mm/h for 5 min is 1 mm
    assert m.depth_mm == 30.0 and m.rising
    assert m.rain_1h_mm == 1.5 and m.rain_30min_mm == 0.5, "before the hour, and now's own step, left out"
    falling = measured([(now - 10 * MIN, 40.0), (now, 30.0)], [], now, 300.0)
    assert not falling.rising and falling.rain_1h_mm == 0.0
    assert not measured([(now, 30.0)], [], now, 300.0).rising, "one reading says nothing of a rise"
    noise = measured([(now - 10 * MIN, 3.0), (now, 9.0)], [], now, 300.0)
    assert not noise.rising, "a dry road's sensor noise is no rise"
    assert measured([], [], now, 300.0) == DRY
