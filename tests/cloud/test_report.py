"""The office's monthly report over real HTTP: the unit ranking and the season per site as CSV (the
measures API's numbers) and as PDF, turned into PNG pages by poppler's pdftoppm."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from PIL import Image
from playwright.async_api import async_playwright

from cloud import report
from cloud.db.store import Store
from floodgate.ids import new_ulid
from tests.cloud.test_api import Api, an_api
from tests.cloud.test_dashboard import CHROMIUM, collecting, login
from tests.cloud.test_tickets import REGISTRY, Site, registry
from tests.helpers import Mosquitto

MIN = 60_000
POPPLER = "install poppler-utils (./dev setup does) for pdftoppm, pdftotext and pdffonts"
ARTIFACTS = (
    Path(os.environ.get("FLOODGATE_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts")) / "reports"
)


@pytest.fixture
async def api(store: Store, tmp_path: Path) -> AsyncIterator[Api]:
    async with an_api(store, tmp_path) as a:
        yield a


def month_of(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")


async def a_month_and_a_season(api: Api, sites: int = 2) -> None:
    """Floods at ``sites`` sites; hp-1's ticket handled on time by its unit (大沙街排水所), the other
    sites' tickets dispatched to the fallback unit and left to miss their deadlines."""
    now = api.clock.now_ms()
    for i in range(sites):
        site = Site(api.ingestor, node=f"hp-{i + 1}")
        level = "warning" if i % 2 else "danger"
        await site.send(site.alert(new_ulid(), level, "clear", value=300.0 + i, ts=now))
    async with api.client("chen") as chen, api.client("wang") as wang:
        tickets = (await chen.get("/api/v1/tickets", params={"limit": 500})).json()["items"]
        assert len(tickets) == sites
        for t in tickets:
            path = f"/api/v1/tickets/{t['id']}"
            assert (await chen.post(path + "/dispatch", json={})).status_code == 200
            if t["node"] == "hp-1":
                assert (await wang.post(path + "/accept", json={})).status_code == 200
                assert (await wang.post(path + "/report", json={"note": "pumped"})).status_code == 200
                verified = await chen.post(path + "/verify", json={"confirm": True})  # still reads water
                assert verified.status_code == 200
                assert (await chen.post(path + "/evaluate", json={"score": 5})).status_code == 200
    api.clock.advance(3 * 60 * MIN)  # the others' deadlines have passed


def read_csv(body: bytes) -> list[list[str]]:
    assert body.startswith("\ufeff".encode()), "a BOM, so that a spreadsheet reads UTF-8"
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))


def number(cell: str) -> float | None:
    return None if cell == "" else float(cell)


ENGLISH_NAMES = REGISTRY.replace(
    "drainage-dasha: {name: 大沙街排水所,",
    "drainage-dasha: {name: 大沙街排水所, name_en: Dasha drainage station,",
).replace(
    "hp-1: {area: dasha-g7, name: 科翔路隧道}",
    "hp-1: {area: dasha-g7, name: 科翔路隧道, name_en: Kexiang Rd tunnel}",
)


