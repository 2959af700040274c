"""Measures per unit and month, per site and season, from a scripted month of tickets."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from cloud.config import load_cloud_config
from cloud.db.store import Store
from cloud.ingest import Ingestor
from cloud.measures import Measures, month_range, percentile
from cloud.tickets import Tickets
from floodgate.clock import ManualClock
from floodgate.errors import ConfigError
from floodgate.ids import new_ulid
from tests.cloud.test_ingest import msg
from tests.cloud.test_tickets import REGISTRY, Site, registry

MIN = 60_000
T0 = int(datetime(2026, 7, 10, 8, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)


async def test_unit_and_site_measures(store: Store, tmp_path: Path) -> None:
    clock = ManualClock(start_ms=T0)
    t = Tickets(store, registry(tmp_path, REGISTRY), clock)
    ing = Ingestor(store, t)
    sites = {n: Site(ing, node=n) for n in ("hp-1", "hp-2", "hp-3")}
    eps = {n: new_ulid() for n in sites}
    levels = {"hp-1": ("danger", 290.0), "hp-2": ("warning", 180.0), "hp-3": ("danger", 320.0)}
    ids = {}
    for n, s in sites.items():
        level, value = levels[n]
        await s.send(s.alert(eps[n], level, "clear", value=value, ts=T0))
        _, [row] = await t.list(node=n)
        ids[n] = row["id"]
        await t.act(ids[n], "dispatch", "user:chen", unit="drainage-dasha")
    a, b, c = ids["hp-1"], ids["hp-2"], ids["hp-3"]

    clock.set(T0 + 5 * MIN)
    await t.act(a, "accept", "unit:drainage-dasha:wang")
    clock.set(T0 + 40 * MIN)
    await t.act(b, "accept", "unit:drainage-dasha:wang")  # late: a warning is due in 30 min
    clock.set(T0 + 60 * MIN)
    await sites["hp-1"].send(sites["hp-1"].alert(eps["hp-1"], "clear", "danger", value=5.0, ts=T0 + 60 * MIN))
    await t.act(a, "report", "unit:drainage-dasha:wang", note="pumped")  # the sensor verifies it
    await t.act(a, "evaluate", "user:chen", score=5)
    clock.set(T0 + 1500 * MIN)
    await t.act(b, "report", "unit:drainage-dasha:wang", note="late")  # 25 h: past 24 h
    await t.act(b, "verify", "user:chen", confirm=True)  # hp-2 still warns
    await t.act(b, "evaluate", "user:chen", score=3)
    await t.escalate_due()  # c was never accepted: level 2 by now

    m = Measures(store, clock)
    [unit] = await m.units("2026-07")
    assert unit == {
        "unit": "drainage-dasha",
        "month": "2026-07",
        "tickets": 3,
        "on_time_accept_rate": round(1 / 3, 4),  # a on time; b late; c never, past due
        "on_time_handle_rate": round(1 / 3, 4),
        "handling_hours_avg": 13.0,  # (1 + 25) / 2
        "handling_hours_p90": 25.0,
        "satisfaction": 0.5,
        "evaluated": 2,
        "escalations": 2,
    }
    assert await m.units("2026-06") == []
    assert c

    by_node = {s["node"]: s for s in await m.sites(2026)}
    assert by_node["hp-1"]["alerts"] == {"warning": 0, "danger": 1}
    assert by_node["hp-1"]["peak_depth_mm"] == 290.0
    assert by_node["hp-1"]["hours_above_threshold"] == 1.0
    assert by_node["hp-3"]["hours_above_threshold"] == 25.0, "still above: counted up to now"
    assert by_node["hp-2"]["alerts"] == {"warning": 1, "danger": 0}
    assert await m.sites(2025) == []
    august_on = Measures(store, clock, season=("08-01", "12-31"))  # a city whose season starts later
    assert await august_on.sites(2026) == [], "the July alerts fall outside its season"
    july_only = Measures(store, clock, season=("07-10", "07-10"))  # both days count
    assert {s["node"] for s in await july_only.sites(2026)} == {"hp-1", "hp-2", "hp-3"}


def test_a_flood_season_is_checked_with_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text('database: sqlite:///c.db\nflood_season:\n  start: "05-01"\n  end: "09-30"\n')
    config, _ = load_cloud_config(cfg)
    assert (config.flood_season.start, config.flood_season.end) == ("05-01", "09-30")
    cfg.write_text('database: sqlite:///c.db\nflood_season:\n  start: "13-01"\n')
    with pytest.raises(ConfigError, match=r"cloud.yaml:3.*flood_season.start"):
        load_cloud_config(cfg)
    cfg.write_text('database: sqlite:///c.db\nflood_season: {start: "10-15", end: "04-01"}\n')
    with pytest.raises(ConfigError, match=r"ends .* before it starts"):
        load_cloud_config(cfg)


def test_the_districts_time_zone_is_an_iana_name(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("database: sqlite:///c.db\ntimezone: Asia/Urumqi\n")
    config, _ = load_cloud_config(cfg)
    assert config.timezone == "Asia/Urumqi"
    cfg.write_text("database: sqlite:///c.db\ntimezone: Beijing\n")
    with pytest.raises(ConfigError, match=r"unknown time zone 'Beijing'"):
        load_cloud_config(cfg)


def test_month_and_percentile_helpers() -> None:
    tz = ZoneInfo("Asia/Shanghai")
    _, hi = month_range("2026-12", tz)
    assert datetime.fromtimestamp(hi / 1000, tz) == datetime(2027, 1, 1, tzinfo=tz)
    with pytest.raises(ValueError, match="2026-07"):
        month_range("July", tz)
    assert percentile([], 90) is None
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 90) == 9.0


async def test_a_flood_is_counted_once_at_the_peak_of_its_readings(store: Store, tmp_path: Path) -> None:
    """The alert carries the depth at the crossing (273 mm); the readings go on to 404 mm. The
    depth sensor's and the immersion contact's episodes of the same flood are one flood."""
    clock = ManualClock(start_ms=T0)
    t = Tickets(store, registry(tmp_path, REGISTRY), clock)
    ing = Ingestor(store, t)
    s = Site(ing, node="hp-1")
    flood, wet, later = new_ulid(), new_ulid(), new_ulid()
    await s.send(s.alert(flood, "warning", "clear", value=152.0, ts=T0))
    await s.send(s.alert(wet, "warning", "clear", kind="immersion", value=1.0, ts=T0 + MIN))
    await s.send(s.alert(flood, "danger", "warning", value=273.0, ts=T0 + 2 * MIN))
    depths = [273.0, 330.0, 404.0, 390.0, 9999.0, 300.0]  # 9999: a faulted sensor's reading
    readings = [
        {
            "dev": "lvl-1",
            "ts": T0 + (3 + i) * MIN,
            "metric": "depth_mm",
            "value": v,
            "quality": "bad" if v > 5000 else "good",
        }
        for i, v in enumerate(depths)
    ]
    readings.append(
        {"dev": "lvl-1", "ts": T0 + 99 * MIN, "metric": "depth_mm", "value": 500.0, "quality": "good"}
    )
    await s.send(msg(s.seq, "telemetry", {"readings": readings}))
    await s.send(s.alert(flood, "clear", "danger", value=20.0, ts=T0 + 20 * MIN))
    await s.send(s.alert(wet, "clear", "warning", kind="immersion", value=0.0, ts=T0 + 21 * MIN))
    # A second flood, later the same day: counted on its own.
    await s.send(s.alert(later, "warning", "clear", value=160.0, ts=T0 + 120 * MIN))
    clock.set(T0 + 130 * MIN)

    [site] = await Measures(store, clock).sites(2026)
    assert site["peak_depth_mm"] == 404.0, "the highest reading of the flood, not the 500 after it"
    assert site["floods"] == 2
    assert site["alerts"] == {"warning": 1, "danger": 1}, "one flood, not a danger and a warning"


async def test_a_contact_that_flapped_in_one_storm_is_one_flood_and_its_time_counts(
    store: Store, tmp_path: Path
) -> None:
    """The immersion contact went wet, dry for 20 s, wet again (the depth sensor never crossed):
    one flood, not two, and its time above threshold is the flood's 30 min, not 0."""
    clock = ManualClock(start_ms=T0)
    t = Tickets(store, registry(tmp_path, REGISTRY), clock)
    s = Site(Ingestor(store, t), node="hp-1")
    first, again = new_ulid(), new_ulid()
    await s.send(s.alert(first, "warning", "clear", kind="immersion", value=1.0, ts=T0))
    await s.send(s.alert(first, "clear", "warning", kind="immersion", value=0.0, ts=T0 + 10 * MIN))
    await s.send(s.alert(again, "warning", "clear", kind="immersion", value=1.0, ts=T0 + 10 * MIN + 20_000))
    await s.send(s.alert(again, "clear", "warning", kind="immersion", value=0.0, ts=T0 + 30 * MIN))
    clock.set(T0 + 60 * MIN)

    [site] = await Measures(store, clock).sites(2026)
    assert site["floods"] == 1 and site["alerts"] == {"warning": 1, "danger": 0}
    assert site["hours_above_threshold"] == 0.5
    assert site["peak_depth_mm"] is None, "no depth sensor crossed: no peak of its readings"
