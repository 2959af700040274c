"""Each site's depth forecast from rainfall, its fits, and the ``forecast`` alerts it raises.

``Forecaster`` (one per collector, driven by its clock; its settings are the collector
config's ``forecast``, ``cloud.config.ForecastConfig``; docs/rainfall-forecast.md):

- **fits** (``refit``): a site's history of depth (its first level sensor with thresholds) and
  rain (its rain gauge's intensity, else the rainfall forecasts stored for it, the latest issued
  for each time) over ``history_days``, fitted by ``cloud.forecast.model.fit``; each
  fit is kept (``site_fits``) with its span, samples and error. On demand (the API) and on a
  schedule: a site with a rain gauge or a rainfall forecast stored whose latest fit, or last
  try, is older than ``refit_every_h``, after the round's runs, within ``refit_budget_s`` a round
  and spread over ``refit_every_h``; each fit in a worker process (``fit_processes``).
- **runs** (``forecast``): the latest fit run forward from the depth now on the site's latest
  rainfall forecast (its members, else its quantiles, else its best estimate), over
  ``horizon_h``: the p10/p50/p90 band and, per level, the probability of crossing and when.
  Every ``every_s`` each fitted site's run is stored (``site_forecasts``): ``at_risk`` reads them.
- **alerts** (the rule: ``cloud.forecast.rule``): a site whose probability of crossing warning
  (or danger) within the horizon reaches ``probability``, once the storm is confirmed there
  (``confirm_rain_mm`` of rain measured in the last hour, or water now), gets a ``forecast``
  alert of the collector's own (device ``rain-model``): ``eta_s``, the predicted peak as
  ``value``, the level's threshold and the probability. An update when the expected crossing
  moves by 10 min or more or the probability by 0.1; held while the level stays
  ``probability - hysteresis`` likely, the measured depth rises or the rain still falls; a
  clear when none of these holds (or the forecast goes stale). It opens or joins the site's
  flood ticket (one per site: a measured alert later joins it too), whose dispatch deadline
  becomes the earlier of its priority's and ``dispatch_lead_min`` before the expected crossing.
  A forecast never moves a gate: nothing here sends a command.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import multiprocessing
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud.config import ForecastConfig
from cloud.db import forecast as db
from cloud.db import rainfall as rain_db
from cloud.db import readings as readings_db
from cloud.db import turns
from cloud.db.store import Store
from cloud.events import Bus, ForecastRound, TicketsChanged
from cloud.forecast import FORECAST_DEV, model, rule
from cloud.ingest import Ingestor, Transition
from cloud.rainfall import iso
from cloud.retention import Retention
from cloud.tickets import TicketEvent, Tickets
from floodgate import wire
from floodgate.clock import Clock, sleep_until_or
from floodgate.errors import RequestError
from floodgate.ids import new_ulid
from floodgate.vocab import LEVEL_RANK

log = logging.getLogger("floodgate.cloud.forecast")

DEPTH_METRIC = "depth_mm"
RAIN_METRIC = "rain_intensity_mm_h"
WATER_LEVELS = ("warning", "danger")
MOVED_S = 600  # an open forecast is updated when its expected crossing moves this much
MOVED_P = 0.1  # or its probability this much
BUSY_RETRY_MS = 1000  # woken while another collector has the turn: try again this soon
WET_BEFORE_S = 6 * 3600  # rain this far back warms the model (initial loss, runoff on its way)


class NoHistory(RequestError):
    """A site that cannot be fitted: unknown, no level sensor, too little history (``why``)."""


@dataclass
class SiteRun:
    """One site's forecast as the API gives it (``as_json``)."""

    node: str
    status: str  # ok, no_model, no_rain, stale; pending (stored): fitted, no round run since
    detail: str | None
    issued_ms: int
    rain_issued_ms: int | None = None
    rain_source: str | None = None
    fit: dict[str, Any] | None = None
    warning_mm: float | None = None
    danger_mm: float | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    crossing: list[dict[str, Any]] = field(default_factory=list)
    peak_mm: float | None = None
    measured: rule.Measured | None = None  # the depth and rain at the site now (the alert rule)
    # The newest depth is not good but a good one is recent (within depth_stale_s): an open
    # forecast alert stands as it is, neither cleared nor moved.
    unsure: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "site_id": self.node,
            "status": self.status,
            "detail": self.detail,
            "issued_at": iso(self.issued_ms),
            "rain_issued_at": iso(self.rain_issued_ms) if self.rain_issued_ms is not None else None,
            "rain_source": self.rain_source,
            "fit": self.fit,
            "warning_mm": self.warning_mm,
            "danger_mm": self.danger_mm,
            "steps": self.steps,
            "crossing": self.crossing,
            "peak_mm": self.peak_mm,
        }


