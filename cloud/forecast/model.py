"""A site's depth in response to rain: a conceptual storage model, its fit and its forward run.

The model is the one a drainage engineer draws for a sag (an underpass, a dip in the road)::

    rain i(t) mm/h ──> initial loss ──> catchment lag ──> sag storage V ──> drain (at most Qmax)
                        (IL mm)          (k minutes)       depth h = 1000·(V/V1)^(1/b) mm

Everything is counted in millimetres of water over the effective catchment (the catchment's
area times its runoff coefficient). With depth as the only measurement those two cannot be told
apart, so the model does not pretend to: its parameters are

- ``initial_loss_mm`` (IL): rain the catchment holds before anything runs off (puddles, wetting,
  gullies filling). Full again after a dry spell (an event starts full).
- ``lag_min`` (k): the catchment's response time, a linear reservoir: runoff reaches the sag
  as rain smoothed over about k minutes.
- ``drain_mm_h`` (Qmax): what the drain (inlets, pipe, pump) carries away, as rain over the
  effective catchment in mm/h. Rain below it (after the lag) never ponds.
- ``fill_mm`` (V1): the runoff, in mm over the effective catchment, that fills the sag to 1 m.
- ``shape`` (b): how the sag widens with depth: V = V1·(h/1 m)^b; 1 is a box with vertical
  walls, 2 a trough whose width grows with depth, 3 a cone.

One step of ``dt`` with rain ``p = i·dt`` mm: the loss takes what it can hold, the rest enters the
lag reservoir R; ``R·(1 - e^(-dt/k))`` leaves it into the sag; the drain takes ``min(V, Qmax·dt)``.

Public API (stable: the cloud's forecast service and bench/ call it):

- ``Sample(t_ms, depth_mm, rain_mm_h)``: one observation; either value may be None.
- ``fit(samples, *, dt_s=300, fitted_at_ms=None) -> Fit | TooLittle``: least squares (a
  Nelder-Mead search over the parameters, written here) of simulated against measured depth
  over the history's wet events. ``TooLittle`` says why (too short a span, too few samples,
  no rain, no event that ponded) with how much there is and how much is needed.
- ``Fit``: ``params`` (the five above), ``rmse_mm`` (of the fit over the wet events), ``span``
  (first and last sample's ``t_ms``), ``n`` (samples used), ``events``, ``fitted_at_ms``;
  ``Fit.forward(depth_now_mm, rain_mm_h, dt_s, *, wet=None, rained_mm=None, past_mm_h=None) -> list[float]``:
  the depth at the end of each step (``wet``: the initial loss is used up, by default when there is
  water now; ``rained_mm``: the rain since the last dry spell, counted against it; ``past_mm_h``:
  the rain observed up to now, a warm start: runoff already on its way to the sag counts).
- ``band(fit, depth_now_mm, scenarios, dt_s, levels, *, wet=None, rained_mm=None, past_mm_h=None)
  -> Band``: runs every rain scenario (``Scenario(weight, mm_h)``: ensemble members, or quantiles as from
  ``scenarios_from``) and spreads each with the fit's error; gives ``p10``/``p50``/``p90`` depth per
  step, and per level the probability of crossing within the series, its median time (``eta_s``)
  and the peak.
- ``scenarios_from(mm_h, members=None, quantiles=None) -> list[Scenario]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

PARAMS = ("initial_loss_mm", "lag_min", "drain_mm_h", "fill_mm", "shape")
# Search bounds (engineers' plausible range): below/above them a fit is not believable.
BOUNDS: dict[str, tuple[float, float]] = {
    "initial_loss_mm": (0.0, 40.0),
    "lag_min": (1.0, 240.0),
    "drain_mm_h": (0.5, 200.0),
    "fill_mm": (0.5, 2000.0),
    "shape": (1.0, 3.0),
}
WET_MM_H = 0.5  # rain at or above this is rain
PONDED_MM = 20.0  # an event counts as a flood event when the water got this deep
DRY_GAP_S = 6 * 3600  # rain this far apart is two events (the initial loss is full again)
TAIL_S = 3 * 3600  # an event is followed this long after its last rain (the sag drains)
MIN_SPAN_S = 24 * 3600
MIN_SAMPLES = 100
MIN_EVENTS = 4  # wet events
MIN_PONDED = 2  # of which ponded
ERROR_RAMP_S = 3600  # the fit's error grows from none (the depth now is measured) to full over this


@dataclass(frozen=True)
class Sample:
    t_ms: int
    depth_mm: float | None
    rain_mm_h: float | None


@dataclass(frozen=True)
class Params:
    initial_loss_mm: float
    lag_min: float
    drain_mm_h: float
    fill_mm: float
    shape: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in PARAMS}

    @staticmethod
    def from_dict(d: dict[str, float]) -> Params:
        return Params(*(float(d[k]) for k in PARAMS))


@dataclass(frozen=True)
class TooLittle:
    """Not enough history to fit: ``reason`` in words, ``have`` and ``need`` in the same unit."""

    reason: str
    have: float
    need: float
    unit: str

    def __str__(self) -> str:
        return f"{self.reason}: have {self.have:g} {self.unit}, need {self.need:g}"


@dataclass(frozen=True)
class Fit:
    params: Params
    rmse_mm: float
    span: tuple[int, int]  # first and last sample's t_ms
    n: int  # samples with a depth inside the events fitted
    events: int
    fitted_at_ms: int

    def forward(
        self,
        depth_now_mm: float,
        rain_mm_h: Sequence[float],
        dt_s: float,
        *,
        wet: bool | None = None,
        rained_mm: float | None = None,
        past_mm_h: Sequence[float] | None = None,
    ) -> list[float]:
        """The depth (mm) at the end of each step of ``rain_mm_h`` (mm/h per step of ``dt_s``).
        ``past_mm_h``: the rain observed over the steps up to now (oldest first), which warms the
        catchment (its initial loss and the runoff already on its way to the sag)."""
        return simulate(
            self.params,
            rain_mm_h,
            dt_s,
            depth0_mm=depth_now_mm,
            wet=wet,
            rained_mm=rained_mm,
            past_mm_h=past_mm_h,
        )


def _volume(p: Params, depth_mm: float) -> float:
    return float(p.fill_mm * (max(depth_mm, 0.0) / 1000.0) ** p.shape)


def simulate(
    p: Params,
    rain_mm_h: Sequence[float],
    dt_s: float,
    *,
    depth0_mm: float = 0.0,
    wet: bool | None = None,
    rained_mm: float | None = None,
    past_mm_h: Sequence[float] | None = None,
) -> list[float]:
    """Run the model: depth (mm) at the end of each step. ``wet``: the initial loss is used up
    (by default: when there is water now); else ``rained_mm`` (the rain since the last dry
    spell) has used that much of it. ``past_mm_h`` (warm start): the rain over the steps up to
    now, run through the initial loss and the lag first, so runoff already on its way to the
    sag counts; the sag itself starts at the measured ``depth0_mm`` (and ``rained_mm`` is then
    not used: the past rain says it)."""
    dt_h = dt_s / 3600.0
    used = (depth0_mm > 0.0) if wet is None else wet
    keep = math.exp(-dt_s / 60.0 / p.lag_min)
    r = 0.0
    if past_mm_h is not None:
        loss = p.initial_loss_mm
        for i in past_mm_h:
            rain = max(i, 0.0) * dt_h
            take = rain if rain < loss else loss
            loss -= take
            r = (r + rain - take) * keep  # what leaves R went into the sag: the depth measured says it
        if used:
            loss = 0.0
    else:
        loss = 0.0 if used else max(0.0, p.initial_loss_mm - (rained_mm or 0.0))
    cap = p.drain_mm_h * dt_h
    v = _volume(p, depth0_mm)
    inv_b = 1.0 / p.shape
    v1 = p.fill_mm
    out: list[float] = []
    for i in rain_mm_h:
        rain = i * dt_h
        take = rain if rain < loss else loss
        loss -= take
        r += rain - take
        flow = r * (1.0 - keep)
        r -= flow
        v += flow
        v = v - cap if v > cap else 0.0
        out.append(1000.0 * (v / v1) ** inv_b if v > 0.0 else 0.0)
    return out


# -- history -> events on a regular grid ------------------------------------------------------------


@dataclass
class _Grid:
    t0_ms: int
    dt_s: float
    rain: np.ndarray  # mm/h per step (NaN: not known)
    depth: np.ndarray  # mm at the step's end (NaN: not measured)
    events: list[tuple[int, int]] = field(default_factory=list)  # [start, end) step indices


def _grid(samples: Sequence[Sample], dt_s: float) -> _Grid:
    t0 = min(s.t_ms for s in samples)
    t1 = max(s.t_ms for s in samples)
    dt_ms = dt_s * 1000.0
    n = int((t1 - t0) // dt_ms) + 1
    rain_sum = np.zeros(n)
    rain_n = np.zeros(n)
    depth_sum = np.zeros(n)
    depth_n = np.zeros(n)
    for s in samples:
        k = min(int((s.t_ms - t0) // dt_ms), n - 1)
        if s.rain_mm_h is not None and math.isfinite(s.rain_mm_h):
            rain_sum[k] += s.rain_mm_h
            rain_n[k] += 1
        if s.depth_mm is not None and math.isfinite(s.depth_mm):
            depth_sum[k] += s.depth_mm
            depth_n[k] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        rain = np.where(rain_n > 0, rain_sum / np.maximum(rain_n, 1), np.nan)
        depth = np.where(depth_n > 0, depth_sum / np.maximum(depth_n, 1), np.nan)
    return _Grid(t0, dt_s, rain, depth)


def _events(g: _Grid) -> list[tuple[int, int]]:
    """Wet events: from the first step of rain after a dry gap until TAIL_S after the last rain
    (or later, while the water stays), split where rain is DRY_GAP_S apart."""
    wet = np.flatnonzero(np.nan_to_num(g.rain, nan=0.0) >= WET_MM_H)
    if wet.size == 0:
        return []
    gap = max(1, int(DRY_GAP_S / g.dt_s))
    tail = max(1, int(TAIL_S / g.dt_s))
    n = g.rain.size
    out: list[tuple[int, int]] = []
    start = prev = int(wet[0])
    for w in [*map(int, wet[1:]), None]:
        if w is not None and w - prev < gap:
            prev = w
            continue
        end = min(n, prev + 1 + tail)
        while end < n and not (np.isnan(g.depth[end - 1]) or g.depth[end - 1] < PONDED_MM / 4):
            end += 1  # the water is still there: follow it down
        out.append((max(0, start - 1), end))
        if w is not None:
            start = prev = w
    return out


# -- least squares ----------------------------------------------------------------------------------


def _to_params(x: np.ndarray) -> Params:
    vals = []
    for k, xi in zip(PARAMS, x, strict=True):
        lo, hi = BOUNDS[k]
        vals.append(lo + (hi - lo) / (1.0 + math.exp(-float(np.clip(xi, -30, 30)))))
    return Params(*vals)


def _from_params(p: Params) -> np.ndarray:
    x = []
    for k in PARAMS:
        lo, hi = BOUNDS[k]
        f = min(max((getattr(p, k) - lo) / (hi - lo), 1e-6), 1 - 1e-6)
        x.append(math.log(f / (1 - f)))
    return np.array(x)


def nelder_mead(
    f: Callable[[np.ndarray], float],
    x0: np.ndarray,
    *,
    step: float = 0.8,
    iters: int = 600,
    tol: float = 1e-7,
) -> tuple[np.ndarray, float]:
    """Minimise ``f`` from ``x0`` (the standard simplex: reflect, expand, contract, shrink)."""
    n = x0.size
    pts = [x0.astype(float)]
    for i in range(n):
        x = x0.astype(float).copy()
        x[i] += step
        pts.append(x)
    vals = [f(x) for x in pts]
    for _ in range(iters):
        order = np.argsort(vals)
        pts = [pts[i] for i in order]
        vals = [vals[i] for i in order]
        if abs(vals[-1] - vals[0]) <= tol * (abs(vals[0]) + 1e-12):
            break
        c = np.mean(pts[:-1], axis=0)
        xr = c + (c - pts[-1])
        fr = f(xr)
        if fr < vals[0]:
            xe = c + 2.0 * (c - pts[-1])
            fe = f(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = c + 0.5 * (pts[-1] - c) if fr >= vals[-1] else c + 0.5 * (xr - c)
            fc = f(xc)
            if fc < min(fr, vals[-1]):
                pts[-1], vals[-1] = xc, fc
            else:
                for i in range(1, n + 1):
                    pts[i] = pts[0] + 0.5 * (pts[i] - pts[0])
                    vals[i] = f(pts[i])
    best = int(np.argmin(vals))
    return pts[best], vals[best]


def fit(
    samples: Sequence[Sample], *, dt_s: float = 300.0, fitted_at_ms: int | None = None
) -> Fit | TooLittle:
    """Fit the model to a site's history (depth and rain, any order, any spacing)."""
    with_depth = sum(1 for s in samples if s.depth_mm is not None)
    with_rain = sum(1 for s in samples if s.rain_mm_h is not None)
    if with_depth < MIN_SAMPLES:
        return TooLittle("too few depth samples", with_depth, MIN_SAMPLES, "samples")
    if with_rain < MIN_SAMPLES:
        return TooLittle(
            "too few rain samples (a gauge at the site, or forecasts)", with_rain, MIN_SAMPLES, "samples"
        )
    span = (min(s.t_ms for s in samples), max(s.t_ms for s in samples))
    if span[1] - span[0] < MIN_SPAN_S * 1000:
        return TooLittle("too short a history", round((span[1] - span[0]) / 3.6e6, 1), MIN_SPAN_S / 3600, "h")
    g = _grid(samples, dt_s)
    events = _events(g)
    if len(events) < MIN_EVENTS:
        return TooLittle("too few wet events (rain after a dry spell)", len(events), MIN_EVENTS, "events")
    peaks = [float(np.nanmax(g.depth[a:b])) if np.any(~np.isnan(g.depth[a:b])) else 0.0 for a, b in events]
    ponded = sum(1 for p in peaks if p >= PONDED_MM)
    if ponded < MIN_PONDED:
        return TooLittle(
            f"too few wet events ponded (water deeper than {PONDED_MM:g} mm)", ponded, MIN_PONDED, "events"
        )
    rains = [np.nan_to_num(g.rain[a:b], nan=0.0).tolist() for a, b in events]
    depths = [g.depth[a:b] for a, b in events]
    masks = [~np.isnan(d) for d in depths]
    n = int(sum(int(m.sum()) for m in masks))

    def sse(x: np.ndarray) -> float:
        p = _to_params(x)
        total = 0.0
        for rain, d, m in zip(rains, depths, masks, strict=True):
            sim = np.asarray(simulate(p, rain, dt_s))
            total += float(np.sum((sim[m] - d[m]) ** 2))
        return total

    # Starting guess from the data: the drain ~ the rain that ponded least, the fill from the peak.
    peak_rain = max(max(r) for r in rains)
    starts = [
        Params(5.0, 15.0, max(1.0, 0.3 * peak_rain), 50.0, 1.5),
        Params(2.0, 40.0, max(1.0, 0.6 * peak_rain), 200.0, 2.0),
    ]
    best_x, best_f = _from_params(starts[0]), math.inf
    for p0 in starts:
        x, fx = nelder_mead(sse, _from_params(p0))
        x, fx = nelder_mead(sse, x, step=0.3)  # restart where it stopped: the simplex may have collapsed
        if fx < best_f:
            best_x, best_f = x, fx
    rmse = math.sqrt(best_f / max(n, 1))
    return Fit(
        params=_to_params(best_x),
        rmse_mm=rmse,
        span=span,
        n=n,
        events=len(events),
        fitted_at_ms=span[1] if fitted_at_ms is None else fitted_at_ms,
    )