async def test_the_csv_reports_carry_the_measures_apis_numbers(api: Api, tmp_path: Path) -> None:
    await a_month_and_a_season(api)
    month = month_of(api.clock.now_ms())
    async with api.client("viewer") as viewer, api.client() as anon:
        assert (await anon.get("/api/v1/reports/units.csv", params={"month": month})).status_code == 401
        units = (await viewer.get("/api/v1/measures/units", params={"month": month})).json()
        r = await viewer.get("/api/v1/reports/units.csv", params={"month": month})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        assert f'filename="units-{month}.csv"' in r.headers["content-disposition"]
        head, *rows = read_csv(r.content)
        assert head[:4] == ["排名", "单位编号", "责任单位", "月份"]
        assert [row[1] for row in rows] == ["drainage-dasha", "emergency-office"], "on time first"
        assert [row[0] for row in rows] == ["1", ""], "nothing handled yet: last, unranked"
        assert rows[0][2] == "大沙街排水所" and rows[1][2] == "黄埔区应急管理局", "the registry's names"
        by_unit = {u["unit"]: u for u in units}
        assert len(by_unit) == len(rows) == 2
        columns = head[4:]
        fields = [
            "tickets",
            "on_time_accept_rate",
            "on_time_handle_rate",
            "handling_hours_avg",
            "handling_hours_p90",
            "satisfaction",
            "evaluated",
            "escalations",
        ]
        assert len(columns) == len(fields)
        for row in rows:
            u = by_unit[row[1]]
            assert row[3] == month
            assert [number(c) for c in row[4:]] == [u[f] for f in fields], row
        assert by_unit["emergency-office"]["on_time_accept_rate"] == 0.0, "a ranking that means something"

        en = await viewer.get("/api/v1/reports/units.csv", params={"month": month, "lang": "en"})
        assert read_csv(en.content)[0][:3] == ["Rank", "Unit id", "Unit"]
        # In English, the registry's English names where it has them (the Chinese ones where not).
        api.tickets.registry = registry(tmp_path, ENGLISH_NAMES)
        en = await viewer.get("/api/v1/reports/units.csv", params={"month": month, "lang": "en"})
        names = {row[1]: row[2] for row in read_csv(en.content)[1:]}
        assert names == {"drainage-dasha": "Dasha drainage station", "emergency-office": "黄埔区应急管理局"}
        season = int(month[:4])
        en = await viewer.get("/api/v1/reports/sites.csv", params={"season": season, "lang": "en"})
        assert [row[1] for row in read_csv(en.content)[1:]] == ["Kexiang Rd tunnel", "hp-2"]
        zh = await viewer.get("/api/v1/reports/sites.csv", params={"season": season})
        assert [row[1] for row in read_csv(zh.content)[1:]] == ["科翔路隧道", "hp-2"]
        api.tickets.registry = registry(tmp_path, REGISTRY)

        season = int(month[:4])
        sites = (await viewer.get("/api/v1/measures/sites", params={"season": season})).json()
        r = await viewer.get("/api/v1/reports/sites.csv", params={"season": season})
        assert r.status_code == 200
        head, *rows = read_csv(r.content)
        assert len(rows) == len(sites) == 2
        for row, s in zip(rows, sites, strict=True):
            assert row[0] == s["node"] and int(row[2]) == s["season"]
            expected = [
                s["alerts"]["warning"],
                s["alerts"]["danger"],
                s["faults"],
                s["peak_depth_mm"],
                s["hours_above_threshold"],
            ]
            assert [number(c) for c in row[3:]] == expected, row
        assert rows[0][1] == "科翔路隧道" and rows[1][1] == "hp-2", "a site's name where the registry has one"
        assert (await viewer.get("/api/v1/reports/sites.csv", params={"season": 1999})).status_code == 422
        bad = await viewer.get("/api/v1/reports/units.csv", params={"month": "2026-13"})
        assert bad.status_code == 422


async def run(*args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, (args, err.decode(errors="replace"))
    return out


async def png_pages(pdf: bytes, folder: Path) -> list[Image.Image]:
    """The PDF's pages as PNG images (pdftoppm, 50 dpi)."""
    folder.mkdir()
    (folder / "report.pdf").write_bytes(pdf)
    await run("pdftoppm", "-r", "50", "-png", str(folder / "report.pdf"), str(folder / "page"))
    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("page-*.png"))]


def inked(page: Image.Image) -> float:
    """The share of a page's pixels that are not white."""
    gray = page.convert("L").tobytes()
    return sum(1 for v in gray if v < 200) / len(gray)


def coloured(page: Image.Image, rgb: tuple[int, int, int]) -> int:
    """Pixels close to ``rgb`` (a chart's bars)."""
    px = page.tobytes()
    r, g, b = rgb
    return sum(
        1
        for i in range(0, len(px), 3)
        if abs(px[i] - r) < 40 and abs(px[i + 1] - g) < 40 and abs(px[i + 2] - b) < 40
    )


