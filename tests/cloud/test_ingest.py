"""Ingest on SQLite and PostgreSQL: stored once, bad input kept as dead letters, gaps counted."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import asyncpg
import pytest
from sqlalchemy import BigInteger, Column, Float, Index, Integer, MetaData, String, Table, func, select

from cloud import ingest
from cloud.db.migrations import MIGRATIONS
from cloud.db.schema import (
    alert_transitions,
    alerts,
    dead_letters,
    devices,
    events,
    messages,
    named_readings,
    nodes,
    readings,
    series,
    tickets,
)
from cloud.db.store import Store
from cloud.ingest import Ingestor, Received
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.helpers import wait_until


def msg(seq: Sequencer, kind: str, body: dict[str, Any], ts: int = 1_763_700_000_000) -> Received:
    payload = {**seq.envelope(ts), **body}
    return Received(f"floodgate/v1/{seq.node}/{kind}", json.dumps(payload).encode(), ts)


def telemetry(seq: Sequencer, n: int = 3) -> Received:
    rs = [
        {"dev": "lvl-1", "ts": 1000 + i, "metric": "depth_mm", "value": float(i), "quality": "good"}
        for i in range(n)
    ]
    return msg(seq, "telemetry", {"readings": rs})


def birth(seq: Sequencer, *devs: str, ts: int = 1_763_700_000_000) -> Received:
    """A birth naming level sensors ``devs``."""
    body = {
        "agent_version": "0.1.0",
        "config_hash": "abc",
        "site": {"name": "T", "lat": 23.1, "lon": 113.4},
        "devices": [{"id": d, "kind": "level", "model": "m"} for d in devs],
    }
    return msg(seq, "birth", body, ts)


async def count(store: Store, table: Any) -> int:
    async with store.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)


async def test_messages_are_stored_once_even_when_replayed(store: Store) -> None:
    seq = Sequencer("hp-1", boot=1)
    birth = msg(
        seq,
        "birth",
        {
            "agent_version": "0.1.0",
            "config_hash": "abc",
            "site": {"name": "T", "lat": 23.1, "lon": 113.4},
            "devices": [
                {
                    "id": "lvl-1",
                    "kind": "level",
                    "model": "generic-rs485-level",
                    "unit": "mm",
                    "thresholds": {"warning": 150.0, "danger": 270.0},
                }
            ],
        },
    )
    batch = [birth, telemetry(seq), telemetry(seq)]
    ing = Ingestor(store)
    await ing.ingest(batch)
    await ing.ingest(batch)  # a replay
    await ing.ingest(batch[1:2] * 3)  # redelivered within one batch
    assert await count(store, readings) == 6
    assert await count(store, messages) == 3
    assert await count(store, devices) == 1
    assert ing.counters.stored == 3 and ing.counters.duplicates == 6
    async with store.read() as conn:
        row = (await conn.execute(select(nodes))).one()
    assert row.site_name == "T" and row.online and row.boot == 1


async def test_bad_input_becomes_dead_letters_with_reasons(store: Store) -> None:
    seq = Sequencer("hp-1", boot=1)
    good = telemetry(seq)
    bad = [
        Received("floodgate/v1/hp-1/telemetry", b"{nope", 1),
        Received("floodgate/v1/hp-1/telemetry", json.dumps({**json.loads(good.payload), "v": 9}).encode(), 1),
        Received("floodgate/v1/other/telemetry", good.payload, 1),
        Received("floodgate/v1/hp-1/alert", json.dumps({**json.loads(good.payload)}).encode(), 1),
        Received("floodgate/v1/hp-1/telemetry", b"x" * (64 * 1024 + 1), 1),
        Received("floodgate/v1/BAD/telemetry", good.payload, 1),
    ]
    ing = Ingestor(store)
    await ing.ingest([*bad, good])
    assert await count(store, readings) == 3, "the good message in the same batch is stored"
    async with store.read() as conn:
        codes = [r.code for r in (await conn.execute(select(dead_letters).order_by(dead_letters.c.id)))]
    assert codes == ["bad_json", "bad_version", "node_mismatch", "schema", "too_large", "bad_topic"]
    assert ing.counters.dead_letters == 6


async def test_sequence_gaps_are_counted_per_boot(store: Store) -> None:
    a = Sequencer("hp-1", boot=1)
    b = Sequencer("hp-1", boot=2)
    sent = [telemetry(a) for _ in range(5)]
    ing = Ingestor(store)
    await ing.ingest([sent[0], sent[1], sent[4]])  # seq 2 and 3 not (yet) here
    await ing.ingest([telemetry(b), telemetry(b)])
    gaps = {(g["node"], g["boot"]): g["missing"] for g in await store.seq_gaps()}
    assert gaps == {("hp-1", 1): 2, ("hp-1", 2): 0}
    await ing.ingest([sent[3], sent[2]])  # the late ones close the gap
    gaps = {(g["node"], g["boot"]): g["missing"] for g in await store.seq_gaps()}
    assert gaps[("hp-1", 1)] == 0


async def test_a_boot_numbered_from_elsewhere_than_0_has_no_gap(store: Store) -> None:
    """A boot's numbering starts where its first message says: seq 1000 on is no gap of 1000."""
    late = Sequencer("hp-1", boot=3, first_seq=1000)
    sent = [telemetry(late) for _ in range(6)]
    ing = Ingestor(store)
    await ing.ingest([sent[2], sent[0], sent[1], sent[5]])  # out of order; 1003, 1004 not here
    gaps = {(g["node"], g["boot"]): (g["first_seq"], g["missing"]) for g in await store.seq_gaps()}
    assert gaps == {("hp-1", 3): (1000, 2)}
    await ing.ingest(sent[3:5])
    assert [g["missing"] for g in await store.seq_gaps()] == [0]