def fit_json(row: Any) -> dict[str, Any]:
    return {
        "fitted_at": iso(row["fitted_ms"]),
        "rmse_mm": round(float(row["rmse_mm"]), 2),
        "span_from": iso(row["span_from_ms"]),
        "span_to": iso(row["span_to_ms"]),
        "n": int(row["n"]),
        "events": int(row["events"]),
        "dev": row["dev"],
        "rain": row["rain"],
        "params": json.loads(row["params"]),
    }


def _quiet_on_sigint() -> None:
    """A fit worker ignores SIGINT: Ctrl-C reaches the terminal's whole process group, and the
    collector (or the demo) stops its workers itself; each would print a KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def fit_pool(processes: int) -> ProcessPoolExecutor:
    """The fits' worker processes: forkserver (a clean process, not a fork of this threaded one)."""
    ctx = multiprocessing.get_context("forkserver")
    return ProcessPoolExecutor(processes, mp_context=ctx, initializer=_quiet_on_sigint)


class Forecaster:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        retention: Retention,
        ingestor: Ingestor | None = None,
        tickets: Tickets | None = None,
        settings: ForecastConfig | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention = retention
        self.ingestor = ingestor
        self.tickets = tickets
        self.s = settings or ForecastConfig()
        self.bus = bus or Bus()
        self.wake = asyncio.Event()
        self.runs = 0  # turns of the loop (tests wait on it)
        self.next_ms: int | None = None  # when this collector's loop next takes its turn
        self.rounds = 0  # rounds this collector ran (with several collectors, each round runs on one)
        self._tried: dict[str, int] = {}  # node -> when a scheduled refit last found too little
        self._failing = False
        # A rainfall forecast issued further than this past its receipt is passed over.
        self._ahead_ms = int(self.s.issued_ahead_min * 60_000)
        self._pool: ProcessPoolExecutor | None = None  # the fits' worker processes, made on the first fit
        self.refits = 0  # scheduled refits done (tests and the bench read it)
        self.last_round_ms: int | None = None  # when this collector's last round was issued

    # ------------------------------------------------------------------ the site's data

    async def _sensors(self, node: str) -> tuple[str, dict[str, float], list[str]]:
        """The site's level sensor, them, and its rain gauges.

        Of the level sensors with both thresholds, those read within ``depth_stale_s`` of the
        one read last (a sensor replaced under a new id, silent since, is left behind), the
        first by id: two live sensors at one site give the same one every round, not whichever
        happened to be read last (the forecast swapped sensors between rounds)."""
        async with self.store.read() as conn:
            devs = await db.site_devices(conn, node)
        if not devs:
            raise NoHistory("not_found", f"no site {node!r} known (or it has no devices)")
        gauges = [d["dev"] for d in devs if d["kind"] == "rain"]
        levels = [
            d
            for d in devs
            if d["kind"] == "level"
            and all(isinstance((d["thresholds"] or {}).get(k), int | float) for k in WATER_LEVELS)
        ]
        if not levels:
            raise NoHistory(
                "invalid", f"site {node!r} has no level sensor with warning and danger thresholds"
            )
        newest = max(d["last_reading_ms"] or -1 for d in levels)
        live = [d for d in levels if (d["last_reading_ms"] or -1) >= newest - self.s.depth_stale_s * 1000]
        d = min(live, key=lambda d: d["dev"])
        return d["dev"], {k: float(d["thresholds"][k]) for k in WATER_LEVELS}, gauges

    async def _points(
        self, node: str, dev: str, metric: str, start: int, end: int
    ) -> list[tuple[int, float]]:
        """The series' step averages of its good readings only: a reading the agent marked bad
        or suspect (out of range, a device fault, a spike) neither starts a run nor enters a fit."""
        limit = int((end - start) / (self.s.step_s * 1000)) + 2
        pts = await self.retention.history(
            node, dev, metric, start, end, int(self.s.step_s), limit, good_only=True
        )
        return [(int(p["ts"]), float(p["avg"])) for p in pts]

    async def _rain(
        self, node: str, gauges: list[str], start: int, end: int
    ) -> tuple[str, list[tuple[int, float]]]:
        """Rain intensity (ms, mm/h) over ``start`` to ``end``: a gauge's, else the forecasts'."""
        for g in gauges:
            pts = await self._points(node, g, RAIN_METRIC, start, end)
            if pts:
                return f"gauge {g}", pts
        async with self.store.read() as conn:
            rows = await rain_db.since(conn, node, start, end, self._ahead_ms)
        if not rows:
            return "forecasts", []
        # Decoding 60 days of documents (ensembles: up to 100 x 288 values each) takes a while:
        # in a thread, not on the loop.
        texts = [(r["steps"], r["series"]) for r in rows]
        return "forecasts", await asyncio.to_thread(_rain_grid, texts, start, end, int(self.s.step_s * 1000))

    # ------------------------------------------------------------------------- fits

    async def refit(self, node: str) -> dict[str, Any]:
        """Fit the site's model from its history and keep the fit; ``NoHistory`` says why not."""
        dev, _, gauges = await self._sensors(node)
        now = self.clock.now_ms()
        start = now - int(self.s.history_days * 86_400_000)
        depth = await self._points(node, dev, DEPTH_METRIC, start, now)
        source, rain = await self._rain(node, gauges, start, now)
        samples = [model.Sample(t, d, None) for t, d in depth] + [model.Sample(t, None, i) for t, i in rain]
        if not samples:
            raise NoHistory("invalid", f"site {node!r} has no depth or rain history")
        got = await self._fit(samples, now)
        if isinstance(got, model.TooLittle):
            raise NoHistory("invalid", f"site {node!r} cannot be fitted: {got} (rain from {source})")
        row = {
            "node": node,
            "fitted_ms": now,
            "span_from_ms": got.span[0],
            "span_to_ms": got.span[1],
            "n": got.n,
            "events": got.events,
            "rmse_mm": got.rmse_mm,
            "params": json.dumps(got.params.as_dict()),
            "dt_s": self.s.step_s,
            "dev": dev,
            "rain": source,
        }
        async with self.store.begin() as conn:
            await db.add_fit(conn, row)
        log.info("site %s fitted", node, extra={"rmse_mm": round(got.rmse_mm, 2), "events": got.events})
        return fit_json(row)

    async def _fit(self, samples: list[model.Sample], now: int) -> model.Fit | model.TooLittle:
        """``model.fit`` in a worker process (``fit_processes``; pure Python, ~1 s of CPU for 60
        days: in a thread it would hold the interpreter lock and slow the collector's intake)."""
        fit = functools.partial(model.fit, samples, dt_s=self.s.step_s, fitted_at_ms=now)
        if self.s.fit_processes == 0:
            return await asyncio.to_thread(fit)
        if self._pool is None:
            self._pool = fit_pool(self.s.fit_processes)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fit)
        except BrokenProcessPool:
            # A worker died (the OOM killer, an operator's kill): the pool is of no more use, every
            # later fit would fail. New workers, and the fit tried once more in them.
            log.warning("a fit worker process died; starting new ones")
            self.close()
            self._pool = fit_pool(self.s.fit_processes)
            return await loop.run_in_executor(self._pool, fit)

    def close(self) -> None:
        """Stop the fits' worker processes (a fit under way is abandoned)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def refit_due(self) -> int:
        """Refit the sites whose latest fit (or last try) is older than ``refit_every_h``: the
        oldest first (never fitted before fitted), until the round's ``refit_budget_s`` is spent
        (at least one), and of the sites already fitted no more than spreads them over
        ``refit_every_h`` (so they do not all fall due in the same round again)."""
        now = self.clock.now_ms()
        every = int(self.s.refit_every_h * 3_600_000)
        async with self.store.read() as conn:
            sites = sorted(await db.rain_sites(conn))  # without rain there is nothing to learn
            fits = await db.latest_fits(conn)
        due = []
        for node in sites:
            last = max(fits[node]["fitted_ms"] if node in fits else -every, self._tried.get(node, -every))
            if now - last >= every:
                due.append((node in fits, last, node))
        due.sort()
        share = math.ceil(len(sites) * self.s.every_s * 1000 / every)  # of the fitted, per round
        budget_end = time.monotonic() + self.s.refit_budget_s
        done = tried = refitted = 0
        for had_fit, _, node in due:
            if tried and time.monotonic() >= budget_end:
                break
            if had_fit:
                if refitted >= share:
                    break
                refitted += 1
            tried += 1
            try:
                await self.refit(node)
                done += 1
                self.refits += 1
            except NoHistory as exc:
                self._tried[node] = now
                log.debug("site %s not fitted: %s", node, exc.message)
            except Exception as exc:  # this site only: the round's other refits go on
                self._tried[node] = now
                log.warning("site %s not fitted: %s", node, exc, exc_info=exc)
        if tried < len(due):
            log.debug("refits left for later rounds", extra={"due": len(due), "done": tried})
        return done

    # ------------------------------------------------------------------------- runs

    async def _site(
        self, node: str, now: int
    ) -> tuple[SiteRun, tuple[tuple[str, dict[str, float], list[str]], Any, list[Any]] | None]:
        """A run of the site at ``now`` with its thresholds and fit, and (its sensors, its fit's
        row, its latest rainfall forecasts); None in their place when it has no level sensor
        with thresholds or no fit (the run says why: ``no_model``)."""
        run = SiteRun(node, "no_model", None, now)
        try:
            sensors = await self._sensors(node)
        except NoHistory as exc:
            if exc.code == "not_found":
                raise
            run.detail = exc.message
            return run, None
        run.warning_mm, run.danger_mm = sensors[1]["warning"], sensors[1]["danger"]
        async with self.store.read() as conn:
            fit_row = (await db.latest_fits(conn, node)).get(node)
            rains = await rain_db.latest(conn, node, self._ahead_ms)
        if fit_row is None:
            why = self._tried.get(node)
            run.detail = "no model fitted yet" + (" (too little history at the last try)" if why else "")
            return run, None
        run.fit = fit_json(fit_row)
        return run, (sensors, fit_row, rains)

    async def forecast(self, node: str, flush: bool = True, now: int | None = None) -> SiteRun:
        """The site's forecast now (not stored): the band and the crossings, or why not.

        ``flush``: this collector's last heard times written first, as the level sensor is the
        one heard last (``_sensors``); a round flushes once for all its sites. ``now``: the
        time it is issued at (a round issues all its sites' forecasts at its start)."""
        if flush:
            await self.store.flush_heard()
        now = self.clock.now_ms() if now is None else now
        run, site = await self._site(node, now)
        if site is None:
            return run
        (dev, th, gauges), fit_row, rains = site
        fit = model.Fit(
            model.Params.from_dict(json.loads(fit_row["params"])),
            float(fit_row["rmse_mm"]),
            (fit_row["span_from_ms"], fit_row["span_to_ms"]),
            fit_row["n"],
            fit_row["events"],
            fit_row["fitted_ms"],
        )
        if not rains:
            run.status, run.detail = "no_rain", "no rainfall forecast for this site"
            return run
        r = rains[0]
        run.rain_issued_ms, run.rain_source = r["issued_ms"], r["source"]
        if r["issued_ms"] < now - self.s.stale_after_h * 3_600_000 or r["end_ms"] <= now:
            run.status = "stale"
            run.detail = (
                f"the latest rainfall forecast ({r['source']}, issued {iso(r['issued_ms'])}) is out of date"
            )
            return run
        since = now - int(self.s.depth_stale_s * 1000)
        last = await readings_db.newest(self.store, node, dev, DEPTH_METRIC, since)
        depth = await self._points(node, dev, DEPTH_METRIC, since, now) if last is not None else []
        if last is not None and last["quality"] != "good":
            run.status = "stale"
            run.detail = f"the newest depth from {dev} ({iso(int(last['ts']))}) is {last['quality']}"
            # A spike the edge's filter held back, or the first reading of a fast rise: while a
            # good depth is recent the water is unknown for a moment, not gone (an open alert stands).
            run.unsure = bool(depth)
            return run
        if not depth:
            run.status = "stale"
            run.detail = f"no depth from {dev} in the last {self.s.depth_stale_s / 60:g} min"
            return run
        steps, series = await asyncio.to_thread(lambda: (json.loads(r["steps"]), json.loads(r["series"])))
        dt = self.s.step_s
        n = max(1, int(self.s.horizon_h * 3600 / dt))
        grid = [now + int((k + 0.5) * dt * 1000) for k in range(n)]  # each step's middle

        def on_grid(mm_h: list[float]) -> list[float]:
            return [_at(steps, mm_h, t) for t in grid]

        quantiles = {float(q): on_grid(v) for q, v in (series.get("quantiles") or {}).items()}
        members = [on_grid(m) for m in series.get("members") or []]
        scenarios = model.scenarios_from(on_grid(series["mm_h"]), members or None, quantiles or None)
        start = now - WET_BEFORE_S * 1000
        _, before = await self._rain(node, gauges, start, now)
        past = [0.0] * max(1, int(WET_BEFORE_S / dt))  # warm start: the rain observed up to now
        for t, v in before:
            k = int((t - start) // (dt * 1000))
            if 0 <= k < len(past):
                past[k] = v
        b = await asyncio.to_thread(model.band, fit, depth[-1][1], scenarios, dt, th, past_mm_h=past)
        run.status = "ok"
        run.measured = rule.measured(depth, before, now, dt)
        run.steps = [
            {
                "t": iso(now + int((k + 1) * dt * 1000)),
                "p10": round(lo, 1),
                "p50": round(mid, 1),
                "p90": round(hi, 1),
            }
            for k, (lo, mid, hi) in enumerate(zip(b.p10, b.p50, b.p90, strict=True))
        ]
        run.crossing = [
            {
                "level": c.level,
                "threshold_mm": c.threshold_mm,
                "eta_s": None if c.eta_s is None else round(c.eta_s),
                "at": None if c.eta_s is None else iso(now + int(c.eta_s * 1000)),
                "probability": round(c.probability, 3),
            }
            for c in b.crossings
        ]
        run.peak_mm = round(b.peak_mm, 1)
        return run

    async def stored(self, node: str) -> dict[str, Any]:
        """The site's forecast as the last round stored it (``as_json``): the one forecast every
        view shows (the site page, the at-risk list, a ticket's prediction), with the time it
        was issued. A site no round has run: ``no_model`` (no fit) or ``pending`` (fitted, the
        next round runs it), with its thresholds and fit."""
        async with self.store.read() as conn:
            row = await db.run_of(conn, node)
        if row is not None:
            res: dict[str, Any] = json.loads(row["result"])
            for c in res["crossing"]:
                c.pop("at_ms", None)
            res.setdefault("rain_source", None)  # a run stored before it was kept
            return res
        run, site = await self._site(node, self.clock.now_ms())
        if site is not None:
            run.status = "pending"
            run.detail = (
                f"fitted {iso(site[1]['fitted_ms'])}; no forecast round has run the site since"
                f" (one runs every {self.s.every_s:g} s)"
            )
        return run.as_json()

    async def at_risk(self, hours: float) -> list[dict[str, Any]]:
        """Sites whose stored run makes a crossing at least ``probability`` likely within ``hours``,
        by time to it (the highest such level of each site)."""
        now = self.clock.now_ms()
        async with self.store.read() as conn:
            rows = await db.runs(conn, "ok")
        items = []
        for r in rows:
            res = json.loads(r["result"])
            best = None
            for c in res["crossing"]:
                if c["probability"] < self.s.probability or c.get("at_ms") is None:
                    continue
                eta = (c["at_ms"] - now) / 1000
                if -self.s.step_s <= eta <= hours * 3600:
                    best = (c, max(0.0, eta))
            if best is not None:
                c, eta = best
                items.append(
                    {
                        "site_id": r["node"],
                        "name": r["site_name"] or r["node"],
                        "level": c["level"],
                        "eta_s": round(eta),
                        "at": iso(c["at_ms"]),
                        "probability": c["probability"],
                        "peak_mm": res["peak_mm"],
                        "issued_at": res["issued_at"],
                    }
                )
        items.sort(key=lambda i: (i["eta_s"], i["site_id"]))
        return items

    async def coverage(self) -> tuple[dict[str, int], int | None]:
        """How many sites have a current forecast (``forecasting``) and why the others have none:
        ``no_model`` (no fit, so no run either), ``no_rain``, ``stale``; and when the last round
        ran (None: never)."""
        async with self.store.read() as conn:
            total, by, last = await db.run_statuses(conn)
        out = {s: by.get(s, 0) for s in ("no_rain", "stale")}
        out["forecasting"] = by.get("ok", 0)
        out["no_model"] = max(0, total - out["forecasting"] - out["no_rain"] - out["stale"])
        return out, last

    # ----------------------------------------------------------------------- alerts

    async def run_once(self) -> list[TicketEvent]:
        """Forecast every site, store the runs, raise/update/clear the forecast alerts."""
        # This collector's last heard times written first (``Store.flush_heard``): which level
        # sensor a site reads is the one heard last (``_sensors``).
        await self.store.flush_heard()
        now = self.clock.now_ms()
        async with self.store.read() as conn:
            # Sites with a fit, and those with an open forecast (to clear it): the rest have none.
            sites = sorted({*await db.latest_fits(conn), *await db.open_episodes(conn, FORECAST_DEV)})
        found: dict[str, SiteRun] = {}
        for node in sites:
            try:
                found[node] = await self.forecast(node, flush=False, now=now)
            except NoHistory:
                continue
        rows = []
        for node, run in found.items():
            res = run.as_json()
            for c in res["crossing"]:
                c["at_ms"] = None if c["eta_s"] is None else run.issued_ms + int(c["eta_s"] * 1000)
            rows.append({"node": node, "run_ms": now, "status": run.status, "result": json.dumps(res)})
        out: list[TicketEvent] = []
        self.last_round_ms = now
        async with self.store.begin() as conn:
            await db.put_runs(conn, rows)
            if self.ingestor is None:
                return out
            episodes = await db.open_episodes(conn, FORECAST_DEV)
            if not any(self.decide(run, episodes.get(n), now) for n, run in found.items()):
                return out  # most rounds: no ticket lock taken
            await self.store.lock_tickets(conn)  # then read again: what committed meanwhile counts
            episodes = await db.open_episodes(conn, FORECAST_DEV)
            for node, run in found.items():
                step = self.decide(run, episodes.get(node), now)
                if step is None:
                    continue
                a, probability, due = step
                await self.ingestor.record_transitions(
                    conn, [Transition(new_ulid(now), node, a, probability)]
                )
                log.info("site %s: %s", node, a.reason, extra={"level": a.level, "prev": a.prev})
                if self.tickets is not None:
                    await self.tickets.on_alert(conn, node, a, out)
                    if due is not None:
                        await self.tickets.dispatch_by(conn, a.id, *due)
        return out

    def decide(
        self, run: SiteRun, open_: Any, now: int
    ) -> tuple[wire.Alert, float | None, tuple[int, int] | None] | None:
        """The transition this run makes of the site's open forecast episode (``open_``, or None),
        with its probability and (dispatch by, expected crossing); None for none."""
        if run.unsure and open_ is not None:
            return None
        s = rule.Settings(self.s.probability, self.s.hysteresis, self.s.confirm_rain_mm)
        probs = {c["level"]: c for c in run.crossing} if run.status == "ok" else {}
        m = run.measured
        target = "clear"
        for lvl in WATER_LEVELS:  # raised: likely, and the storm confirmed at the site
            c = probs.get(lvl)
            if (
                c is not None
                and c["eta_s"] is not None
                and m is not None
                and rule.raises(c["probability"], m, s)
            ):
                target = lvl
        if open_ is not None and m is not None:  # held once raised (rule.holds), up to its level
            for lvl in WATER_LEVELS:
                c = probs.get(lvl)
                p = 0.0 if c is None or c["eta_s"] is None else c["probability"]
                if LEVEL_RANK[target] < LEVEL_RANK[lvl] <= LEVEL_RANK[open_["level"]] and rule.holds(p, m, s):
                    target = lvl
        was = "clear" if open_ is None else open_["level"]
        if target == "clear":
            if open_ is None:
                return None
            why = run.detail if run.status != "ok" else "the rainfall forecast no longer makes it likely"
            a = wire.Alert(
                id=open_["id"],
                dev=FORECAST_DEV,
                kind="forecast",
                level="clear",
                prev=was,  # type: ignore[arg-type]
                ts=now,
                reason=why,
            )
            return a, None, None
        c = probs[target]
        if c["eta_s"] is None:  # held while the water rises or the rain falls: kept as it stands
            return None
        eta = float(c["eta_s"])
        ran = run.issued_ms  # the site's run (issued at the round's start): its eta counts from it
        if open_ is not None and target == was:
            old_at = open_["ts"] + (open_["eta_s"] or 0) * 1000
            moved = abs(ran + eta * 1000 - old_at) >= MOVED_S * 1000
            if not moved and abs(c["probability"] - (open_["probability"] or 0)) < MOVED_P:
                return None
        at = ran + int(eta * 1000)
        reason = (
            f"{c['probability']:.0%} likely to reach {target} ({c['threshold_mm']:g} mm) by {iso(at)}, "
            f"peak {run.peak_mm:g} mm, from rainfall forecast {run.rain_source} issued "
            f"{iso(run.rain_issued_ms or now)}"
        )
        a = wire.Alert(
            id=new_ulid(now) if open_ is None else open_["id"],
            dev=FORECAST_DEV,
            kind="forecast",
            level=target,  # type: ignore[arg-type]
            prev=was,  # type: ignore[arg-type]
            value=run.peak_mm,
            unit="mm",
            threshold=c["threshold_mm"],
            eta_s=eta,
            ts=ran,
            reason=reason,
        )
        return a, float(c["probability"]), (at - int(self.s.dispatch_lead_min * 60_000), at)

    # ---------------------------------------------------------------------- the loop

    async def run(self) -> None:
        """Forecast every site, then refit what is due (within the round's budget), every
        ``every_s`` on the clock."""
        try:
            await self._loop()
        finally:
            self.close()

    async def _loop(self) -> None:
        every = int(self.s.every_s * 1000)
        while True:
            woken = self.wake.is_set()
            self.wake.clear()
            events: list[TicketEvent] = []
            turn: str = "skip"
            try:
                # Once per round across collectors: the one whose turn it is (db.round_turn).
                async with db.round_turn(self.store, self.clock.now_ms, every, woken) as turn:
                    if turn == "run":
                        # The runs first: a round's alerts are not held up by its refits.
                        events = await self.run_once()
                        if events:
                            await self.bus.publish(TicketsChanged(events))
                        if self.last_round_ms is not None:  # the views show the round's forecasts
                            await self.bus.publish(ForecastRound(self.last_round_ms))
                        await self.refit_due()
                        self.rounds += 1
                if self._failing:
                    log.info("site forecasts run again")
                self._failing = False
            except turns.LeaseLost as exc:  # another collector has the turn: the next round
                log.warning("%s; the next round as usual", exc)
            except Exception:
                if not self._failing:
                    log.exception("site forecasts failed; trying again at the next round")
                else:
                    log.debug("site forecasts failed again", exc_info=True)
                self._failing = True
            self.runs += 1
            if woken and turn == "busy":  # a new rainfall forecast: a round soon after the one under way
                self.wake.set()
                self.next_ms = self.clock.now_ms() + BUSY_RETRY_MS
                await self.clock.sleep_until(self.next_ms)
                continue
            self.next_ms = self.clock.now_ms() + every
            await sleep_until_or(self.clock, self.next_ms, self.wake)


def _rain_grid(texts: list[tuple[str, str]], start: int, end: int, dt: int) -> list[tuple[int, float]]:
    """Stored forecasts' (steps, series JSON) best estimates on a grid of ``dt`` from ``start``
    to ``end``, in the order given (by issue time: a later forecast, or nowcast, of a time wins)."""
    grid = np.full(int((end - start) // dt) + 1, np.nan)
    for steps_text, series_text in texts:
        steps = json.loads(steps_text)
        mm_h = json.loads(series_text)["mm_h"]
        for i, v in enumerate(mm_h):
            a = max(0, math.ceil((steps[i] - start) / dt))
            b = min(grid.size, math.ceil((steps[i + 1] - start) / dt))
            if a < b:
                grid[a:b] = v
    return [(start + k * dt, float(v)) for k, v in enumerate(grid) if not np.isnan(v)]


def _at(steps: list[int], mm_h: list[float], t: int) -> float:
    """The intensity a forecast gives at ``t`` (0 outside its steps)."""
    if t < steps[0] or t >= steps[-1]:
        return 0.0
    lo, hi = 0, len(steps) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if steps[mid] <= t:
            lo = mid
        else:
            hi = mid
    return float(mm_h[lo])
