"""Design storms as rain per minute: Chicago hyetographs from an IDF formula, and multi-peak storms.

A Chicago storm of duration T and peak ratio r puts its peak at r·T and holds, for every x up to
T, the IDF depth H(x) in the x minutes around the peak (r·x before it, (1 − r)·x after). Its
mass curve is exact: F(τ) = r·H(T) − r·H((rT − τ)/r) before the peak and
r·H(T) + (1 − r)·H((τ − rT)/(1 − r)) after it, so each minute's depth is F(k + 1) − F(k) and the
storm's volume is H(T), the IDF depth for its duration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from simulators.storms.idf import Idf, IdfTable, load_idf

RETURN_PERIODS = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
DURATIONS_MIN = (60, 120, 180)


@dataclass(frozen=True)
class Storm:
    """A storm as the depth (mm) of each minute; ``p`` the return period of its heaviest burst."""

    name: str
    kind: str  # chicago, multi-peak or dry
    p: float
    mm: tuple[float, ...]

    @property
    def duration_min(self) -> int:
        return len(self.mm)

    @property
    def total_mm(self) -> float:
        return sum(self.mm)

    def mm_h(self) -> list[float]:
        """Each minute's intensity in mm/h."""
        return [60.0 * v for v in self.mm]


def chicago(idf: Idf, duration_min: int, peak_ratio: float, name: str | None = None) -> Storm:
    """The Chicago hyetograph of ``idf`` over ``duration_min`` minutes with its peak at ``peak_ratio``."""
    if duration_min < 1 or not 0 < peak_ratio < 1:
        raise ValueError(
            f"a storm needs a duration ≥ 1 min and a peak ratio in (0, 1) (got {duration_min}, {peak_ratio})"
        )
    total, r = float(duration_min), peak_ratio
    tp = r * total

    def mass(tau: float) -> float:
        if tau <= tp:
            return r * idf.depth_mm(total) - r * idf.depth_mm((tp - tau) / r)
        return r * idf.depth_mm(total) + (1 - r) * idf.depth_mm((tau - tp) / (1 - r))

    mm = tuple(max(0.0, mass(k + 1) - mass(k)) for k in range(duration_min))
    return Storm(name or f"chicago-p{idf.p:g}-{duration_min}min", "chicago", idf.p, mm)


def multi_peak(bursts: Sequence[tuple[Storm, int]], name: str) -> Storm:
    """Bursts one after the other, each after its gap of dry minutes: ``[(storm, gap_before_min), ...]``."""
    mm: list[float] = []
    for storm, gap in bursts:
        mm.extend([0.0] * gap)
        mm.extend(storm.mm)
    return Storm(name, "multi-peak", max(s.p for s, _ in bursts), tuple(mm))


def dry(duration_min: int, name: str = "dry") -> Storm:
    return Storm(name, "dry", 0.0, (0.0,) * duration_min)


def storm_library(table: IdfTable | None = None) -> list[Storm]:
    """The storms the bench replays: Chicago storms for every return period and duration (the peak
    ratio 0.3, the table's, 0.4 for 1, 2, 3 h), and multi-peak storms (two and three bursts)."""
    t = table or load_idf()
    ratios = {60: 0.3, 120: t.peak_ratio, 180: 0.4}
    storms = [chicago(t[p], d, ratios[d]) for p in RETURN_PERIODS for d in DURATIONS_MIN]
    for p in (2.0, 5.0, 10.0, 20.0):
        first = chicago(t[1.0], 60, 0.4)
        second = chicago(t[p], 60, 0.3)
        storms.append(multi_peak([(first, 0), (second, 45)], f"double-p1-p{p:g}"))
    for p in (3.0, 10.0):
        bursts = [(chicago(t[q], 40, 0.35), gap) for q, gap in ((1.0, 0), (p, 20), (2.0, 25))]
        storms.append(multi_peak(bursts, f"triple-p{p:g}"))
    return storms