async def test_alert_episode_tolerates_out_of_order_transitions(store: Store) -> None:
    seq = Sequencer("hp-1", boot=1)
    episode = new_ulid()

    def alert(level: str, prev: str, value: float, ts: int) -> Received:
        return msg(
            seq,
            "alert",
            {
                "alert": {
                    "id": episode,
                    "dev": "lvl-1",
                    "kind": "flood",
                    "level": level,
                    "prev": prev,
                    "value": value,
                    "unit": "mm",
                    "ts": ts,
                }
            },
            ts,
        )

    rise, peak, fall = (
        alert("warning", "clear", 160, 1000),
        alert("danger", "warning", 300, 2000),
        alert("clear", "danger", 20, 3000),
    )
    ing = Ingestor(store)
    await ing.ingest([fall])
    await ing.ingest([rise, peak])
    async with store.read() as conn:
        row = (await conn.execute(select(alerts))).one()
    assert (row.level, row.max_level, row.first_ts, row.last_ts, row.peak_value) == (
        "clear",
        "danger",
        1000,
        3000,
        300,
    )
    assert await count(store, alert_transitions) == 3


async def test_migrations_are_idempotent(db_url: str) -> None:
    for _ in range(2):
        s = Store(db_url)
        assert await s.migrate() == len(MIGRATIONS)
        await s.close()