# -- the band --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    weight: float
    mm_h: list[float]


def scenarios_from(
    mm_h: Sequence[float],
    members: Sequence[Sequence[float]] | None = None,
    quantiles: Mapping[float, Sequence[float]] | None = None,
) -> list[Scenario]:
    """Rain scenarios with weights summing to 1: the ensemble's members (equal weights), else the
    quantiles (each stands for the probability between its neighbours' midpoints, the best
    estimate standing for the median where 0.5 is not given), else the best estimate alone."""
    if members:
        return [Scenario(1.0 / len(members), list(m)) for m in members]
    if quantiles:
        qs: dict[float, Sequence[float]] = dict(quantiles)
        qs.setdefault(0.5, mm_h)
        probs = sorted(qs)
        out = []
        for i, q in enumerate(probs):
            lo = 0.0 if i == 0 else (probs[i - 1] + q) / 2
            hi = 1.0 if i == len(probs) - 1 else (q + probs[i + 1]) / 2
            out.append(Scenario(hi - lo, list(qs[q])))
        return out
    return [Scenario(1.0, list(mm_h))]


@dataclass(frozen=True)
class Crossing:
    level: str
    threshold_mm: float
    probability: float  # of crossing within the series
    eta_s: float | None  # median time to the crossing among the ways it crosses; None if it never does


