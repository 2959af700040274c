"""Rainfall forecasts from NetCDF files (CF conventions): a gridded precipitation rate or amount
over time on latitude and longitude, such as a radar nowcast, read with netCDF4 (the optional
extra ``netcdf``: ``pip install 'floodgate[netcdf]'``; NetCDF-3 classic and NetCDF-4 alike).

``to_document(path, sites)`` reads one file into a ``floodgate.rainfall/1`` document naming, for
each known site, the series of the grid cell that holds it; ``cloud.rainfall`` then checks and
stores it as any other document (all or nothing). What is read (docs/rainfall-forecast.md):

- the **variable**: the one named (``forecast.netcdf_variable``), else the one whose
  ``standard_name`` is a precipitation rate or amount (``RATES``, ``AMOUNTS``); its dimensions
  are time, latitude and longitude in any order, and optionally an ensemble dimension
  (``realization``, ``ensemble``, ``member``, ``number``): its members, with their median as the
  best estimate;
- its **units**, converted to mm/h: a rate in ``kg m-2 s-1`` (= mm/s), ``mm/h``, ``mm s-1``,
  ``m s-1``; an amount per time step in ``kg m-2``, ``mm`` or ``m``, divided by the step's length;
- **time**: the time coordinate (``<unit> since <date>``, CF calendars); a step runs from each
  time to the next, or over its ``bounds`` where the variable has them (the last step without
  bounds is as long as the one before it);
- **latitude and longitude**: 1-D coordinates (``degrees_north``/``degrees_east``, or their
  standard names), the cells' centres; a site takes the cell whose centre is nearest along each
  axis, if within half a cell's spacing of it (sites outside the grid get none);
- the **issue time**: a variable of standard name ``forecast_reference_time``, else the global
  attribute ``issued`` (ISO 8601), else ``date_created``;
- the **source**: the global attribute ``source``, else ``institution``, else the file's name.

Anything else (a file that cannot be read, no such variable, units not understood, a missing
value at a site's cell) raises ``NetcdfInvalid`` naming the file and the variable.
"""

from __future__ import annotations

import itertools
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

EXTRA = "netcdf"
INSTALL = f"pip install 'floodgate[{EXTRA}]'"
# CF standard names of precipitation, rates and amounts (per time step).
RATES = {
    "precipitation_flux",
    "rainfall_flux",
    "lwe_precipitation_rate",
    "rainfall_rate",
    "convective_precipitation_flux",
    "lwe_convective_precipitation_rate",
}
AMOUNTS = {
    "precipitation_amount",
    "rainfall_amount",
    "lwe_thickness_of_precipitation_amount",
    "thickness_of_rainfall_amount",
    "convective_precipitation_amount",
}
# Units to mm/h (rates) and to mm (amounts), by their normalised spelling.
RATE_UNITS = {
    "kg m-2 s-1": 3600.0,
    "mm s-1": 3600.0,
    "mm h-1": 1.0,
    "mm hr-1": 1.0,
    "m s-1": 3_600_000.0,
    "m h-1": 1000.0,
    "mm d-1": 1 / 24,
    "mm day-1": 1 / 24,
}
AMOUNT_UNITS = {"kg m-2": 1.0, "mm": 1.0, "m": 1000.0}
MEMBER_DIMS = ("realization", "ensemble", "member", "number", "ens")