# The readings table as schemas 1 to 7 had it: names on every row.
OLD_READINGS = Table(
    "readings",
    MetaData(),
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("node", String(64), nullable=False),
    Column("dev", String(64), nullable=False),
    Column("metric", String(64), nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("quality", String(8), nullable=False),
    Index("readings_series", "node", "dev", "metric", "ts"),
)


async def test_a_first_version_database_is_upgraded_in_place(db_url: str) -> None:
    s = Store(db_url)
    try:
        assert await s.migrate(upto=1) == 1
        old = [
            (7, "hp-1", "lvl-1", "depth_mm", 1000, 1.5, "good"),
            (8, "hp-1", "lvl-1", "depth_mm", 2000, 2.5, "good"),
            (9, "hp-1", "lvl-2", "depth_mm", 1000, 3.5, "suspect"),
            (10, "hp-2", "lvl-1", "depth_mm", 1000, 4.5, "good"),
        ]
        async with s.engine.begin() as conn:  # readings as schema 1 really made them
            await conn.run_sync(readings.drop)
            await conn.run_sync(OLD_READINGS.create)
            cols = ("id", "node", "dev", "metric", "ts", "value", "quality")
            await conn.execute(OLD_READINGS.insert(), [dict(zip(cols, r, strict=True)) for r in old])
        assert await s.migrate() == len(MIGRATIONS)
        assert await count(s, tickets) == 0
        assert await count(s, series) == 3
        nr = named_readings
        async with s.read() as conn:
            moved = (await conn.execute(select(*nr.c).order_by(nr.c.id))).all()
        assert [tuple(r) for r in moved] == old, "nothing stored before the upgrade is lost, ids kept"
        await Ingestor(s).ingest([telemetry(Sequencer("hp-1", boot=1))])
        async with s.read() as conn:
            new_ids = set((await conn.execute(select(nr.c.id))).scalars().all()) - {7, 8, 9, 10}
            lvl1 = (
                await conn.execute(select(func.count()).where(nr.c.node == "hp-1", nr.c.dev == "lvl-1"))
            ).scalar()
        assert len(new_ids) == 3 and min(new_ids) > 10, "new readings get ids after the moved ones"
        assert lvl1 == 5, "new readings of a moved series join it"
        assert await count(s, series) == 3
    finally:
        await s.close()


async def test_an_older_devices_table_gets_its_new_column(db_url: str) -> None:
    s = Store(db_url)
    try:
        await s.migrate(upto=6)
        async with s.engine.begin() as conn:  # the table as schema 6 really made it
            await conn.exec_driver_sql("ALTER TABLE devices DROP COLUMN last_reading_ms")
        assert await s.migrate() == len(MIGRATIONS)
        seq = Sequencer("hp-1", boot=1)
        await Ingestor(s).ingest([birth(seq, "lvl-1"), telemetry(seq)])
        await s.flush_heard()  # PostgreSQL writes telemetry's times after the batch
        async with s.read() as conn:
            assert (await conn.execute(select(devices.c.last_reading_ms))).scalar() == 1002
    finally:
        await s.close()


async def test_node_and_device_times_only_move_forward(store: Store) -> None:
    seq = Sequencer("hp-1", boot=1)

    def reading(dev: str, ts: int) -> dict[str, Any]:
        return {"dev": dev, "ts": ts, "metric": "depth_mm", "value": 1.0, "quality": "good"}

    def at(received: int, *rs: dict[str, Any]) -> Received:
        return msg(seq, "telemetry", {"readings": list(rs)}, ts=received)

    ing = Ingestor(store)
    await ing.ingest(
        [birth(seq, "lvl-1", "lvl-2", ts=5000), at(5000, reading("lvl-1", 2000), reading("lvl-1", 1900))]
    )
    # A later batch with older readings (a box's backlog) and an unknown device.
    await ing.ingest([at(4000, reading("lvl-1", 1500), reading("lvl-2", 1700), reading("ghost", 9000))])
    # Another node, new to the collector, in the same batch as one of the first.
    other = Sequencer("hp-2", boot=1)
    await ing.ingest(
        [at(4500, reading("lvl-2", 1800)), msg(other, "telemetry", {"readings": [reading("x", 1)]}, 7000)]
    )
    await store.flush_heard()  # PostgreSQL writes telemetry's times after the batch
    async with store.read() as conn:
        times = dict((await conn.execute(select(devices.c.dev, devices.c.last_reading_ms))).all())
        seen = dict((await conn.execute(select(nodes.c.node, nodes.c.last_seen_ms))).all())
        online = dict((await conn.execute(select(nodes.c.node, nodes.c.online))).all())
    assert times == {"lvl-1": 2000, "lvl-2": 1800}, "newest reading per device; no row for an unknown one"
    assert seen == {"hp-1": 5000, "hp-2": 7000}, "the newest receive time, not the last batch's"
    assert online == {"hp-1": True, "hp-2": True}
    assert await count(store, readings) == 7


async def test_a_batch_that_fails_to_commit_leaves_nothing_behind(store: Store) -> None:
    """A telemetry batch whose readings cannot be stored is not in the ledger either:
    redelivered, it is stored then, not taken for a duplicate."""
    seq = Sequencer("hp-1", boot=1)
    batch = [telemetry(seq), telemetry(seq)]
    ing = Ingestor(store)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE readings RENAME TO readings_away")
    with pytest.raises(Exception, match="readings"):
        await ing.ingest(batch)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE readings_away RENAME TO readings")
    assert await count(store, messages) == 0
    await ing.ingest(batch)  # the redelivery, on the same connections
    assert await count(store, messages) == 2
    assert await count(store, readings) == 6
    assert ing.counters.duplicates == 0


async def test_a_message_that_breaks_prepare_is_a_dead_letter_and_the_batch_is_stored(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both intakes (MQTT and JetStream) prepare through here: a bug on one message stops neither."""
    real = ingest._reading_rows

    def rows(m: Any, series: Any) -> Any:
        if m.node == "hp-bad":  # stands for a bug in building one node's rows
            raise KeyError("no such column")
        return real(m, series)

    monkeypatch.setattr(ingest, "_reading_rows", rows)
    ing = Ingestor(store)
    bad, good = Sequencer("hp-bad", boot=1), Sequencer("hp-good", boot=1)
    p = ing.prepare([telemetry(good), telemetry(bad), telemetry(good)])
    assert len(p.ok) == 2 and len(p.ledger) == 2 and len(p.rows) == 2, "nothing of the bad one added"
    assert [(d["code"], d["detail"]) for d in p.dead] == [
        ("intake_error", "prepare failed: KeyError: 'no such column'")
    ]
    await ing.commit(p)
    assert await count(store, messages) == 2
    assert await count(store, dead_letters) == 1


async def test_a_birth_adds_its_devices_and_a_later_one_replaces_what_they_are(store: Store) -> None:
    """A birth's devices are one upsert: new ones added, known ones take the newer kind, model,
    unit and thresholds; a device the newer birth leaves out stays (its readings name it)."""
    seq = Sequencer("hp-b", boot=1)
    ing = Ingestor(store)
    await ing.ingest([birth(seq, "lvl-1", "lvl-2")])
    again = json.loads(birth(seq, "lvl-2", "lvl-3").payload)
    again["devices"][0].update(model="newer", unit="cm", thresholds={"warning": 100.0})
    await ing.ingest([Received("floodgate/v1/hp-b/birth", json.dumps(again).encode(), 1)])
    async with store.read() as conn:
        rows = {r.dev: r for r in (await conn.execute(select(devices).where(devices.c.node == "hp-b")))}
    assert sorted(rows) == ["lvl-1", "lvl-2", "lvl-3"]
    assert rows["lvl-1"].model == "m" and rows["lvl-3"].model == "m"
    assert rows["lvl-2"].model == "newer" and rows["lvl-2"].unit == "cm"
    assert json.loads(rows["lvl-2"].thresholds) == {"warning": 100.0}


async def test_a_commit_cancelled_while_it_waits_leaves_no_transaction_open(store: Store) -> None:
    """A commit cancelled mid-transaction (its MQTT link lost, a stop), and cancelled again while
    it rolls back, gives its connection back with nothing open: a transaction left idle in the
    pool would hold its locks for good, and every collector would wait on them. (A batch of
    telemetry takes no nodes row lock any more: here it waits on the ledger, locked aside.)"""
    if store.dialect != "postgresql":
        pytest.skip("row locks and a connection pool: PostgreSQL's")
    seq = Sequencer("hp-cancel", boot=1)
    ing = Ingestor(store)
    await ing.ingest([birth(seq, "lvl-1")])  # the node and its device exist
    dsn = store.url.replace("postgresql://", "postgres://", 1)
    blocker, watch = await asyncpg.connect(dsn), await asyncpg.connect(dsn)

    async def others(where: str) -> list[str]:
        """The store's sessions matching ``where`` (``watch`` is in no transaction: a fresh view)."""
        rows = await watch.fetch(
            "SELECT state || ': ' || query FROM pg_stat_activity WHERE datname = current_database()"
            f" AND pid NOT IN (pg_backend_pid(), $1) AND {where}",
            blocker.get_server_pid(),
        )
        return [r[0] for r in rows]

    try:
        for attempt in range(12):  # each try cuts the rollback short at another of its steps
            lock = blocker.transaction()
            await lock.start()
            await blocker.execute("LOCK TABLE messages IN SHARE MODE")  # the ledger's INSERT waits
            task = asyncio.create_task(ing.ingest([telemetry(seq)]))  # a batch of telemetry alone

            async def waiting(task: asyncio.Task[Any] = task) -> bool:
                assert not task.done(), "the commit did not wait on the ledger's lock"
                return bool(await others("wait_event_type = 'Lock'"))

            await wait_until(waiting, 20, "the commit waiting on the ledger's lock")
            task.cancel()
            for _ in range(attempt):
                await asyncio.sleep(0)
            task.cancel()  # again, while it rolls back
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await lock.rollback()

            # A rollback still on its way arrives (on a loaded machine, later than 0.2 s); a
            # transaction left open in the pool would stay so for good.
            async def none_open() -> bool:
                return await others("state LIKE 'idle in transaction%'") == []

            await wait_until(none_open, 10, f"try {attempt}: no transaction left open")
        # And the node is written again at once.
        await asyncio.wait_for(ing.ingest([telemetry(seq)]), 10)
        # A connection given back with the server's transaction open and SQLAlchemy unaware
        # (cancelled while asyncpg began it): never used again. Used, the next batch ran in
        # it, its COMMIT a no-op: stored, confirmed, and rolled back later.
        async with store.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            await driver.execute("BEGIN")
        for _ in range(8):  # more than the pool holds: one of them gets that connection
            m = telemetry(seq)
            await asyncio.wait_for(ing.ingest([m]), 10)
            msg_id = json.loads(m.payload)["msg_id"]
            assert await watch.fetchval("SELECT COUNT(*) FROM messages WHERE msg_id = $1", msg_id) == 1
        assert await others("state LIKE 'idle in transaction%'") == []
    finally:
        await blocker.close()
        await watch.close()


async def test_telemetry_takes_no_node_or_device_row_lock(store: Store) -> None:
    """Issue 13: a batch of telemetry commits while another transaction holds its node's and
    device's rows, and a mixed batch waiting on a node's row holds none of the nodes its
    telemetry names, so a telemetry batch of those is not held behind it. The times it heard
    are written after the batch (``Store.flush_heard``), only ever moving on."""
    if store.dialect != "postgresql":
        pytest.skip("row locks between transactions: PostgreSQL's (SQLite has one writer)")
    a, z = Sequencer("hp-a", boot=1), Sequencer("hp-z", boot=1)
    ing = Ingestor(store)
    await ing.ingest([birth(a, "lvl-1"), birth(z, "lvl-1")])
    dsn = store.url.replace("postgresql://", "postgres://", 1)
    side = await asyncpg.connect(dsn)
    try:
        # 1. Another transaction holds hp-a's nodes and devices rows: its telemetry commits anyway.
        held = side.transaction()
        await held.start()
        await side.execute("SELECT 1 FROM nodes WHERE node = 'hp-a' FOR UPDATE")
        await side.execute("SELECT 1 FROM devices WHERE node = 'hp-a' FOR UPDATE")
        await asyncio.wait_for(ing.ingest([telemetry(a), telemetry(z)]), 10)
        assert await count(store, readings) == 6
        await held.rollback()

        # 2. A mixed batch (telemetry of hp-a, a heartbeat of hp-z) waits on hp-z's row, held aside.
        held = side.transaction()
        await held.start()
        await side.execute("SELECT 1 FROM nodes WHERE node = 'hp-z' FOR UPDATE")
        beat = msg(z, "event", {"event": {"type": "heartbeat", "detail": {"ok": 1}}})
        mixed = asyncio.create_task(ing.ingest([telemetry(a), beat]))

        async def mixed_waits() -> bool:
            assert not mixed.done(), "the mixed batch did not wait on hp-z's row"
            rows = await side.fetch(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            return bool(rows)

        await wait_until(mixed_waits, 20, "the mixed batch waiting on hp-z's row")
        # Meanwhile hp-a's telemetry alone commits: the mixed batch holds no row of hp-a.
        late = msg(
            a,
            "telemetry",
            {
                "readings": [
                    {"dev": "lvl-1", "ts": 5000, "metric": "depth_mm", "value": 1.0, "quality": "good"}
                ]
            },
            ts=1_763_700_009_000,
        )
        await asyncio.wait_for(ing.ingest([late]), 10)
        assert not mixed.done()
        await held.rollback()
        await asyncio.wait_for(mixed, 10)
        assert await count(store, readings) == 10
    finally:
        await side.close()
    await store.flush_heard()
    async with store.read() as conn:
        seen = dict((await conn.execute(select(nodes.c.node, nodes.c.last_seen_ms))).all())
        times = dict((await conn.execute(select(devices.c.node, devices.c.last_reading_ms))).all())
        health = (await conn.execute(select(nodes.c.health).where(nodes.c.node == "hp-z"))).scalar()
    assert seen == {"hp-a": 1_763_700_009_000, "hp-z": 1_763_700_000_000}
    assert times == {"hp-a": 5000, "hp-z": 1002}
    assert json.loads(health) == {"ok": 1}


async def test_a_node_first_heard_by_telemetry_is_there_online_when_its_batch_commits(store: Store) -> None:
    """Its row is made before the batch (``Store.ensure_nodes``), not at the next flush."""
    seq = Sequencer("hp-new", boot=1)
    await Ingestor(store).ingest([telemetry(seq)])
    async with store.read() as conn:
        online = dict((await conn.execute(select(nodes.c.node, nodes.c.online))).all())
    assert online == {"hp-new": True}


async def test_a_message_delivered_again_after_its_collector_died_unflushed_is_heard(store: Store) -> None:
    """Collector A commits a node's message and dies before it writes the times it heard (every
    second, ``Store.flush_heard``); the broker gives the message again to collector B, whose
    ledger has it already. B writes the node's heard time all the same: without it the node
    looked silent since its birth, and a silence check opened comms_lost on a node heard from."""
    if store.dialect != "postgresql":
        pytest.skip("heard times written after the batch: PostgreSQL's (SQLite writes them in it)")
    seq = Sequencer("hp-1", boot=1)
    t0 = 1_763_700_000_000
    await Ingestor(store).ingest([birth(seq, "lvl-1", ts=t0)])
    await store.flush_heard()
    reading = {"dev": "lvl-1", "ts": t0 + 240_000, "metric": "depth_mm", "value": 1.0, "quality": "good"}
    last = msg(seq, "telemetry", {"readings": [reading]}, ts=t0 + 240_000)
    a = Store(store.url)
    b = Store(store.url)
    try:
        await Ingestor(a).ingest([last])
        assert a._flusher is not None
        a._flusher.cancel()  # A dies: what it heard, kept for the next flush, goes with it
        await asyncio.gather(a._flusher, return_exceptions=True)
        a._flusher = None
        a._pending = type(a._pending)()
        await Ingestor(b).ingest([last])  # delivered again, to B: a duplicate
        await b.flush_heard()
    finally:
        await a.close()
        await b.close()
    async with store.read() as conn:
        seen = (await conn.execute(select(nodes.c.last_seen_ms).where(nodes.c.node == "hp-1"))).scalar()
    assert seen == t0 + 240_000


async def test_heartbeats_and_births_in_one_batch_leave_the_later_health_and_every_event(
    store: Store,
) -> None:
    """Events and heartbeats' health are written together per batch; a birth between them still
    orders them: whichever of a birth and a heartbeat came later sets the node's health."""
    a, b = Sequencer("hb-a", boot=1), Sequencer("hb-b", boot=1)

    def beat(seq: Sequencer, n: int) -> Received:
        return msg(seq, "event", {"event": {"type": "heartbeat", "detail": {"beat": n}}})

    def born(seq: Sequencer, n: int) -> Received:
        r = birth(seq, "lvl-1")
        body = json.loads(r.payload)
        return Received(r.topic, json.dumps({**body, "health": {"birth": n}}).encode(), r.received_ms)

    gate_state = {"type": "actuator.state", "dev": "gate-1", "detail": {"state": "open"}}
    gate = msg(a, "event", {"event": gate_state})
    ing = Ingestor(store)
    # hb-a: beat, birth, beat -> the second beat; hb-b: beat, birth -> the birth.
    await ing.ingest([beat(a, 1), beat(b, 1), born(a, 1), gate, born(b, 2), beat(a, 2)])
    async with store.read() as conn:
        health = dict((await conn.execute(select(nodes.c.node, nodes.c.health))).all())
        kinds = sorted((await conn.execute(select(events.c.node, events.c.type))).all())
    assert json.loads(health["hb-a"]) == {"beat": 2}
    assert json.loads(health["hb-b"]) == {"birth": 2}
    assert kinds == [
        ("hb-a", "actuator.state"),
        ("hb-a", "heartbeat"),
        ("hb-a", "heartbeat"),
        ("hb-b", "heartbeat"),
    ]
    assert ing.counters.stored == 6 and ing.counters.dead_letters == 0


async def test_births_of_a_batch_are_written_together_and_a_node_born_twice_keeps_the_later(
    store: Store,
) -> None:
    """A batch's births are two statements in all (a city's edges all send one when they connect
    again); a node born twice in it ends as its later birth says, with every device named."""
    a, b = Sequencer("bb-a", boot=1), Sequencer("bb-b", boot=1)
    first = birth(a, "lvl-1")
    later = json.loads(birth(a, "lvl-2").payload)
    later["site"]["name"] = "Later"
    later["boot"] = 1
    again = Received(first.topic, json.dumps(later).encode(), first.received_ms)
    await Ingestor(store).ingest([first, birth(b, "lvl-1"), again])
    async with store.read() as conn:
        names = dict((await conn.execute(select(nodes.c.node, nodes.c.site_name))).all())
        devs = sorted((await conn.execute(select(devices.c.node, devices.c.dev))).all())
    assert names == {"bb-a": "Later", "bb-b": "T"}
    assert devs == [("bb-a", "lvl-1"), ("bb-a", "lvl-2"), ("bb-b", "lvl-1")]


async def test_a_batchs_states_of_one_node_end_as_applied_one_by_one(store: Store) -> None:
    """A batch's states are one statement: of a node's several, the one that applied in order
    would stand (a late Will of an older boot changes nothing)."""

    def state(node: str, online: bool, boot: int) -> Received:
        body = json.dumps({"online": online, "boot": boot, "ts": 1}).encode()
        return Received(f"floodgate/v1/{node}/state", body, 1_763_700_000_000 + boot)

    await Ingestor(store).ingest(
        [
            state("st-a", True, 2),
            state("st-a", False, 1),  # the Will of boot 1, late
            state("st-b", False, 2),
            state("st-b", True, 3),
            state("st-c", True, 5),
            state("st-c", False, 5),
        ]
    )
    await Ingestor(store).ingest([state("st-c", True, 4)])  # an older boot, in a later batch
    async with store.read() as conn:
        rows = sorted((await conn.execute(select(nodes.c.node, nodes.c.online, nodes.c.boot))).all())
    assert rows == [("st-a", True, 2), ("st-b", True, 3), ("st-c", False, 5)]
