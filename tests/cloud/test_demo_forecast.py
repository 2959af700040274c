"""The demo's forecasts (simulators.demo_weather): its sites' simulated past is enough to fit their
models, and the rainfall forecast of the coming storm raises a forecast alert at the site that
floods well before its water, as its simulator plays it, reaches warning; the site that stays
dry gets none. On the demo's own parts (fleet, registry, forecast document, forecaster), on a
controllable clock."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from cloud.config import ForecastConfig
from cloud.db.schema import alert_transitions, alerts, rainfall_forecasts
from cloud.db.store import Store
from cloud.forecast.service import FORECAST_DEV, Forecaster
from cloud.ingest import Ingestor
from cloud.rainfall import Forecasts
from cloud.registry import load_registry
from cloud.retention import Retention
from cloud.tickets import Tickets
from floodgate.clock import ManualClock
from floodgate.wire import Sequencer
from simulators import demo_weather
from simulators.fleet import fleet, registry_yaml
from tests.cloud.test_ingest import msg

MIN = 60_000
WARNING, DANGER = 150.0, 270.0  # the fleet's thresholds (simulators.fleet.site_yaml)


async def born(ing: Ingestor, seqs: dict[str, Sequencer], node: str, ts: int) -> None:
    seqs[node] = Sequencer(node, boot=1)
    body = {
        "agent_version": "0.1.0",
        "config_hash": "abc",
        "site": {"name": node, "lat": 23.1, "lon": 113.4},
        "devices": [
            {
                "id": "lvl-1",
                "kind": "level",
                "model": "generic-rs485-level",
                "unit": "mm",
                "thresholds": {"warning": WARNING, "danger": DANGER},
            },
        ],
    }
    await ing.ingest([msg(seqs[node], "birth", body, ts)])


async def depth(ing: Ingestor, seq: Sequencer, ts: int, mm: float) -> None:
    r = {"dev": "lvl-1", "ts": ts, "metric": "depth_mm", "value": mm, "quality": "good"}
    await ing.ingest([msg(seq, "telemetry", {"readings": [r]}, ts)])


def test_the_weather_sites_are_the_dry_ones_and_their_storm_floods_warns_and_spares() -> None:
    weather = demo_weather.weather_for(fleet(16))
    assert [w.node for w in weather] == ["hp-03", "hp-05", "hp-07", "hp-11", "hp-13", "hp-15"]
    peaks = {w.role: max(demo_weather.coming_depth(w)) for w in weather}
    assert peaks["floods"] > DANGER and WARNING < peaks["warns"] < DANGER and peaks["stays dry"] < WARNING
    # The simulator plays it in real time: at x10, 3000 scenario seconds are the model's 5 min.
    w = weather[0]
    sc = demo_weather.scenario(w, speed=10)
    assert sc.true_depth(0) == 0.0
    assert abs(sc.true_depth(10 * 25 * 60) - demo_weather.coming_depth(w)[4]) < 0.1
    # Its past is simulated and says so; every storm the forecaster would count.
    p = demo_weather.past(w, 1_780_000_000_000)
    assert len(p.rain) == demo_weather.PAST_STORMS
    assert {r["source"] for r in p.rain} == {demo_weather.PAST_SOURCE} and "simulated" in p.rain[0]["source"]
    assert max(t for *_, t, _ in p.depth) < 1_780_000_000_000 - 86_400_000


async def test_the_demo_forecaster_alerts_ahead_of_the_measured_warning(store: Store, tmp_path: Path) -> None:
    clock = ManualClock()
    sites = fleet(8)
    (tmp_path / "registry.yaml").write_text(registry_yaml(sites, accept_min=5), encoding="utf-8")
    tickets = Tickets(store, load_registry(tmp_path / "registry.yaml"), clock)
    ing = Ingestor(store, tickets)
    settings = ForecastConfig(every_s=60, probability=0.5, confirm_rain_mm=None)  # as the demo's
    f = Forecaster(store, clock, Retention(store, clock, raw_days=30), ing, tickets, settings)
    weather = {w.node: w for w in demo_weather.weather_for(sites)}
    assert [(n, w.role) for n, w in weather.items()] == [
        ("hp-03", "floods"),
        ("hp-05", "warns"),
        ("hp-07", "stays dry"),
    ]
    seqs: dict[str, Sequencer] = {}
    t0 = clock.now_ms()
    for node in weather:
        await born(ing, seqs, node, t0)
        await depth(ing, seqs[node], t0, 0.0)
    assert await demo_weather.seed(store, list(weather.values()), t0) > 3 * 400
    async with store.read() as conn:
        assert (await conn.execute(select(rainfall_forecasts.c.id))).all(), "the past's rain"
    await Forecasts(store, clock).accept(demo_weather.forecast_doc(sorted(weather), t0), "demo feed")
    assert await f.refit_due() == 3, "each site fitted from its simulated past alone"
    await f.run_once()

    # The simulators play each site's water in real time; the forecaster runs every minute on it.
    plays = {n: demo_weather.scenario(w, speed=1) for n, w in weather.items()}
    measured: dict[str, int] = {}  # node -> when its sensor first read warning
    for _ in range(60):
        clock.advance(MIN)
        now = clock.now_ms()
        for node, sc in plays.items():
            mm = sc.true_depth((now - t0) / 1000)
            await depth(ing, seqs[node], now, mm)
            if mm >= WARNING:
                measured.setdefault(node, now)
        await f.run_once()

    async with store.read() as conn:
        q = (
            select(
                alerts.c.node, alert_transitions.c.level, alert_transitions.c.ts, alert_transitions.c.eta_s
            )
            .join_from(alert_transitions, alerts, alerts.c.id == alert_transitions.c.alert_id)
            .where(alerts.c.dev == FORECAST_DEV)
            .order_by(alert_transitions.c.ts)
        )
        rows = (await conn.execute(q)).mappings().all()
    first = {}
    for r in rows:
        first.setdefault(r["node"], r)
    assert set(measured) == {"hp-03", "hp-05"}, measured
    assert set(first) == {"hp-03", "hp-05"}, "no forecast alert at the site that stays dry"
    for node in ("hp-03", "hp-05"):
        a = first[node]
        assert a["ts"] == t0, f"{node}: alerted as the forecast came in"
        lead_min = (measured[node] - a["ts"]) / MIN
        assert lead_min >= 15, f"{node}: alerted only {lead_min:g} min before its water reached warning"
        # and it said when: within a step or two of when the water came
        expected = a["ts"] + a["eta_s"] * 1000
        assert abs(expected - measured[node]) <= 12 * MIN, (node, json.dumps(dict(a)))
    assert first["hp-03"]["level"] == "danger" and first["hp-05"]["level"] == "warning"