class NetcdfInvalid(Exception):
    """A NetCDF file refused: ``message`` names the file (and the variable, where one was found)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoNetcdf(NetcdfInvalid):
    """The optional extra is not installed: the message says which to install."""


def _units(u: str) -> str:
    """``kg m-2 s-1``, ``kg/m2/s``, ``mm/h``, ``mm hr^-1`` -> one spelling."""
    s = u.strip().lower().replace("**", "").replace("^", "")
    s = re.sub(r"/\s*([a-z]+)(\d?)", lambda m: f" {m.group(1)}-{m.group(2) or '1'}", s)
    s = re.sub(r"([a-z])(\d)", r"\1\2", s)
    s = re.sub(r"\s+", " ", s).strip()
    return s.replace("hour-1", "h-1").replace("sec-1", "s-1").replace("kg m2", "kg m-2")


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _coord(ds: Any, axis: str) -> Any:
    """The 1-D latitude or longitude coordinate variable of ``ds``."""
    units = {"lat": ("degrees_north", "degree_north", "degree_n", "degrees_n"), "lon": ("degrees_east",)}
    names = {"lat": ("lat", "latitude"), "lon": ("lon", "longitude")}
    std = {"lat": "latitude", "lon": "longitude"}[axis]
    for name, v in ds.variables.items():
        if v.ndim != 1:
            continue
        u = _text(getattr(v, "units", "")).lower()
        if (
            getattr(v, "standard_name", None) == std
            or u in units[axis]
            or (u.startswith("degree") and u.endswith("e" if axis == "lon" else "n"))
            or name.lower() in names[axis]
        ):
            return v
    return None


def _variable(ds: Any, name: str | None, where: str) -> Any:
    if name is not None:
        if name not in ds.variables:
            raise NetcdfInvalid(f"{where}: no variable {name!r} (forecast.netcdf_variable)")
        return ds.variables[name]
    for v in ds.variables.values():
        if getattr(v, "standard_name", None) in RATES | AMOUNTS:
            return v
    known = ", ".join(sorted(RATES | AMOUNTS))
    raise NetcdfInvalid(f"{where}: no precipitation variable (a standard_name of {known})")


def _times(ds: Any, tv: Any, where: str) -> list[int]:
    import cftime  # noqa: PLC0415 - comes with netCDF4

    units = getattr(tv, "units", None)
    if units is None or " since " not in _text(units):
        raise NetcdfInvalid(f"{where}: its time coordinate {tv.name!r} has no units '<unit> since <date>'")
    calendar = _text(getattr(tv, "calendar", "standard"))
    values = np.ma.getdata(tv[:]).astype(float).ravel()
    try:
        dts = cftime.num2date(
            values, _text(units), calendar, only_use_cftime_datetimes=False, only_use_python_datetimes=True
        )
    except (ValueError, TypeError) as exc:
        raise NetcdfInvalid(f"{where}: its time coordinate {tv.name!r} cannot be read: {exc}") from None
    return [_ms(d) for d in np.atleast_1d(dts)]


def _ms(d: datetime) -> int:
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)  # CF times are UTC unless their units say otherwise
    return round(d.timestamp() * 1000)


def _issued(ds: Any, where: str) -> int:
    for v in ds.variables.values():
        if getattr(v, "standard_name", None) == "forecast_reference_time":
            return _times(ds, v, where)[0]
    for attr in ("issued", "date_created"):
        if attr in ds.ncattrs():
            raw = _text(ds.getncattr(attr)).strip()
            try:
                t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise NetcdfInvalid(
                    f"{where}: global attribute {attr} is not an ISO 8601 time ({raw!r})"
                ) from None
            return _ms(t)
    raise NetcdfInvalid(
        f"{where}: no issue time (a forecast_reference_time variable,"
        " or a global attribute issued or date_created)"
    )


def _cell(centres: np.ndarray, x: float) -> int | None:
    """The index of the cell (by its centre) that holds ``x``, or None outside the coordinate."""
    if centres.size == 0:
        return None
    i = int(np.argmin(np.abs(centres - x)))
    if centres.size == 1:
        return i
    neighbours = [abs(centres[j] - centres[i]) for j in (i - 1, i + 1) if 0 <= j < centres.size]
    return i if abs(centres[i] - x) <= max(neighbours) / 2 + 1e-9 else None


def to_document(
    path: Path, sites: dict[str, tuple[float | None, float | None]], variable: str | None = None
) -> tuple[dict[str, Any], str]:
    """Read ``path`` into a rainfall forecast document for the ``sites`` (node -> lat, lon) in its
    grid, and what it was read from (``<file>: variable '<name>'``); ``NetcdfInvalid`` says why
    not (``NoNetcdf`` when the extra is not installed)."""
    try:
        import netCDF4  # noqa: PLC0415 - the optional extra
    except ImportError:
        raise NoNetcdf(f"{path.name}: a NetCDF file needs the optional extra {EXTRA!r}: {INSTALL}") from None
    try:
        ds = netCDF4.Dataset(str(path), "r")
    except OSError as exc:
        raise NetcdfInvalid(f"{path.name}: not a readable NetCDF file: {exc}") from None
    try:
        ds.set_auto_maskandscale(True)
        return _read(ds, path.name, sites, variable)
    finally:
        ds.close()


def _read(
    ds: Any, name: str, sites: dict[str, tuple[float | None, float | None]], variable: str | None
) -> tuple[dict[str, Any], str]:
    from cloud.rainfall import FORMAT, MAX_MM_H, iso  # noqa: PLC0415

    v = _variable(ds, variable, name)
    where = f"{name}: variable {v.name!r}"
    lat, lon = _coord(ds, "lat"), _coord(ds, "lon")
    if lat is None or lon is None:
        raise NetcdfInvalid(f"{where}: no 1-D latitude and longitude coordinates in the file")
    dims = list(v.dimensions)
    tdim = next(
        (d for d in dims if d in ds.variables and " since " in _text(getattr(ds.variables[d], "units", ""))),
        None,
    )
    if tdim is None:
        raise NetcdfInvalid(f"{where}: none of its dimensions {dims} is a time coordinate")
    mdim = next((d for d in dims if d.lower() in MEMBER_DIMS), None)
    axes = {"t": tdim, "y": lat.dimensions[0], "x": lon.dimensions[0]}
    if mdim is not None:
        axes["m"] = mdim
    extra = [d for d in dims if d not in axes.values()]
    if any(len(ds.dimensions[d]) != 1 for d in extra) or not {axes["y"], axes["x"]} <= set(dims):
        raise NetcdfInvalid(
            f"{where}: its dimensions {dims} are not time, latitude, longitude (and an ensemble dimension)"
        )
    units = _units(_text(getattr(v, "units", "")))
    std = getattr(v, "standard_name", None)
    if units in RATE_UNITS and std not in AMOUNTS:
        to_mm_h, amount = RATE_UNITS[units], False
    elif units in AMOUNT_UNITS and std not in RATES:
        to_mm_h, amount = AMOUNT_UNITS[units], True
    else:
        raise NetcdfInvalid(
            f"{where}: units {_text(getattr(v, 'units', ''))!r} are not a precipitation rate "
            f"({', '.join(RATE_UNITS)}) or amount per step ({', '.join(AMOUNT_UNITS)})"
            + (f" matching its standard_name {std}" if std else "")
        )
    tv = ds.variables[tdim]
    times = _times(ds, tv, where)
    bounds = getattr(tv, "bounds", None)
    if bounds is not None and bounds in ds.variables:
        b = _times(ds, ds.variables[bounds], where)
        starts, ends = b[0::2], b[1::2]
        steps = [*starts, ends[-1]]
        if any(e != s for e, s in zip(ends[:-1], starts[1:], strict=True)):
            raise NetcdfInvalid(f"{where}: its time bounds {bounds!r} leave gaps between steps")
    else:
        if len(times) < 2:
            raise NetcdfInvalid(f"{where}: one time and no time bounds: the step's length is not known")
        steps = [*times, times[-1] + (times[-1] - times[-2])]
    hours = [(b - a) / 3_600_000 for a, b in itertools.pairwise(steps)]
    if any(h <= 0 for h in hours):
        raise NetcdfInvalid(f"{where}: its times are not in order")
    lats = np.ma.getdata(lat[:]).astype(float)
    lons = np.ma.getdata(lon[:]).astype(float)
    left = [d for d in dims if d in (tdim, mdim)]  # the dimensions a cell's values keep, in order
    out = []
    for node, (la, lo) in sorted(sites.items()):
        if la is None or lo is None:
            continue
        r, c = _cell(lats, la), _cell(lons, lo)
        if r is None or c is None:
            continue
        index = tuple(
            r if d == axes["y"] else c if d == axes["x"] else slice(None) if d in left else 0 for d in dims
        )
        cell = np.ma.masked_invalid(v[index])
        if np.ma.is_masked(cell):
            raise NetcdfInvalid(
                f"{where}: missing values at the cell of site {node} (lat {la:g}, lon {lo:g})"
            )
        data = np.asarray(cell, dtype=float) * to_mm_h
        rows = data.reshape(1, -1) if mdim is None else (data if left[0] == mdim else data.T)
        if amount:
            rows = rows / np.asarray(hours)
        if rows.shape[1] != len(hours):
            raise NetcdfInvalid(f"{where}: {rows.shape[1]} values along time for {len(hours)} steps")
        bad = np.argwhere((rows < -1e-9) | (rows > MAX_MM_H))
        if bad.size:
            m, k = (int(x) for x in bad[0])
            raise NetcdfInvalid(
                f"{where}: {rows[m, k]:g} mm/h at the cell of site {node} at {iso(steps[k])} (from units"
                f" {_text(getattr(v, 'units', ''))!r}); rain is 0 to {MAX_MM_H:g} mm/h"
            )
        clean = np.round(np.clip(rows, 0.0, None), 3)
        series: dict[str, Any] = {"node": node}
        if mdim is None:
            series["mm_h"] = [float(x) for x in clean[0]]
        else:
            series["mm_h"] = [round(float(x), 3) for x in np.median(clean, axis=0)]
            series["members"] = [[float(x) for x in row] for row in clean]
        out.append(series)
    if not out:
        raise NetcdfInvalid(f"{where}: no known site lies in its grid")
    source = next((_text(ds.getncattr(a)) for a in ("source", "institution") if a in ds.ncattrs()), name)
    doc = {
        "format": FORMAT,
        "issued": iso(_issued(ds, where)),
        "source": source.strip()[:100] or name[:100],
        "steps": [iso(t) for t in steps],
        "sites": out,
    }
    return doc, where
