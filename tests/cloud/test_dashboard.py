"""The dashboard in a real browser: Playwright driving Debian's chromium.

A real agent on simulated devices, a real mosquitto, the collector with its
API and dashboard. Screenshots go to ``artifacts/dashboard/`` (or
``$FLOODGATE_ARTIFACTS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from playwright.async_api import Locator, Page, async_playwright, expect

from cloud.collector import Collector
from cloud.config import Api, CloudConfig
from edge.agent import Agent
from floodgate.broker import BrokerSettings
from floodgate.clock import Clock, ManualClock
from floodgate.ids import new_ulid, now_ms
from floodgate.wire import Sequencer, node_command_key
from tests.conftest import SiteFactory, running
from tests.helpers import Mosquitto, free_port, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = (
    Path(os.environ.get("FLOODGATE_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
    / "dashboard"
)
PASSWORD = "dashboard-test-password"
MASTER = b"dashboard-master-key-0123456789"

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason="chromium is installed by ./dev test",
)


@pytest.fixture
async def collector(broker: Mosquitto, tmp_path: Path) -> AsyncIterator[Collector]:
    async with collecting(broker, tmp_path) as col:
        yield col


@contextlib.asynccontextmanager
async def collecting(
    broker: Mosquitto,
    tmp_path: Path,
    map_tiles: str | None = None,
    registry: str | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Collector]:
    """A collector with its API on a free port, a dispatcher ``chen`` and a viewer ``zhao``
    (on ``clock``; None: the system's)."""
    (tmp_path / "master.key").write_bytes(MASTER)
    port = free_port()
    config = CloudConfig(
        database=f"sqlite:///{tmp_path / 'dash.db'}",
        client_id=f"dash-{port}",
        command_key_file=str(tmp_path / "master.key"),
        api=Api(host="127.0.0.1", port=port),
        map_tiles=map_tiles,
        registry=registry,
    )
    col = Collector(config, BrokerSettings(url=broker.url, reconnect_max_s=0.5), clock=clock)
    task = asyncio.create_task(col.run())
    await asyncio.wait_for(col.ready.wait(), 20)
    await asyncio.wait_for(col.consumer.subscribed.wait(), 20)
    for user, role in (("chen", "dispatcher"), ("zhao", "viewer")):
        await col.auth.add_user(user, role, PASSWORD)
    assert col.api is not None
    api = col.api
    await wait_until(lambda: api.started, 10, "the API server")
    yield col
    task.cancel()
    await asyncio.wait({task}, timeout=15)


async def login(page: Page, base: str, user: str) -> None:
    await page.goto(base + "/")
    await page.fill("input[name=username]", user)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await expect(page.locator("#who")).to_contain_text(user)


async def test_the_office_sees_a_flood_dispatches_it_and_closes_a_gate(
    collector: Collector, sim_site: SiteFactory, node_id: str
) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sim, site = await sim_site(
        gate_min_warning_s=0.0,  # a person's close still needs the board to show a warning first
        broker_url=collector.consumer.settings.url,
        overrides={"command_key": node_command_key(MASTER, node_id).decode()},
    )
    assert collector.config.api is not None
    base = f"http://127.0.0.1:{collector.config.api.port}"
    async with running(Agent(site)), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
            await login(page, base, "chen")
            marker = page.locator(f'[data-testid="site-{node_id}"]')
            await expect(marker).to_have_attribute("data-level", "clear", timeout=20_000)
            await page.screenshot(path=str(ARTIFACTS / "1-overview-dry.png"))

            sim.source.manual = 320.0  # the water rises past danger: no reload, the map turns red
            await expect(marker).to_have_attribute("data-level", "danger", timeout=20_000)
            await page.screenshot(path=str(ARTIFACTS / "2-overview-flood.png"))

            await page.locator(f'[data-testid="ticket-row"][data-node="{node_id}"]').first.click()
            await expect(page.locator('[data-testid="ticket"]')).to_have_attribute("data-state", "open")
            await page.click('[data-action="dispatch"]')
            await expect(page.locator('[data-testid="ticket"]')).to_have_attribute(
                "data-state", "dispatched", timeout=10_000
            )
            await page.screenshot(path=str(ARTIFACTS / "3-ticket-dispatched.png"))

            sim.source.manual = 0.0  # the water goes: the agent opens the gate again
            await page.goto(f"{base}/#/site/{node_id}")
            site_page = page.locator('[data-testid="site-page"]')
            await expect(site_page).to_have_attribute("data-gate", "open", timeout=30_000)
            await page.click('[data-cmd="gate.close"]')  # refused: the board is not warning
            result = page.locator('[data-testid="cmd-status"]')
            await expect(result).to_have_attribute("data-why", "unsafe", timeout=20_000)
            await expect(result).to_have_attribute("data-status", "rejected")
            await expect(result).to_contain_text("已拒绝 · 不安全")  # in the UI's language
            # ... with what to do next, in Chinese too (it was shown only in the English UI)
            await expect(result).to_contain_text("请先发布情报板警示")
            await page.click('[data-cmd="sign.show"]')
            await expect(result).to_contain_text("已完成", timeout=20_000)
            await page.click('[data-cmd="gate.close"]')
            gate_result = page.locator(
                '[data-testid="command-result"]:has-text("关闭道闸") [data-status="done"]'
            )
            await expect(gate_result).to_be_visible(timeout=20_000)
            await expect(page.locator('[data-testid="site-page"]')).to_have_attribute(
                "data-gate", "closed", timeout=20_000
            )
            await page.screenshot(path=str(ARTIFACTS / "4-site-gate-closed.png"))

            viewer = await browser.new_page()
            await login(viewer, base, "zhao")
            # The flood's ticket (a bus timeout under load may open a sensor_fault ticket beside it).
            _, [ticket] = await collector.tickets.list(node=node_id, kind="flood")
            await viewer.goto(f"{base}/#/ticket/{ticket['id']}")
            await expect(viewer.locator('[data-testid="ticket"]')).to_be_visible()
            await expect(viewer.locator('[data-testid="actions"]')).to_have_count(0)
            await viewer.goto(f"{base}/#/site/{node_id}")
            await expect(viewer.locator('[data-testid="site-page"]')).to_be_visible()
            await expect(viewer.locator('[data-testid="commands"]')).to_have_count(0)
            await viewer.click("#lang")
            await expect(viewer.locator("#nav a").first).to_have_text("Overview")
            await viewer.screenshot(path=str(ARTIFACTS / "5-viewer-site.png"))
        finally:
            await browser.close()


async def test_while_the_board_warns_the_site_says_its_gate_is_about_to_close_and_when(
    collector: Collector, sim_site: SiteFactory, node_id: str
) -> None:
    """Danger: the board warns drivers, and for gate_min_warning_s the gate is still open. The
    site's row and page said "danger" with the gate open and nothing more; they now say the gate
    is about to close and in how long, from what the agent announced (not a guess), counting
    down, in both languages; then the gate closes and they say that."""
    sim, site = await sim_site(gate_min_warning_s=20.0, broker_url=collector.consumer.settings.url)
    assert collector.config.api is not None
    base = f"http://127.0.0.1:{collector.config.api.port}"
    agent = Agent(site)
    async with running(agent), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            await login(page, base, "chen")
            marker = page.locator(f'[data-testid="site-{node_id}"]')
            await expect(marker).to_have_attribute("data-level", "clear", timeout=20_000)
            row = page.locator(f'[data-testid="site-row"][data-node="{node_id}"]')
            await expect(row.locator('[data-testid="gate-closing-soon"]')).to_have_count(0)

            sim.source.manual = 320.0  # danger: the board warns, the gate waits 20 s
            closing = row.locator('[data-testid="gate-closing-soon"]')
            await expect(closing).to_have_text(re.compile(r"道闸即将关闭（\d+ 秒后）"), timeout=15_000)
            await expect(row.locator('[data-testid="site-row-gate"]')).to_contain_text("开启")
            await expect(marker).to_have_attribute("data-level", "danger")
            ctl = agent.responses()[0]
            # The time the agent gave, as it gave it: the board's warning plus 20 s.
            assert ctl.closing_at is not None and ctl.warning_since_ms is not None
            assert ctl.closing_at == ctl.warning_since_ms + 20_000
            await expect(closing).to_have_attribute("data-closes-at", str(ctl.closing_at))

            async def left() -> int:
                return int(re.findall(r"\d+", await closing.inner_text())[0])

            first = await left()
            assert 0 < first <= 20

            # It counts down between redraws (nothing else happens at the site meanwhile).
            async def counted_down() -> bool:
                return await left() < first

            await wait_until(counted_down, 10, "the count going down", every=0.2)
            await page.screenshot(path=str(ARTIFACTS / "gate-closing-overview.png"))

            await page.goto(f"{base}/#/site/{node_id}")
            on_page = page.locator('[data-testid="site-page"] [data-testid="gate-closing-soon"]')
            await expect(on_page).to_have_text(re.compile(r"道闸即将关闭（\d+ 秒后）"))
            await expect(page.locator('[data-testid="gate-state"]')).to_have_text("开启")
            await page.click("#lang")
            await expect(on_page).to_have_text(re.compile(r"gate closing in \d+ s"))
            await page.screenshot(path=str(ARTIFACTS / "gate-closing-site-en.png"))

            # It closes when it said: the page says closed, and no longer "closing in".
            site_page = page.locator('[data-testid="site-page"]')
            await expect(site_page).to_have_attribute("data-gate", "closed", timeout=40_000)
            assert ctl.closing_at is None and agent.clock.now_ms() >= ctl.warning_since_ms + 20_000
            await expect(on_page).to_have_count(0)
        finally:
            await browser.close()


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201e2b3ae0c0000000049454e44ae426082"
)


