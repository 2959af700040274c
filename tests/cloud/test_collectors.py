"""Three collectors on one database (issue 13 §3): silence checks, escalation and command
expiry act once per event, and retention rolls up each reading once.

Each collector here is its own ``Store`` (its own connection pool), ``Ingestor``,
``Tickets`` and ``Silence`` on the same database, and they run their checks at
the same moment, as three collectors whose timers fire together would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cloud.db import commands as db_commands
from cloud.db.schema import alert_transitions, alerts, readings, readings_1m, ticket_timeline, tickets
from cloud.db.store import Store
from cloud.ingest import Ingestor, Received
from cloud.retention import DAY_MS as DAY
from cloud.retention import Retention
from cloud.silence import Silence
from cloud.tickets import Tickets
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud.test_ingest import msg
from tests.cloud.test_retention import T, send
from tests.cloud.test_tickets import service

MIN = 60_000
SITES = 6
BIRTH = {
    "agent_version": "0.1.0",
    "config_hash": "abc",
    "site": {"name": "T", "lat": 23.1, "lon": 113.4},
    "devices": [{"id": "lvl-1", "kind": "level", "model": "m"}],
}


def heard(seq: Sequencer, now: int) -> Received:
    """A reading of now, received now."""
    r = {"dev": "lvl-1", "ts": now, "metric": "depth_mm", "value": 1.0, "quality": "good"}
    m = msg(seq, "telemetry", {"readings": [r]})
    return Received(m.topic, m.payload, now)


async def count(store: Store, q: Any) -> int:
    async with store.read() as conn:
        return int((await conn.execute(q)).scalar() or 0)


async def test_silence_checks_of_three_collectors_open_and_close_each_episode_once(
    db_url: str, tmp_path: Path
) -> None:
    clock = ManualClock()
    stores = [Store(db_url) for _ in range(3)]
    try:
        await stores[0].migrate()
        services: list[Tickets] = [service(s, tmp_path, clock) for s in stores]
        ingestors = [Ingestor(s, t) for s, t in zip(stores, services, strict=True)]
        checks = [
            Silence(s, i, t, clock, after_ms=5 * MIN)
            for s, i, t in zip(stores, ingestors, services, strict=True)
        ]
        seqs = [Sequencer(f"hp-{n}", boot=1) for n in range(SITES)]
        await ingestors[0].ingest(
            [Received(m.topic, m.payload, clock.now_ms()) for m in (msg(seq, "birth", BIRTH) for seq in seqs)]
        )
        await ingestors[0].ingest([heard(seq, clock.now_ms()) for seq in seqs])

        async def together() -> list[str]:
            rounds = await asyncio.gather(*(c.check() for c in checks))
            return [e.action for events in rounds for e in events]

        assert await together() == []
        clock.advance(6 * MIN)  # every site silent
        assert sorted(await together()) == ["open"] * SITES, "one ticket per silent site"
        db = stores[0]
        assert await count(db, select(func.count()).select_from(alerts)) == SITES, "one episode per site"
        assert await count(db, select(func.count()).select_from(tickets)) == SITES
        assert await together() == [], "nothing more while they stay silent"

        # Nobody dispatches: each ticket escalates once, whichever collector gets there first.
        clock.advance(24 * 60 * MIN)
        rounds = await asyncio.gather(*(t.escalate_due() for t in services))
        escalated = sorted(e.ticket_id for events in rounds for e in events if e.action == "escalate")
        steps = (
            select(func.count()).select_from(ticket_timeline).where(ticket_timeline.c.action == "escalate")
        )
        assert len(set(escalated)) == SITES and len(escalated) == SITES == await count(db, steps)

        # Commands unanswered past their expiry time out once.
        for n in range(SITES):
            await db_commands.add(
                db,
                {
                    "cmd_id": new_ulid(),
                    "node": f"hp-{n}",
                    "type": "gate",
                    "dev": None,
                    "args": "{}",
                    "issued_by": "test",
                    "reason": "drill",
                    "issued_ms": clock.now_ms(),
                    "expires_ms": clock.now_ms() + MIN,
                    "status": "sent",
                },
            )
        clock.advance(2 * MIN)
        timed_out = await asyncio.gather(*(db_commands.time_out(s, clock.now_ms()) for s in stores))
        assert sum(timed_out) == SITES, timed_out

        # Heard again (through the second collector): each episode is cleared once.
        await ingestors[1].ingest([heard(seq, clock.now_ms()) for seq in seqs])
        await together()
        clears = select(func.count()).where(alert_transitions.c.level == "clear")
        assert await count(db, clears) == SITES, "one clear per episode"
        assert await count(db, select(func.count()).where(alerts.c.level != "clear")) == 0
    finally:
        for s in stores:
            await s.close()


async def test_retention_of_three_collectors_rolls_up_each_reading_once(db_url: str) -> None:
    clock = ManualClock(start_ms=T)
    stores = [Store(db_url) for _ in range(3)]
    try:
        await stores[0].migrate()
        jobs = [Retention(s, clock, raw_days=30) for s in stores]
        seq = Sequencer("hp-1", boot=1)
        old = T - 40 * DAY
        await send(Ingestor(stores[0]), seq, [(old + i * 1000, float(i)) for i in range(50)])
        await send(Ingestor(stores[1]), seq, [(T - 1000 + i, float(i)) for i in range(10)])
        for _ in range(2):  # the first round marks, the second rolls up and expires
            await asyncio.gather(*(j.run_once() for j in jobs))
            clock.advance(60_000)
        assert sum(j.rolled for j in jobs) == 60, [j.rolled for j in jobs]
        assert sum(j.deleted for j in jobs) == 50
        n = select(func.sum(readings_1m.c.n))
        assert await count(stores[2], n) == 60, "each reading in the aggregates once"
        assert await count(stores[2], select(func.count()).select_from(readings)) == 10
    finally:
        for s in stores:
            await s.close()
