"""Lead time before real danger, against EPA SWMM's truth (issue 17 §4).

Every storm of the library (Chicago storms for 1–50 years and 1–3 h, multi-peak storms) falls on
every underpass catchment of ``simulators/swmm.py``, with three hours of dry weather before and
after it; SWMM gives the depth at the sag minute by minute. False storms (forecast, never falling)
are added as dry cases. Then, for each real crossing of the danger threshold:

(a) **threshold only**: the edge's own alarm (``edge.rules.alerts.LevelAlarm``) on the depth as the
    level sensor reads it (linear between SWMM's minutes, sensor noise, the edge's filter), polled
    at the example site's cadence;
(b) **the edge's rise-rate forecast** (``edge.rules.forecast.RiseForecast``, the example site's
    config) on the same readings: a danger forecast that stood until the alarm gives its lead; the
    alarm stands either way, so (b) is never later than (a);
(c) **the cloud's rainfall forecast** (``cloud.forecast.model``): each catchment's model fitted on
    the history of the storms of the *other* folds (never the storm scored), then run every 10 min
    on that moment's forecast (``simulators.storms.rain_forecast``: errors that grow with lead,
    members, misses, false storms) from the measured depth; a forecast alert is raised, held and
    cleared by the product's own rule (``cloud.forecast.rule``: raised when P(danger within the
    horizon) ≥ the probability and the storm is confirmed by the rain measured in the last hour
    or water now; held while P stays above probability − hysteresis, the depth rises or the rain
    still falls). Its lead is the start of the alert that stood at the crossing. The probability
    is scored twice: at the product's default, and as chosen for each fold on the *other* folds'
    storms (the best CSI on storms of 2 years or more), so no threshold is fitted on the storms it
    is scored on; and once more without the confirmation (the forecast
    alone), to show what it costs and saves.

It prints lead times (median, 10th percentile), POD, FAR and CSI of the cloud's forecast alerts
per case (a case is one storm on one catchment: an event if the water reached danger), how they
change with the forecast's error (``--scales``: 0 is a perfect forecast), and the issue's targets
beside them, saying which are met. Seeded; the truth is never tuned to the model.

    .venv/bin/python bench/forecast_lead.py [--scales 0,0.5,1,2] [--p-alert 0.3] [--confirm-mm 1]
        [--processes 2]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.config.site import Device, load_site
from edge.rules.alerts import LevelAlarm
from edge.rules.filters import LevelFilter
from edge.rules.forecast import RiseForecast
from simulators.storms import Storm, storm_library
from simulators.storms.rain_forecast import ForecastErrors, RainForecast, issue_forecasts, seed_for
from simulators.swmm import CATCHMENTS, Catchment, Truth, simulate_many

PAD_MIN = 180  # dry minutes before and after each storm (the forecast's horizon sees it coming)
HORIZON_MIN = 180
EVERY_MIN = 10
FLASH_MIN = 10.0  # a crossing is a flash flood when the road went from dry (< 30 mm) to danger this fast
FOLDS = 3
P_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # the probabilities a fold chooses from
HISTORY_GAP_MIN = 8 * 60  # dry time between the storms of a history (separate events for the fit)
SITE = REPO / "firmware-config" / "sites" / "example-kexiang-tunnel.yaml"


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Case:
    catchment: Catchment
    storm: Storm
    truth: Truth | None  # None: a false storm (dry truth)
    phantom: Storm | None = None
    fold: int = 0
    crossings: list[float] = field(default_factory=list)  # real danger crossings, minutes
    flash: list[bool] = field(default_factory=list)
    lead_a: list[float] = field(default_factory=list)  # seconds, per crossing
    lead_b: list[float] = field(default_factory=list)

    @property
    def p(self) -> float:
        return self.storm.p if self.phantom is None else self.phantom.p

    def depth(self) -> Sequence[float]:
        if self.truth is None:
            return [0.0] * (2 * PAD_MIN + (self.phantom.duration_min if self.phantom else 0) + 1)
        return self.truth.depth_mm

    def rain(self) -> list[float]:
        if self.truth is None:
            return [0.0] * (len(self.depth()) - 1)
        return list(self.truth.rain_mm_h)


def timeline(storm: Storm) -> list[float]:
    return [0.0] * PAD_MIN + storm.mm_h() + [0.0] * PAD_MIN


def crossings(depth: Sequence[float], on: float, clear: float) -> list[tuple[float, bool]]:
    """Each upward crossing of ``on`` (minutes, interpolated), re-armed below ``clear``; and whether it
    was a flash flood (dry to danger within FLASH_MIN)."""
    out: list[tuple[float, bool]] = []
    armed = True
    for k in range(1, len(depth)):
        a, b = depth[k - 1], depth[k]
        if armed and a < on <= b:
            t = k - 1 + (on - a) / (b - a)
            dry = max((j for j in range(k) if depth[j] < 30.0), default=0)
            out.append((t, t - dry <= FLASH_MIN))
            armed = False
        elif not armed and b < clear:
            armed = True
    return out


# -- (a) and (b): the edge's own code on the readings ----------------------------------------------


def edge_leads(case: Case, lvl: Device, seed: int) -> None:
    """Lead of the threshold alarm and of the rise-rate forecast before each real crossing."""
    assert lvl.thresholds is not None
    depth = case.depth()
    th = lvl.thresholds
    real = crossings(depth, th.danger.on, th.danger.clear)
    case.crossings = [t for t, _ in real]
    case.flash = [f for _, f in real]
    if not real:
        return
    rng = random.Random(seed)
    filt = LevelFilter(lvl.filter)
    alarm = LevelAlarm(th)
    fc = RiseForecast(lvl.forecast, th)
    wet = [k for k, d in enumerate(depth) if d > 0]
    start_s = max(0, wet[0] - 2) * 60
    end_s = (min(len(depth) - 1, int(max(case.crossings)) + 3)) * 60
    alarm_at: list[float] = []  # times the alarm went to danger
    fc_danger_since: float | None = None
    fc_starts: list[float] = []  # for each alarm: when the danger forecast standing then began
    step = lvl.poll_s
    t = float(start_s)
    while t <= end_s:
        k = int(t // 60)
        frac = t / 60 - k
        d = depth[k] + (depth[min(k + 1, len(depth) - 1)] - depth[k]) * frac
        ts = int(t * 1000)
        f = filt.feed(ts, [max(0.0, d + rng.gauss(0.0, 2.0))])
        if f.quality == "good":
            tr = alarm.feed(ts, f.value)
            if tr is not None and tr.level == "danger":
                alarm_at.append(t)
                fc_starts.append(fc_danger_since if fc_danger_since is not None else t)
            ft = fc.feed(ts, f.value, alarm.level)
            if ft is not None:
                fc_danger_since = t if ft.level == "danger" else None
        t += step
    for crossing in case.crossings:
        cs = crossing * 60
        after = [i for i, a in enumerate(alarm_at) if a >= cs - 60]
        if not after:
            case.lead_a.append(math.nan)
            case.lead_b.append(math.nan)
            continue
        i = after[0]
        case.lead_a.append(cs - alarm_at[i])
        case.lead_b.append(cs - min(fc_starts[i], alarm_at[i]))


# -- (c): the cloud's model on rainfall forecasts -------------------------------------------------


def history(cases: Sequence[Case], model: Any) -> list[Any]:
    """The samples (one a minute) of ``cases`` one after the other, dry weather between them."""
    out: list[Any] = []
    t_min = 0
    for c in cases:
        assert c.truth is not None
        rain = list(c.truth.rain_mm_h) + [0.0] * HISTORY_GAP_MIN
        depth = list(c.truth.depth_mm[:-1]) + [0.0] * HISTORY_GAP_MIN
        for k, (r, d) in enumerate(zip(rain, depth, strict=True)):
            out.append(model.Sample((t_min + k) * 60_000, d, r))
        t_min += len(rain)
    return out


@dataclass
class CloudResult:
    leads: list[float]  # per crossing (s), 0 when no cloud alert stood at it
    flash: list[bool]
    p: list[float]  # each crossing's storm's return period
    hits: int = 0
    misses: int = 0
    false_alarms: int = 0
    cases_by_p: list[tuple[float, str]] = field(default_factory=list)  # (P, hit|miss|fa|cn)


@dataclass
class Issue:
    """One forecast issue of a case: P(danger within the horizon) and what the site measured."""

    minute: int
    p: float
    measured: Any  # cloud.forecast.rule.Measured


def cloud_issues(
    case: Case, fit: Any, model: Any, rule: Any, errors: ForecastErrors, danger_mm: float, seed: int
) -> list[Issue]:
    """Every forecast issue of the case, run through the model as the collector runs it."""
    rain = case.rain()
    depth = case.depth()
    phantom = timeline(case.phantom) if case.phantom is not None else None
    issued = issue_forecasts(
        rain,
        seed,
        errors,
        every_min=EVERY_MIN,
        horizon_min=HORIZON_MIN,
        step_min=10,
        phantom_mm_h=phantom,
    )
    out = []
    for f in issued:
        m = f.issued_min
        # What the collector reads: the depth of the last 30 min, the rain of the last hour (by minute).
        d_pts = [(k * 60_000, depth[k]) for k in range(max(0, m - 30), min(m, len(depth) - 1) + 1)]
        r_pts = [(k * 60_000, rain[k]) for k in range(max(0, m - 60), min(m, len(rain)))]
        p = p_danger(f, fit, model, depth, rain, danger_mm)
        out.append(Issue(m, p, rule.measured(d_pts, r_pts, m * 60_000, 60.0)))
    return out


def cloud_score(case: Case, issues: Sequence[Issue], rule: Any, settings: Any) -> tuple[list[float], str]:
    """Leads (s) of the cloud's forecast alerts before each crossing, and the case's outcome, with the
    product's rule (``rule.raises``, ``rule.holds``) at ``settings``."""
    starts: list[int] = []  # start of the alert standing at each issue (or -1)
    since = -1
    for i in issues:
        if since < 0 and rule.raises(i.p, i.measured, settings):
            since = i.minute
        elif since >= 0 and not rule.holds(i.p, i.measured, settings):
            since = -1
        starts.append(since)
    leads = []
    for crossing in case.crossings:
        before = [k for k, i in enumerate(issues) if i.minute <= crossing]
        start = starts[before[-1]] if before else -1
        leads.append((crossing - start) * 60 if start >= 0 else 0.0)
    first = case.crossings[0] if case.crossings else math.inf
    alerted_before = any(st >= 0 and i.minute < first for i, st in zip(issues, starts, strict=True))
    if case.crossings:
        if leads[0] > 0:
            return leads, "hit"
        return leads, "miss-cleared" if alerted_before else "miss"
    return leads, "fa" if alerted_before else "cn"


