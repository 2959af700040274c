"""The demo's weather: a simulated past for the forecast model to learn from, and the storm coming.

The demo's sites start with no history, so no site could be fitted and no forecast made. The
sites the demo's storm plan keeps dry in its fast loops (``fleet``'s ``dry`` scenario) get a
weather of their own, on the collector's real clock:

- a **catchment**: known parameters of the collector's own storage model
  (``cloud.forecast.model``), different per site, so that in the coming storm some flood to
  danger, some only warn and some stay dry (``CATCHMENTS``, by the site's place among them);
- a **simulated past** (``past``): ``PAST_STORMS`` storms of the storm library
  (``simulators.storms``: Guangzhou's design storms, scaled), one a day over the last days,
  played through that catchment: the depth of the site's level sensor (with sensor noise) and
  the rain, stored as rainfall analyses of source ``PAST_SOURCE`` (the sites have no gauge).
  It is simulated, and says so in its source;
- the **coming storm** (``coming``): a design storm starting ``LEAD_MIN`` after the demo starts
  and coming again every ``CYCLE_MIN``: the rainfall forecast the demo posts at each cycle's
  start (``forecast_doc``, source ``FEED_SOURCE``, with its 10 and 90 % quantiles), and the water
  the site's simulator plays, in real time (``scenario``): the catchment's response to the rain
  that falls (the forecast's median).

Both are the same catchment's, so the forecast comes true here; how the model does on water
that behaves like water is the bench's to say (bench/forecast_lead.py on EPA SWMM storms).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from cloud.forecast import model
from simulators.scenarios import Scenario
from simulators.storms.hyetograph import Storm, chicago, storm_library
from simulators.storms.idf import load_idf

STEP_S = 300  # the forecast model's step (ForecastConfig.step_s's default)
PAST_STORMS = 8  # one a day over the last 8 days
PAST_SOURCE = "simulated history (floodgate demo)"
FEED_SOURCE = "simulated nowcast (floodgate demo)"
LEAD_MIN = 0  # the storm's rain starts this long after the forecast is issued (a nowcast: at once)
CYCLE_MIN = 120  # and comes again this often (a new forecast each time)
HORIZON_MIN = 180  # the forecast's length
QUANTILES = {"0.1": 0.6, "0.9": 1.4}  # the forecast's spread around its median (x the median)
NOISE_MM = 2.0  # the level sensor's noise in the simulated past
DEPTH_DEV = "lvl-1"  # the demo site's level sensor (simulators.fleet.site_yaml)

# Catchments of the demo's forecast sites, in the order of the sites: (what they do in the coming
# storm, parameters). Thresholds are the fleet's: warning 150 mm, danger 270 mm.
CATCHMENTS: list[tuple[str, model.Params]] = [
    ("floods", model.Params(initial_loss_mm=4.0, lag_min=8.0, drain_mm_h=30.0, fill_mm=180.0, shape=1.5)),
    ("warns", model.Params(initial_loss_mm=6.0, lag_min=10.0, drain_mm_h=35.0, fill_mm=570.0, shape=1.8)),
    (
        "stays dry",
        model.Params(initial_loss_mm=8.0, lag_min=10.0, drain_mm_h=80.0, fill_mm=1140.0, shape=2.0),
    ),
]


@dataclass(frozen=True)
class Weather:
    """One forecast site's weather: its catchment and what the storm does there."""

    node: str
    role: str  # floods, warns, stays dry
    params: model.Params


def weather_for(sites: list[Any]) -> list[Weather]:
    """The demo's forecast sites (``FleetSite``s of the ``dry`` scenario), each with its catchment."""
    dry = [s for s in sites if s.scenario == "dry"]
    return [Weather(s.node, *CATCHMENTS[i % len(CATCHMENTS)]) for i, s in enumerate(dry)]


def _per_step(storm: Storm, scale: float = 1.0) -> list[float]:
    """The storm's intensity (mm/h) per model step (the minutes averaged)."""
    per = STEP_S // 60
    mm_h = storm.mm_h()
    return [scale * sum(mm_h[i : i + per]) / len(mm_h[i : i + per]) for i in range(0, len(mm_h), per)]