async def test_the_pdf_reports_print_their_charts_and_tables_in_chinese(api: Api, tmp_path: Path) -> None:
    for tool in ("pdftoppm", "pdftotext", "pdffonts"):
        assert shutil.which(tool), POPPLER
    await a_month_and_a_season(api, sites=40)  # 40 sites: the table takes two pages
    month = month_of(api.clock.now_ms())
    async with api.client("viewer") as viewer:
        r = await viewer.get("/api/v1/reports/units.pdf", params={"month": month})
        assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
        assert f'filename="units-{month}.pdf"' in r.headers["content-disposition"]
        units_pdf = r.content
        r = await viewer.get("/api/v1/reports/sites.pdf", params={"season": int(month[:4])})
        assert r.status_code == 200
        sites_pdf = r.content
        r = await viewer.get("/api/v1/reports/units.pdf", params={"month": month, "lang": "en"})
        english = r.content

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pages = await png_pages(units_pdf, tmp_path / "units")
    assert len(pages) == 2, "the charts, then the table"
    for n, p in enumerate(pages, 1):
        p.save(ARTIFACTS / f"units-{n}.png")
        assert inked(p) > 0.005, "not blank"
    assert coloured(pages[0], (44, 110, 180)) > 200, "the charts' bars are drawn"
    pages = await png_pages(sites_pdf, tmp_path / "sites")
    assert len(pages) == 3, "the charts, then 40 rows of table on two pages"
    assert coloured(pages[0], (200, 40, 40)) > 200 and coloured(pages[0], (230, 160, 20)) > 200
    for n, p in enumerate(pages, 1):
        p.save(ARTIFACTS / f"sites-{n}.png")
        assert inked(p) > 0.005, "not blank"

    # The Chinese is drawn with an embedded CJK font (so any printer shows it), and reads back.
    (tmp_path / "units.pdf").write_bytes(units_pdf)
    fonts = (await run("pdffonts", str(tmp_path / "units.pdf"))).decode()
    cjk = [line for line in fonts.splitlines() if "CJK" in line]
    assert cjk and all(" yes " in line for line in cjk), fonts
    text = (await run("pdftotext", "-layout", str(tmp_path / "units.pdf"), "-")).decode()
    assert f"{month} 责任单位月度考核排名" in text and "大沙街排水所" in text and "按时处置率" in text
    (tmp_path / "english.pdf").write_bytes(english)
    text = (await run("pdftotext", str(tmp_path / "english.pdf"), "-")).decode()
    assert f"Unit ranking, {month}" in text and "On-time handling" in text
    (tmp_path / "sites.pdf").write_bytes(sites_pdf)
    text = (await run("pdftotext", "-layout", str(tmp_path / "sites.pdf"), "-")).decode()
    assert "汛期站点报告" in text and "科翔路隧道" in text and "hp-40" in text


async def test_without_a_chinese_font_the_pdf_is_refused_with_a_clear_503(api: Api) -> None:
    await a_month_and_a_season(api)
    season = {"season": int(month_of(api.clock.now_ms())[:4])}
    api.app.state.ctx.report_font = "/nonexistent/font.ttf"
    async with api.client("viewer") as viewer:
        r = await viewer.get("/api/v1/reports/sites.pdf", params=season)
        assert r.status_code == 503 and "report_font" in r.json()["detail"]
        # A font without Chinese glyphs would print boxes: refused too, naming what it lacks.
        api.app.state.ctx.report_font = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
        r = await viewer.get("/api/v1/reports/sites.pdf", params=season)
        assert r.status_code == 503 and "no glyph for" in r.json()["detail"] and "科" in r.json()["detail"]
        assert (await viewer.get("/api/v1/reports/sites.csv", params={"season": 2026})).status_code == 200


