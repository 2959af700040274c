"""Filters, alert state machine and fault tracking, driven by explicit timestamps."""

from __future__ import annotations

from edge.config.site import FilterCfg, Threshold, Thresholds
from edge.rules.alerts import ContactAlarm, LevelAlarm
from edge.rules.faults import FaultTracker
from edge.rules.filters import LevelFilter

TH = Thresholds(warning=Threshold(on=150, clear=120), danger=Threshold(on=270, clear=240))


def feed(f: LevelFilter, values: list[float], step_ms: int = 1000) -> list[tuple[float, str]]:
    return [(r.value, r.quality) for i, v in enumerate(values) if (r := f.feed(i * step_ms, [v]))]


def test_single_spike_between_normal_readings_is_dropped() -> None:
    f = LevelFilter(FilterCfg(max_jump=100, confirm=2))
    out = feed(f, [20, 22, 600, 21, 23])
    assert out[2] == (600, "suspect")
    assert [q for _, q in out] == ["good", "good", "suspect", "good", "good"]
    assert f.last == 23


def test_a_real_step_is_accepted_after_confirmation() -> None:
    f = LevelFilter(FilterCfg(max_jump=100, confirm=2))
    out = feed(f, [0, 0, 140, 142, 145])  # 140 mm in a second: fast, yet water can do it
    assert [q for _, q in out] == ["good", "good", "suspect", "good", "good"]


def test_noise_floor_and_median() -> None:
    f = LevelFilter(FilterCfg(noise_floor=10))
    assert f.feed(0, [4, 9, 6]).value == 0.0
    assert f.feed(1000, [50, 500, 52]).value == 52


def test_rate_allows_large_change_after_a_long_gap() -> None:
    f = LevelFilter(FilterCfg(max_jump=50, max_rate_per_min=250))
    f.feed(0, [0])
    assert f.feed(60_000, [200]).quality == "good"  # 200 mm in a minute is plausible


def test_alarm_rises_falls_with_hysteresis_and_keeps_one_episode() -> None:
    a = LevelAlarm(TH)
    steps = [(0, 100), (1, 160), (2, 130), (3, 280), (4, 250), (5, 230), (6, 125), (7, 110)]
    out = [(t, a.feed(t * 1000, v)) for t, v in steps]
    changes = [(t, tr.prev, tr.level) for t, tr in out if tr]
    assert changes == [
        (1, "clear", "warning"),
        (3, "warning", "danger"),
        (5, "danger", "warning"),
        (7, "warning", "clear"),
    ]
    ids = {tr.episode for _, tr in out if tr}
    assert len(ids) == 1
    assert a.feed(8000, 200) is not None and a.episode not in ids  # a new episode


def test_alarm_dwell_needs_the_value_to_hold() -> None:
    th = Thresholds(
        warning=Threshold(on=150, clear=120, dwell_s=10),
        danger=Threshold(on=270, clear=240, dwell_s=10),
    )
    a = LevelAlarm(th)
    assert a.feed(0, 160) is None
    assert a.feed(5_000, 100) is None  # dipped: the dwell starts over
    assert a.feed(6_000, 160) is None
    assert a.feed(15_000, 160) is None
    t = a.feed(16_000, 160)
    assert t is not None and t.level == "warning"
    assert a.feed(17_000, 100) is None  # going down needs the dwell too
    t = a.feed(27_000, 100)
    assert t is not None and t.level == "clear"


def test_alarm_can_skip_straight_to_danger_and_back_to_clear() -> None:
    a = LevelAlarm(TH)
    t = a.feed(0, 400)
    assert t and (t.prev, t.level, t.threshold) == ("clear", "danger", 270)
    t = a.feed(1000, 50)
    assert t and (t.prev, t.level) == ("danger", "clear")


def test_contact_alarm() -> None:
    c = ContactAlarm("danger")
    assert c.feed(0, False) is None
    t = c.feed(1, True)
    assert t and t.level == "danger"
    assert c.feed(2, True) is None


def test_a_chattering_contact_is_one_episode_with_a_dry_hold() -> None:
    """Water at the contact's height: wet, dry, wet every second. With a 30 s hold it warns once
    and clears 30 s after its last wet read; without one, every dry read is a clear."""
    chatter = [(i * 1000, i % 2 == 0) for i in range(20)] + [(20_000 + i * 1000, False) for i in range(40)]
    held = ContactAlarm("warning", dry_hold_s=30)
    got = [(t.ts, t.level) for ts, wet in chatter if (t := held.feed(ts, wet))]
    assert got == [(0, "warning"), (49_000, "clear")]  # last wet at 18 s, dry from 19 s
    bare = ContactAlarm("warning")
    levels = [t.level for ts, wet in chatter if (t := bare.feed(ts, wet))]
    assert levels.count("clear") == 10


