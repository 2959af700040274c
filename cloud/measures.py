"""The measures the office reads (docs/tickets.md).

Per unit and month (by dispatch time, local time): tickets, on-time accept
rate, on-time handle rate, average and 90th-percentile handling time (dispatch
to report), satisfaction (share of scores of 4 or 5) and escalations.

Per site and flood season (1 April to 15 October, local time, by default):
floods by highest level (a site's observed water episodes that overlap in
time, e.g. its depth sensor's and its immersion contact's, or follow one
another within ``FLOOD_GAP_MS``, e.g. a contact that flapped wet-dry-wet, are
one flood), peak depth (the highest reading while a depth episode lasted), and
hours above threshold (the length of those floods, from the first sensor over
its threshold to the last back under it; one still open counts up to now).

A deadline still running is not counted either way; one already missed
counts as late even before the unit acts.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from cloud.db import measures as db_measures
from cloud.db.store import Store
from floodgate.clock import Clock
from floodgate.vocab import LEVEL_RANK, kinds

HOUR_MS = 3_600_000
DEPTH = kinds(depth=True)  # peaks and hours above threshold
OBSERVED_WATER = kinds(water=True, observed=True)  # a site's season counts what happened, not forecasts
FAULTS = kinds(water=False)
# Water back within this long after a site's last episode cleared is the same flood (a contact
# that flapped dry for seconds, a depth dipping under its clear line for a minute).
FLOOD_GAP_MS = 10 * 60_000


def month_range(month: str, tz: ZoneInfo) -> tuple[int, int]:
    """'2026-07' -> [start, end) in epoch milliseconds, local time."""
    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=tz)
    except ValueError:
        raise ValueError(f"month must look like 2026-07, not {month!r}") from None
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def season_range(year: int, tz: ZoneInfo, start: str = "04-01", end: str = "10-15") -> tuple[int, int]:
    a = datetime.strptime(f"{year}-{start}", "%Y-%m-%d").replace(tzinfo=tz)
    b = datetime.strptime(f"{year}-{end}", "%Y-%m-%d").replace(tzinfo=tz)
    return int(a.timestamp() * 1000), int(b.timestamp() * 1000) + 86_400_000  # through the last day


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[k]


def _rate(good: int, total: int) -> float | None:
    return round(good / total, 4) if total else None


class Measures:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        timezone: str = "Asia/Shanghai",
        season: tuple[str, str] = ("04-01", "10-15"),
    ) -> None:
        self.store = store
        self.clock = clock
        self.tz = ZoneInfo(timezone)
        self.season = season  # (MM-DD, MM-DD), both days included

    async def units(self, month: str) -> list[dict[str, Any]]:
        lo, hi = month_range(month, self.tz)
        now = self.clock.now_ms()
        rows = await db_measures.tickets_dispatched(self.store, lo, hi)
        by_unit: dict[str, list[Any]] = {}
        for r in rows:
            by_unit.setdefault(r["unit"], []).append(r)
        out = []
        for unit, ts in sorted(by_unit.items()):
            acc_total = acc_good = han_total = han_good = 0
            hours: list[float] = []
            scores = [t["score"] for t in ts if t["score"] is not None]
            for t in ts:
                # on_time is None where an admin acted for the unit: not the unit's to count
                if t["accepted_ms"] is not None:
                    if t["accepted_on_time"] is not None:
                        acc_total += 1
                        acc_good += bool(t["accepted_on_time"])
                elif t["state"] == "dispatched" and now > t["accept_due_ms"]:
                    acc_total += 1
                if t["handled_ms"] is not None:
                    if t["handled_on_time"] is not None:
                        han_total += 1
                        han_good += bool(t["handled_on_time"])
                        hours.append((t["handled_ms"] - t["dispatched_ms"]) / HOUR_MS)
                elif t["state"] in ("dispatched", "accepted") and now > t["handle_due_ms"]:
                    han_total += 1
            p90 = percentile(hours, 90)
            out.append(
                {
                    "unit": unit,
                    "month": month,
                    "tickets": len(ts),
                    "on_time_accept_rate": _rate(acc_good, acc_total),
                    "on_time_handle_rate": _rate(han_good, han_total),
                    "handling_hours_avg": round(sum(hours) / len(hours), 3) if hours else None,
                    "handling_hours_p90": round(p90, 3) if p90 is not None else None,
                    "satisfaction": _rate(sum(1 for s in scores if s >= 4), len(scores)),
                    "evaluated": len(scores),
                    "escalations": sum(t["escalations"] for t in ts),
                }
            )
        return out

    async def sites(self, season: int) -> list[dict[str, Any]]:
        lo, hi = season_range(season, self.tz, *self.season)
        now = self.clock.now_ms()
        rows = await db_measures.episodes_begun(self.store, lo, hi)
        by_node: dict[str, list[Any]] = {}
        for r in rows:
            by_node.setdefault(r["node"], []).append(r)
        floods_by_node = {n: [e for e in eps if e["kind"] in DEPTH] for n, eps in by_node.items()}
        windows = [
            (e["node"], e["dev"], e["first_ts"], e["last_ts"] if e["level"] == "clear" else now)
            for fl in floods_by_node.values()
            for e in fl
        ]
        read_peaks = iter(await db_measures.depth_peaks(self.store, windows))
        out = []
        for node, eps in sorted(by_node.items()):
            floods = floods_by_node[node]
            # The highest reading while the episode lasted (its transitions only carry the
            # value at each crossing), or the highest transition value if no reading is kept.
            peaks = [p for e in floods if (p := _higher(next(read_peaks), e["peak_value"])) is not None]
            water = [e for e in eps if e["kind"] in OBSERVED_WATER]
            levels = {"warning": 0, "danger": 0}
            merged = _floods(water, now)
            for level, _, _ in merged:
                if level in levels:
                    levels[level] += 1
            above_ms = sum(end - start for _, start, end in merged)
            out.append(
                {
                    "node": node,
                    "season": season,
                    "floods": sum(levels.values()),
                    "alerts": levels,
                    "faults": sum(1 for e in eps if e["kind"] in FAULTS),
                    "peak_depth_mm": max(peaks) if peaks else None,
                    "hours_above_threshold": round(above_ms / HOUR_MS, 3),
                }
            )
        return out


def _higher(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _floods(episodes: list[Any], now: int) -> list[tuple[str, int, int]]:
    """Each flood's highest level, start and end: a site's observed water episodes that overlap
    in time (the depth sensor's and the immersion contact's, say) or follow within
    ``FLOOD_GAP_MS`` are one flood."""
    out: list[tuple[str, int, int]] = []
    for e in sorted(episodes, key=lambda e: e["first_ts"]):
        e_end = e["last_ts"] if e["level"] == "clear" else max(now, e["last_ts"])
        if out and e["first_ts"] <= out[-1][2] + FLOOD_GAP_MS:
            level, start, end = out[-1]
            if LEVEL_RANK.get(e["max_level"], 0) > LEVEL_RANK.get(level, 0):
                level = e["max_level"]
            out[-1] = (level, start, max(end, e_end))
        else:
            out.append((e["max_level"], e["first_ts"], e_end))
    return out