def coming_rain() -> list[float]:
    """The coming storm's rain (mm/h per step) from the forecast's issue: dry for ``LEAD_MIN``,
    then a 5-year, 1-hour Chicago storm (76 mm, its peak 20 min in), then dry to the end of the forecast."""
    storm = chicago(load_idf()[5.0], 60, 0.35)
    rain = [0.0] * (LEAD_MIN * 60 // STEP_S) + _per_step(storm)
    n = HORIZON_MIN * 60 // STEP_S
    return (rain + [0.0] * n)[:n]


def coming_depth(w: Weather) -> list[float]:
    """The depth (mm) at each step's end in the coming storm: the catchment's response."""
    return model.simulate(w.params, coming_rain(), STEP_S)


def scenario(w: Weather, speed: float) -> Scenario:
    """The site's water for its simulator: the coming storm's depth in real time (the simulator
    runs ``speed`` scenario seconds a real second), again every ``CYCLE_MIN``."""
    step = STEP_S * speed
    depth = coming_depth(w)[: CYCLE_MIN * 60 // STEP_S]
    segments = [(step, round(d, 1)) for d in depth]
    segments += [(step, 0.0)] * (CYCLE_MIN * 60 // STEP_S - len(depth))
    return Scenario(f"forecast-{w.role}", segments, loop=True)


def forecast_doc(nodes: list[str], issued_ms: int) -> dict[str, Any]:
    """The rainfall forecast of the coming storm for ``nodes`` (floodgate.rainfall/1), issued at
    ``issued_ms``: steps of ``STEP_S`` over ``HORIZON_MIN``, the median and two quantiles."""
    from cloud.rainfall import iso  # noqa: PLC0415

    rain = [round(v, 1) for v in coming_rain()]
    steps = [issued_ms + k * STEP_S * 1000 for k in range(len(rain) + 1)]
    quantiles = {q: [round(v * f, 1) for v in rain] for q, f in QUANTILES.items()}
    return {
        "format": "floodgate.rainfall/1",
        "issued": iso(issued_ms),
        "source": FEED_SOURCE,
        "steps": [iso(t) for t in steps],
        "sites": [{"node": n, "mm_h": rain, "quantiles": quantiles} for n in nodes],
    }


@dataclass
class Past:
    """A site's simulated past: depth readings and rainfall analyses (the rows to store)."""

    depth: list[tuple[str, str, str, int, float]]  # (node, dev, metric, ts, mm)
    rain: list[dict[str, Any]]  # rainfall_forecasts rows


def past(w: Weather, now_ms: int, seed: int = 0) -> Past:
    """``PAST_STORMS`` storms of the library, scaled, one a day (in the afternoon) over the days
    before ``now_ms``, through the site's catchment; the last one ended a day or more ago."""
    from cloud.rainfall import digest  # noqa: PLC0415

    rng = random.Random(f"{w.node}/{seed}")
    library = [s for s in storm_library() if s.kind != "dry"]
    day = 86_400_000
    midnight = now_ms - now_ms % day
    depth: list[tuple[str, str, str, int, float]] = []
    rain_rows: list[dict[str, Any]] = []
    for k in range(PAST_STORMS, 0, -1):
        storm = rng.choice(library)
        # From a shower to the design storm itself: some pond, some do not.
        rain = _per_step(storm, rng.choice((0.4, 0.6, 0.8, 1.0, 1.2)))
        rain += [0.0] * (6 * 3600 // STEP_S)  # and the hours after it, while the sag drains
        start = midnight - (k + 1) * day + 6 * 3_600_000 + rng.randrange(0, 6) * 3_600_000
        start -= start % (STEP_S * 1000)
        for i, d in enumerate(model.simulate(w.params, rain, STEP_S)):
            noisy = max(0.0, d + rng.gauss(0.0, NOISE_MM)) if d > 0 else 0.0
            t = start + i * STEP_S * 1000 + STEP_S * 500  # read in the step, as telemetry averages it
            depth.append((w.node, DEPTH_DEV, "depth_mm", t, round(noisy, 1)))
        steps = [start + i * STEP_S * 1000 for i in range(len(rain) + 1)]
        steps_json = _json(steps)
        series_json = _json({"mm_h": [round(v, 2) for v in rain]})
        rain_rows.append(
            {
                "node": w.node,
                "issued_ms": start,
                "source": PAST_SOURCE,
                "start_ms": steps[0],
                "end_ms": steps[-1],
                "steps": steps_json,
                "series": series_json,
                "via": "site",
                "origin": "demo: simulated history",
                "received_ms": now_ms,
                "digest": digest(start, PAST_SOURCE, steps_json, series_json),
            }
        )
    return Past(depth, rain_rows)


def _json(v: Any) -> str:
    import json  # noqa: PLC0415

    return json.dumps(v, sort_keys=True)


async def seed(store: Any, weather: list[Weather], now_ms: int) -> int:
    """Store each site's simulated past (``past``) in the collector's database (``cloud.db``'s
    ``Store``); returns the depth readings stored. Its rain is stored as rainfall analyses that
    wake nothing: the forecaster fits the sites at its next round."""
    from cloud.db import rainfall, readings  # noqa: PLC0415

    depth: list[tuple[str, str, str, int, float]] = []
    rain: list[dict[str, Any]] = []
    for w in weather:
        p = past(w, now_ms)
        depth += p.depth
        rain += p.rain
    n = await readings.add_history(store, depth)
    async with store.begin() as conn:
        await rainfall.store(conn, rain)
    return n
