"""Rainfall forecasts in (docs/rainfall-forecast.md): the document's checks, the API, the watched
folder; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cloud.collector import Collector
from cloud.config import load_cloud_config
from cloud.db.schema import nodes, rainfall_forecasts
from cloud.db.store import Store
from cloud.rainfall import ForecastInvalid, Forecasts, ForecastWatch, parse
from floodgate.clock import ManualClock
from floodgate.errors import ConfigError
from tests.cloud.test_api import Api, an_api
from tests.cloud.test_ingest import count
from tests.helpers import wait_until

AT = 1_780_273_200_000  # 2026-06-01T00:20:00Z: the collector's clock, after the documents' issue times

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "rainfall-forecast.json"
# Two sites in Tianhe, one in Huangpu (lat, lon), and one whose place is not known.
SITES = {
    "th-1": (23.125, 113.325),
    "th-2": (23.135, 113.335),
    "hp-1": (23.105, 113.445),
    "nowhere": (None, None),
}


def doc() -> dict[str, Any]:
    return {
        "format": "floodgate.rainfall/1",
        "issued": "2026-06-01T08:00:00+08:00",
        "source": "gz-nowcast",
        "steps": ["2026-06-01T08:00:00+08:00", "2026-06-01T08:30:00+08:00", "2026-06-01T09:00:00+08:00"],
        "sites": [
            {
                "node": "th-1",
                "mm_h": [12.0, 40.5],
                "members": [[10, 30], [14, 55]],
                "quantiles": {"0.1": [8, 20], "0.9": [20, 70]},
            }
        ],
    }


def with_grid() -> dict[str, Any]:
    d = doc()
    del d["sites"]
    d["grid"] = {"lat0": 23.0, "lon0": 113.2, "dlat": 0.1, "dlon": 0.1, "rows": 3, "cols": 3}
    d["cells"] = [{"row": 1, "col": 1, "mm_h": [5, 6]}, {"row": 0, "col": 0, "mm_h": [1, 1]}]
    return d


async def known(store: Store) -> None:
    async with store.begin() as conn:
        await conn.execute(
            nodes.insert(), [{"node": n, "lat": la, "lon": lo} for n, (la, lo) in SITES.items()]
        )


def refused(d: Any) -> str:
    with pytest.raises(ForecastInvalid) as e:
        parse(d, SITES)
    return e.value.message


def test_a_good_document_and_a_grid_are_read() -> None:
    fc = parse(doc(), SITES)
    assert fc.issued_ms == 1_780_272_000_000 and len(fc.steps_ms) == 3
    assert fc.by_site["th-1"][0].members == [[10.0, 30.0], [14.0, 55.0]]
    g = parse(with_grid(), SITES)
    # th-1 and th-2 lie in cell 1,1 (23.1-23.2 N, 113.3-113.4 E); hp-1 in cell 1,2, not given.
    assert {n: v for n, (_, v) in g.by_site.items()} == {"th-1": "cell 1,1", "th-2": "cell 1,1"}
    both = with_grid()
    both["sites"] = [{"node": "th-1", "mm_h": [9, 9]}]
    assert parse(both, SITES).by_site["th-1"][0].mm_h == [9.0, 9.0], "a site's own series wins"


def bad(path: list[Any], value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    d = copy.deepcopy(base or doc())
    at: Any = d
    for k in path[:-1]:
        at = at[k]
    at[path[-1]] = value
    return d


@pytest.mark.parametrize(
    ("d", "says"),
    [
        (bad(["format"], "grib"), "format: must be"),
        (bad(["issued"], "2026-06-01T08:00:00"), "issued: has no UTC offset"),
        (bad(["issued"], "tomorrow"), "issued: is not an ISO 8601 time"),
        (bad(["steps", 2], "2026-06-01T08:30:00+08:00"), "steps.2: must be later"),
        (bad(["steps", 0], "2026-05-31T08:00:00+08:00"), "steps.0: starts more than 6 h before"),
        (bad(["sites", 0, "mm_h", 1], -1), "sites.0.mm_h.1: must be between 0 and 1000"),
        (bad(["sites", 0, "mm_h", 1], float("nan")), "sites.0.mm_h.1: must be a finite number"),
        (bad(["sites", 0, "mm_h", 1], "5"), "sites.0.mm_h.1: must be a finite number"),
        (bad(["sites", 0, "mm_h"], [1.0]), "sites.0.mm_h: has 1 intensities; the steps make 2"),
        (bad(["sites", 0, "members", 1, 0], float("inf")), "sites.0.members.1.0: must be a finite"),
        (bad(["sites", 0, "quantiles", "0.9", 1], 19), "sites.0.quantiles.0.9.1: is below quantile 0.1"),
        (bad(["sites", 0, "quantiles", "1.5"], [1, 1]), "sites.0.quantiles.1.5: the probability"),
        (
            bad(["sites", 0, "quantiles", "0.10"], [1, 1]),
            "sites.0.quantiles.0.10: probability 0.1 is given twice",
        ),
        (bad(["sites", 0, "node"], "zz-9"), "sites.0.node: unknown site 'zz-9'"),
        (bad(["sites", 0, "colour"], "red"), "sites.0.colour: unknown field"),
        (
            bad(["sites"], [{"node": "th-1", "mm_h": [1, 2]}, {"node": "th-1", "mm_h": [1, 2]}]),
            "sites.1.node: site 'th-1' is given twice",
        ),
        (bad(["cells", 0, "row"], 3, with_grid()), "cells.0.row: must be a whole number from 0 to 2"),
        (bad(["grid", "dlat"], 0, with_grid()), "grid.dlat: must be between"),
        (
            bad(["cells"], [{"row": 2, "col": 2, "mm_h": [1, 1]}], with_grid()),
            "cells: no known site lies in any cell",
        ),
        (
            bad(["steps"], [f"2026-06-01T08:{m:02d}:00+08:00" for m in range(2)] * 200),
            "steps: must be a list of 2 to 289",
        ),
        ([1, 2], "must be an object"),
        (bad(["sites"], 1), "sites: must be a list"),
        (bad(["cells"], 1, with_grid()), "cells: must be a list"),
        (bad(["sites", 0, "mm_h", 1], 10**400), "sites.0.mm_h.1: must be a finite number"),
        (bad(["grid", "lat0"], -(10**400), with_grid()), "grid.lat0: must be a finite number"),
    ],
)
def test_a_bad_document_is_refused_with_the_path_to_what_is_wrong(d: Any, says: str) -> None:
    assert says in refused(d)


async def a_forecaster(api: Api) -> None:
    """The weather service's user, ``cma``, with a token."""
    ctx = api.app.state.ctx
    await ctx.auth.add_user("cma", "forecaster", "weather service pw", None)
    api.tokens["cma"] = await ctx.auth.issue_token("cma")


