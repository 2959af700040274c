"""Every alert transition reaches its ticket, in the episode's order, whichever batch commits first."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select, text

from cloud.db.migrations import MIGRATIONS, _holding, _ticketing
from cloud.db.schema import alert_transitions
from cloud.db.store import Store
from cloud.ingest import Ingestor, Received
from cloud.scheduler import Scheduler
from floodgate.clock import ManualClock
from floodgate.ids import new_ulid, now_ms
from floodgate.wire import Sequencer
from tests.cloud.test_ingest import birth, msg, telemetry
from tests.cloud.test_tickets import Site, only_ticket, service
from tests.helpers import wait_until


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def transitions_of(tk: dict[str, Any]) -> list[tuple[str, str]]:
    """The (prev, level) of each alert transition on a ticket's timeline, in timeline order."""
    return [
        (e["detail"]["prev"], e["detail"]["level"])
        for e in tk["timeline"]
        if e["detail"] and "alert_id" in e["detail"]
    ]


async def test_a_clear_committed_before_its_warning_still_reaches_the_ticket_after_it(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    t = service(store, tmp_path, clock)
    ing = Ingestor(store, t)
    site = Site(ing)
    ep = new_ulid()
    warning = ing.prepare([site.alert(ep, "warning", "clear", ts=1000)])
    clear = ing.prepare([site.alert(ep, "clear", "warning", value=0.0, ts=2000)])
    held = await ing.commit(clear)  # the second batch commits first
    assert held.tickets == [], "a clear with its warning still in flight waits"
    applied = await ing.commit(warning)
    assert [e.action for e in applied.tickets] == ["open"]
    tk = await only_ticket(t)
    assert transitions_of(tk) == [("clear", "warning"), ("warning", "clear")]
    assert [e["action"] for e in tk["timeline"]] == ["open", "alert"]


async def test_a_held_clear_verifies_a_handled_ticket_once_its_danger_arrives(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """warning, danger, clear: the clear commits before the danger, after the crew reported."""
    t = service(store, tmp_path, clock)
    ing = Ingestor(store, t)
    site = Site(ing)
    ep = new_ulid()
    await site.send(site.alert(ep, "warning", "clear", ts=1000))
    tid = (await only_ticket(t))["id"]
    await t.act(tid, "dispatch", "user:chen")
    await t.act(tid, "accept", "unit:drainage-dasha")
    danger = ing.prepare([site.alert(ep, "danger", "warning", value=290.0, ts=2000)])
    clear = ing.prepare([site.alert(ep, "clear", "danger", value=0.0, ts=3000)])
    await t.act(tid, "report", "unit:drainage-dasha", note="pumps running")
    assert (await ing.commit(clear)).tickets == []
    assert (await t.get(tid))["state"] == "handled", "not verified by a clear out of order"
    applied = await ing.commit(danger)
    assert [e.action for e in applied.tickets] == ["priority", "verify"]
    tk = await t.get(tid)
    assert tk["state"] == "verified" and tk["priority"] == "danger"
    assert transitions_of(tk) == [("clear", "warning"), ("warning", "danger"), ("danger", "clear")]


async def test_a_transition_arriving_after_later_ones_goes_on_the_timeline_and_changes_nothing(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """warning, danger, warning, clear with the middle two late: the chain cannot tell, so the
    clear applies; the late pair is still put on the timeline, without reopening anything."""
    t = service(store, tmp_path, clock)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    first = site.alert(ep, "warning", "clear", ts=1000)
    middle = [site.alert(ep, "danger", "warning", ts=2000), site.alert(ep, "warning", "danger", ts=3000)]
    last = site.alert(ep, "clear", "warning", value=0.0, ts=4000)
    await site.send(first)
    await site.send(last)
    applied = await site.send(*middle)
    assert applied.tickets == []
    tk = await only_ticket(t)
    assert tk["priority"] == "warning" and tk["state"] == "open"
    assert Counter(transitions_of(tk)) == Counter(
        [("clear", "warning"), ("warning", "danger"), ("danger", "warning"), ("warning", "clear")]
    )


async def test_a_transition_whose_predecessor_never_arrives_is_released_after_a_while(
    store: Store, tmp_path: Path, clock: ManualClock
) -> None:
    """warning, a danger lost for good, clear: the clear waits ``release_held_after_ms`` on the
    collector's clock, then the scheduler applies it out of order, noted so, and it verifies the
    handled ticket. The danger, if it ever comes, goes on the timeline as late."""
    t = service(store, tmp_path, clock)
    t.release_held_after_ms = 120_000
    scheduler = Scheduler(t)
    site = Site(Ingestor(store, t))
    ep = new_ulid()
    await site.send(site.alert(ep, "warning", "clear", ts=1000))
    tid = (await only_ticket(t))["id"]
    for action, actor in (("dispatch", "user:chen"), ("accept", "unit:drainage-dasha")):
        await t.act(tid, action, actor)
    await t.act(tid, "report", "unit:drainage-dasha", note="pumps running")
    danger = site.alert(ep, "danger", "warning", value=290.0, ts=2000)  # lost
    clear = site.alert(ep, "clear", "danger", value=0.0, ts=3000)
    assert (await site.send(clear)).tickets == [], "held: its danger may be in flight"
    held_at = clock.now_ms()
    assert await t.next_release() == held_at + 120_000
    clock.advance(119_999)
    await scheduler.run_due()
    assert (await t.get(tid))["state"] == "handled", "not before its time"
    clock.advance(1)
    await scheduler.run_due()
    tk = await t.get(tid)
    assert tk["state"] == "verified", "the sensor's clear verifies the report"
    assert transitions_of(tk) == [("clear", "warning"), ("danger", "clear")]
    released = next(e for e in tk["timeline"] if e["detail"] and e["detail"].get("level") == "clear")
    assert released["detail"]["out_of_order"] is True
    assert "released out of order" in released["note"]
    assert await t.next_release() is None and await t.release_held() == []
    await site.send(danger)  # it turns up after all
    tk = await t.get(tid)
    assert tk["state"] == "verified" and tk["priority"] == "warning", "it changes nothing"
    late = [e for e in tk["timeline"] if e["detail"] and e["detail"].get("level") == "danger"]
    assert len(late) == 1 and "arrived after later ones" in late[0]["note"]
    async with store.read() as conn:
        pending = (
            await conn.execute(select(alert_transitions.c.msg_id).where(~alert_transitions.c.ticketed))
        ).all()
    assert pending == []


async def test_side_by_side_on_postgresql_the_later_batch_committing_first_loses_nothing(
    db_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    """Two batches in flight at once: the clear's is let through first by the order they queue on a lock."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: batches never commit side by side")
    store = Store(db_url)
    await store.migrate()
    try:
        t = service(store, tmp_path, clock)
        ing = Ingestor(store, t)
        site = Site(ing)
        await ing.ingest([birth(site.seq, "lvl-1")])
        ep = new_ulid()
        warning = ing.prepare([site.alert(ep, "warning", "clear", ts=1000)])
        clear = ing.prepare([site.alert(ep, "clear", "warning", value=0.0, ts=2000)])
        admin = await asyncpg.connect(db_url)
        try:
            gate = admin.transaction()
            await gate.start()
            # Both batches write the node's row first: they queue behind this lock in the order they start.
            await admin.execute("SELECT 1 FROM nodes WHERE node = 'hp-1' FOR UPDATE")

            async def waiting() -> int:
                q = (
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
                await admin.execute("SELECT pg_stat_clear_snapshot()")  # not the snapshot of our transaction
                return int(await admin.fetchval(q))

            second = asyncio.create_task(ing.commit(clear))
            await wait_until(lambda: _equals(waiting(), 1), what="the clear's batch waiting")
            first = asyncio.create_task(ing.commit(warning))
            await wait_until(lambda: _equals(waiting(), 2), what="the warning's batch waiting")
            await gate.rollback()
            await asyncio.gather(second, first)
        finally:
            await admin.close()
        tk = await only_ticket(t)
        assert transitions_of(tk) == [("clear", "warning"), ("warning", "clear")]
        async with store.read() as conn:
            pending = (
                await conn.execute(select(alert_transitions.c.msg_id).where(~alert_transitions.c.ticketed))
            ).all()
        assert pending == []
    finally:
        await store.close()


async def _equals(value: Any, want: int) -> bool:
    return bool(await value == want)


async def test_two_ingestors_through_a_storm_put_every_transition_on_its_timeline(
    db_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    """Each site's episodes split between two ingestors (as a shared group splits them), each
    committing batches in whatever order they finish: every transition on a timeline, once."""
    stores = [Store(db_url), Store(db_url)]
    await stores[0].migrate()
    try:
        ts = [service(s, tmp_path, clock) for s in stores]
        ings = [Ingestor(s, t) for s, t in zip(stores, ts, strict=True)]
        # Per site: two episodes, each warning -> danger -> warning -> clear, dealt alternately.
        sends: list[list[Any]] = [[], []]
        expected: Counter[tuple[str, str, str]] = Counter()
        for n in range(12):
            seq = Sequencer(f"st-{n}", boot=1)
            sends[n % 2].append(birth(seq, "lvl-1"))
            step = 0
            for _ in range(2):
                ep = new_ulid()
                for prev, level in (
                    ("clear", "warning"),
                    ("warning", "danger"),
                    ("danger", "warning"),
                    ("warning", "clear"),
                ):
                    body = {
                        "alert": {
                            "id": ep,
                            "dev": "lvl-1",
                            "kind": "flood",
                            "level": level,
                            "prev": prev,
                            "ts": 1000 + step,
                        }
                    }
                    sends[step % 2].append(msg(seq, "alert", body))
                    expected[(ep, prev, level)] += 1
                    step += 1
        births = [m for m in sends[0] + sends[1] if m.topic.endswith("/birth")]
        await ings[0].ingest(births)

        async def run(i: int) -> None:
            items = [m for m in sends[i] if not m.topic.endswith("/birth")]
            # Small batches, several in flight on PostgreSQL, committing in whatever order they finish.
            batches = [ings[i].prepare(items[k : k + 3]) for k in range(0, len(items), 3)]
            await asyncio.gather(*(ings[i].commit(b) for b in reversed(batches)))

        await asyncio.wait_for(asyncio.gather(run(0), run(1)), 60)
        total, rows = await ts[0].list(limit=100)
        assert total == 12, "one ticket per site"
        got: Counter[tuple[str, str, str]] = Counter()
        for r in rows:
            tk = await ts[0].get(r["id"])
            for e in tk["timeline"]:
                d = e["detail"]
                if d and "alert_id" in d:
                    got[(d["alert_id"], d["prev"], d["level"])] += 1
        assert got == expected
    finally:
        for s in stores:
            await s.close()


async def test_transitions_stored_before_the_upgrade_count_as_applied(db_url: str) -> None:
    s = Store(db_url)
    try:
        await s.migrate(upto=MIGRATIONS.index(_ticketing))
        async with s.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO alert_transitions (msg_id, alert_id, level, prev, ts)"
                    " VALUES ('01JD0000000000000000000001', '01JD0000000000000000000002',"
                    " 'warning', 'clear', 1)"
                )
            )
        assert await s.migrate() == len(MIGRATIONS)
        async with s.read() as conn:
            assert (await conn.execute(select(alert_transitions.c.ticketed))).scalars().all() == [True]
    finally:
        await s.close()


async def test_transitions_held_before_the_upgrade_are_held_from_it(db_url: str) -> None:
    """Without a time they would never be released (``release_held_after_s``)."""
    s = Store(db_url)
    try:
        await s.migrate(upto=MIGRATIONS.index(_holding))
        async with s.engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO alert_transitions (msg_id, alert_id, level, prev, ts, ticketed)"
                    " VALUES ('01JD0000000000000000000001', '01JD0000000000000000000002',"
                    " 'clear', 'danger', 1, false), ('01JD0000000000000000000003',"
                    " '01JD0000000000000000000004', 'warning', 'clear', 1, true)"
                )
            )
        before = now_ms()
        assert await s.migrate() == len(MIGRATIONS)
        async with s.read() as conn:
            q = select(alert_transitions.c.ticketed, alert_transitions.c.held_ms).order_by(
                alert_transitions.c.msg_id
            )
            (held, held_ms), (applied, none) = (await conn.execute(q)).all()
        assert not held and held_ms is not None and before <= held_ms <= now_ms()
        assert applied and none is None
    finally:
        await s.close()


async def test_batches_that_meet_new_nodes_in_opposite_orders_do_not_deadlock(
    db_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    """Two collectors' batches, each hearing two nodes new to the database in the other's
    order (one's telemetry, the other's state): every node a batch writes is made or locked
    in one order before any is written, so neither waits for the other in a cycle."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: batches never commit side by side")
    stores = [Store(db_url), Store(db_url)]
    await stores[0].migrate()
    try:
        ings = [Ingestor(s, service(s, tmp_path, clock)) for s in stores]
        for n in range(30):
            a, b = Sequencer(f"pair-{n}-a", boot=1), Sequencer(f"pair-{n}-b", boot=1)

            def state(seq: Sequencer) -> Received:
                return Received(f"floodgate/v1/{seq.node}/state", b'{"online": true, "boot": 1}', 0)

            one = ings[0].prepare([telemetry(a), state(b)])
            two = ings[1].prepare([telemetry(b), state(a)])
            await asyncio.gather(ings[0].commit(one), ings[1].commit(two))
        async with stores[0].read() as conn:
            online = (await conn.execute(text("SELECT count(*) FROM nodes WHERE online"))).scalar_one()
        assert online == 60
    finally:
        for s in stores:
            await s.close()
