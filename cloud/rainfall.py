"""Rainfall forecasts and nowcasts from the weather service: the document, its checks, its storing.

The format is documented in docs/rainfall-forecast.md. A document gives, per site
(``sites``) or per grid cell (``grid`` and ``cells``, each cell mapped to the sites whose
coordinates fall in it), intensities in mm/h over the same steps, with its issue time and,
where given, ensemble members or quantiles. ``parse`` checks all of it and names the path
to the first bad field; nothing of a refused document is stored. ``Forecasts`` stores one
row per site (``cloud.db.rainfall``) from the API or from the folder the collector watches
(``ForecastWatch``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cloud.db import rainfall as db
from cloud.db.store import Store
from cloud.rainfall_netcdf import NetcdfInvalid, to_document
from floodgate.clock import Clock, sleep_until_or
from floodgate.errors import RequestError

log = logging.getLogger("floodgate.cloud.rainfall")

FORMAT = "floodgate.rainfall/1"
MAX_STEPS = 288  # e.g. 72 h of 15-min steps, or 48 h of 10-min steps
MAX_MEMBERS = 100
MAX_QUANTILES = 19
MAX_SERIES = 5000  # sites plus cells in one document
MAX_MM_H = 1000.0  # above any rain ever measured over a step of minutes
MAX_BEFORE_ISSUE_S = 6 * 3600  # a nowcast may start with the hours just observed
MAX_AHEAD_S = 10 * 24 * 3600
MAX_FILE_BYTES = 8 * 1024 * 1024
ISSUED_AHEAD_MS = 10 * 60_000  # forecast.issued_ahead_min's default
_TOP = {"format", "issued", "source", "steps", "sites", "grid", "cells"}
_SERIES = {"mm_h", "members", "quantiles"}
_GRID = {"lat0", "lon0", "dlat", "dlon", "rows", "cols"}


class ForecastInvalid(RequestError):
    """A forecast document that is refused; ``path`` is where (``sites.2.mm_h.5``)."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__("invalid", f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class Series:
    mm_h: list[float]
    members: list[list[float]] | None
    quantiles: dict[str, list[float]] | None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mm_h": self.mm_h}
        if self.members is not None:
            out["members"] = self.members
        if self.quantiles is not None:
            out["quantiles"] = self.quantiles
        return out


@dataclass(frozen=True)
class Forecast:
    issued_ms: int
    source: str
    steps_ms: list[int]  # n + 1 step boundaries; intensity i holds from steps_ms[i] to steps_ms[i + 1]
    by_site: dict[str, tuple[Series, str]]  # node -> its series and where it came from ("site" or "cell r,c")
    unchanged: tuple[str, ...] = ()  # sites whose same series was stored before (by ``Forecasts.accept``)


def _bad(path: str, message: str) -> ForecastInvalid:
    return ForecastInvalid(path, message)


