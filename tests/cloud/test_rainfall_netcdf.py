"""Rainfall forecasts from NetCDF files (cloud.rainfall_netcdf, the optional extra netcdf): real
CF files written here by netCDF4, dropped in the watched folder. Each site takes the grid cell
that holds it, units are converted to mm/h, the issue time comes from the file; a file that
cannot be read, lacks the variable or has bad units is refused naming file and variable, and
nothing of it is kept; without the extra a .nc file is refused saying which extra to install."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.db.schema import nodes, rainfall_forecasts
from cloud.db.store import Store
from cloud.rainfall import Forecasts, ForecastWatch
from cloud.rainfall_netcdf import NetcdfInvalid, NoNetcdf, to_document
from floodgate.clock import ManualClock
from tests.cloud.test_ingest import count

netCDF4 = pytest.importorskip("netCDF4")  # ./dev setup installs the extra; CI has it

# Cell centres 23.00 .. 23.40 by 0.1 (rows) and 113.30 .. 113.55 by 0.05 (cols).
LATS = [23.0, 23.1, 23.2, 23.3, 23.4]
LONS = [113.3, 113.35, 113.4, 113.45, 113.5, 113.55]
SITES = {
    "hp-01": (23.17, 113.4561),  # row 2 (23.2), col 3 (113.45)
    "hp-02": (23.0, 113.3),  # row 0, col 0: on a centre
    "far": (22.5, 113.4),  # south of the grid: none
    "nowhere": (None, None),
}
ISSUED = datetime(2026, 6, 1, 0, 0, tzinfo=UTC)
MS = int(ISSUED.timestamp() * 1000)


def value(t: int, r: int, c: int) -> float:
    """A recognisable rain rate in mm/h at step t of cell (r, c)."""
    return 10.0 * (t % 20) + r + c / 10


def write(
    path: Path,
    *,
    units: str = "kg m-2 s-1",
    standard_name: str | None = "precipitation_flux",
    name: str = "precip",
    amount_h: float | None = None,
    members: int = 0,
    order: tuple[str, ...] = ("time", "lat", "lon"),
    fmt: str = "NETCDF4",
    issued: bool = True,
    steps: int = 6,
    fill_at: tuple[int, int, int] | None = None,
) -> None:
    """A CF file: ``steps`` 10-min steps from ISSUED, ``value`` per cell, in ``units``."""
    ds = netCDF4.Dataset(str(path), "w", format=fmt)
    try:
        ds.source = "gz-radar-nowcast"
        ds.Conventions = "CF-1.8"
        ds.createDimension("time", steps)
        ds.createDimension("lat", len(LATS))
        ds.createDimension("lon", len(LONS))
        if members:
            ds.createDimension("realization", members)
        t = ds.createVariable("time", "f8", ("time",))
        t.units = "minutes since 2026-06-01 00:00:00"
        t.calendar = "standard"
        t.standard_name = "time"
        t[:] = np.arange(steps) * 10.0
        if amount_h is not None:
            ds.createDimension("nv", 2)
            t.bounds = "time_bnds"
            b = ds.createVariable("time_bnds", "f8", ("time", "nv"))
            b.units = t.units
            b[:] = np.stack([np.arange(steps) * 10.0, np.arange(1, steps + 1) * 10.0], axis=1)
        la = ds.createVariable("lat", "f4", ("lat",))
        la.units = "degrees_north"
        la[:] = LATS
        lo = ds.createVariable("lon", "f4", ("lon",))
        lo.units = "degrees_east"
        lo[:] = LONS
        if issued:
            ref = ds.createVariable("forecast_reference_time", "f8", ())
            ref.standard_name = "forecast_reference_time"
            ref.units = "hours since 2026-05-31 00:00:00"
            ref[...] = 24.0
        dims = (*(("realization",) if members else ()), *order)
        v = ds.createVariable(name, "f4", dims, fill_value=-9999.0)
        v.units = units
        if standard_name:
            v.standard_name = standard_name
        mm_h = np.array(
            [[[value(k, r, c) for c in range(len(LONS))] for r in range(len(LATS))] for k in range(steps)]
        )  # time, lat, lon
        scale = {"kg m-2 s-1": 1 / 3600, "mm/h": 1.0, "m s-1": 1 / 3_600_000, "mm": 1.0, "K": 1.0}[units]
        data = mm_h * scale * (amount_h or 1.0)
        data = np.transpose(data, [("time", "lat", "lon").index(d) for d in order])
        if members:
            data = np.stack([data * (1 + 0.1 * m) for m in range(members)])
        if fill_at is not None:
            data = np.ma.masked_array(data, mask=np.zeros(data.shape, bool))
            data.mask[fill_at] = True
        v[:] = data
    finally:
        ds.close()


async def known(store: Store) -> None:
    async with store.begin() as conn:
        await conn.execute(
            nodes.insert(), [{"node": n, "lat": la, "lon": lo} for n, (la, lo) in SITES.items()]
        )


def test_a_cf_file_gives_each_site_its_cell_in_mm_h(tmp_path: Path) -> None:
    f = tmp_path / "nowcast.nc"
    write(f)
    doc, where = to_document(f, SITES)
    assert where == "nowcast.nc: variable 'precip'"
    assert doc["format"] == "floodgate.rainfall/1" and doc["source"] == "gz-radar-nowcast"
    assert doc["issued"] == "2026-06-01T00:00:00Z", "from forecast_reference_time"
    assert doc["steps"][0] == "2026-06-01T00:00:00Z" and doc["steps"][-1] == "2026-06-01T01:00:00Z"
    assert len(doc["steps"]) == 7, "the last step as long as the one before it"
    by = {s["node"]: s["mm_h"] for s in doc["sites"]}
    assert set(by) == {"hp-01", "hp-02"}, "a site outside the grid or without a place gets none"
    assert by["hp-01"] == pytest.approx([value(k, 2, 3) for k in range(6)], abs=1e-3)
    assert by["hp-02"] == pytest.approx([value(k, 0, 0) for k in range(6)], abs=1e-3)


@pytest.mark.parametrize(
    ("kw", "factor"),
    [
        ({"units": "mm/h", "standard_name": "rainfall_rate", "fmt": "NETCDF3_CLASSIC"}, 1.0),
        ({"units": "m s-1", "standard_name": "lwe_precipitation_rate", "order": ("lat", "lon", "time")}, 1.0),
        # 10-min amounts in mm: the mm/h is six times the step's mm
        ({"units": "mm", "standard_name": "precipitation_amount", "amount_h": 1 / 6}, 1.0),
        ({"units": "mm/h", "standard_name": None, "name": "rr"}, 1.0),
    ],
)
def test_units_dimensions_and_formats_are_converted(
    tmp_path: Path, kw: dict[str, Any], factor: float
) -> None:
    f = tmp_path / "x.nc"
    write(f, **kw)
    doc, _ = to_document(f, SITES, variable=kw.get("name"))
    by = {s["node"]: s["mm_h"] for s in doc["sites"]}
    assert by["hp-01"] == pytest.approx([factor * value(k, 2, 3) for k in range(6)], abs=1e-3)


def test_an_ensemble_dimension_gives_members_and_their_median(tmp_path: Path) -> None:
    f = tmp_path / "ens.nc"
    write(f, members=3)
    doc, _ = to_document(f, SITES)
    s = next(s for s in doc["sites"] if s["node"] == "hp-01")
    assert len(s["members"]) == 3
    assert s["members"][2] == pytest.approx([1.2 * value(k, 2, 3) for k in range(6)], abs=1e-2)
    assert s["mm_h"] == pytest.approx([1.1 * value(k, 2, 3) for k in range(6)], abs=1e-2)


async def test_the_watched_folder_stores_a_netcdf_file_and_refuses_bad_ones_keeping_nothing(
    store: Store, tmp_path: Path
) -> None:
    await known(store)
    folder = tmp_path / "in"
    folder.mkdir()
    watch = ForecastWatch(Forecasts(store, ManualClock(MS)), folder, 30_000)
    write(folder / "a-good.nc")
    (folder / "b-garbage.nc").write_bytes(b"CDF\x01 not really")
    write(folder / "c-kelvin.nc", units="K")
    write(folder / "d-no-rain.nc", standard_name="air_temperature", units="mm/h")
    write(folder / "e-no-issue.nc", issued=False)
    write(folder / "f-hole.nc", fill_at=(2, 2, 3))  # a missing value at hp-01's cell
    write(folder / "g-negative.nc", units="mm/h")
    with netCDF4.Dataset(str(folder / "g-negative.nc"), "a") as ds:
        ds.variables["precip"][1, 0, 0] = -5.0
    assert await watch.scan_once() == (1, 6)
    assert [p.name for p in (folder / "done").iterdir()] == ["a-good.nc"]
    why = {p.name[: -len(".nc.why")]: p.read_text() for p in (folder / "rejected").glob("*.why")}
    assert why["b-garbage"].startswith("b-garbage.nc: not a readable NetCDF file")
    assert why["c-kelvin"].startswith("c-kelvin.nc: variable 'precip': units 'K' are not a precipitation")
    assert why["d-no-rain"].startswith("d-no-rain.nc: no precipitation variable (a standard_name of")
    assert why["e-no-issue"].startswith("e-no-issue.nc: variable 'precip': no issue time")
    assert why["f-hole"].startswith("f-hole.nc: variable 'precip': missing values at the cell of site hp-01")
    assert why["g-negative"].startswith(
        "g-negative.nc: variable 'precip': -5 mm/h at the cell of site hp-02 at 2026-06-01T00:10:00Z"
    )
    # Only the good file is stored: one row per site in its grid, nothing of the refused ones.
    assert await count(store, rainfall_forecasts) == 2
    latest = {r["node"]: r for r in await Forecasts(store, ManualClock(MS)).latest()}
    assert latest["hp-01"]["origin"] == "file a-good.nc" and latest["hp-01"]["source"] == "gz-radar-nowcast"
    assert latest["hp-01"]["mm_h"] == pytest.approx([value(k, 2, 3) for k in range(6)], abs=1e-3)
    # A variable named in the config that the file lacks.
    named = ForecastWatch(Forecasts(store, ManualClock(MS)), folder, 30_000, netcdf_variable="rainfall")
    write(folder / "h-named.nc")
    assert await named.scan_once() == (0, 1)
    assert (
        (folder / "rejected" / "h-named.nc.why")
        .read_text()
        .startswith("h-named.nc: no variable 'rainfall' (forecast.netcdf_variable)")
    )
    assert await count(store, rainfall_forecasts) == 2


async def test_a_netcdf_document_the_format_refuses_names_the_file_and_variable(
    store: Store, tmp_path: Path
) -> None:
    await known(store)
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "long.nc", steps=300)  # more steps than a document takes
    watch = ForecastWatch(Forecasts(store, ManualClock(MS)), folder, 30_000)
    assert await watch.scan_once() == (0, 1)
    why = (folder / "rejected" / "long.nc.why").read_text()
    assert (
        why.startswith("steps: must be a list of 2 to 289")
        and "(read from long.nc: variable 'precip')" in why
    )
    assert await count(store, rainfall_forecasts) == 0


async def test_without_the_extra_a_netcdf_file_is_refused_saying_which_to_install(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await known(store)
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "nowcast.nc")
    monkeypatch.setitem(sys.modules, "netCDF4", None)  # as where the extra is not installed
    with pytest.raises(NoNetcdf) as e:
        to_document(folder / "nowcast.nc", SITES)
    assert isinstance(e.value, NetcdfInvalid)
    watch = ForecastWatch(Forecasts(store, ManualClock(MS)), folder, 30_000)
    assert await watch.scan_once() == (0, 1)
    why = (folder / "rejected" / "nowcast.nc.why").read_text()
    assert (
        why
        == "nowcast.nc: a NetCDF file needs the optional extra 'netcdf': pip install 'floodgate[netcdf]'\n"
    )
    assert await count(store, rainfall_forecasts) == 0


async def test_a_netcdf_file_issued_hours_ahead_of_the_clock_is_refused_naming_issued(
    store: Store, tmp_path: Path
) -> None:
    await known(store)
    folder = tmp_path / "in"
    folder.mkdir()
    # The collector's clock 8 h behind the file's issue time (a local time written as UTC).
    watch = ForecastWatch(Forecasts(store, ManualClock(MS - 8 * 3_600_000)), folder, 30_000)
    write(folder / "ahead.nc")
    assert await watch.scan_once() == (0, 1)
    why = (folder / "rejected" / "ahead.nc.why").read_text()
    assert why.startswith("issued: 2026-06-01T00:00:00Z is 480 min after the collector's clock"), why
    assert await count(store, rainfall_forecasts) == 0
