"""The agent reports its open alert episodes in every heartbeat and birth (``health.alerts``).

The collector closes an episode the node no longer reports (``cloud.reconcile``), so the
list must hold exactly the episodes not clear: added at the rise, gone at the clear.
"""

from __future__ import annotations

from typing import Any

from edge.agent import Agent
from tests.conftest import SiteFactory, running
from tests.edge.test_agent_local import said
from tests.helpers import wait_until


async def test_heartbeats_list_the_open_episodes_until_they_clear(sim_site: SiteFactory) -> None:
    sim, site = await sim_site(overrides={"heartbeat_s": 0.2})
    agent = Agent(site)
    async with running(agent):

        async def alerts() -> list[dict[str, Any]]:
            return [m["alert"] for m in await said(agent) if "alert" in m and m["alert"]["dev"] == "lvl-1"]

        async def beats() -> list[dict[str, Any]]:
            return [m for m in await said(agent) if m.get("event", {}).get("type") == "heartbeat"]

        sim.source.manual = 200.0  # above the warning threshold
        [rise, *_] = await wait_until(alerts, 15, "a rise")
        listing = {"id": rise["id"], "dev": "lvl-1", "kind": "flood", "level": rise["level"]}

        async def beat_after(ts: int) -> dict[str, Any] | None:
            later = [b for b in await beats() if b["ts"] > ts]
            return later[-1]["event"]["detail"] if later else None

        hb = await wait_until(lambda: beat_after(rise["ts"]), 10, "a heartbeat after the rise")
        assert listing in hb["alerts"]
        sim.source.manual = 0.0

        async def cleared() -> dict[str, Any] | None:
            return next((a for a in await alerts() if a["level"] == "clear"), None)

        clear = await wait_until(cleared, 30, "the clear")
        hb = await wait_until(lambda: beat_after(clear["ts"]), 10, "a heartbeat after the clear")
        assert all(a["id"] != rise["id"] for a in hb["alerts"])
        assert (await agent.health())["alerts"] == hb["alerts"] == []