@dataclass(frozen=True)
class Band:
    dt_s: float
    p10: list[float]
    p50: list[float]
    p90: list[float]
    crossings: list[Crossing]
    peak_mm: float  # the highest median depth


# The fit's error as five equally likely offsets (the standard normal's quintile midpoints).
_Z = (-1.2816, -0.5244, 0.0, 0.5244, 1.2816)


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Per column of ``values`` (rows: ways the future goes), the ``q`` quantile by ``weights``."""
    order = np.argsort(values, axis=0)
    v = np.take_along_axis(values, order, axis=0)
    w = weights[order]
    cum = np.cumsum(w, axis=0) / np.sum(weights)
    idx = np.argmax(cum >= q - 1e-12, axis=0)
    out: np.ndarray = v[idx, np.arange(values.shape[1])]
    return out


def band(
    fit: Fit,
    depth_now_mm: float,
    scenarios: Sequence[Scenario],
    dt_s: float,
    levels: dict[str, float],
    *,
    wet: bool | None = None,
    rained_mm: float | None = None,
    past_mm_h: Sequence[float] | None = None,
) -> Band:
    """The depth band and the chance of crossing each level (name -> mm) within the series
    (``past_mm_h``: the rain observed up to now, as for ``Fit.forward``)."""
    runs = [
        np.asarray(fit.forward(depth_now_mm, s.mm_h, dt_s, wet=wet, rained_mm=rained_mm, past_mm_h=past_mm_h))
        for s in scenarios
    ]
    steps = runs[0].size
    ramp = np.minimum(1.0, (np.arange(1, steps + 1) * dt_s) / ERROR_RAMP_S)
    rows = []
    weights = []
    for s, run in zip(scenarios, runs, strict=True):
        for z in _Z:
            rows.append(np.maximum(run + z * fit.rmse_mm * ramp, 0.0))
            weights.append(s.weight / len(_Z))
    ways = np.vstack(rows)
    w = np.asarray(weights)
    p10 = _weighted_quantile(ways, w, 0.1)
    p50 = _weighted_quantile(ways, w, 0.5)
    p90 = _weighted_quantile(ways, w, 0.9)
    crossings = []
    for name, mm in sorted(levels.items(), key=lambda kv: kv[1]):
        above = ways >= mm
        crossed = above.any(axis=1)
        prob = float(w[crossed].sum() / w.sum())
        eta = None
        if crossed.any():
            first = np.argmax(above[crossed], axis=1)
            eta_steps = _weighted_quantile(first[:, None].astype(float), w[crossed], 0.5)[0]
            eta = float((eta_steps + 1) * dt_s)
        crossings.append(Crossing(name, mm, prob, eta))
    return Band(dt_s, p10.tolist(), p50.tolist(), p90.tolist(), crossings, float(p50.max(initial=0.0)))
