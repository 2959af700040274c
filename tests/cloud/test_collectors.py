"""Three collectors on one database (issue 13 §3): silence checks, escalation and command
expiry act once per event, retention rolls up each reading once, and each notification
goes once, even when a collector is killed while sending it.

Each collector here is its own ``Store`` (its own connection pool), ``Ingestor``,
``Tickets`` and ``Silence`` on the same database, and they run their checks at
the same moment, as three collectors whose timers fire together would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from sqlalchemy import func, select

from cloud.db import commands as db_commands
from cloud.db.schema import (
    alert_transitions,
    alerts,
    notifications,
    readings,
    readings_1m,
    ticket_timeline,
    tickets,
)
from cloud.db.store import Store
from cloud.ingest import Ingestor, Received
from cloud.notify import LEASE_MS, Notifier
from cloud.retention import DAY_MS as DAY
from cloud.retention import Retention
from cloud.server import ApiServer
from cloud.silence import Silence
from cloud.tickets import Tickets
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud.test_ingest import msg
from tests.cloud.test_retention import T, send
from tests.cloud.test_tickets import REGISTRY, registry, service
from tests.cloud.test_tickets import Site as TicketSite
from tests.helpers import free_port, wait_until

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


class HeldReceiver:
    """A webhook receiver that holds the first request it gets until told (a collector is killed
    while it waits for the answer)."""

    def __init__(self) -> None:
        self.calls: list[str] = []  # X-Floodgate-Delivery of each request, as it arrived
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.port = free_port()
        app = FastAPI()

        @app.post("/office")
        async def hook(request: Request) -> Response:
            self.calls.append(request.headers["x-floodgate-delivery"])
            if len(self.calls) == 1:
                self.held.set()
                await self.release.wait()
            return Response("ok")

        self.server = ApiServer(app, "127.0.0.1", self.port)


async def test_notifications_of_three_collectors_go_once_each_and_one_killed_mid_delivery_is_not_lost(
    db_url: str, tmp_path: Path
) -> None:
    rec = HeldReceiver()
    serving = asyncio.create_task(rec.server.run_until_cancelled())
    clock = ManualClock()
    stores = [Store(db_url) for _ in range(3)]
    notifiers: list[Notifier] = []
    try:
        await wait_until(lambda: rec.server.started, 10, "the webhook receiver")
        await stores[0].migrate()
        text = REGISTRY.replace(
            "  emergency-office: {name: 黄埔区应急管理局}\n",
            f"  emergency-office: {{name: 黄埔区应急管理局, notify: {{webhook: 'http://127.0.0.1:{rec.port}/office'}}}}\n",
        )
        reg = registry(tmp_path, text)
        services = [Tickets(s, reg, clock) for s in stores]
        notifiers = [Notifier(s, reg, clock) for s in stores]
        for n, t in zip(notifiers, services, strict=True):
            n.attach(t.bus)  # as each collector does: deliveries stored with the ticket change
        ingestors = [Ingestor(s, t) for s, t in zip(stores, services, strict=True)]
        # Each site's alert through one of the three: one ticket, one delivery each.
        for i in range(SITES):  # sites the registry does not name: the fallback unit's
            site = TicketSite(ingestors[i % 3], f"xs-{i}")
            await site.send(site.alert(new_ulid(), "danger", "clear"))
        delivery = notifications.c.id
        assert await count(stores[0], select(func.count(delivery))) == SITES

        # Collector 0 takes the first due delivery and is killed waiting for the receiver's
        # answer: its lease stays, its outcome is never written.
        killed = asyncio.create_task(notifiers[0].deliver_due())
        await asyncio.wait_for(rec.held.wait(), 10)
        killed.cancel()
        await asyncio.gather(killed, return_exceptions=True)
        (first,) = rec.calls
        rec.release.set()

        # The other two send the rest at the same moment: each delivery once.
        sent = await asyncio.gather(*(n.deliver_due() for n in notifiers[1:]))
        assert sum(sent) == SITES - 1, sent
        assert sorted(rec.calls[1:]) == sorted(set(rec.calls[1:])) and first not in rec.calls[1:]
        # The killed collector's delivery waits for its lease to run out, then goes once.
        clock.advance(LEASE_MS)
        sent = await asyncio.gather(*(n.deliver_due() for n in notifiers[1:]))
        assert sum(sent) == 1, sent
        assert rec.calls.count(first) == 2, "sent again, with the same delivery id"
        assert len(set(rec.calls)) == SITES and len(rec.calls) == SITES + 1
        pending = select(func.count(delivery)).where(notifications.c.status != "sent")
        assert await count(stores[0], pending) == 0
    finally:
        for n in notifiers:
            await n.http.aclose()
        for s in stores:
            await s.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
