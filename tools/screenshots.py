"""Take the README's dashboard screenshots from a running demo.

Starts ``floodgate demo`` on a free port and has Debian's chromium (through
Playwright) log in as the dispatcher at 1440 px. Once a ticket has escalated and the
simulated crews have accepted a few (so the measures rank them and the charts have some
history), the overview and a flooded site are photographed at a moment some sites are
red (``--red``, 2), a gate is closed and the rainfall forecast has sites at risk, then the
measures page; into ``docs/``, each PNG optimised (cut to a 256-colour palette when that is
what keeps it under 300 KB). Stops the demo with Ctrl-C (SIGINT) at the end.

    .venv/bin/python tools/screenshots.py [--wait 600] [--red 2]
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

from PIL import Image
from playwright.async_api import Page, async_playwright, expect

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import free_port  # noqa: E402

DOCS = REPO / "docs"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1440, "height": 900}
MAX_BYTES = 300_000


def optimise(path: Path) -> None:
    """The PNG as small as it goes losslessly; cut to a 256-colour palette if still too big."""
    with Image.open(path) as im:
        im.load()
    im.save(path, optimize=True)
    if path.stat().st_size >= MAX_BYTES:
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"{path.relative_to(REPO)}: {path.stat().st_size // 1024} KB")


async def photograph(page: Page, name: str) -> None:
    await page.evaluate("document.fonts.ready")  # the served font, not a fallback, in the picture
    path = DOCS / name
    await page.screenshot(path=str(path))
    optimise(path)


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
            page = await browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
            await page.goto(base + "/")
            await page.fill("input[name=username]", "dispatcher")
            await page.fill("input[name=password]", password)
            await page.click("button[type=submit]")
            async with asyncio.timeout(args.wait):
                await escalated.wait()
            # At the height of the storm: some sites in danger, one with its gate closed, live on the map.
            flooded = page.locator('svg.map [data-level="danger"][data-gate="closed"]').first
            # and the sites at risk from the demo's rainfall forecast listed.
            at_risk = page.locator('[data-testid="at-risk"] [data-testid="at-risk-row"]').first
            await expect(at_risk).to_be_visible(timeout=args.wait * 1000)
            await expect(flooded).to_be_attached(timeout=args.wait * 1000)
            red = page.locator('svg.map [data-level="danger"]')
            async with asyncio.timeout(args.wait):
                while await red.count() < args.red or not await flooded.count():
                    await page.wait_for_function(  # the next live redraw
                        "n => document.querySelectorAll('svg.map [data-level=danger]').length !== n",
                        arg=await red.count(),
                        timeout=args.wait * 1000,
                    )
            node = (await flooded.get_attribute("data-testid") or "").removeprefix("site-")
            await photograph(page, "dashboard-overview.png")
            await page.goto(f"{base}/#/site/{node}?h=1")
            await expect(page.locator('[data-testid="chart"]')).to_be_visible()
            await photograph(page, "dashboard-site.png")
            await page.goto(f"{base}/#/measures")
            bars = page.locator('[data-testid="chart-on-time"] [data-testid="bar-row"]')
            await expect(bars.first).to_be_visible()
            await photograph(page, "dashboard-measures.png")
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
    p.add_argument("--red", type=int, default=2, help="how many sites in danger the overview waits for")
    asyncio.run(main(p.parse_args()))