async def test_the_measures_page_downloads_each_report(broker: Mosquitto, tmp_path: Path) -> None:
    """A button on the measures page for each report: the file comes with the user's token and
    in the page's language."""
    async with collecting(broker, tmp_path) as col, async_playwright() as pw:
        assert col.config.api is not None
        base = f"http://127.0.0.1:{col.config.api.port}"
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 900}, accept_downloads=True)
            await login(page, base, "zhao")  # a viewer
            await page.goto(f"{base}/#/measures?month=2026-07&season=2026")
            got = {}
            for which in ("units-csv", "units-pdf", "sites-csv", "sites-pdf"):
                async with page.expect_download() as info:
                    await page.click(f'[data-testid="report-{which}"]')
                download = await info.value
                path = tmp_path / download.suggested_filename
                await download.save_as(path)
                got[which] = (download.suggested_filename, path.read_bytes())
        finally:
            await browser.close()
    assert got["units-csv"][0] == "units-2026-07.csv"
    assert read_csv(got["units-csv"][1])[0][0] == "排名", "the page's language (Chinese by default)"
    assert got["sites-csv"][0] == "sites-2026.csv" and read_csv(got["sites-csv"][1])[0][1] == "站点"
    for which in ("units-pdf", "sites-pdf"):
        name, body = got[which]
        assert name.endswith(".pdf") and body.startswith(b"%PDF-")
        assert len(await png_pages(body, tmp_path / which)) == 2


def test_a_name_that_looks_like_a_formula_is_shown_not_run_by_a_spreadsheet() -> None:
    unit = {
        "unit": "u1",
        "month": "2026-07",
        "tickets": 1,
        "on_time_accept_rate": None,
        "on_time_handle_rate": None,
        "handling_hours_avg": None,
        "handling_hours_p90": None,
        "satisfaction": None,
        "evaluated": 0,
        "escalations": 0,
    }
    [rank] = report.ranked([unit])
    rows = read_csv(report.units_csv([rank], lambda _: '=HYPERLINK("http://x")', "en").encode())
    assert rows[1][2] == '\'=HYPERLINK("http://x")'
    site = {"node": "hp-1", "season": 2026, "alerts": {"warning": 0, "danger": 0}, "faults": 0}
    rows = read_csv(
        report.sites_csv(
            [{**site, "peak_depth_mm": -1.5, "hours_above_threshold": 0.0}], lambda _: "@x", "en"
        ).encode()
    )
    assert rows[1][1] == "'@x" and rows[1][6] == "-1.5", "a number stays a number"


def test_units_without_a_handling_figure_come_last_unranked_in_the_csv_and_the_pdf() -> None:
    """A unit with no handled ticket has no on-time handling rate: it was ranked by the other
    figures (tied 2nd with one "–", another "–" 5th); now it comes after every ranked unit, no rank."""

    def unit(name: str, accept: float | None, handle: float | None) -> dict[str, Any]:
        return {
            "unit": name,
            "month": "2026-12",
            "tickets": 2,
            "on_time_accept_rate": accept,
            "on_time_handle_rate": handle,
            "handling_hours_avg": None,
            "handling_hours_p90": None,
            "satisfaction": None,
            "evaluated": 0,
            "escalations": 0,
        }

    units = report.ranked(
        [
            unit("a-none", 1.0, None),
            unit("b-half", 1.0, 0.5),
            unit("c-none", 0.5, None),
            unit("d-full", 1.0, 1.0),
            unit("e-none", None, None),
        ]
    )
    assert [(u["unit"], u["rank"]) for u in units] == [
        ("d-full", 1),
        ("b-half", 2),
        ("a-none", None),
        ("c-none", None),
        ("e-none", None),
    ]
    rows = read_csv(report.units_csv(units, lambda u: u, "en").encode())[1:]
    assert [(r[0], r[1]) for r in rows] == [
        ("1", "d-full"),
        ("2", "b-half"),
        ("", "a-none"),
        ("", "c-none"),
        ("", "e-none"),
    ]
    assert shutil.which("pdftotext"), POPPLER
    font = report.find_font()
    pdf = report.units_pdf(units, lambda u: u, "2026-12", "en", font, 0, ZoneInfo("Asia/Shanghai"))
    text = subprocess.run(
        ["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True
    ).stdout.decode()
    for name, rank in (("d-full", "1"), ("b-half", "2"), ("a-none", "–"), ("e-none", "–")):
        lines = [x.strip() for x in text.splitlines() if name in x]
        assert len(lines) >= 2 and all(x.startswith(rank) for x in lines), lines  # charts and table
