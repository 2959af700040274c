"""Site forecasts (cloud.forecast) on SQLite and PostgreSQL, on a controllable clock: a site's
history goes in as telemetry, its model is fitted and kept, a rainfall forecast raises a
``forecast`` alert that opens the site's flood ticket, updates it, joins the measured alert's
ticket, clears; the CAP feed publishes it as Likely and Expected; heartbeats do not close it."""

from __future__ import annotations

import asyncio
import json
import math
import random
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy import text as sql

from cloud.config import ForecastConfig
from cloud.db import forecast as forecast_db
from cloud.db import rainfall as rainfall_db
from cloud.db.schema import site_fits
from cloud.db.store import Store
from cloud.forecast.service import FORECAST_DEV, Forecaster, NoHistory
from cloud.ingest import Ingestor, Received
from cloud.interop import Interop, cap_bytes
from cloud.rainfall import Forecasts, iso
from cloud.retention import Retention
from cloud.tickets import Tickets
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud.test_forecast_model import TRUE, history
from tests.cloud.test_ingest import count, msg
from tests.cloud.test_tickets import registry

NODE = "hp-1"
MIN = 60_000
CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"


class Site:
    """A site as its agent reports it: a birth, telemetry of depth and rain, alerts, heartbeats."""

    def __init__(self, ing: Ingestor, node: str = NODE) -> None:
        self.ing = ing
        self.seq = Sequencer(node, boot=1)

    async def born(self, ts: int) -> None:
        body = {
            "agent_version": "0.1.0",
            "config_hash": "abc",
            "site": {"name": "科翔路隧道", "lat": 23.1, "lon": 113.4},
            "devices": [
                {
                    "id": "lvl-1",
                    "kind": "level",
                    "model": "m",
                    "unit": "mm",
                    "thresholds": {"warning": 150.0, "danger": 300.0},
                },
                {"id": "rain-1", "kind": "rain", "model": "tipping-bucket"},
            ],
        }
        await self.ing.ingest([msg(self.seq, "birth", body, ts)])

    async def history(self, end_ms: int, days: int = 12) -> None:
        """``days`` of simulated storms (known parameters, noisy) ending, dry, at ``end_ms``."""
        samples = history(TRUE, seed=3, days=days)
        shift = end_ms - samples[-1].t_ms
        readings: list[dict[str, Any]] = []
        for s in samples:
            t = s.t_ms + shift
            readings.append(
                {"dev": "lvl-1", "ts": t, "metric": "depth_mm", "value": s.depth_mm, "quality": "good"}
            )
            readings.append(
                {
                    "dev": "rain-1",
                    "ts": t,
                    "metric": "rain_intensity_mm_h",
                    "value": s.rain_mm_h,
                    "quality": "good",
                }
            )
        batch: list[Received] = []
        for i in range(0, len(readings), 500):
            part = readings[i : i + 500]
            batch.append(msg(self.seq, "telemetry", {"readings": part}, part[-1]["ts"]))
        for i in range(0, len(batch), 20):
            await self.ing.ingest(batch[i : i + 20])

    async def depth(self, ts: int, mm: float) -> None:
        r = {"dev": "lvl-1", "ts": ts, "metric": "depth_mm", "value": mm, "quality": "good"}
        await self.ing.ingest([msg(self.seq, "telemetry", {"readings": [r]}, ts)])

    async def alert(self, aid: str, level: str, prev: str, ts: int, value: float) -> Any:
        a = {
            "id": aid,
            "dev": "lvl-1",
            "kind": "flood",
            "level": level,
            "prev": prev,
            "value": value,
            "ts": ts,
        }
        return await self.ing.ingest([msg(self.seq, "alert", {"alert": a}, ts)])

    async def heartbeat(self, ts: int) -> None:
        detail = {"alerts": []}  # the node has no episode of its own open
        await self.ing.ingest(
            [msg(self.seq, "event", {"event": {"type": "heartbeat", "detail": detail}}, ts)]
        )


def storm_doc(now: int, start_min: int, peak_mm_h: float, members: int = 0) -> dict[str, Any]:
    """A rainfall forecast issued ``now``: 10-min steps for 3 h, a storm from ``start_min``."""
    steps = [now + k * 10 * MIN for k in range(19)]
    mm_h = [
        peak_mm_h * math.exp(-abs(k * 10 - start_min - 30) / 20) if k * 10 >= start_min else 0.0
        for k in range(18)
    ]
    site: dict[str, Any] = {"node": NODE, "mm_h": [round(v, 1) for v in mm_h]}
    if members:
        rng = random.Random(1)
        site["members"] = [[round(v * rng.uniform(0.8, 1.2), 1) for v in mm_h] for _ in range(members)]
    return {
        "format": "floodgate.rainfall/1",
        "issued": iso(now),
        "source": "gz-nowcast",
        "steps": [iso(t) for t in steps],
        "sites": [site],
    }


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def parts(
    store: Store,
    clock: ManualClock,
    tmp_path: Path,
    lead_min: float = 30.0,
    confirm_rain_mm: float | None = None,
) -> tuple[Tickets, Ingestor, Forecaster]:
    """The forecaster and its ticket loop. The lifecycle tests raise alerts on a dry site from the
    rainfall forecast alone (``confirm_rain_mm`` None); the default confirmation has a test of its own."""
    tickets = Tickets(store, registry(tmp_path), clock)
    ing = Ingestor(store, tickets)
    settings = ForecastConfig(probability=0.5, dispatch_lead_min=lead_min, confirm_rain_mm=confirm_rain_mm)
    f = Forecaster(store, clock, Retention(store, clock, raw_days=30), ing, tickets, settings)
    return tickets, ing, f


async def fitted(store: Store, clock: ManualClock, tmp_path: Path) -> tuple[Site, Ingestor, Forecaster]:
    """A site born now with 12 days of history, fitted."""
    _, ing, f = parts(store, clock, tmp_path)
    site = Site(ing)
    await site.born(clock.now_ms())
    await site.history(clock.now_ms())
    await f.refit(NODE)
    return site, ing, f


