"""One forecast round with N sites, and what its refits cost the collector's intake (review F2).

N sites are born (a level sensor with thresholds and a rain gauge) with ``--days`` of simulated
storms (``cloud.forecast.model.simulate``, noisy depth, 5-min samples, stored as good readings)
and a rainfall forecast, none fitted yet, on SQLite in a temporary folder. While the round runs,
an intake task in the same event loop stores telemetry through the real ``Ingestor`` as fast as
it can (batches of 10 messages of 10 readings); its rate before the round is the baseline.

Two ways, each on a fresh database, ``--runs`` times (medians printed):

- **before** (the code before review F2): the round refits every site due first, each fit in a
  thread of this process, then runs the sites: nothing is forecast until every fit is done, and
  the fits (pure Python) hold the interpreter lock against the intake.
- **after**: the round runs the sites first, then refits, each fit in a worker process
  (``forecast.fit_processes``: 1).

Printed per way: the time from the round's start until its runs were stored (what a forecast
alert waits for), the refits' time, the intake's rate during the refits as a ratio of its
baseline (1.0: untouched), and the runs' cost per site (a round of N fitted sites). With
``refit_budget_s`` (30 by default) a round of the "after" code stops its refits at the budget;
the number of rounds N first fits then take is printed from the measured time per fit.

    .venv/bin/python bench/forecast_round.py [--sites 6] [--days 30] [--runs 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cloud.config import ForecastConfig
from cloud.db import readings as readings_db
from cloud.db.store import Store
from cloud.forecast.model import Params, simulate
from cloud.forecast.service import Forecaster
from cloud.ingest import Ingestor, Received
from cloud.rainfall import Forecasts, iso
from cloud.retention import Retention
from floodgate.clock import ManualClock
from floodgate.wire import Sequencer

DT = 300.0
TRUE = Params(initial_loss_mm=6.0, lag_min=20.0, drain_mm_h=18.0, fill_mm=40.0, shape=1.6)
NOW = 1_780_000_000_000


def msg(seq: Sequencer, kind: str, body: dict[str, Any], ts: int) -> Received:
    payload = {**seq.envelope(ts), **body}
    return Received(f"floodgate/v1/{seq.node}/{kind}", json.dumps(payload).encode(), ts)


def storm_history(seed: int, days: int) -> list[tuple[int, float, float]]:
    """``days`` of 5-min (t_ms, depth, rain) ending at NOW: a storm a day or so, dry between."""
    rng = random.Random(seed)
    rain: list[float] = []
    while len(rain) * DT < days * 86400:
        peak, hours = rng.choice([10.0, 35.0, 60.0, 90.0, 120.0]), rng.uniform(1.0, 3.0)
        n = int(hours * 3600 / DT)
        rain += [peak * math.sin(math.pi * (k + 0.5) / n) for k in range(n)]
        rain += [0.0] * int(rng.uniform(14, 22) * 3600 / DT)
    rain = rain[: int(days * 86400 / DT)]
    starts = [0] + [k for k in range(1, len(rain)) if rain[k] > 0 and rain[k - 1] == 0]
    depth: list[float] = []
    for a, b in zip(starts, [*starts[1:], len(rain)], strict=True):
        depth += simulate(TRUE, rain[a:b], DT)
    t0 = NOW - len(rain) * int(DT * 1000)
    return [
        (t0 + k * int(DT * 1000), max(0.0, d + rng.gauss(0, 5.0)) if d > 0 else 0.0, r)
        for k, (d, r) in enumerate(zip(depth, rain, strict=True))
    ]


async def make_sites(store: Store, ing: Ingestor, clock: ManualClock, n: int, days: int) -> None:
    rows: list[tuple[str, str, str, int, float]] = []
    for i in range(n):
        node = f"hp-{i:03d}"
        seq = Sequencer(node, boot=1)
        body = {
            "agent_version": "0.1.0",
            "config_hash": "abc",
            "site": {"name": node, "lat": 23.1, "lon": 113.4},
            "devices": [
                {"id": "lvl-1", "kind": "level", "model": "m", "unit": "mm",
                 "thresholds": {"warning": 150.0, "danger": 300.0}},
                {"id": "rain-1", "kind": "rain", "model": "tipping-bucket"},
            ],
        }  # fmt: skip
        await ing.ingest([msg(seq, "birth", body, NOW)])
        for t, d, r in storm_history(i, days):
            rows.append((node, "lvl-1", "depth_mm", t, d))
            rows.append((node, "rain-1", "rain_intensity_mm_h", t, r))
        rows.append((node, "lvl-1", "depth_mm", NOW, 0.0))
    await readings_db.add_history(store, rows)
    steps = [NOW + k * 600_000 for k in range(19)]
    doc = {
        "format": "floodgate.rainfall/1",
        "issued": iso(NOW),
        "source": "bench",
        "steps": [iso(t) for t in steps],
        "sites": [{"node": f"hp-{i:03d}", "mm_h": [20.0] * 18} for i in range(n)],
    }
    await Forecasts(store, clock).accept(doc, "bench")


@dataclass
class Intake:
    """Telemetry stored as fast as the loop lets it: readings counted with their times."""

    ing: Ingestor
    stamps: list[tuple[float, int]]
    stop: bool = False

    async def run(self) -> None:
        seq = Sequencer("intake-1", boot=1)
        ts = NOW
        while not self.stop:
            batch = []
            for _ in range(10):
                ts += 1000
                rs = [
                    {"dev": "lvl-1", "ts": ts + j, "metric": "depth_mm", "value": 1.0, "quality": "good"}
                    for j in range(10)
                ]
                batch.append(msg(seq, "telemetry", {"readings": rs}, ts))
            await self.ing.ingest(batch)
            self.stamps.append((time.perf_counter(), 100))

    def rate(self, a: float, b: float) -> float:
        n = sum(k for t, k in self.stamps if a < t <= b)
        return n / (b - a) if b > a else float("nan")


async def one(way: str, sites: int, days: int, baseline_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(f"sqlite:///{Path(tmp) / 'fc.db'}")
        await store.migrate()
        clock = ManualClock(NOW)
        ing = Ingestor(store)
        await make_sites(store, ing, clock, sites, days)
        before = way == "before"
        s = ForecastConfig(fit_processes=0 if before else 1, refit_budget_s=3600)
        f = Forecaster(store, clock, Retention(store, clock), ing, None, s)
        intake = Intake(ing, [])
        task = asyncio.create_task(intake.run())
        try:
            await asyncio.sleep(baseline_s)  # the intake alone (a bench, not a test: wall time)
            t0 = time.perf_counter()
            if before:
                r0 = time.perf_counter()
                fitted = await f.refit_due()
                r1 = time.perf_counter()
                await f.run_once()
                t_runs = time.perf_counter()
            else:
                await f.run_once()
                t_runs = time.perf_counter()
                r0 = time.perf_counter()
                fitted = await f.refit_due()
                r1 = time.perf_counter()
            assert fitted == sites, f"{fitted} of {sites} fitted"
            c0 = time.perf_counter()
            await f.run_once()  # a round of fitted sites: the runs' own cost
            c1 = time.perf_counter()
            await asyncio.sleep(0)
        finally:
            intake.stop = True
            await task
            f.close()
            await store.close()
        base = intake.rate(t0 - baseline_s, t0)
        return {
            "until_runs_s": t_runs - t0,
            "refits_s": r1 - r0,
            "per_fit_s": (r1 - r0) / sites,
            "intake_ratio": intake.rate(r0, r1) / base,
            "baseline_rps": base,
            "runs_per_site_ms": (c1 - c0) / sites * 1000,
        }


async def main(args: argparse.Namespace) -> None:
    print(f"{args.sites} sites, {args.days} days of history each, SQLite; load {os.getloadavg()[0]:.2f}")
    results: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.runs):
        for way in ("before", "after"):
            results[way].append(await one(way, args.sites, args.days, args.baseline_s))
    print(
        f"{'way':7} {'runs stored after':>18} {'refits':>8} {'per fit':>8} "
        f"{'intake during refits':>21} {'runs per site':>14}"
    )
    med: dict[str, dict[str, float]] = {}
    for way, rs in results.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        med[way] = m
        print(
            f"{way:7} {m['until_runs_s']:>17.2f}s {m['refits_s']:>7.2f}s {m['per_fit_s']:>7.2f}s "
            f"{m['intake_ratio']:>13.2f} of {m['baseline_rps']:.0f}/s {m['runs_per_site_ms']:>11.1f} ms"
        )
    a = med["after"]
    per_round = max(1, math.floor(30.0 / a["per_fit_s"]) + 1)
    print(
        f"1,000 sites: runs {a['runs_per_site_ms'] * 1000 / 1000:.1f} s a round; first fits at "
        f"{a['per_fit_s']:.2f} s each within refit_budget_s 30: {per_round} a round, all in "
        f"{math.ceil(1000 / per_round)} rounds; before, the first round held every forecast for "
        f"{1000 * med['before']['per_fit_s'] / 60:.0f} min; load {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sites", type=int, default=6)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--baseline-s", type=float, default=3.0)
    asyncio.run(main(p.parse_args()))
