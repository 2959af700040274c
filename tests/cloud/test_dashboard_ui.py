"""The dashboard tells the truth, in Chinese and English, at 1440 px, 1920 px and on a phone.

One collector for the module with a fleet of 40 sites (the demo's registry, with its English
names) and one chromium: what the sites say is published on a real mosquitto as their agents
would (births with health, alerts, the gate's state, two hours of readings with a short flood).
Every page's requests are checked to stay on the collector. Screenshots go to
``artifacts/dashboard/`` (or ``$FLOODGATE_ARTIFACTS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from cloud.collector import Collector
from cloud.config import Api, CloudConfig
from floodgate.broker import BrokerSettings
from floodgate.ids import new_ulid, now_ms
from floodgate.wire import Sequencer
from simulators.fleet import FleetSite, fleet, registry_yaml
from tests.cloud.test_dashboard import (
    ARTIFACTS,
    CHROMIUM,
    MASTER,
    PASSWORD,
)
from tests.helpers import Mosquitto, free_port, wait_until

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is installed by ./dev test"),
    pytest.mark.asyncio(loop_scope="module"),
]
WIDE, FULL_HD, PHONE = (
    {"width": 1440, "height": 900},
    {"width": 1920, "height": 1080},
    {"width": 390, "height": 844},
)
FLOOD_MM = 404.0  # hp-01's short flood: 30 s at this depth, the rest of the two hours at 100 mm
CJK = re.compile(r"[\u3400-\u9fff]")
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
# Latin a Chinese page may show: units, and the P90 of a measure.
LATIN_OK_IN_ZH = {"mm", "P90"}


@dataclass
class Fleet:
    collector: Collector
    sites: list[FleetSite]
    base: str
    browser: Browser
    closed: list[str] = field(default_factory=list)  # nodes whose gate is closed
    danger: list[str] = field(default_factory=list)


def gate_of(i: int) -> str:
    """Every fourth site floods and its gate is closed; one more has its gate closing."""
    return "closed" if i % 4 == 0 else "closing" if i == 5 else "open"


def level_of(i: int) -> str:
    return "danger" if i % 4 == 0 else "warning" if i % 4 == 1 else "clear"


async def publish_fleet(url_port: int, sites: list[FleetSite]) -> int:
    """Births, gate states, alerts and (for the first site) two hours of readings; the count."""
    now = now_ms()
    sent = 0
    async with aiomqtt.Client("127.0.0.1", url_port) as client:

        async def send(node: str, seq: Sequencer, kind: str, body: dict[str, Any], ts: int) -> None:
            nonlocal sent
            payload = json.dumps({**seq.envelope(ts), **body}).encode()
            await client.publish(f"floodgate/v1/{node}/{kind}", payload, qos=1)
            sent += 1

        for i, s in enumerate(sites):
            seq = Sequencer(s.node, boot=1)
            health = {
                "devices": {
                    "lvl-1": {
                        "requests": 1204,
                        "timeouts": 3,
                        "errors": 0,
                        "last_good_ms": now - 12_000,
                        "consecutive_failures": 0,
                        "state": "ok",
                        "fault": None,
                    },
                    "imm-1": {
                        "requests": 1200,
                        "timeouts": 40,
                        "errors": 2,
                        "last_good_ms": now - 600_000,
                        "consecutive_failures": 9,
                        "state": "failing",
                        "fault": "timeout",
                    },
                },
                "responses": {"entrance": {"gate": "open", "sign": ""}},
            }
            birth = {
                "agent_version": "0.1.0",
                "config_hash": "abc",
                "site": {"name": s.name, "lat": s.lat, "lon": s.lon, "address": "广州市黄埔区"},
                "devices": [
                    {
                        "id": "lvl-1",
                        "kind": "level",
                        "model": "generic-rs485-level",
                        "unit": "mm",
                        "thresholds": {"warning": 150.0, "danger": 270.0},
                    },
                    {"id": "imm-1", "kind": "immersion", "model": "generic-immersion"},
                    {"id": "sign-1", "kind": "sign", "model": "generic-led-board"},
                    {"id": "gate-1", "kind": "gate", "model": "generic-barrier-gate"},
                ],
                "health": health,
            }
            await send(s.node, seq, "birth", birth, now - 7_200_000)
            if i == 0:
                for start in range(7_200_000, 0, -600_000):  # a reading every 10 s, 60 a message
                    readings = []
                    for k in range(60):
                        ts = now - start + k * 10_000
                        spike = now - 3_600_000 <= ts < now - 3_570_000
                        depth = FLOOD_MM if spike else 100.0
                        readings.append(
                            {
                                "dev": "lvl-1",
                                "ts": ts,
                                "metric": "depth_mm",
                                "value": depth,
                                "quality": "good",
                            }
                        )
                    await send(s.node, seq, "telemetry", {"readings": readings}, now - start)
            level = level_of(i)
            if level != "clear":
                alert = {
                    "id": new_ulid(),
                    "dev": "lvl-1",
                    "kind": "flood",
                    "level": level,
                    "prev": "clear",
                    "ts": now - 3_600_000,
                    "value": FLOOD_MM if level == "danger" else 180.0,
                    "unit": "mm",
                    "threshold": 270.0 if level == "danger" else 150.0,
                }
                await send(s.node, seq, "alert", {"alert": alert}, now - 3_600_000)
            if gate_of(i) != "open":
                event = {
                    "type": "actuator.state",
                    "dev": "gate-1",
                    "detail": {"state": gate_of(i), "cause": "rule:deep_water"},
                }
                await send(s.node, seq, "event", {"event": event}, now - 3_500_000)
    return sent


@contextlib.asynccontextmanager
async def fleet_collector(
    broker: Mosquitto, workdir: Path, n: int
) -> AsyncIterator[tuple[Collector, list[FleetSite]]]:
    sites = fleet(n)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "master.key").write_bytes(MASTER)
    (workdir / "registry.yaml").write_text(registry_yaml(sites, accept_min=60), encoding="utf-8")
    port = free_port()
    config = CloudConfig(
        database=f"sqlite:///{workdir / 'dash.db'}",
        client_id=f"dash-{port}",
        command_key_file=str(workdir / "master.key"),
        registry=str(workdir / "registry.yaml"),
        api=Api(host="127.0.0.1", port=port),
    )
    col = Collector(config, BrokerSettings(url=broker.url, reconnect_max_s=0.5))
    task = asyncio.create_task(col.run())
    try:
        await asyncio.wait_for(col.ready.wait(), 20)
        await asyncio.wait_for(col.consumer.subscribed.wait(), 20)
        assert col.api is not None
        api = col.api
        await wait_until(lambda: api.started, 10, "the API server")
        for user, role, unit in (
            ("chen", "dispatcher", None),
            ("zhao", "viewer", None),
            ("wang", "unit", "drainage-dasha"),
        ):
            await col.auth.add_user(user, role, PASSWORD, unit=unit)
        sent = await publish_fleet(broker.port, sites)
        await wait_until(lambda: col.ingestor.counters.stored >= sent, 30, "the fleet's messages stored")
        flooded = sum(1 for i in range(n) if level_of(i) != "clear")

        async def ticketed() -> bool:
            total, _ = await col.tickets.list()
            return total >= flooded

        await wait_until(ticketed, 30, "a ticket per flooded site", every=0.2)
        yield col, sites
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fleet40(broker: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fleet]:
    async with (
        fleet_collector(broker, tmp_path_factory.mktemp("fleet40"), 40) as (col, sites),
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        assert col.config.api is not None
        f = Fleet(col, sites, f"http://127.0.0.1:{col.config.api.port}", browser)
        f.closed = [s.node for i, s in enumerate(sites) if gate_of(i) == "closed"]
        f.danger = [s.node for i, s in enumerate(sites) if level_of(i) == "danger"]
        try:
            yield f
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def session(f: Fleet, user: str, viewport: dict[str, int], lang: str = "zh") -> AsyncIterator[Page]:
    """A logged-in page in its own browser context; on leaving, no request went elsewhere and
    no text was missing a translation."""
    context: BrowserContext = await f.browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    asked: list[str] = []
    context.on("request", lambda r: asked.append(r.url))
    await context.add_init_script(f"localStorage.setItem('lang', '{lang}')")
    page = await context.new_page()
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    try:
        await page.goto(f.base + "/")
        await page.fill("input[name=username]", user)
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await expect(page.locator("#who")).to_contain_text(user)
        yield page
        assert await page.evaluate("[...window.missingKeys]") == []
        elsewhere = [u for u in asked if not u.startswith(f.base + "/")]
        assert elsewhere == [], elsewhere
    finally:
        await context.close()


async def show(page: Page, f: Fleet, hash_: str) -> None:
    """Go to a page of the dashboard and wait until it is drawn."""
    lang = await page.evaluate("localStorage.getItem('lang') || 'zh'")
    await page.goto(f"{f.base}/{hash_}")
    await expect(page.locator("body")).to_have_attribute("data-rendered", f"{lang}:{hash_}")


def shot(page: Page, name: str) -> Any:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# ------------------------------------------------------------------------ the map


OVERLAPS = """() => {
  const boxes = [...document.querySelectorAll('svg.map text.label')]
    .filter((l) => getComputedStyle(l).visibility !== 'hidden')
    .map((l) => [l.textContent, l.getBoundingClientRect()]);
  const out = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [na, a] = boxes[i], [nb, b] = boxes[j];
    if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) out.push([na, nb]);
  }
  return {shown: boxes.map(([n]) => n), overlaps: out};
}"""


async def labels(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(OVERLAPS)
    return result


async def test_map_draws_closed_gates_a_legend_and_labels_that_never_overlap_at_40_sites(
    fleet40: Fleet,
) -> None:
    f = fleet40
    for viewport, name in ((WIDE, "1440"), (FULL_HD, "1920"), (PHONE, "390")):
        async with session(f, "chen", viewport) as page:
            await show(page, f, "#/")
            await expect(page.locator(".site-mark")).to_have_count(40)
            # The closed gate is a sign the page draws: a red plate on each closed site's mark.
            plates = page.locator('svg.map [data-testid="gate-closed"] rect:not(.bar)')
            await expect(plates).to_have_count(len(f.closed))
            for node in f.closed:
                mark = page.locator(f'[data-testid="site-{node}"]')
                await expect(mark).to_have_attribute("data-gate", "closed")
                plate = mark.locator('[data-testid="gate-closed"] rect').first
                box = await plate.bounding_box()
                assert box is not None and box["width"] >= 8 and box["height"] >= 8, box
                fill = await plate.evaluate("(r) => getComputedStyle(r).fill")
                assert fill == "rgb(214, 40, 40)", fill
                ring = await mark.locator("circle").evaluate("(c) => getComputedStyle(c).strokeWidth")
                assert ring == "3px"  # the dot says it too: a dark ring
            await expect(page.locator('svg.map [data-testid="gate-closing"]')).to_have_count(1)
            legend = page.locator('[data-testid="legend"]')
            await expect(legend).to_contain_text("道闸已关闭")
            await expect(legend.locator('[data-testid="gate-closed"]')).to_have_count(1)
            found = await labels(page)
            assert found["overlaps"] == [], found["overlaps"]
            assert len(found["shown"]) >= (6 if name == "390" else 12), found["shown"]
            await shot(page, f"map-40-{name}")
            shown_danger = [n for n in found["shown"] if n in {s.name_zh for s in f.sites[::4]}]
            assert shown_danger or name == "390", ("the flooded sites' names come first", found["shown"])
            # Zoomed in, marks and labels keep their size and still do not collide.
            before = await page.locator(".site-mark circle").first.bounding_box()
            await page.click('[data-zoom="in"]')
            await page.click('[data-zoom="in"]')
            after = await page.locator(".site-mark circle").first.bounding_box()
            assert before is not None and after is not None and abs(before["width"] - after["width"]) < 1
            zoomed = await labels(page)
            assert zoomed["overlaps"] == [], zoomed["overlaps"]
            await shot(page, f"map-40-{name}-zoomed")
    async with session(f, "chen", WIDE, lang="en") as page:
        await show(page, f, "#/")
        found = await labels(page)
        assert found["shown"] and not [n for n in found["shown"] if CJK.search(n)], found["shown"]
        assert set(found["shown"]) <= {s.name_en for s in f.sites}  # the registry's English names
        await expect(page.locator('[data-testid="legend"]')).to_contain_text("gate closed")


async def test_map_labels_do_not_overlap_at_16_sites(broker: Mosquitto, tmp_path: Path) -> None:
    async with fleet_collector(broker, tmp_path, 16) as (col, sites), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        assert col.config.api is not None
        f = Fleet(col, sites, f"http://127.0.0.1:{col.config.api.port}", browser)
        try:
            for viewport, name in ((WIDE, "1440"), (FULL_HD, "1920")):
                async with session(f, "chen", viewport) as page:
                    await show(page, f, "#/")
                    await expect(page.locator(".site-mark")).to_have_count(16)
                    found = await labels(page)
                    assert found["overlaps"] == [], found["overlaps"]
                    assert len(found["shown"]) >= 10, found["shown"]
                    await shot(page, f"map-16-{name}")
        finally:
            await browser.close()