async def test_the_api_stores_a_forecast_and_gives_the_latest_per_site(store: Store, tmp_path: Path) -> None:
    await known(store)
    async with an_api(store, tmp_path, ManualClock(AT)) as api:
        await a_forecaster(api)
        async with api.client("cma") as cma, api.client("viewer") as viewer:
            wrong = bad(["sites", 0, "mm_h", 1], -3.0)
            got = await cma.post("/api/v1/rainfall-forecasts", json=wrong)
            assert got.status_code == 422 and got.json()["detail"].startswith(
                "sites.0.mm_h.1: must be between"
            )
            assert await count(store, rainfall_forecasts) == 0, "a refused document keeps nothing"
            assert (await viewer.post("/api/v1/rainfall-forecasts", json=doc())).status_code == 403
            got = await cma.post("/api/v1/rainfall-forecasts", json=with_grid())
            assert got.status_code == 201, got.text
            assert got.json() == {
                "issued": "2026-06-01T00:00:00Z",
                "source": "gz-nowcast",
                "steps": 2,
                "sites": ["th-1", "th-2"],
                "unchanged": [],
            }
            # The same document again (a retry, a file dropped twice) is not stored twice.
            again = await cma.post("/api/v1/rainfall-forecasts", json=with_grid())
            assert again.status_code == 201 and again.json()["unchanged"] == ["th-1", "th-2"]
            assert await count(store, rainfall_forecasts) == 2
            newer = bad(["issued"], "2026-06-01T08:10:00+08:00")
            assert (await cma.post("/api/v1/rainfall-forecasts", json=newer)).status_code == 201
            older = bad(["issued"], "2026-06-01T07:50:00+08:00")
            older["sites"][0]["mm_h"] = [0, 0]
            older["sites"][0]["members"] = [[0, 0]]
            assert (await cma.post("/api/v1/rainfall-forecasts", json=older)).status_code == 201
            latest = (await viewer.get("/api/v1/rainfall-forecasts")).json()
        by = {r["node"]: r for r in latest}
        assert set(by) == {"th-1", "th-2"}
        assert by["th-1"]["issued"] == "2026-06-01T00:10:00Z" and by["th-1"]["mm_h"] == [12.0, 40.5]
        assert by["th-1"]["quantiles"] == {"0.1": [8.0, 20.0], "0.9": [20.0, 70.0]}
        assert by["th-1"]["origin"] == "api user:cma" and by["th-1"]["via"] == "site"
        assert by["th-2"]["via"] == "cell 1,1" and by["th-2"]["mm_h"] == [5.0, 6.0]
        assert by["th-2"]["steps"] == ["2026-06-01T00:00:00Z", "2026-06-01T00:30:00Z", "2026-06-01T01:00:00Z"]
        async with api.client("admin") as admin:
            one = (await admin.get("/api/v1/rainfall-forecasts", params={"node": "th-2"})).json()
        assert [r["node"] for r in one] == ["th-2"]


