"""Issue 14: an agent killed with SIGKILL mid-episode leaves no stale active episode and no second ticket.

Real mosquitto, a real agent process on a simulated site, a real collector (SQLite and
PostgreSQL). The water is up; the agent is killed and started again (boot 2) with the
water still up. The new boot's birth settles boot 1's episode (``reconciled: superseded
by boot 2``); the new boot's own episode lands on the same open ticket. When the water
goes down, nothing is left active.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cloud.db.schema import alert_transitions, alerts
from cloud.db.store import Store
from tests.cloud.test_e2e_ack import collecting
from tests.conftest import SiteFactory
from tests.helpers import Mosquitto, wait_until


async def episodes(db_url: str, node: str) -> list[dict[str, Any]]:
    """The node's flood episodes of lvl-1, each with its level and its transitions' reasons."""
    s = Store(db_url)
    try:
        async with s.read() as conn:
            rows = (
                await conn.execute(
                    select(alerts.c.id, alerts.c.level).where(
                        alerts.c.node == node, alerts.c.dev == "lvl-1", alerts.c.kind == "flood"
                    )
                )
            ).all()
            out = []
            for r in rows:
                q = select(alert_transitions.c.reason).where(alert_transitions.c.alert_id == r.id)
                reasons = [x[0] for x in (await conn.execute(q)).all() if x[0]]
                out.append({"id": r.id, "level": r.level, "reasons": reasons})
            return out
    finally:
        await s.close()


async def test_agent_killed_mid_episode_leaves_nothing_stale(
    own_broker: Mosquitto, sim_site: SiteFactory, node_id: str, db_url: str, tmp_path: Path
) -> None:
    sim, site = await sim_site(
        broker_url=own_broker.url, poll_s=0.1, telemetry_interval_s=0.2, overrides={"heartbeat_s": 1}
    )
    cmd = [sys.executable, "-m", "floodgate.cli", "edge", "run", "--config", str(site.path)]
    log = (tmp_path / "agent.log").open("w")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with collecting(db_url, own_broker.url, f"col-{node_id}") as col:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))
            sim.source.manual = 400.0

            async def active() -> list[dict[str, Any]]:
                return [e for e in await episodes(db_url, node_id) if e["level"] != "clear"]

            [first] = await wait_until(active, 30, "boot 1's episode stored")
            os.kill(procs[0].pid, signal.SIGKILL)
            await asyncio.to_thread(procs[0].wait)
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=log))  # boot 2, the water still up

            async def settled() -> list[dict[str, Any]] | None:
                eps = await episodes(db_url, node_id)
                old = next(e for e in eps if e["id"] == first["id"])
                new = [e for e in eps if e["id"] != first["id"] and e["level"] != "clear"]
                return eps if old["level"] == "clear" and new else None

            eps = await wait_until(settled, 40, "boot 1's episode settled and boot 2's own raised")
            old = next(e for e in eps if e["id"] == first["id"])
            assert old["reasons"] == ["reconciled: superseded by boot 2"]
            total, rows = await col.tickets.list(node=node_id, kind="flood")
            assert total == 1, "no second ticket"
            linked = {a["id"] for a in (await col.tickets.get(rows[0]["id"]))["alerts"]}
            assert {e["id"] for e in eps} <= linked

            sim.source.manual = 0.0
            await wait_until(lambda: _none(active()), 60, "every episode clear once the water is gone")
            reasons = {r for e in await episodes(db_url, node_id) for r in e["reasons"]}
            assert reasons == {"reconciled: superseded by boot 2"}, "boot 2's own clear arrived: no reconcile"
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                await asyncio.to_thread(p.wait)
        log.close()


async def _none(xs: Any) -> bool:
    return not await xs
