"""The API's documentation page works offline: Swagger UI loads from the collector."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect

from cloud.db.store import Store
from floodgate.clock import ManualClock
from tests.cloud.test_api import serving

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason="chromium is installed by ./dev test",
)


async def test_docs_render_the_api_with_no_request_leaving_the_origin(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'docs.db'}")
    await store.migrate()
    try:
        async with serving(store, ManualClock(), tmp_path) as (base, _app), async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page(viewport={"width": 1440, "height": 900})
                asked: list[str] = []
                page.on("request", lambda r: asked.append(r.url))
                await page.goto(f"{base}/docs")
                # Swagger UI drew the document: the title and a route of each group.
                await expect(page.locator(".swagger-ui .info .title")).to_contain_text(
                    "Floodgate collector API"
                )
                await expect(
                    page.locator(".opblock-summary-path", has_text="/api/v1/tickets/{ticket_id}").first
                ).to_be_visible()
                assert (await page.request.get(f"{base}/redoc")).status == 404, "ReDoc would fetch from a CDN"
                assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in asked)
                elsewhere = [u for u in asked if not u.startswith((base + "/", f"blob:{base}/"))]
                assert elsewhere == [], elsewhere
            finally:
                await browser.close()
    finally:
        await store.close()