async def test_the_watched_folder_stores_good_files_and_refuses_bad_ones(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await known(store)
    folder = tmp_path / "in"
    folder.mkdir()
    watch = ForecastWatch(Forecasts(store, ManualClock(AT)), folder, 30_000)
    (folder / "a-good.json").write_text(json.dumps(doc()))
    (folder / "b-bad.json").write_text(json.dumps(bad(["sites", 0, "mm_h", 0], -1)))
    (folder / "c-broken.json").write_text('{"format": ')
    (folder / ".d-writing.json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="floodgate.cloud.rainfall"):
        assert await watch.scan_once() == (1, 2)
    assert sorted(p.name for p in folder.iterdir()) == [".d-writing.json", "done", "rejected"]
    assert [p.name for p in (folder / "done").iterdir()] == ["a-good.json"]
    assert sorted(p.name for p in (folder / "rejected").iterdir()) == [
        "b-bad.json",
        "b-bad.json.why",
        "c-broken.json",
        "c-broken.json.why",
    ]
    why = (folder / "rejected" / "b-bad.json.why").read_text()
    assert why.startswith("sites.0.mm_h.0: must be between 0 and 1000")
    assert "not a readable JSON document" in (folder / "rejected" / "c-broken.json.why").read_text()
    lines = [r.getMessage() for r in caplog.records]
    assert any("b-bad.json refused: sites.0.mm_h.0" in line for line in lines), lines
    assert await count(store, rainfall_forecasts) == 1, "only the good file is stored"
    assert [r["origin"] for r in await Forecasts(store, ManualClock(AT)).latest()] == ["file a-good.json"]
    (folder / "b-bad.json").write_text(json.dumps(doc()))  # sent again, mended: both kept aside
    assert await watch.scan_once() == (1, 0)
    assert len(list((folder / "done").iterdir())) == 2


def test_the_documented_example_is_valid() -> None:
    fc = parse(json.loads(EXAMPLE.read_text()), SITES)
    assert set(fc.by_site) == {"th-1", "th-2", "hp-1"}


async def test_the_collector_polls_its_configured_folder_on_its_clock(store: Store, tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(f"database: {store.url}\napi: null\nforecast:\n  watch_dir: rain\n  poll_s: 60\n")
    config, broker = load_cloud_config(cfg)
    assert config.forecast is not None and config.forecast.watch_dir == str(tmp_path / "rain")
    clock = ManualClock(AT)
    col = Collector(config, broker, clock=clock)
    watch = col.forecast_watch
    assert watch is not None and watch.interval_ms == 60_000
    await known(store)
    task = asyncio.create_task(watch.run())
    try:
        await wait_until(lambda: watch.scans == 1, 10, "the first scan")
        (tmp_path / "rain" / "f.json").write_text(json.dumps(doc()))
        clock.advance(59_000)
        for _ in range(20):  # turns of the loop: the next scan is not due yet, so the file waits
            await asyncio.sleep(0)
        assert watch.scans == 1 and (tmp_path / "rain" / "f.json").exists()
        clock.advance(1_000)
        await wait_until((tmp_path / "rain" / "done" / "f.json").exists, 10, "the next scan")
        await wait_until(lambda: watch.scans == 2, 10, "the second scan counted")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await col.store.close()
    assert await count(store, rainfall_forecasts) == 1


def test_a_bad_forecast_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text("forecast:\n  watch_dir: rain\n  poll_s: 0\n")
    with pytest.raises(ConfigError) as e:
        load_cloud_config(cfg)
    assert "forecast.poll_s" in str(e.value)


# Documents that once raised TypeError/OverflowError instead of being refused: the API answered 500
# and the watched folder's scan stopped at them, so they and every file after them stayed put.
NOT_A_LIST = bad(["sites"], 1)
HUGE = bad(["sites", 0, "mm_h", 1], 10**400)


async def test_the_api_refuses_a_mistyped_or_huge_document_with_422(store: Store, tmp_path: Path) -> None:
    await known(store)
    async with an_api(store, tmp_path, ManualClock(AT)) as api:
        await a_forecaster(api)
        async with api.client("cma") as cma:
            got = await cma.post("/api/v1/rainfall-forecasts", json=NOT_A_LIST)
            assert got.status_code == 422 and got.json()["detail"] == "sites: must be a list", got.text
            got = await cma.post("/api/v1/rainfall-forecasts", json=HUGE)
            assert got.status_code == 422, got.text
            assert got.json()["detail"] == "sites.0.mm_h.1: must be a finite number"
            assert (await cma.post("/api/v1/rainfall-forecasts", json=doc())).status_code == 201
    assert await count(store, rainfall_forecasts) == 1


async def test_a_good_file_waits_while_the_database_fails(store: Store, tmp_path: Path) -> None:
    """A database failure is not the document's fault: the file stays for the next scan."""
    from sqlalchemy import text

    await known(store)
    folder = tmp_path / "in"
    folder.mkdir()
    watch = ForecastWatch(Forecasts(store, ManualClock(AT)), folder, 30_000)
    (folder / "good.json").write_text(json.dumps(doc()))
    async with store.engine.begin() as conn:  # the table gone: every store fails
        await conn.execute(text("ALTER TABLE rainfall_forecasts RENAME TO rainfall_away"))
    try:
        assert await watch.scan_once() == (0, 0)
        assert (folder / "good.json").exists() and not (folder / "rejected").exists()
    finally:
        async with store.engine.begin() as conn:
            await conn.execute(text("ALTER TABLE rainfall_away RENAME TO rainfall_forecasts"))
    assert await watch.scan_once() == (1, 0)
    assert [p.name for p in (folder / "done").iterdir()] == ["good.json"]
    assert await count(store, rainfall_forecasts) == 1


async def test_a_mistyped_or_huge_file_goes_aside_and_the_next_is_taken(store: Store, tmp_path: Path) -> None:
    await known(store)
    folder = tmp_path / "in"
    folder.mkdir()
    watch = ForecastWatch(Forecasts(store, ManualClock(AT)), folder, 30_000)
    (folder / "a-not-a-list.json").write_text(json.dumps(NOT_A_LIST))
    (folder / "b-huge.json").write_text(json.dumps(HUGE))
    (folder / "b-nested.json").write_text("[" * 100_000 + "]" * 100_000)  # json.loads: RecursionError
    (folder / "c-good.json").write_text(json.dumps(doc()))
    assert await watch.scan_once() == (1, 3)
    assert [p.name for p in (folder / "done").iterdir()] == ["c-good.json"]
    rejected = folder / "rejected"
    assert (rejected / "a-not-a-list.json.why").read_text() == "sites: must be a list\n"
    assert (rejected / "b-huge.json.why").read_text() == "sites.0.mm_h.1: must be a finite number\n"
    assert (rejected / "b-nested.json.why").read_text().startswith("not a readable JSON document")
    assert sorted(p.name for p in folder.iterdir()) == ["done", "rejected"]
    assert await count(store, rainfall_forecasts) == 1


async def test_the_same_file_dropped_twice_is_stored_once(store: Store, tmp_path: Path) -> None:
    await known(store)
    woken: list[int] = []
    forecasts = Forecasts(store, ManualClock(AT), on_stored=lambda: woken.append(1))
    watch = ForecastWatch(forecasts, tmp_path / "in", 30_000)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_text(json.dumps(with_grid()))
    assert await watch.scan_once() == (1, 0)
    (tmp_path / "in" / "a.json").write_text(json.dumps(with_grid()))  # the feed sends it again
    assert await watch.scan_once() == (1, 0), "taken, not refused"
    assert await count(store, rainfall_forecasts) == 2  # th-1 and th-2, once each
    assert woken == [1], "only something new wakes the site forecasts"
    done = {p.name for p in (tmp_path / "in" / "done").iterdir()}
    assert len(done) == 2 and "a.json" in done, "both copies kept in done/"


async def test_a_forecast_issued_past_the_collectors_clock_is_refused_naming_issued(
    store: Store, tmp_path: Path
) -> None:
    await known(store)
    async with an_api(store, tmp_path, ManualClock(AT)) as api:
        await a_forecaster(api)
        async with api.client("cma") as cma:
            # Beijing time written as UTC: 8 h ahead of the clock.
            ahead = bad(["issued"], "2026-06-01T08:00:00Z")
            ahead["steps"] = ["2026-06-01T08:00:00Z", "2026-06-01T08:30:00Z", "2026-06-01T09:00:00Z"]
            got = await cma.post("/api/v1/rainfall-forecasts", json=ahead)
            assert got.status_code == 422, got.text
            assert got.json()["detail"].startswith(
                "issued: 2026-06-01T08:00:00Z is 460 min after the collector's clock (2026-06-01T00:20:00Z)"
            )
            assert await count(store, rainfall_forecasts) == 0, "nothing of it kept"
            # A few minutes ahead (clocks differ): taken.
            near = bad(["issued"], "2026-06-01T00:29:00Z")
            assert (await cma.post("/api/v1/rainfall-forecasts", json=near)).status_code == 201
    # The limit is the config's.
    with pytest.raises(ForecastInvalid, match="at most 5 min"):
        await Forecasts(store, ManualClock(AT), issued_ahead_ms=5 * 60_000).accept(near, "test")
