"""Take the README's dashboard screenshots from a running demo.

Starts ``floodgate demo`` on a free port and has Debian's chromium (through
Playwright) log in as the dispatcher: the overview and a flooded site are
photographed when a site is red with its gate closed and the forecast has sites at
risk, the measures page once a ticket has escalated and the simulated crews have
accepted a few (so the ranking has figures); into ``docs/``. Stops the demo with Ctrl-C (SIGINT) at the end.

    .venv/bin/python tools/screenshots.py [--wait 180]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

from playwright.async_api import async_playwright, expect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import free_port  # noqa: E402

DOCS = REPO / "docs"
CHROMIUM = "/usr/bin/chromium"


async def main(args: argparse.Namespace) -> None:
    port = free_port()
    work = tempfile.mkdtemp(prefix="floodgate-shots-")
    demo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "floodgate.cli", "demo", "--port", str(port), "--workdir", work,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert demo.stdout is not None
    password = ""
    try:
        async with asyncio.timeout(120):
            while not password:
                line = (await demo.stdout.readline()).decode()
                if not line:
                    raise SystemExit("the demo stopped before printing its logins")
                if m := re.match(r"\s+login dispatcher\s+password (\S+)", line):
                    password = m.group(1)

        escalated = asyncio.Event()

        async def follow() -> None:
            assert demo.stdout is not None
            seen = False
            while line := await demo.stdout.readline():
                seen = seen or b"ESCALATED" in line
                m = re.search(rb"accepted on time \d+/(\d+)", line)
                if seen and m and int(m.group(1)) >= 4:
                    escalated.set()

        drainer = asyncio.create_task(follow())
        base = f"http://127.0.0.1:{port}"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page(viewport={"width": 1400, "height": 860})
            await page.goto(base + "/")
            await page.fill("input[name=username]", "dispatcher")
            await page.fill("input[name=password]", password)
            await page.click("button[type=submit]")
            # At the height of the storm: a site in danger with its gate closed, live on the map.
            flooded = page.locator('svg.map [data-level="danger"][data-gate="closed"]').first
            # and the sites at risk from the demo's rainfall forecast listed.
            at_risk = page.locator('[data-testid="at-risk"] [data-testid="at-risk-row"]').first
            await expect(at_risk).to_be_visible(timeout=args.wait * 1000)
            await expect(flooded).to_be_attached(timeout=args.wait * 1000)
            await page.screenshot(path=str(DOCS / "dashboard-overview.png"))
            node = (await flooded.get_attribute("data-testid") or "").removeprefix("site-")
            await page.goto(f"{base}/#/site/{node}?h=1")
            await expect(page.locator('[data-testid="chart"]')).to_be_visible()
            await page.screenshot(path=str(DOCS / "dashboard-site.png"))
            async with asyncio.timeout(args.wait):
                await escalated.wait()
            await page.goto(f"{base}/#/measures")
            bars = page.locator('[data-testid="chart-on-time"] [data-testid="bar-row"]')
            await expect(bars.first).to_be_visible()
            await page.screenshot(path=str(DOCS / "dashboard-measures.png"))
            await browser.close()
        drainer.cancel()
        print(f"screenshots of {base} in {DOCS.relative_to(REPO)}/")
    finally:
        if demo.returncode is None:
            demo.send_signal(signal.SIGINT)
            await demo.wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--wait", type=float, default=600.0, help="the longest to wait for each moment (s)")
    asyncio.run(main(p.parse_args()))