async def test_a_site_is_fitted_from_its_history_and_each_fit_is_kept(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    _, ing, f = parts(store, clock, tmp_path)
    site = Site(ing)
    with pytest.raises(NoHistory, match="no site 'hp-1'"):
        await f.refit(NODE)
    await site.born(clock.now_ms())
    await site.history(clock.now_ms(), days=2)
    with pytest.raises(NoHistory, match="too few wet events"):
        await f.refit(NODE)  # two days: too little, and says so
    assert (await f.forecast(NODE)).status == "no_model"
    await site.history(clock.now_ms() - 2 * 86_400_000, days=12)
    got = await f.refit(NODE)
    p = got["params"]
    assert p["drain_mm_h"] == pytest.approx(TRUE.drain_mm_h, rel=0.2)
    assert p["fill_mm"] == pytest.approx(TRUE.fill_mm, rel=0.3)
    assert got["rain"] == "gauge rain-1" and got["dev"] == "lvl-1" and got["events"] >= 8
    clock.advance(MIN)
    await f.refit(NODE)
    assert await count(store, site_fits) == 2, "every fit is kept"
    run = await f.forecast(NODE)
    assert run.status == "no_rain" and run.fit is not None and run.fit["fitted_at"] == iso(clock.now_ms())


async def test_a_forecast_alert_opens_updates_joins_the_measured_ticket_and_clears(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    # Units need 75 min to be in place: a danger ticket's 15 min to dispatch is not enough here.
    tickets, ing, f = parts(store, clock, tmp_path, lead_min=75.0)
    site = Site(ing)
    await site.born(clock.now_ms())
    await site.history(clock.now_ms())
    await f.refit(NODE)
    forecasts = Forecasts(store, clock)

    # A heavy storm expected in 40 min: a forecast alert, and the site's flood ticket.
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await forecasts.accept(storm_doc(now, 40, 110.0, members=10), "test")
    events = await f.run_once()
    assert [e.action for e in events] == ["open"]
    run = await f.forecast(NODE)
    assert run.status == "ok" and len(run.steps) == 36
    assert all(s["p10"] <= s["p50"] <= s["p90"] for s in run.steps)
    cross = {c["level"]: c for c in run.crossing}
    assert cross["danger"]["probability"] >= 0.5
    eta = cross["danger"]["eta_s"]
    assert 40 * 60 < eta < 120 * 60, "after the rain starts"
    total, rows = await tickets.list()
    assert total == 1
    tk = await tickets.get(rows[0]["id"])
    assert tk["priority"] == "danger" and tk["kind"] == "flood"
    # A forecast, not a measurement, says so: the list and the ticket, with what it expects.
    assert rows[0]["forecast"] is True and tk["forecast"] is True
    assert tk["prediction"] == {
        "alert_id": tk["alerts"][0]["id"],
        "level": "danger",
        "threshold": cross["danger"]["threshold_mm"],
        "issued_ms": now,
        "expected_ms": now + int(eta * 1000),
        "peak": run.peak_mm,
        "probability": pytest.approx(cross["danger"]["probability"]),
        "active": True,
        "source": "round",
    }
    made = tk["timeline"][0]  # the collector's own transition: no message, no receipt
    assert made["happened_ms"] == now and made["received_ms"] is None
    # Dispatch before the water: by the expected crossing less the lead, if that is sooner.
    assert tk["dispatch_due_ms"] == max(now, now + int(eta * 1000) - 75 * MIN) < now + 15 * MIN
    assert [e["action"] for e in tk["timeline"]] == ["open", "deadline"]
    d = tk["timeline"][1]["detail"]
    assert d == {
        "code": "forecast_deadline",
        "dispatch_due_ms": tk["dispatch_due_ms"],
        "expected_ms": now + int(eta * 1000),
    }
    assert "expected in" in tk["timeline"][0]["note"]
    at_risk = await f.at_risk(3)
    assert [(i["site_id"], i["level"]) for i in at_risk] == [(NODE, "danger")]
    assert at_risk[0]["name"] == "科翔路隧道" and at_risk[0]["eta_s"] == round(eta)
    assert await f.at_risk(0.5) == [], "not within half an hour"

    # The same run again changes nothing.
    assert await f.run_once() == []

    # The next round moves the crossing by less than the alert's 10 min: the alert stands as it
    # was, but every view shows the new round's forecast, the same one, issued now: the site's
    # (as the site page has it), its item on the at-risk list and its ticket's prediction.
    raised = now + int(eta * 1000)  # the alert's expected crossing
    clock.advance(5 * MIN)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await forecasts.accept(storm_doc(now, 37, 110.0, members=10), "test")
    assert await f.run_once() == []
    tk = await tickets.get(rows[0]["id"])
    assert [e["action"] for e in tk["timeline"]] == ["open", "deadline"], "the alert not updated"
    shown = await f.stored(NODE)
    assert shown["issued_at"] == iso(now) and shown["status"] == "ok"
    at = {c["level"]: c for c in shown["crossing"]}["danger"]["at"]
    assert at != iso(raised) and tk["dispatch_due_ms"] < raised, "the crossing moved a little"
    [item] = await f.at_risk(3)
    assert (item["at"], item["issued_at"], item["peak_mm"]) == (at, iso(now), shown["peak_mm"])
    pred = tk["prediction"]
    assert (iso(pred["expected_ms"]), pred["issued_ms"], pred["peak"], pred["source"]) == (
        at,
        now,
        shown["peak_mm"],
        "round",
    )
    assert pred["probability"] == item["probability"]

    # The storm forecast an hour later updates it.
    clock.advance(5 * MIN)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await forecasts.accept(storm_doc(now, 90, 110.0, members=10), "test")
    await f.run_once()
    tk = await tickets.get(rows[0]["id"])
    assert [e["action"] for e in tk["timeline"]] == ["open", "deadline", "alert"]
    later = {c["level"]: c for c in (await f.forecast(NODE)).crossing}["danger"]["eta_s"]
    assert later > eta + 30 * 60

    expected = tk["prediction"]["expected_ms"]
    assert expected == now + int(later * 1000)

    # Water measured at the site: the node's alert joins the same ticket. It reaches the
    # collector 6 min after the edge raised it (a backlog after an outage): both times are kept.
    clock.advance(30 * MIN)
    edge = clock.now_ms() - 6 * MIN
    alert = {"id": new_ulid(edge), "dev": "lvl-1", "kind": "flood", "level": "warning", "prev": "clear"}
    payload = {**site.seq.envelope(edge), "alert": {**alert, "value": 160.0, "ts": edge}}
    await ing.ingest([Received(f"floodgate/v1/{NODE}/alert", json.dumps(payload).encode(), clock.now_ms())])
    total, listed = await tickets.list()
    assert total == 1, "one flood ticket for the site, forecast and measured"
    assert listed[0]["forecast"] is False
    tk = await tickets.get(rows[0]["id"])
    assert {a["kind"] for a in tk["alerts"]} == {"forecast", "flood"}
    assert tk["forecast"] is False, "measured now"
    assert [e["action"] for e in tk["timeline"]] == ["open", "deadline", "alert", "alert", "measured"]
    joined, measured = tk["timeline"][3:]
    assert (joined["happened_ms"], joined["received_ms"], joined["ts"]) == (
        edge,
        clock.now_ms(),
        clock.now_ms(),
    )
    assert measured["detail"] == {
        "code": "measured",
        "alert_id": alert["id"],
        "kind": "flood",
        "dev": "lvl-1",
        "level": "warning",
        "at_ms": edge,
        "expected_ms": expected,
    }
    assert "no longer a forecast" in measured["note"]
    assert measured["happened_ms"] == measured["ts"] and measured["received_ms"] is None

    # A heartbeat not listing the forecast (the node does not raise it) leaves it open.
    clock.advance(MIN)
    await site.heartbeat(clock.now_ms())
    episodes = [a for a in tk["alerts"] if a["kind"] == "forecast"]
    assert len(episodes) == 1
    tk = await tickets.get(rows[0]["id"])
    assert next(a for a in tk["alerts"] if a["kind"] == "forecast")["level"] == "danger"

    # The storm is called off: the forecast clears; the measured episode keeps the ticket open.
    clock.advance(MIN)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await forecasts.accept(storm_doc(now, 0, 0.0), "test")
    await f.run_once()
    tk = await tickets.get(rows[0]["id"])
    fc = next(a for a in tk["alerts"] if a["kind"] == "forecast")
    assert fc["level"] == "clear" and fc["dev"] == FORECAST_DEV
    assert tk["prediction"]["active"] is False and tk["forecast"] is False
    assert tk["state"] == "open"
    assert await f.at_risk(3) == []


def promises_no_closure(infos: list[ET.Element]) -> None:
    """A forecast moves no gate: no headline or description, in any language, says the road closes."""
    for info in infos:
        for tag in ("headline", "description"):
            text = (info.findtext(f"{CAP}{tag}") or "").lower()
            for word in ("禁止", "封闭", "封路", "关闭", "closed", "closure", "close"):
                assert word not in text, (info.findtext(f"{CAP}language"), tag, text)


async def test_the_cap_feed_publishes_a_forecast_as_likely_and_expected_at_its_onset(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    site, _, f = await fitted(store, clock, tmp_path)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await Forecasts(store, clock).accept(storm_doc(now, 40, 110.0), "test")
    await f.run_once()
    eta = {c["level"]: c for c in (await f.forecast(NODE)).crossing}["danger"]["eta_s"]
    interop = Interop(store, clock, sender="test@floodgate", timezone="Asia/Shanghai")
    [m] = [ET.fromstring(cap_bytes(x)) for x in await interop.cap_messages()]
    assert m.findtext(f"{CAP}msgType") == "Alert"
    infos = m.findall(f"{CAP}info")
    for info in infos:
        assert info.findtext(f"{CAP}certainty") == "Likely"
        assert info.findtext(f"{CAP}urgency") == "Expected"
        assert info.findtext(f"{CAP}severity") == "Severe"
        onset = info.findtext(f"{CAP}onset") or ""
        assert abs(datetime.fromisoformat(onset).timestamp() * 1000 - (now + eta * 1000)) < 1000
    en = next(i for i in infos if i.findtext(f"{CAP}language") == "en-US")
    assert (en.findtext(f"{CAP}headline") or "").startswith("Danger: water expected at")
    assert "likely" in (en.findtext(f"{CAP}description") or "")
    promises_no_closure(infos)
    # The storm comes later: an Update whose onset moves with the new crossing.
    clock.advance(MIN)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await Forecasts(store, clock).accept(storm_doc(now, 90, 110.0), "test")
    await f.run_once()
    later = {c["level"]: c for c in (await f.forecast(NODE)).crossing}["danger"]["eta_s"]
    assert now + later * 1000 - (now - MIN + eta * 1000) >= 10 * MIN, "the crossing moved"
    m = ET.fromstring(cap_bytes((await interop.cap_messages())[0]))
    assert m.findtext(f"{CAP}msgType") == "Update"
    for info in m.findall(f"{CAP}info"):
        onset = datetime.fromisoformat(info.findtext(f"{CAP}onset") or "").timestamp() * 1000
        assert abs(onset - (now + later * 1000)) < 1000
    promises_no_closure(m.findall(f"{CAP}info"))
    # Cleared: a Cancel.
    clock.advance(5 * MIN)
    await site.depth(clock.now_ms(), 0.0)
    await Forecasts(store, clock).accept(storm_doc(clock.now_ms(), 0, 0.0), "test")
    await f.run_once()
    [m] = [ET.fromstring(cap_bytes(x)) for x in await interop.cap_messages()]
    assert m.findtext(f"{CAP}msgType") == "Cancel"
    assert json.dumps([i.findtext(f"{CAP}onset") for i in m.findall(f"{CAP}info")]) == "[null, null]"


async def test_the_api_gives_the_band_the_sites_at_risk_and_refits_on_demand(
    store: Store, tmp_path: Path
) -> None:
    from tests.cloud.test_api import an_api
    from tests.cloud.test_rainfall import a_forecaster

    async with an_api(store, tmp_path) as api:
        await a_forecaster(api)
        clock = api.clock
        site = Site(api.ingestor)
        await site.born(clock.now_ms())
        async with api.client("viewer") as viewer, api.client("cma") as cma:
            got = await viewer.get("/api/v1/sites/nowhere/forecast")
            assert got.status_code == 404 and "no site 'nowhere'" in got.json()["detail"]
            got = (await viewer.get(f"/api/v1/sites/{NODE}/forecast")).json()
            assert got["status"] == "no_model" and got["fit"] is None and got["steps"] == []
            assert (got["warning_mm"], got["danger_mm"]) == (150.0, 300.0)
            # Too little history: 422 saying how much there is and how much is needed (3
            # readings make 2 five-minute samples).
            got = await cma.post(f"/api/v1/sites/{NODE}/forecast/refit")
            assert got.status_code == 422
            assert "site 'hp-1' has no depth or rain history" in got.json()["detail"]
            for k in range(3):
                await site.depth(clock.now_ms() - k * MIN, 0.0)
            got = await cma.post(f"/api/v1/sites/{NODE}/forecast/refit")
            assert got.status_code == 422
            assert "cannot be fitted: too few depth samples: have 2 samples, need 100" in got.json()["detail"]
            await site.history(clock.now_ms())
            # This API keeps raw readings for a day: older history is read from the one-minute
            # aggregates the rollup makes (its first round marks the ids, the second rolls them up).
            for _ in range(2):
                await api.app.state.ctx.retention.run_once()
            assert (await viewer.post(f"/api/v1/sites/{NODE}/forecast/refit")).status_code == 403
            got = await cma.post(f"/api/v1/sites/{NODE}/forecast/refit")
            assert got.status_code == 200, got.text
            fit = got.json()
            assert set(fit["params"]) == {"initial_loss_mm", "lag_min", "drain_mm_h", "fill_mm", "shape"}
            assert fit["n"] > 100 and fit["span_from"] < fit["span_to"] and fit["rmse_mm"] < 10
            # The site page shows the last round's forecast: fitted, no round has run it yet.
            got = (await viewer.get(f"/api/v1/sites/{NODE}/forecast")).json()
            assert got["status"] == "pending" and got["fit"] == fit and "no forecast round" in got["detail"]
            assert (got["warning_mm"], got["danger_mm"]) == (150.0, 300.0)
            # The sites at risk come from the stored runs too.
            # No run stored yet: an empty list that says no forecast runs (not "nobody at risk").
            assert (await viewer.get("/api/v1/forecast/at-risk")).json() == {
                "items": [], "status": "no_forecasts", "forecasting": 0, "no_model": 1, "no_rain": 0,
                "stale": 0, "issued_at": None,
            }  # fmt: skip
            f = Forecaster(store, clock, Retention(store, clock, raw_days=30), api.ingestor, api.tickets)
            await f.run_once()
            got = (await viewer.get(f"/api/v1/sites/{NODE}/forecast")).json()
            assert (
                got["status"] == "no_rain" and got["fit"] == fit and got["issued_at"] == iso(clock.now_ms())
            )
            now = clock.now_ms()
            await site.depth(now, 0.0)
            assert (
                await cma.post("/api/v1/rainfall-forecasts", json=storm_doc(now, 40, 110.0))
            ).status_code == 201
            assert (await viewer.get(f"/api/v1/sites/{NODE}/forecast")).json()["status"] == "no_rain", (
                "the last round's, until the next one"
            )
            clock.advance(MIN)
            await f.run_once()
            got = (await viewer.get(f"/api/v1/sites/{NODE}/forecast")).json()
            assert set(got) == {
                "site_id", "status", "detail", "issued_at", "rain_issued_at", "rain_source", "fit",
                "warning_mm", "danger_mm", "steps", "crossing", "peak_mm",
            }  # fmt: skip
            assert got["status"] == "ok" and got["detail"] is None and got["rain_issued_at"] == iso(now)
            assert got["issued_at"] == iso(clock.now_ms()) and got["rain_source"] == "gz-nowcast"
            assert len(got["steps"]) == 36 and set(got["steps"][0]) == {"t", "p10", "p50", "p90"}
            assert [c["level"] for c in got["crossing"]] == ["warning", "danger"]
            assert set(got["crossing"][0]) == {"level", "threshold_mm", "eta_s", "at", "probability"}
            assert got["peak_mm"] > 300
            risk = (await viewer.get("/api/v1/forecast/at-risk", params={"hours": 3})).json()
            assert (risk["status"], risk["forecasting"], risk["no_model"]) == ("forecasting", 1, 0)
            assert risk["issued_at"] == got["issued_at"]
            items = risk["items"]
            assert [(i["site_id"], i["level"], i["name"]) for i in items] == [(NODE, "danger", "科翔路隧道")]
            assert set(items[0]) == {
                "site_id", "name", "level", "eta_s", "at", "probability", "peak_mm", "issued_at",
            }  # fmt: skip
            # The list and the site page: the same forecast, to the second.
            danger = {c["level"]: c for c in got["crossing"]}["danger"]
            assert (items[0]["at"], items[0]["probability"], items[0]["peak_mm"], items[0]["issued_at"]) == (
                danger["at"],
                danger["probability"],
                got["peak_mm"],
                got["issued_at"],
            )
            # A minute on, the page asked again: the same forecast (not one made now).
            clock.advance(MIN)
            assert (await viewer.get(f"/api/v1/sites/{NODE}/forecast")).json() == got
            for bad in ("0", "49", "x"):
                got = await viewer.get("/api/v1/forecast/at-risk", params={"hours": bad})
                assert got.status_code == 422 and "hours" in got.text
            # Stale: two hours on with no new depth reading, at the next round.
            clock.advance(2 * 3_600_000)
            await f.run_once()
            got = (await viewer.get(f"/api/v1/sites/{NODE}/forecast")).json()
            assert got["status"] == "stale" and "no depth from lvl-1" in got["detail"]


async def test_the_collector_forecasts_every_site_on_its_clock_with_its_config(
    store: Store, tmp_path: Path
) -> None:
    import asyncio

    from cloud.collector import Collector
    from cloud.config import load_cloud_config
    from tests.helpers import wait_until

    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(
        f"database: {store.url}\napi: null\n"
        "forecast:\n  every_s: 60\n  probability: 0.6\n  confirm_rain_mm: null\n"  # on the forecast alone
    )
    config, broker = load_cloud_config(cfg)
    clock = ManualClock()
    col = Collector(config, broker, clock=clock)
    f = col.forecaster
    assert f.s.every_s == 60 and f.s.probability == 0.6 and col.forecast_watch is None
    assert f.s.confirm_rain_mm is None
    site = Site(col.ingestor)
    await site.born(clock.now_ms())
    await site.history(clock.now_ms())
    await site.depth(clock.now_ms(), 0.0)
    await Forecasts(store, clock).accept(storm_doc(clock.now_ms(), 40, 110.0), "test")
    task = asyncio.create_task(f.run())
    try:
        # The first round runs the sites first (this one has no fit yet), then fits it.
        await wait_until(lambda: f.runs == 1, 30, "the first round")
        assert not f._failing
        assert await count(store, site_fits) == 1
        assert (await col.tickets.list())[0] == 0, "no forecast before the site had a fit"
        assert f.next_ms == clock.now_ms() + 60_000, "the next round every_s on"
        clock.advance(59_000)
        assert f.next_ms > clock.now_ms(), "not due yet"
        clock.advance(1_000)
        # The next round runs it on its fit and raises the forecast alert.
        await wait_until(lambda: f.runs == 2, 30, "the next round")
        total, rows = await col.tickets.list()
        assert total == 1 and rows[0]["priority"] == "danger"
        assert await count(store, site_fits) == 1, "refitted once a day, not every round"
        # A new rainfall forecast has the sites run at once (the storm called off: cleared).
        await col.forecasts.accept(storm_doc(clock.now_ms(), 0, 0.0), "test")
        await wait_until(lambda: f.runs == 3, 30, "a round on the new forecast")
        _, rows = await col.tickets.list()
        tk = await col.tickets.get(rows[0]["id"])
        assert [a["level"] for a in tk["alerts"]] == ["clear"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await col.store.close()


def test_a_bad_forecast_config_says_which_key(tmp_path: Path) -> None:
    from cloud.config import load_cloud_config
    from floodgate.errors import ConfigError

    cfg = tmp_path / "cloud.yaml"
    for text, says in [
        ("forecast:\n  probability: 1.5\n", "probability"),
        ("forecast:\n  probability: 0.3\n  hysteresis: 0.3\n", "hysteresis (0.3) must be below probability"),
        ("forecast:\n  horizon_h: 100\n", "horizon_h"),
        ("forecast:\n  confirm_rain_mm: 0\n", "confirm_rain_mm"),
    ]:
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=r"cloud\.yaml") as e:
            load_cloud_config(cfg)
        assert says in str(e.value)


IDLE_IN_TRANSACTION = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
)


ADVISORY_HELD = (
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = 4245"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def test_three_collectors_forecast_once_per_round_and_take_over_a_dead_holders_turn(
    db_url: str, tmp_path: Path
) -> None:
    import asyncio

    import asyncpg

    from cloud.db.forecast import ROUND
    from cloud.db.schema import site_forecasts
    from tests.helpers import wait_until

    if not db_url.startswith("postgresql"):
        pytest.skip("several collectors share PostgreSQL (SQLite has one)")
    clock = ManualClock()
    stores = [Store(db_url) for _ in range(3)]
    await stores[0].migrate()
    settings = ForecastConfig(every_s=60, probability=0.5)
    fs = []
    for s in stores:
        tickets = Tickets(s, registry(tmp_path), clock)
        fs.append(
            Forecaster(s, clock, Retention(s, clock, raw_days=30), Ingestor(s, tickets), tickets, settings)
        )
    site = Site(fs[0].ingestor)  # type: ignore[arg-type]
    await site.born(clock.now_ms())
    await site.history(clock.now_ms())
    await site.depth(clock.now_ms(), 0.0)
    await Forecasts(stores[0], clock).accept(storm_doc(clock.now_ms(), 40, 110.0), "test")

    def turns(n: int) -> bool:
        return all(f.runs >= n for f in fs)

    async def run_ms() -> int:
        async with stores[0].read() as conn:
            return int((await conn.execute(select(site_forecasts.c.run_ms))).scalar() or 0)

    async def turn_free() -> bool:
        async with stores[0].read() as conn:
            return not (await conn.execute(sql(ADVISORY_HELD))).scalar()

    # Two rounds at once would show here: each round's runs, counted while they run.
    running, most = 0, 0

    def one_at_a_time(f: Forecaster) -> None:
        run_once = f.run_once

        async def counted() -> list[Any]:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                return await run_once()
            finally:
                running -= 1

        f.run_once = counted  # type: ignore[method-assign]

    for f in fs:
        one_at_a_time(f)
    tasks = [asyncio.create_task(f.run()) for f in fs]
    holder: asyncpg.Connection | None = None
    try:
        # All three turn at once: one round (the runs, none yet, then one fit), the others see it done.
        await wait_until(lambda: turns(1), 60, "every collector's first turn")
        assert sum(f.rounds for f in fs) == 1 and not any(f._failing for f in fs)
        assert await count(stores[0], site_fits) == 1
        assert await run_ms() == 0, "the runs came first: the site had no fit yet"
        clock.advance(60_000)
        await wait_until(lambda: turns(2), 60, "the next turn")
        assert sum(f.rounds for f in fs) == 2, "one round per period"
        assert await count(stores[0], site_fits) == 1, "refitted once a day, not by every collector"
        assert await run_ms() == clock.now_ms()
        # A new rainfall forecast on one collector: a round at once (on whichever takes the turn).
        fs[1].wake.set()
        await wait_until(lambda: sum(f.rounds for f in fs) == 3, 60, "a round on the wake")
        # A collector holds the turn (mid-round): the others skip it, holding no connection and
        # waiting for nothing; when it dies, the next turn due takes the round.
        holder = await asyncpg.connect(db_url.replace("postgresql://", "postgres://", 1))
        await holder.execute("SELECT pg_advisory_lock(4245, hashtext($1))", ROUND)
        before = [f.runs for f in fs]
        clock.advance(60_000)
        await wait_until(
            lambda: all(f.runs > b for f, b in zip(fs, before, strict=True)), 60, "the skipped turns"
        )
        assert sum(f.rounds for f in fs) == 3, "no round while another collector has the turn"
        assert all(f.next_ms == clock.now_ms() + 60_000 for f in fs)
        assert not any(f._failing for f in fs)
        async with stores[0].read() as conn:  # no collector's connection idles in a transaction
            idle = (await conn.execute(sql(IDLE_IN_TRANSACTION))).scalar()
        assert idle == 0
        # A new rainfall forecast meanwhile: the woken collector tries again every second.
        fs[1].wake.set()
        await wait_until(lambda: fs[1].next_ms == clock.now_ms() + 1_000, 60, "a retry in a second")
        assert sum(f.rounds for f in fs) == 3
        holder.terminate()  # as a killed process: its connection drops, its lock with it
        await wait_until(turn_free, 60, "the dead holder's lock released")
        clock.advance(1_000)
        await wait_until(lambda: sum(f.rounds for f in fs) == 4, 60, "the woken round, the holder gone")
        assert fs[1].rounds >= 1
        # And the timers' next turn takes the round of a dead holder (none woken).
        holder = await asyncpg.connect(db_url.replace("postgresql://", "postgres://", 1))
        await holder.execute("SELECT pg_advisory_lock(4245, hashtext($1))", ROUND)
        before = [f.runs for f in fs]
        clock.advance(60_000)
        await wait_until(
            lambda: all(f.runs > b for f, b in zip(fs, before, strict=True)), 60, "the skipped turns"
        )
        assert sum(f.rounds for f in fs) == 4
        holder.terminate()
        await wait_until(turn_free, 60, "the dead holder's lock released")
        before = [f.runs for f in fs]
        clock.advance(60_000)
        await wait_until(
            lambda: all(f.runs > b for f, b in zip(fs, before, strict=True)), 60, "the take-over"
        )
        assert sum(f.rounds for f in fs) == 5
        assert await run_ms() == clock.now_ms()
        assert most == 1, "never two rounds at once"
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if holder is not None and not holder.is_closed():
            await holder.close()
        for s in stores:
            await s.close()


async def test_a_depth_still_rising_after_a_downpour_is_forecast_to_rise(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    from cloud.forecast.model import simulate

    site, ing, f = await fitted(store, clock, tmp_path)
    # 30 min of 90 mm/h on the gauge, stopped just now; the forecast says dry from here on.
    past = [0.0] * 6 + [90.0] * 6
    truth = simulate(TRUE, past + [0.0] * 24, 300.0)
    readings = []
    for k, mm_h in enumerate(past):
        clock.advance(5 * MIN)
        t = clock.now_ms() - 1
        readings.append(
            {"dev": "rain-1", "ts": t, "metric": "rain_intensity_mm_h", "value": mm_h, "quality": "good"}
        )
        readings.append({"dev": "lvl-1", "ts": t, "metric": "depth_mm", "value": truth[k], "quality": "good"})
    await ing.ingest([msg(site.seq, "telemetry", {"readings": readings}, clock.now_ms())])
    now_mm = truth[len(past) - 1]
    assert max(truth[len(past) :]) > now_mm + 30.0  # the premise: the water keeps rising
    await Forecasts(store, clock).accept(storm_doc(clock.now_ms(), 0, 0.0), "test")
    run = await f.forecast(NODE)
    assert run.status == "ok"
    assert run.peak_mm > now_mm + 15.0, "the runoff on its way is counted"


async def test_readings_the_agent_marked_bad_or_suspect_neither_fit_nor_start_a_forecast(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    _, ing, f = parts(store, clock, tmp_path)
    site = Site(ing)
    await site.born(clock.now_ms())
    await site.history(clock.now_ms())
    # A faulted sensor's readings near its full scale, every 3 h of the history, marked bad.
    start = clock.now_ms() - 12 * 86_400_000
    faults = [
        {"dev": "lvl-1", "ts": t, "metric": "depth_mm", "value": 4990.0, "quality": "bad"}
        for t in range(start, clock.now_ms() - 3_600_000, 3 * 3_600_000)
    ]
    await ing.ingest([msg(site.seq, "telemetry", {"readings": faults}, clock.now_ms())])
    got = await f.refit(NODE)
    assert got["rmse_mm"] < 20, "fitted on the good readings only"
    assert got["params"]["drain_mm_h"] == pytest.approx(TRUE.drain_mm_h, rel=0.2)

    # Light rain on the way and a dry site: nothing to say.
    forecasts = Forecasts(store, clock)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await forecasts.accept(storm_doc(now, 40, 2.0), "test")
    assert await f.run_once() == []
    assert (await f.forecast(NODE)).status == "ok"

    # The sensor faults near full scale: the site is stale, not about to flood.
    clock.advance(MIN)
    await ing.ingest(
        [
            msg(
                site.seq,
                "telemetry",
                {"readings": [{**faults[0], "ts": clock.now_ms(), "value": 4995.0}]},
                clock.now_ms(),
            )
        ]
    )
    assert await f.run_once() == [], "no forecast alert, no ticket"
    run = await f.forecast(NODE)
    assert (
        run.status == "stale" and run.detail is not None and "lvl-1" in run.detail and "is bad" in run.detail
    )
    assert run.crossing == []

    # A heavy storm with good depth: a forecast alert. Then the newest reading is suspect (a
    # spike held back, or the first of a fast rise) while a good one is recent: the alert stands.
    clock.advance(MIN)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await forecasts.accept(storm_doc(now, 40, 110.0, members=10), "test")
    assert [e.action for e in await f.run_once()] == ["open"]

    async def clears() -> int:
        async with store.read() as conn:
            q = (
                "SELECT count(*) FROM alert_transitions WHERE level = 'clear'"
                f" AND alert_id IN (SELECT id FROM alerts WHERE dev = '{FORECAST_DEV}')"
            )
            return int((await conn.execute(sql(q))).scalar_one())

    clock.advance(MIN)
    r = {"dev": "lvl-1", "ts": clock.now_ms(), "metric": "depth_mm", "value": 35.0, "quality": "suspect"}
    await ing.ingest([msg(site.seq, "telemetry", {"readings": [r]}, clock.now_ms())])
    assert await f.run_once() == [] and await clears() == 0, "one suspect reading clears nothing"
    # Only suspect readings for longer than depth_stale_s: no good depth to go by, cleared.
    for _ in range(int(f.s.depth_stale_s // 60) + 1):
        clock.advance(MIN)
        r = {**r, "ts": clock.now_ms()}
        await ing.ingest([msg(site.seq, "telemetry", {"readings": [r]}, clock.now_ms())])
    await f.run_once()
    assert await clears() == 1
    async with store.read() as conn:
        reason = (
            await conn.execute(
                sql("SELECT reason FROM alert_transitions WHERE level = 'clear' ORDER BY ts DESC LIMIT 1")
            )
        ).scalar()
    assert reason is not None and "is suspect" in reason


async def test_a_rainfall_forecast_stamped_hours_ahead_does_not_hide_the_storm(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    site, _, f = await fitted(store, clock, tmp_path)
    forecasts = Forecasts(store, clock)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await forecasts.accept(storm_doc(now, 40, 110.0, members=10), "test")
    assert [e.action for e in await f.run_once()] == ["open"]
    # A dry forecast in local time stamped Z, stored before such documents were refused: all
    # its steps 8 h ahead. It is not the latest: the storm's forecast stays, its alert open.
    ahead = storm_doc(now + 8 * 3_600_000, 0, 0.0)
    steps = [datetime.fromisoformat(t).timestamp() * 1000 for t in ahead["steps"]]
    row = {
        "node": NODE,
        "issued_ms": now + 8 * 3_600_000,
        "source": "local-as-utc",
        "start_ms": int(steps[0]),
        "end_ms": int(steps[-1]),
        "steps": json.dumps([int(t) for t in steps]),
        "series": json.dumps({"mm_h": ahead["sites"][0]["mm_h"]}),
        "via": "site",
        "origin": "test",
        "received_ms": now,
        "digest": "ahead",
    }
    async with store.begin() as conn:
        await rainfall_db.store(conn, [row])
    clock.advance(MIN)
    await site.depth(clock.now_ms(), 0.0)
    await f.run_once()
    async with store.read() as conn:
        still = await forecast_db.open_episodes(conn, FORECAST_DEV)
    assert still[NODE]["level"] == "danger", "the forecast alert stays open"
    run = await f.forecast(NODE)
    assert run.status == "ok" and run.rain_source == "gz-nowcast" and run.rain_issued_ms == now
    assert [r["source"] for r in await forecasts.latest(NODE)] == ["gz-nowcast"]


async def test_a_forecast_alert_waits_for_the_rain_is_held_while_the_water_rises_and_clears_after(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    """The default rule (cloud.forecast.rule): a storm forecast on a dry site puts it at risk but
    raises nothing until the gauge measures rain; once raised, the alert stays while the measured
    depth rises even when the forecast no longer expects danger, and clears when the risk passes."""
    assert ForecastConfig().confirm_rain_mm == 1.0
    tickets, ing, f = parts(store, clock, tmp_path, confirm_rain_mm=1.0)
    site = Site(ing)
    await site.born(clock.now_ms())
    await site.history(clock.now_ms())
    await f.refit(NODE)
    forecasts = Forecasts(store, clock)

    async def reading(dev: str, metric: str, value: float) -> None:
        r = {"dev": dev, "ts": clock.now_ms() - 1, "metric": metric, "value": value, "quality": "good"}
        await ing.ingest([msg(site.seq, "telemetry", {"readings": [r]}, clock.now_ms())])

    async def forecast_episode() -> Any:
        _, rows = await tickets.list()
        if not rows:
            return None
        tk = await tickets.get(rows[0]["id"])
        return next(a for a in tk["alerts"] if a["kind"] == "forecast")

    # A storm forecast to start in 20 min on a dry site: at risk, but no alert (not begun here).
    clock.advance(5 * MIN)
    await reading("lvl-1", "depth_mm", 0.0)
    await forecasts.accept(storm_doc(clock.now_ms(), 20, 110.0, members=10), "test")
    assert await f.run_once() == []
    assert [i["site_id"] for i in await f.at_risk(3)] == [NODE], "on the at-risk list all the same"
    assert await forecast_episode() is None

    # The gauge measures the rain beginning (30 mm/h for 10 min = 5 mm): now the alert opens.
    for _ in range(2):
        clock.advance(5 * MIN)
        await reading("rain-1", "rain_intensity_mm_h", 30.0)
        await reading("lvl-1", "depth_mm", 0.0)
    await forecasts.accept(storm_doc(clock.now_ms(), 0, 110.0, members=10), "test")
    assert [e.action for e in await f.run_once()] == ["open"]
    assert (await forecast_episode())["level"] == "danger"

    # The forecast is called off and the rain stops, but the water measured keeps rising: held.
    await forecasts.accept(storm_doc(clock.now_ms(), 0, 0.0), "test")
    for depth in (20.0, 40.0, 60.0, 90.0, 120.0, 150.0, 180.0):
        clock.advance(5 * MIN)
        await reading("lvl-1", "depth_mm", depth)
    run = await f.forecast(NODE)
    danger = next(c for c in run.crossing if c["level"] == "danger")
    assert danger["probability"] < 0.4, "the forecast alone would have cleared it"
    assert run.measured is not None and run.measured.rising and run.measured.rain_30min_mm == 0.0
    assert await f.run_once() == []
    assert (await forecast_episode())["level"] == "danger", "held while the water rises"

    # The water falls, no rain, nothing forecast: the risk has passed and the alert clears.
    for depth in (150.0, 100.0, 60.0):
        clock.advance(5 * MIN)
        await reading("lvl-1", "depth_mm", depth)
    await f.run_once()
    fc = await forecast_episode()
    assert fc["level"] == "clear"


async def test_scheduled_refits_come_after_the_runs_oldest_first_within_a_budget_spread_over_the_day(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    tickets = Tickets(store, registry(tmp_path), clock)
    ing = Ingestor(store, tickets)
    for node in ("hp-1", "hp-2"):
        site = Site(ing, node)
        await site.born(clock.now_ms())
        await site.history(clock.now_ms())
    await Site(ing, "hp-3").born(clock.now_ms())  # a rain gauge, no history: cannot be fitted
    retention = Retention(store, clock, raw_days=30)

    def forecaster(budget_s: float) -> Forecaster:
        s = ForecastConfig(refit_every_h=1, refit_budget_s=budget_s, fit_processes=1)
        return Forecaster(store, clock, retention, ing, tickets, s)

    # No time to spare (budget 0): one site a round, never fitted first, then by name.
    f = forecaster(0)
    try:
        assert await f.refit_due() == 1 and set(await fits_by_node(store)) == {"hp-1"}
        assert await f.refit_due() == 1 and set(await fits_by_node(store)) == {"hp-1", "hp-2"}
        assert await f.refit_due() == 0 and set(f._tried) == {"hp-3"}, "tried, too little"
        assert await f.refit_due() == 0, "nothing due"
    finally:
        f.close()
    # An hour on all three are due. Time enough, but the fitted are spread over refit_every_h:
    # every_s 300 of 3600 s for 3 sites is 1 a round (the oldest fit), besides the never fitted.
    clock.advance(3_600_000)
    f = forecaster(3600)
    try:
        assert await f.refit_due() == 1
        fits = await fits_by_node(store)
        assert fits["hp-1"] == [clock.now_ms() - 3_600_000, clock.now_ms()] and len(fits["hp-2"]) == 1
        assert set(f._tried) == {"hp-3"}, "the never fitted tried as well"
        assert await f.refit_due() == 1 and len((await fits_by_node(store))["hp-2"]) == 2
        assert await f.refit_due() == 0
    finally:
        f.close()


async def test_a_fit_worker_killed_is_replaced_and_the_fits_go_on(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    """The fits' worker process dies (the OOM killer): the next fit starts a new one; it
    failed with BrokenProcessPool, and so did every fit after it until a restart."""
    tickets = Tickets(store, registry(tmp_path), clock)
    ing = Ingestor(store, tickets)
    site = Site(ing)
    await site.born(clock.now_ms())
    await site.history(clock.now_ms())
    s = ForecastConfig(fit_processes=1)
    f = Forecaster(store, clock, Retention(store, clock, raw_days=30), ing, tickets, s)
    try:
        await f.refit(NODE)
        assert f._pool is not None
        workers = list(f._pool._processes.values())  # type: ignore[attr-defined]
        assert workers
        for w in workers:
            w.kill()
            await asyncio.to_thread(w.join, 30)
        clock.advance(MIN)
        await f.refit(NODE)
        assert len(await fits_by_node(store)) == 1 and len((await fits_by_node(store))[NODE]) == 2
    finally:
        f.close()


async def fits_by_node(store: Store) -> dict[str, list[int]]:
    async with store.read() as conn:
        rows = (await conn.execute(select(site_fits.c.node, site_fits.c.fitted_ms))).all()
    out: dict[str, list[int]] = {}
    for node, ms in sorted(rows, key=lambda r: r[1]):
        out.setdefault(node, []).append(int(ms))
    return out


class Ticking(ManualClock):
    """The collector's clock while a round takes its time: each reading of it 10 s on."""

    ticking = False

    def now_ms(self) -> int:
        if self.ticking:
            self.advance(10_000)
        return super().now_ms()


async def test_a_crossing_and_its_deadline_count_from_the_sites_run_not_the_rounds_start(
    store: Store, tmp_path: Path
) -> None:
    clock = Ticking()
    tickets, ing, f = parts(store, clock, tmp_path, lead_min=75.0)
    site = Site(ing)
    await site.born(clock.now_ms())
    await site.history(clock.now_ms())
    await f.refit(NODE)
    now = clock.now_ms()
    await site.depth(now, 0.0)
    await Forecasts(store, clock).accept(storm_doc(now, 40, 110.0, members=10), "test")
    clock.ticking = True
    events = await f.run_once()
    clock.ticking = False
    assert [e.action for e in events] == ["open"]
    async with store.read() as conn:
        res = json.loads((await conn.execute(sql("SELECT result FROM site_forecasts"))).scalar_one())
        ts, eta_s = (await conn.execute(sql("SELECT ts, eta_s FROM alert_transitions"))).one()
    ran = int(datetime.fromisoformat(res["issued_at"]).timestamp() * 1000)
    danger = next(c for c in res["crossing"] if c["level"] == "danger")
    assert danger["at_ms"] == ran + danger["eta_s"] * 1000
    assert ts == ran and eta_s == danger["eta_s"], "the alert's time is its run's"
    _, rows = await tickets.list()
    tk = await tickets.get(rows[0]["id"])
    deadline = next(e for e in tk["timeline"] if e["action"] == "deadline")["detail"]
    assert deadline["expected_ms"] == danger["at_ms"]


async def test_a_level_sensor_replaced_under_a_new_id_is_left_behind(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    site, ing, f = await fitted(store, clock, tmp_path)
    # The site's sensor "lvl-1" is replaced by "lvl-2" half an hour on: a new birth; lvl-1 stays
    # known, silent since.
    clock.advance(31 * MIN)
    body = {
        "agent_version": "0.1.0",
        "config_hash": "abd",
        "site": {"name": "科翔路隧道", "lat": 23.1, "lon": 113.4},
        "devices": [
            {"id": "lvl-2", "kind": "level", "model": "m2", "unit": "mm",
             "thresholds": {"warning": 150.0, "danger": 300.0}},
            {"id": "rain-1", "kind": "rain", "model": "tipping-bucket"},
        ],
    }  # fmt: skip
    await ing.ingest([msg(site.seq, "birth", body, clock.now_ms())])
    now = clock.now_ms()
    r = {"dev": "lvl-2", "ts": now, "metric": "depth_mm", "value": 0.0, "quality": "good"}
    await ing.ingest([msg(site.seq, "telemetry", {"readings": [r]}, now)])
    await Forecasts(store, clock).accept(storm_doc(now, 40, 110.0, members=10), "test")
    run = await f.forecast(NODE)
    assert run.status == "ok", run.detail
    assert [e.action for e in await f.run_once()] == ["open"]


async def test_a_site_with_two_live_level_sensors_keeps_to_one_whichever_was_read_last(
    store: Store, clock: ManualClock, tmp_path: Path
) -> None:
    """The forecast took the level sensor read last: with two live ones at a site it swapped
    between them from round to round. Now the first by id of those read lately."""
    site, ing, f = await fitted(store, clock, tmp_path)
    body = {
        "agent_version": "0.1.0",
        "config_hash": "abe",
        "site": {"name": "科翔路隧道", "lat": 23.1, "lon": 113.4},
        "devices": [
            {"id": dev, "kind": "level", "model": "m", "unit": "mm",
             "thresholds": {"warning": 150.0, "danger": 300.0}}
            for dev in ("lvl-1", "lvl-2")
        ] + [{"id": "rain-1", "kind": "rain", "model": "tipping-bucket"}],
    }  # fmt: skip
    await ing.ingest([msg(site.seq, "birth", body, clock.now_ms())])
    for last in ("lvl-2", "lvl-1", "lvl-2"):
        clock.advance(MIN)
        now = clock.now_ms()
        first = "lvl-1" if last == "lvl-2" else "lvl-2"
        rs = [
            {"dev": dev, "ts": now + i, "metric": "depth_mm", "value": 0.0, "quality": "good"}
            for i, dev in enumerate((first, last))
        ]
        await ing.ingest([msg(site.seq, "telemetry", {"readings": rs}, now)])
        assert (await f.refit(NODE))["dev"] == "lvl-1", f"{last} read last"