def test_a_dry_hold_keeps_the_episode_and_starts_again_after_a_wet_read() -> None:
    c = ContactAlarm("danger", dry_hold_s=5)
    first = c.feed(0, True)
    assert first is not None
    assert c.feed(1_000, False) is None and c.feed(5_000, False) is None
    assert c.feed(5_500, True) is None  # wet again within the hold: same episode, no transition
    assert c.feed(6_000, False) is None and c.feed(10_999, False) is None
    cleared = c.feed(11_000, False)
    assert cleared is not None and cleared.level == "clear" and cleared.episode == first.episode


def test_fault_tracker_episode_and_stuck() -> None:
    f = FaultTracker(stuck_after_s=10)
    assert f.raw_value(0, 5) is None
    assert f.raw_value(9_000, 5) is None
    assert f.raw_value(10_000, 5) == "stuck"
    ch = f.update(10_000, "stuck")
    assert ch and ch.faulted
    assert f.update(11_000, "timeout") is None  # same episode, newer reason
    assert f.reason == "timeout"
    back = f.update(12_000, None)
    assert back and not back.faulted and back.episode == ch.episode


def through_the_agent(f: LevelFilter, a: LevelAlarm, readings: list[tuple[int, float]]) -> list[str]:
    """What the level driver does with each reading: filter, and only good values reach the alarm."""
    qualities = []
    for ts, v in readings:
        r = f.feed(ts, [v])
        qualities.append(r.quality)
        if r.quality == "good":
            a.feed(ts, r.value)
    return qualities


def test_spikes_faster_than_water_are_rejected_however_many_agree() -> None:
    """187 -> 578 mm in 1 s, twice in a row with the default confirm: 2, on a dry-ish road."""
    f, a = LevelFilter(FilterCfg()), LevelAlarm(TH)
    assert FilterCfg().confirm == 2
    got = through_the_agent(f, a, [(0, 187), (1000, 578), (2000, 578), (3000, 190)])
    assert got == ["good", "suspect", "suspect", "good"]
    assert a.level == "warning", "187 mm is a warning; no false danger"
    f, a = LevelFilter(FilterCfg()), LevelAlarm(TH)  # and on a dry road
    assert through_the_agent(f, a, [(0, 0), (1000, 578), (2000, 578), (3000, 0)])[1:3] == ["suspect"] * 2
    assert a.level == "clear" and a.episode is None
    # However many: five spikes in one second at a fast poll, then the road again.
    f2, a2 = LevelFilter(FilterCfg(confirm=2)), LevelAlarm(TH)
    got = through_the_agent(f2, a2, [(0, 187), *[(200 * i, 578.0) for i in range(1, 6)], (1200, 188)])
    assert got == ["good", *["suspect"] * 5, "good"] and a2.level == "warning"
    assert f2.implausible == 5 and f2.last == 188


def test_a_staircase_of_spikes_is_held_to_the_rate_of_water() -> None:
    """Each step within max_jump of the last, yet 100 mm/s in all: the minute's envelope stops it."""
    f = LevelFilter(FilterCfg(max_jump=100, max_rise_mm_s=50, confirm=1))
    got = [f.feed(1000 * i, [100.0 * i]).quality for i in range(6)]
    assert got[:2] == ["good", "good"] and "suspect" in got[2:]
    assert f.last is not None and f.last <= 100 + 50 * 5


def test_a_flash_flood_at_a_plausible_rate_passes_and_warns() -> None:
    """10 mm/s (600 mm/min, faster than the demo's flash flood) from a dry road to 400 mm."""
    f, a = LevelFilter(FilterCfg()), LevelAlarm(TH)
    readings = [(1000 * t, 10.0 * t) for t in range(41)]
    got = through_the_agent(f, a, readings)
    assert set(got) == {"good"} and f.implausible == 0
    assert a.level == "danger"
    f, a = LevelFilter(FilterCfg()), LevelAlarm(TH)
    warned = [t for t, v in readings[:20] if through_the_agent(f, a, [(t, v)]) and a.level == "warning"]
    assert warned[0] == 15_000, "warning as soon as the water reaches 150 mm"
    # At the bound itself (50 mm/s, sampled every 0.2 s) water still passes.
    f = LevelFilter(FilterCfg())
    assert {f.feed(200 * i, [10.0 * i]).quality for i in range(30)} == {"good"}


def test_a_step_that_holds_is_accepted_once_water_could_have_got_there() -> None:
    f = LevelFilter(FilterCfg(max_jump=100, max_rise_mm_s=50))
    f.feed(0, [0.0])
    got = [(t, f.feed(t, [400.0]).quality) for t in range(1000, 8000, 1000)]
    # 400 mm needs (400 - 100) / 50 = 6 s of water rising at the bound; from then
    # on it is an ordinary jump, confirmed by the next reading (confirm: 2).
    assert next(t for t, q in got if q == "good") == 7000
    assert f.implausible == 5 and all(q == "suspect" for t, q in got if t < 7000)