def _obj(v: Any, path: str, keys: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(path, "must be an object")
    for k in v:
        if k not in keys:
            raise _bad(f"{path}.{k}".lstrip("."), f"unknown field (known: {', '.join(sorted(keys))})")
    for k in sorted(required):
        if k not in v:
            raise _bad(f"{path}.{k}".lstrip("."), "is required")
    return v


def _time(v: Any, path: str) -> int:
    if not isinstance(v, str) or len(v) > 40:
        raise _bad(path, "must be an ISO 8601 time with its offset, e.g. 2026-06-01T08:00:00+08:00")
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise _bad(path, f"is not an ISO 8601 time ({v!r})") from None
    if t.tzinfo is None:
        raise _bad(path, f"has no UTC offset ({v!r}); add Z or +08:00")
    return int(t.timestamp() * 1000)


def _number(v: Any, path: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(path, "must be a finite number")
    try:
        f = float(v)  # an integer too large for a float (10**400) overflows
    except OverflowError:
        raise _bad(path, "must be a finite number") from None
    if not math.isfinite(f):
        raise _bad(path, "must be a finite number")
    if not lo <= f <= hi:
        raise _bad(path, f"must be between {lo:g} and {hi:g} (got {f:g})")
    return f


def _intensities(v: Any, path: str, n: int) -> list[float]:
    if not isinstance(v, list):
        raise _bad(path, "must be a list of intensities in mm/h")
    if len(v) != n:
        raise _bad(path, f"has {len(v)} intensities; the steps make {n}")
    return [_number(x, f"{path}.{i}", 0.0, MAX_MM_H) for i, x in enumerate(v)]


def _series(v: Any, path: str, n: int) -> Series:
    o = _obj(v, path, _SERIES, {"mm_h"})
    mm_h = _intensities(o["mm_h"], f"{path}.mm_h", n)
    members = None
    if "members" in o:
        ms = o["members"]
        if not isinstance(ms, list) or not 1 <= len(ms) <= MAX_MEMBERS:
            raise _bad(f"{path}.members", f"must be a list of 1 to {MAX_MEMBERS} members")
        members = [_intensities(m, f"{path}.members.{i}", n) for i, m in enumerate(ms)]
    quantiles = None
    if "quantiles" in o:
        qs = o["quantiles"]
        if not isinstance(qs, dict) or not 1 <= len(qs) <= MAX_QUANTILES:
            raise _bad(f"{path}.quantiles", f"must be an object of 1 to {MAX_QUANTILES} quantiles")
        probs: list[tuple[float, str]] = []
        for k in qs:
            try:
                p = float(k)
            except ValueError:
                raise _bad(
                    f"{path}.quantiles.{k}", "a quantile is named by its probability, e.g. 0.9"
                ) from None
            if not 0.0 < p < 1.0:
                raise _bad(f"{path}.quantiles.{k}", "the probability must be above 0 and below 1")
            if any(p == q for q, _ in probs):
                raise _bad(f"{path}.quantiles.{k}", f"probability {p:g} is given twice")
            probs.append((p, k))
        probs.sort()
        quantiles = {k: _intensities(qs[k], f"{path}.quantiles.{k}", n) for _, k in probs}
        for (_, lo), (_, hi) in itertools.pairwise(probs):
            for i, (a, b) in enumerate(zip(quantiles[lo], quantiles[hi], strict=True)):
                if a > b:
                    raise _bad(
                        f"{path}.quantiles.{hi}.{i}", f"is below quantile {lo} at that step ({b:g} < {a:g})"
                    )
    return Series(mm_h, members, quantiles)


def parse(doc: Any, sites: dict[str, tuple[float | None, float | None]]) -> Forecast:
    """Check a document against the format and the known ``sites`` (node -> lat, lon)."""
    o = _obj(doc, "", _TOP, {"format", "issued", "source", "steps"})
    if o["format"] != FORMAT:
        raise _bad("format", f"must be {FORMAT!r}")
    issued = _time(o["issued"], "issued")
    source = o["source"]
    if not isinstance(source, str) or not 1 <= len(source) <= 100 or "\x00" in source:
        raise _bad("source", "must be a name of 1 to 100 characters")
    raw = o["steps"]
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_STEPS + 1:
        raise _bad("steps", f"must be a list of 2 to {MAX_STEPS + 1} step boundaries (times)")
    steps = [_time(t, f"steps.{i}") for i, t in enumerate(raw)]
    for i in range(1, len(steps)):
        if steps[i] <= steps[i - 1]:
            raise _bad(f"steps.{i}", "must be later than the step boundary before it")
    if steps[0] < issued - MAX_BEFORE_ISSUE_S * 1000:
        raise _bad("steps.0", f"starts more than {MAX_BEFORE_ISSUE_S // 3600} h before the issue time")
    if steps[-1] > issued + MAX_AHEAD_S * 1000:
        raise _bad(
            f"steps.{len(steps) - 1}", f"ends more than {MAX_AHEAD_S // 86400} days after the issue time"
        )
    n = len(steps) - 1
    if "sites" not in o and "cells" not in o:
        raise _bad("sites", "is required (or grid and cells)")
    for k in ("sites", "cells"):
        if k in o and not isinstance(o[k], list):
            raise _bad(k, "must be a list")
    count = len(o.get("sites", [])) + len(o.get("cells", []))
    if count > MAX_SERIES:
        raise _bad("sites" if "sites" in o else "cells", f"more than {MAX_SERIES} series in one document")
    by_site: dict[str, tuple[Series, str]] = {}
    if "cells" in o:
        by_site.update(_cells(o, n, sites))
    named: set[str] = set()
    if "sites" in o:
        for i, s in enumerate(o["sites"]):
            path = f"sites.{i}"
            if not isinstance(s, dict):
                raise _bad(path, "must be an object")
            node = s.get("node")
            if not isinstance(node, str):
                raise _bad(f"{path}.node", "is required: the site's node id")
            if node not in sites:
                raise _bad(f"{path}.node", f"unknown site {node[:64]!r}")
            if node in named:
                raise _bad(f"{path}.node", f"site {node!r} is given twice")
            named.add(node)
            rest = {k: v for k, v in s.items() if k != "node"}
            by_site[node] = (_series(rest, path, n), "site")  # a site's own series wins over its cell's
    if not by_site:
        raise _bad("cells", "no known site lies in any cell given")
    return Forecast(issued, source, steps, by_site)


def _cells(
    o: dict[str, Any], n: int, sites: dict[str, tuple[float | None, float | None]]
) -> dict[str, tuple[Series, str]]:
    if "grid" not in o:
        raise _bad("grid", "is required with cells")
    g = _obj(o["grid"], "grid", _GRID, _GRID)
    lat0 = _number(g["lat0"], "grid.lat0", -90, 90)
    lon0 = _number(g["lon0"], "grid.lon0", -180, 180)
    dlat = _number(g["dlat"], "grid.dlat", 1e-5, 10)
    dlon = _number(g["dlon"], "grid.dlon", 1e-5, 10)
    for k in ("rows", "cols"):
        if isinstance(g[k], bool) or not isinstance(g[k], int) or not 1 <= g[k] <= 10_000:
            raise _bad(f"grid.{k}", "must be a whole number from 1 to 10000")
    rows, cols = g["rows"], g["cols"]
    where: dict[tuple[int, int], list[str]] = {}
    for node, (lat, lon) in sites.items():
        if lat is None or lon is None:
            continue
        r, c = math.floor((lat - lat0) / dlat), math.floor((lon - lon0) / dlon)
        if 0 <= r < rows and 0 <= c < cols:
            where.setdefault((r, c), []).append(node)
    out: dict[str, tuple[Series, str]] = {}
    seen: set[tuple[int, int]] = set()
    for i, cell in enumerate(o["cells"]):
        path = f"cells.{i}"
        if not isinstance(cell, dict):
            raise _bad(path, "must be an object")
        rc = []
        for k, top in (("row", rows), ("col", cols)):
            v = cell.get(k)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < top:
                raise _bad(f"{path}.{k}", f"must be a whole number from 0 to {top - 1}")
            rc.append(v)
        key = (rc[0], rc[1])
        if key in seen:
            raise _bad(path, f"cell {key[0]},{key[1]} is given twice")
        seen.add(key)
        s = _series({k: v for k, v in cell.items() if k not in ("row", "col")}, path, n)
        for node in where.get(key, []):
            out[node] = (s, f"cell {key[0]},{key[1]}")
    return out


def iso(ms: int) -> str:
    from datetime import UTC  # noqa: PLC0415

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def digest(issued_ms: int, source: str, steps: str, series: str) -> str:
    """What makes a site's forecast the same one: its issue time, source, steps and series."""
    return hashlib.sha256(f"{issued_ms}\n{source}\n{steps}\n{series}".encode()).hexdigest()


class StoreFailed(Exception):
    """The database failed while a forecast was being taken: the document is not at fault."""


class Forecasts:
    """Forecast documents in; the latest per site out."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        on_stored: Callable[[], None] | None = None,
        issued_ahead_ms: int = ISSUED_AHEAD_MS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.on_stored = on_stored  # told when a document stored something new (the site forecasts run)
        self.issued_ahead_ms = issued_ahead_ms  # an issue time further past the clock is refused

    async def accept(self, doc: Any, origin: str) -> Forecast:
        """Check ``doc`` and store one row per site it covers (all or nothing)."""
        try:
            async with self.store.read() as conn:
                sites = await db.site_places(conn)
        except Exception as exc:
            raise StoreFailed(f"{type(exc).__name__}: {exc}") from exc
        fc = await asyncio.to_thread(parse, doc, sites)  # ~1 s for a document near the size limit
        now = self.clock.now_ms()
        if fc.issued_ms > now + self.issued_ahead_ms:  # every path in (API, JSON and NetCDF files)
            raise _bad(
                "issued",
                f"{iso(fc.issued_ms)} is {(fc.issued_ms - now) / 60_000:.0f} min after the collector's "
                f"clock ({iso(now)}); at most {self.issued_ahead_ms / 60_000:g} min is taken "
                "(a local time written with Z or without its UTC offset?)",
            )
        steps = json.dumps(fc.steps_ms)
        rows = []
        for node, (s, via) in sorted(fc.by_site.items()):
            series = json.dumps(s.as_json(), sort_keys=True)
            rows.append(
                {
                    "node": node,
                    "issued_ms": fc.issued_ms,
                    "source": fc.source,
                    "start_ms": fc.steps_ms[0],
                    "end_ms": fc.steps_ms[-1],
                    "steps": steps,
                    "series": series,
                    "via": via,
                    "origin": origin[:200],
                    "received_ms": self.clock.now_ms(),
                    "digest": digest(fc.issued_ms, fc.source, steps, series),
                }
            )
        try:
            async with self.store.begin() as conn:
                unchanged = await db.store(conn, rows)
        except Exception as exc:
            raise StoreFailed(f"{type(exc).__name__}: {exc}") from exc
        if self.on_stored is not None and len(unchanged) < len(rows):
            self.on_stored()
        return dataclasses.replace(fc, unchanged=tuple(unchanged))

    async def latest(self, node: str | None = None) -> list[dict[str, Any]]:
        """The latest forecast of every site (or one): by issue time, then the one received last."""
        async with self.store.read() as conn:
            rows = await db.latest(conn, node, self.issued_ahead_ms)
        return [
            {
                "node": r["node"],
                "issued": iso(r["issued_ms"]),
                "source": r["source"],
                "steps": [iso(t) for t in json.loads(r["steps"])],
                "via": r["via"],
                "origin": r["origin"],
                "received": iso(r["received_ms"]),
                **json.loads(r["series"]),
            }
            for r in rows
        ]


class ForecastWatch:
    """A folder of forecast files (``*.json``) the collector polls on its clock.

    A good file is stored and moved to ``done/``; a bad one is refused with a log line
    (the file, the path to the bad field, what is wrong), nothing of it stored, and moved
    to ``rejected/`` with a ``<name>.why`` text beside it. Files whose name starts with a
    dot are left alone (a writer's temporary file: write it, then rename it in).
    """

    def __init__(
        self, forecasts: Forecasts, folder: Path, interval_ms: int, netcdf_variable: str | None = None
    ) -> None:
        self.forecasts = forecasts
        self.netcdf_variable = netcdf_variable  # the variable read from NetCDF files (None: by name)
        self.folder = folder
        self.interval_ms = interval_ms
        self.wake = asyncio.Event()
        self.scans = 0  # scans done (tests wait on it)

    async def scan_once(self) -> tuple[int, int]:
        """Take every file waiting; returns (accepted, refused)."""
        files = await asyncio.to_thread(self._waiting)
        good = bad = 0
        for f in files:
            try:
                why = await self._take(f)
            except StoreFailed as exc:  # not the document's fault: it waits for the next scan
                log.error(
                    "rainfall forecast file %s waits: the database failed: %s",
                    f.name,
                    exc,
                    extra={"file": str(f)},
                )
                break
            except Exception as exc:  # whatever else goes wrong, this file goes aside; the rest are taken
                log.exception("rainfall forecast file %s could not be taken", f.name, extra={"file": str(f)})
                why = f"could not be taken: {type(exc).__name__}: {exc}"
            if why is None:
                good += 1
                await asyncio.to_thread(_move, f, self.folder / "done", None)
            else:
                bad += 1
                log.warning("rainfall forecast file %s refused: %s", f.name, why, extra={"file": str(f)})
                await asyncio.to_thread(_move, f, self.folder / "rejected", why)
        return good, bad

    def _waiting(self) -> list[Path]:
        self.folder.mkdir(parents=True, exist_ok=True)
        return sorted(
            p
            for p in self.folder.iterdir()
            if p.is_file() and p.suffix in (".json", ".nc") and not p.name.startswith(".")
        )

    async def _take(self, f: Path) -> str | None:
        """Store one file; returns why it is refused, or None."""
        read_from = ""
        if f.suffix == ".nc":  # NetCDF (the optional extra): the document of the sites in its grid
            try:
                async with self.forecasts.store.read() as conn:
                    sites = await db.site_places(conn)
            except Exception as exc:
                raise StoreFailed(f"{type(exc).__name__}: {exc}") from exc
            try:
                doc, where = await asyncio.to_thread(to_document, f, sites, self.netcdf_variable)
            except NetcdfInvalid as exc:
                return exc.message
            read_from = f" (read from {where})"
        else:
            try:
                doc = await asyncio.to_thread(_load, f)
            except (OSError, ValueError, RecursionError) as exc:
                return f"not a readable JSON document: {exc}"
        try:
            fc = await self.forecasts.accept(doc, f"file {f.name}")
        except ForecastInvalid as exc:
            return exc.message + read_from
        log.info(
            "rainfall forecast file %s stored",
            f.name,
            extra={"sites": len(fc.by_site), "unchanged": len(fc.unchanged), "source": fc.source},
        )
        return None

    async def run(self) -> None:
        clock = self.forecasts.clock
        while True:
            self.wake.clear()
            try:
                await self.scan_once()
            except Exception:
                log.exception("the rainfall forecast folder could not be scanned; trying again")
            self.scans += 1
            await sleep_until_or(clock, clock.now_ms() + self.interval_ms, self.wake)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load(f: Path) -> Any:
    """Read and decode a forecast file (in a thread: a document near the limit takes a while)."""
    if f.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return json.loads(f.read_bytes(), parse_constant=_no_constant)


def _move(f: Path, to: Path, why: str | None) -> None:
    to.mkdir(exist_ok=True)
    target = to / f.name
    if target.exists():  # a file of the same name came before: keep both
        target = to / f"{f.stem}.{f.stat().st_mtime_ns}{f.suffix}"
    if why is not None:
        target.with_name(target.name + ".why").write_text(why + "\n")
    f.replace(target)
