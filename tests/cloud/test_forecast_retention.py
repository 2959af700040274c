"""The forecasts' retention (issue 17) on SQLite and PostgreSQL: rainfall forecasts that ended
long ago and the runs of sites no longer forecast are deleted, hourly, once across collectors;
every fit is kept; and the forecast round's bookkeeping holds no raw reading back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud.config import load_cloud_config
from cloud.db import forecast as fdb
from cloud.db.schema import rainfall_forecasts, readings, site_fits, site_forecasts
from cloud.db.store import Store
from cloud.ingest import Ingestor
from cloud.retention import Retention
from floodgate.clock import ManualClock
from floodgate.errors import ConfigError
from floodgate.wire import Sequencer
from tests.cloud.test_retention import n_rows, send

DAY = 86_400_000
HOUR = 3_600_000
T = 1_790_000_040_000 - (1_790_000_040_000 % 60_000)


async def rows(store: Store) -> None:
    """Forecasts that ended 61 and 59 days ago and today; runs of 61 days ago and now; fits."""
    rain = []
    for i, end in enumerate((T - 61 * DAY, T - 59 * DAY, T + HOUR)):
        rain.append(
            {
                "node": "hp-1",
                "issued_ms": end - 3 * HOUR,
                "source": "gz-nowcast",
                "start_ms": end - 3 * HOUR,
                "end_ms": end,
                "steps": "[]",
                "series": '{"mm_h": []}',
                "via": "site",
                "origin": "test",
                "received_ms": end - 3 * HOUR,
                "digest": f"d{i}",
            }
        )
    fit = {
        "fitted_ms": T - 90 * DAY,
        "span_from_ms": T - 150 * DAY,
        "span_to_ms": T - 90 * DAY,
        "n": 500,
        "events": 8,
        "rmse_mm": 3.0,
        "params": "{}",
        "dt_s": 300.0,
        "dev": "lvl-1",
        "rain": "forecasts",
    }
    async with store.begin() as conn:
        await conn.execute(rainfall_forecasts.insert(), rain)
        await conn.execute(
            site_forecasts.insert(),
            [
                {"node": "gone", "run_ms": T - 61 * DAY, "status": "ok", "result": "{}"},
                {"node": "hp-1", "run_ms": T, "status": "ok", "result": "{}"},
            ],
        )
        await conn.execute(site_fits.insert(), [{**fit, "node": "gone"}, {**fit, "node": "hp-1"}])


async def test_forecasts_expire_hourly_once_across_collectors_and_every_fit_stays(
    store: Store, db_url: str
) -> None:
    await rows(store)
    clock = ManualClock(start_ms=T)
    other = Store(db_url)  # a second collector on the same database
    try:
        ours = Retention(store, clock, raw_days=30, forecast_days=60)
        theirs = Retention(other, clock, raw_days=30, forecast_days=60)
        await asyncio.gather(ours.run_once(), theirs.run_once())  # both at the same moment
        assert ours.forecasts_deleted + theirs.forecasts_deleted == 2, "one forecast and one run, once"
        assert {ours.forecasts_deleted, theirs.forecasts_deleted} == {0, 2}, "by one collector"
        assert await n_rows(store, rainfall_forecasts) == 2, "the one ended 59 days ago is kept"
        assert await n_rows(store, site_forecasts) == 1
        assert await n_rows(store, site_fits) == 2, "every fit kept, of a site gone too"
        # Hourly: nothing runs again before the hour is up, whichever collector asks.
        clock.advance(59 * DAY + 30 * 60_000 - 59 * DAY)
        assert await fdb.expire(other, clock.now_ms(), 60 * DAY, HOUR) is None
        clock.advance(2 * DAY)  # the forecast that ended 59 days ago is now 61 days old
        await theirs.run_once()
        assert await n_rows(store, rainfall_forecasts) == 1
        assert await n_rows(store, site_forecasts) == 1, "hp-1's run is two days old: kept"
    finally:
        await other.close()


async def test_without_forecast_days_the_retention_keeps_the_forecasts(store: Store) -> None:
    await rows(store)
    ret = Retention(store, ManualClock(start_ms=T), raw_days=30)
    await ret.run_once()
    assert await n_rows(store, rainfall_forecasts) == 3


async def test_the_forecast_rounds_bookkeeping_holds_no_raw_reading_back(store: Store) -> None:
    """Its row in rollup_state is not a follower of readings (it was, at 0: on PostgreSQL no week
    was dropped and no raw row deleted once a forecast round had run)."""
    clock = ManualClock(start_ms=T)
    ing, seq = Ingestor(store), Sequencer("hp-1", boot=1)
    old = T - 40 * DAY
    await send(ing, seq, [(old + i * 10_000, float(i)) for i in range(6)])
    await send(ing, seq, [(T - 1000, 5.0)])
    async with fdb.round_turn(store, clock.now_ms, 60_000, False) as turn:
        assert turn == "run"
    assert await fdb.expire(store, clock.now_ms(), 60 * DAY, HOUR) is not None
    ret = Retention(store, clock, raw_days=30, forecast_days=60)
    await ret.run_once()
    clock.advance(60_000)
    rolled, deleted = await ret.run_once()
    assert (rolled, deleted) == (7, 6), "rolled up, and the old raw rows gone"
    assert await n_rows(store, readings) == 1


def test_forecast_days_below_the_fit_history_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("retention:\n  forecast_days: 30\nforecast:\n  history_days: 45\n")
    with pytest.raises(ConfigError) as e:
        load_cloud_config(cfg)
    assert "retention.forecast_days" in str(e.value) and "forecast.history_days (45)" in str(e.value)
    cfg.write_text("retention:\n  forecast_days: 30\nforecast:\n  history_days: 30\n")
    config, _ = load_cloud_config(cfg)
    assert config.retention.forecast_days == 30