def p_danger(
    f: RainForecast, fit: Any, model: Any, depth: Sequence[float], rain: Sequence[float], danger_mm: float
) -> float:
    now = f.issued_min
    depth_now = depth[min(now, len(depth) - 1)]
    # Warm start, as the collector: the observed rain of the last 6 h in 5-min means, oldest first.
    first = now - 5 * (min(now, 360) // 5)
    past = [sum(rain[a : a + 5]) / 5 for a in range(first, now, 5)]
    per = f.step_min // 5  # the model runs at 5-min steps, as it was fitted
    upsample = lambda series: [v for v in series for _ in range(per)]  # noqa: E731
    quantiles = {q: upsample(v) for q, v in f.quantiles.items()}
    scen = model.scenarios_from(upsample(f.mm_h), [upsample(m) for m in f.members] or None, quantiles or None)
    band = model.band(fit, depth_now, scen, 300.0, {"danger": danger_mm}, past_mm_h=past)
    return float(band.crossings[0].probability)


def fit_catchment(model: Any, train: Sequence[Case]) -> Any:
    return model.fit(history(train, model), dt_s=300.0)


# -- main ------------------------------------------------------------------------------------------


def summary(leads: Sequence[float]) -> str:
    ok = [v for v in leads if not math.isnan(v)]
    if not ok:
        return "   n/a"
    return f"median {statistics.median(ok):7.1f} s  p10 {pct(ok, 0.1):7.1f} s  (n {len(ok)})"


def skill(t: dict[str, int]) -> tuple[float, float, float]:
    """POD, FAR and CSI from hits, misses and false alarms."""
    h, m, fa = t.get("hit", 0), t.get("miss", 0), t.get("fa", 0)
    pod = h / (h + m) if h + m else math.nan
    far = fa / (h + fa) if h + fa else math.nan
    csi = h / (h + m + fa) if h + m + fa else math.nan
    return pod, far, csi


def mark(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--scales", default="0,0.5,1,2", help="forecast error scales to sweep (1: the default errors)"
    )
    ap.add_argument(
        "--p-alert",
        type=float,
        default=None,
        help="P(danger) at which the cloud raises its alert (default: the product's, forecast.probability)",
    )
    ap.add_argument(
        "--confirm-mm",
        type=float,
        default=None,
        help="rain measured in the last hour that confirms a storm (default: the product's; 0: off)",
    )
    ap.add_argument("--p-miss", type=float, default=ForecastErrors().p_miss, help="chance a storm is missed")
    ap.add_argument("--false-storms", type=int, default=6, help="false storms per catchment (at most 6)")
    ap.add_argument("--processes", type=int, default=2, help="SWMM runs at a time")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--catchments", default=",".join(CATCHMENTS))
    args = ap.parse_args()
    t0 = time.perf_counter()
    site = load_site(SITE, check_files=False)
    lvl = next(d for d in site.config.devices if d.id == "lvl-1")
    assert lvl.thresholds is not None
    danger = lvl.thresholds.danger.on
    storms = storm_library()
    phantoms = [s for s in storms if s.kind == "chicago" and s.p >= 2 and s.duration_min == 120]
    phantoms = phantoms[: args.false_storms]
    catchments = [CATCHMENTS[n] for n in args.catchments.split(",")]
    print(
        f"Forecast lead bench: {len(storms)} storms x {len(catchments)} catchments (SWMM 5.2, dynamic wave),"
    )
    print(
        f"  + {len(phantoms)} false storms per catchment; danger at {danger:g} mm; edge: lvl-1 of "
        f"{SITE.name} (poll {lvl.poll_s:g} s, forecast horizon {lvl.forecast.horizon_s:g} s); "
        f"load {os.getloadavg()[0]:.1f}"
    )
    jobs = [(c, timeline(s)) for c in catchments for s in storms]
    truths = simulate_many(jobs, processes=args.processes)
    worst = max(max(abs(t.runoff_error_pct), abs(t.routing_error_pct)) for t in truths)
    print(
        f"SWMM: {len(truths)} runs in {time.perf_counter() - t0:.0f} s; worst continuity error {worst:.3f} %"
    )
    cases: list[Case] = []
    it = iter(truths)
    for c in catchments:
        for i, s in enumerate(storms):
            cases.append(Case(c, s, next(it), fold=i % FOLDS))
        for i, s in enumerate(phantoms):
            cases.append(Case(c, s, None, phantom=s, fold=i % FOLDS))
    for case in cases:
        edge_leads(
            case, lvl, seed_for("edge", args.seed, case.catchment.name, case.storm.name, case.truth is None)
        )
    real = [c for c in cases if c.truth is not None]
    events = [c for c in real if c.crossings]
    print(
        f"Truth: {len(events)} of {len(real)} storm-catchment cases reach danger "
        f"({sum(len(c.crossings) for c in events)} crossings, {sum(sum(c.flash) for c in events)} "
        f"flash floods: dry to danger within {FLASH_MIN:g} min)"
    )
    lead_a = [v for c in events for v in c.lead_a]
    lead_b = [v for c in events for v in c.lead_b]
    flash_b = [v for c in events for v, f in zip(c.lead_b, c.flash, strict=True) if f]
    flash_a = [v for c in events for v, f in zip(c.lead_a, c.flash, strict=True) if f]
    print(f"\n(a) threshold only        all: {summary(lead_a)}")
    print(f"                      flash: {summary(flash_a)}")
    print(f"(b) edge rise-rate        all: {summary(lead_b)}")
    print(f"                      flash: {summary(flash_b)}")
    ok_flash = bool(flash_b) and statistics.median([v for v in flash_b if not math.isnan(v)]) >= 60
    print(f"    target: edge lead >= 60 s on flash floods (median): {mark(ok_flash)}")
    never_worse = all(b >= a for c in events for a, b in zip(c.lead_a, c.lead_b, strict=True))
    print(
        "    without any rainfall forecast never worse than threshold only (every crossing): "
        + mark(never_worse)
    )

    try:
        from cloud.config import ForecastConfig  # noqa: PLC0415 (the cloud's; the bench runs without it)
        from cloud.forecast import model, rule  # noqa: PLC0415
    except ImportError as exc:
        print(f"\n(c) cloud rainfall forecast: MISSING (cloud.forecast.model not importable: {exc})")
        return 0
    t1 = time.perf_counter()
    fits: dict[tuple[str, int], Any] = {}
    for c in catchments:
        for fold in range(FOLDS):
            train = [k for k in real if k.catchment is c and k.fold != fold]
            fits[(c.name, fold)] = fit_catchment(model, train)
    print(
        f"\n(c) cloud rainfall forecast: {len(fits)} fits (each on the other folds' storms) in "
        f"{time.perf_counter() - t1:.0f} s"
    )
    for (name, fold), f in sorted(fits.items()):
        if isinstance(f, model.TooLittle):
            print(f"    {name} fold {fold}: no fit: {f}")
        else:
            p = f.params
            print(
                f"    {name} fold {fold}: IL {p.initial_loss_mm:.1f} mm, lag {p.lag_min:.1f} min, drain "
                f"{p.drain_mm_h:.1f} mm/h, fill {p.fill_mm:.0f} mm, shape {p.shape:.2f}; "
                f"rmse {f.rmse_mm:.0f} mm"
            )
    product = ForecastConfig()
    p_alert = product.probability if args.p_alert is None else args.p_alert
    confirm = product.confirm_rain_mm if args.confirm_mm is None else (args.confirm_mm or None)
    settings = rule.Settings(p_alert, product.hysteresis, confirm)
    print(
        f"    alert (the product's rule) when P(danger within {HORIZON_MIN} min) >= {p_alert:g} and "
        + (
            f"the rain measured in the last hour >= {confirm:g} mm (or water now)"
            if confirm
            else "(no confirmation)"
        )
        + f"; held while P >= {p_alert - product.hysteresis:g}, the depth rises or the rain falls"
    )
    print(
        f"    forecasts every {EVERY_MIN} min, p_miss {args.p_miss:g}; a crossing with no cloud alert "
        "standing counts as lead 0"
    )
    print(
        "\n  scale | rule        | cloud lead, P>=2 y: median   p10 | POD   FAR   CSI (P>=2 y) | "
        "all storms: POD FAR CSI | chain (max of a,b,c) median"
    )
    n_false = sum(1 for c in cases if c.truth is None)
    scored = [c for c in cases if not isinstance(fits[(c.catchment.name, c.fold)], model.TooLittle)]
    for scale in [float(s) for s in args.scales.split(",")]:
        errors = ForecastErrors(p_miss=args.p_miss).scaled(scale)
        issues: dict[int, list[Issue]] = {}
        for case in scored:
            seed = seed_for(
                "rain", args.seed, scale, case.catchment.name, case.storm.name, case.truth is None
            )
            f = fits[(case.catchment.name, case.fold)]
            issues[id(case)] = cloud_issues(case, f, model, rule, errors, danger, seed)

        def score(by_fold: dict[int, Any], issues: dict[int, list[Issue]] = issues) -> dict[str, Any]:
            leads2: list[float] = []
            chain: list[float] = []
            tally: dict[bool, dict[str, int]] = {True: {}, False: {}}  # by P >= 2 y
            fa_from = {"false storm": 0, "real storm below danger": 0}
            missed = {"miss": 0, "miss-cleared": 0}
            for case in scored:
                if case.fold not in by_fold:
                    continue
                leads, outcome = cloud_score(case, issues[id(case)], rule, by_fold[case.fold])
                big = case.p >= 2
                if outcome.startswith("miss"):
                    missed[outcome] += 1
                    outcome = "miss"
                if outcome == "fa":
                    fa_from["false storm" if case.truth is None else "real storm below danger"] += 1
                tally[big][outcome] = tally[big].get(outcome, 0) + 1
                if big:
                    leads2.extend(leads)
                chain.extend(max(c, b) for c, b in zip(leads, case.lead_b, strict=True) if not math.isnan(b))
            every = {k: tally[True].get(k, 0) + tally[False].get(k, 0) for k in ("hit", "miss", "fa")}
            return {
                "big": skill(tally[True]),
                "all": skill(every),
                "leads": leads2,
                "chain": chain,
                "fa_from": fa_from,
                "missed": missed,
            }

        def line(name: str, r: dict[str, Any], scale: float = scale) -> None:
            pod, far, csi = r["big"]
            leads2, chain = r["leads"], r["chain"]
            med = statistics.median(leads2) if leads2 else math.nan
            a = r["all"]
            print(
                f"  {scale:5.2f} | {name:11} | {med / 60:12.1f} min {pct(leads2, 0.1) / 60:5.1f} min | "
                f"{pod:4.2f}  {far:4.2f}  {csi:4.2f}        | {a[0]:4.2f} {a[1]:4.2f} {a[2]:4.2f}"
                f"   | {statistics.median(chain) / 60 if chain else math.nan:6.1f} min"
            )
            print(
                f"        false alarms: {r['fa_from']['false storm']} of {n_false} false storms, "
                f"{r['fa_from']['real storm below danger']} real storms that stayed below danger; misses: "
                f"{r['missed']['miss']} never alerted before the crossing, {r['missed']['miss-cleared']} "
                "alerted, cleared before it"
            )

        folds = range(FOLDS)
        main_r = score({k: settings for k in folds})
        line("default", main_r)
        # The probability each fold would choose on the other folds' storms (P >= 2 y): the best CSI
        # (hits over hits, misses and false alarms), the higher probability of two that tie.
        chosen = {}
        for k in folds:
            others = [j for j in folds if j != k]
            csi = {
                q: score({j: rule.Settings(q, min(product.hysteresis, q / 2), confirm) for j in others})[
                    "big"
                ][2]
                for q in P_GRID
            }
            best = max(P_GRID, key=lambda q: (csi[q], q))
            chosen[k] = rule.Settings(best, min(product.hysteresis, best / 2), confirm)
        fold_r = score(chosen)
        line("p by fold", fold_r)
        print(
            "        p chosen on the other folds: "
            + ", ".join(f"fold {k} {chosen[k].probability:g}" for k in folds)
        )
        line("unconfirmed", score({k: rule.Settings(p_alert, product.hysteresis, None) for k in folds}))
        if scale == 1.0:
            for name, r in (("default", main_r), ("p by fold", fold_r)):
                pod, far, _ = r["big"]
                med = statistics.median(r["leads"]) if r["leads"] else math.nan
                target = (med >= 30 * 60, pod >= 0.9, far <= 0.2)
                print(
                    f"        target at the default errors (P >= 2 y), {name}: median lead >= 30 min "
                    f"{mark(target[0])}, POD >= 0.9 {mark(target[1])}, FAR <= 0.2 {mark(target[2])}"
                )
    print(f"\nTotal {time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