async def test_base_map_tiles_come_from_the_configured_template(broker: Mosquitto, tmp_path: Path) -> None:
    from fastapi import FastAPI, Response

    from cloud.server import ApiServer

    asked: list[str] = []
    tiles = FastAPI()

    @tiles.get("/{z}/{x}/{y}.png")
    async def tile(z: int, x: int, y: int) -> Response:
        asked.append(f"{z}/{x}/{y}")
        return Response(PNG, media_type="image/png")

    tile_port = free_port()
    server = ApiServer(tiles, "127.0.0.1", tile_port)
    task = asyncio.create_task(server.run_until_cancelled())
    try:
        await wait_until(lambda: server.started, 10, "the tile server")
        template = f"http://127.0.0.1:{tile_port}/{{z}}/{{x}}/{{y}}.png"
        async with collecting(broker, tmp_path, map_tiles=template) as col, async_playwright() as pw:
            assert col.config.api is not None
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page()
                await login(page, f"http://127.0.0.1:{col.config.api.port}", "chen")
                await expect(page.locator("svg.map image.tile").first).to_be_attached(timeout=10_000)
                await wait_until(lambda: len(asked) >= 4, 10, "the browser to fetch the tiles")
                assert all(a.startswith("12/") for a in asked)
            finally:
                await browser.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_history_zooms_by_dragging_measures_have_charts_and_nothing_comes_from_elsewhere(
    collector: Collector, broker: Mosquitto
) -> None:
    """The site chart zooms into the stretch dragged across; the measures page draws its
    charts; the Chinese font is the dashboard's own; every request stays on the collector."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    node = "hp-zoom"
    seq = Sequencer(node, boot=1)
    now = now_ms()
    device = {"id": "lvl-1", "kind": "level", "model": "generic-rs485-level", "unit": "mm"}
    birth = {
        "agent_version": "0.1.0",
        "config_hash": "abc",
        "site": {"name": "黄埔大道隧道", "lat": 23.1, "lon": 113.45},
        "devices": [{**device, "thresholds": {"warning": 150.0, "danger": 270.0}}],
    }
    messages: list[tuple[str, dict[str, Any]]] = [("birth", birth)]
    for minute in range(60, 0, -1):  # the water rose over the last hour
        ts = now - minute * 60_000
        depth = 5.0 * (60 - minute)
        reading = {"dev": "lvl-1", "ts": ts, "metric": "depth_mm", "value": depth, "quality": "good"}
        messages.append(("telemetry", {"readings": [reading]}))
    # In this year's flood season (1 April - 15 October), or last year's before April:
    today = datetime.date.today()
    season = today.year if today.month >= 4 else today.year - 1
    july = int(datetime.datetime(season, 7, 15, 12, tzinfo=datetime.UTC).timestamp() * 1000)
    alert = {"id": new_ulid(), "dev": "lvl-1", "kind": "flood", "level": "danger", "prev": "clear"}
    peak = {"ts": july, "value": 295.0, "unit": "mm", "threshold": 270.0}
    messages.append(("alert", {"alert": {**alert, **peak}}))
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for kind, body in messages:
            payload = json.dumps({**seq.envelope(now), **body}).encode()
            await client.publish(f"floodgate/v1/{node}/{kind}", payload, qos=1)
    await wait_until(lambda: collector.ingestor.counters.stored >= len(messages), 20, "the messages stored")
    _, [ticket] = await collector.tickets.list(node=node)
    await collector.tickets.act(ticket["id"], "dispatch", "user:chen")  # to the routed unit

    assert collector.config.api is not None
    base = f"http://127.0.0.1:{collector.config.api.port}"
    asked: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("request", lambda r: asked.append(r.url))
            await login(page, base, "chen")
            await page.goto(f"{base}/#/site/{node}?h=1")
            chart = page.locator('[data-testid="chart"]')
            await expect(chart).to_be_visible()
            hour = await span(chart)
            assert 3_590_000 <= hour <= 3_610_000
            assert int(await chart.get_attribute("data-points") or 0) >= 55

            a, b = await drag_across_ticks(page, chart, 1, 2)  # the drawing's 15 and 30 min marks
            await expect(page.locator('[data-testid="zoom-reset"]')).to_be_visible()
            chart = page.locator('[data-testid="chart"]')
            zoomed = await span(chart)
            assert 0.2 * hour < zoomed < 0.3 * hour, zoomed  # a quarter of the hour
            await expect_zoomed_to(chart, a, b)
            points = int(await chart.get_attribute("data-points") or 0)
            assert 5 <= points <= 20, points  # one a minute in that stretch
            assert int(await chart.get_attribute("data-from") or 0) > now - hour
            await page.screenshot(path=str(ARTIFACTS / "6-site-zoomed.png"))
            await page.click('[data-testid="zoom-reset"]')
            await expect(page.locator('[data-testid="zoom-reset"]')).to_have_count(0)
            assert await span(page.locator('[data-testid="chart"]')) >= 3_590_000

            await page.goto(f"{base}/#/measures")
            on_time = page.locator('[data-testid="chart-on-time"] [data-testid="bar-row"]')
            await expect(on_time).to_have_count(1)
            alerts_chart = page.locator('[data-testid="chart-alerts"]')
            await expect(alerts_chart).to_contain_text("黄埔大道隧道")
            await expect(page.locator('[data-testid="chart-peak"]')).to_contain_text("295")
            await page.screenshot(path=str(ARTIFACTS / "7-measures.png"))

            font = await page.evaluate(
                """() => document.fonts.ready.then(() =>
                    [...document.fonts].filter((f) => f.family.includes("Floodgate")).map((f) => f.status))"""
            )
            assert font == ["loaded"]
            assert any(u.endswith("/dashboard/fonts/NotoSansSC-subset.woff2") for u in asked)
            elsewhere = [u for u in asked if not u.startswith(base + "/")]
            assert elsewhere == [], elsewhere
        finally:
            await browser.close()


async def drag_across_ticks(page: Page, chart: Locator, i: int, j: int) -> tuple[int, int]:
    """Drag from the chart's i-th time mark to its j-th (where the page wrote those times);
    the times of both marks."""
    ticks = chart.locator(".x-tick")
    marks = []
    for k in (i, j):
        box = await ticks.nth(k).bounding_box()
        assert box is not None
        marks.append((box["x"] + box["width"] / 2, int(await ticks.nth(k).get_attribute("data-ts") or 0)))
    chart_box = await chart.bounding_box()
    assert chart_box is not None
    y = chart_box["y"] + chart_box["height"] / 2
    await page.mouse.move(marks[0][0], y)
    await page.mouse.down()
    await page.mouse.move(marks[1][0], y, steps=5)
    await page.mouse.up()
    return marks[0][1], marks[1][1]


async def expect_zoomed_to(chart: Locator, a: int, b: int) -> None:
    """The chart shows [a, b], to within 1 % of that stretch (a pixel or two of the drag)."""
    await expect(chart).not_to_have_attribute("data-from", "")
    slack = (b - a) / 100
    got_a, got_b = (
        int(await chart.get_attribute("data-from") or 0),
        int(await chart.get_attribute("data-to") or 0),
    )
    assert abs(got_a - a) <= slack and abs(got_b - b) <= slack, (got_a - a, got_b - b, slack)


async def span(chart: Locator) -> int:
    return int(await chart.get_attribute("data-to") or 0) - int(await chart.get_attribute("data-from") or 0)


async def test_measures_default_to_the_collectors_month_and_season_not_the_browsers(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """At 20:00 UTC on 31 March by the collector's clock it is already 1 April in Guangzhou,
    where the collector counts months and seasons: the measures page must ask for April and
    the season that has just begun, whatever the browser's own time zone and clock say (a
    browser in UTC, its clock at noon on 15 March)."""
    evening = datetime.datetime(2027, 3, 31, 20, 0, tzinfo=datetime.UTC)
    browser_time = datetime.datetime(2027, 3, 15, 12, 0, tzinfo=datetime.UTC)
    asked: list[str] = []
    async with (
        collecting(broker, tmp_path, clock=ManualClock(int(evening.timestamp() * 1000))) as collector,
        async_playwright() as pw,
    ):
        assert collector.config.api is not None
        base = f"http://127.0.0.1:{collector.config.api.port}"
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = await browser.new_context(timezone_id="UTC")
            page = await context.new_page()
            await page.clock.set_fixed_time(browser_time)
            page.on("request", lambda r: asked.append(r.url))
            await login(page, base, "chen")
            await page.goto(f"{base}/#/measures")
            await expect(page.locator("#month")).to_have_value("2027-04")
            assert await page.evaluate("new Date().getUTCDate()") == 15  # the browser's own clock
        finally:
            await browser.close()
    assert any("measures/units?month=2027-04" in url for url in asked), asked
    assert any("measures/sites?season=2027" in url for url in asked), asked
