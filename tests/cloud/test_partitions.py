"""Readings partitioned by week on PostgreSQL (SQLite keeps its plain table): the migration that
converts a database with readings, the weeks made ahead, and retention dropping whole weeks."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select, text

from cloud.db import partitions, reads
from cloud.db.migrations import MIGRATIONS, _partitioning
from cloud.db.schema import readings
from cloud.db.store import Store
from cloud.ingest import Ingestor
from cloud.retention import Retention
from floodgate.clock import ManualClock
from floodgate.wire import Sequencer
from tests.cloud.test_ingest import msg
from tests.cloud.test_retention import send

DAY = 86_400_000
WEEK = partitions.WEEK_MS
# The migration places weeks by the wall clock; the collector's clock starts there too.
T = int(time.time() * 1000) // 60_000 * 60_000
OLD = partitions.week_of(T - 40 * DAY) + DAY  # a Tuesday more than five weeks back
ODD = 978_307_200_000  # 2001-01-01: a box whose clock was reset


async def all_rows(store: Store) -> list[tuple[Any, ...]]:
    async with store.read() as conn:
        return [tuple(r) for r in (await conn.execute(select(readings).order_by(readings.c.id))).all()]


async def weeks(store: Store) -> dict[str, int]:
    """Each partition of ``readings`` and its rows."""
    async with store.read() as conn:
        names = (await conn.execute(text(partitions.WEEKS))).scalars().all()
        return {n: (await conn.execute(text(f"SELECT count(*) FROM {n}"))).scalar() or 0 for n in names}


async def test_an_existing_database_is_partitioned_with_every_row_and_id_kept(db_url: str) -> None:
    s = Store(db_url)
    try:
        await s.migrate(upto=MIGRATIONS.index(_partitioning))  # the database as it was before: plain
        ing, seq = Ingestor(s), Sequencer("hp-1", boot=1)
        await send(ing, seq, [(OLD + i * 10_000, float(i)) for i in range(5)])
        await send(ing, seq, [(T + 1000, 5.0), (ODD, 9.0)])
        before = await all_rows(s)
        assert await s.migrate() == len(MIGRATIONS)
        assert await all_rows(s) == before, "every row kept, with its id"
        await send(ing, seq, [(T + 2000, 6.0), (T + 3000, 7.0)])  # ingest's COPY goes on
        after = await all_rows(s)
        assert len(after) == len(before) + 2
        assert min(r[0] for r in after[-2:]) > max(r[0] for r in before), "new ids follow the old ones"
        if s.dialect == "postgresql":
            async with s.read() as conn:
                assert await conn.run_sync(lambda c: partitions.is_partitioned(c.exec_driver_sql))
            this = partitions.week_of(T)
            assert await weeks(s) == {
                partitions.DEFAULT: 1,  # 2001
                partitions.name_of(partitions.week_of(OLD)): 5,
                partitions.name_of(this): 3,
                partitions.name_of(this + WEEK): 0,
                partitions.name_of(this + 2 * WEEK): 0,
            }
    finally:
        await s.close()


async def test_weeks_are_made_ahead_and_dropped_whole_once_rolled_up(store: Store) -> None:
    clock = ManualClock(start_ms=T)
    ing, seq = Ingestor(store), Sequencer("hp-1", boot=1)
    ret = Retention(store, clock, raw_days=30)
    await ret.run_once()
    this = partitions.week_of(T)
    far = this + 3 * WEEK + DAY  # beyond the weeks made ahead: held by the default partition
    await send(ing, seq, [(OLD + i * 10_000, float(i)) for i in range(5)])
    await send(ing, seq, [(T, 5.0), (far, 6.0), (ODD, 9.0)])
    pg = store.dialect == "postgresql"
    if pg:
        held = await weeks(store)
        assert held[partitions.DEFAULT] == 7, "no week made for the old, the far or the odd readings"
        assert (
            held[partitions.name_of(this + 2 * WEEK)] == 0 and partitions.name_of(this + 3 * WEEK) not in held
        )
        # The old week is made on a migration; here, as a database converted with it would have it.
        async with store.begin() as conn:
            for sql in partitions.make_week(partitions.week_of(OLD)):
                await conn.execute(text(sql))
            await conn.execute(text("ANALYZE readings"))  # as autovacuum does: the dropped week's count
        assert (await weeks(store))[partitions.name_of(partitions.week_of(OLD))] == 5, "moved out of default"

    # The first run marks what it saw; nothing old may go before it is rolled up.
    assert (await ret.run_once())[1] == 0
    if pg:
        assert partitions.name_of(partitions.week_of(OLD)) in await weeks(store)
    clock.advance(60_000)
    rolled, deleted = await ret.run_once()
    assert (rolled, deleted) == (8, 6), "rolled up; the old week and the 2001 row gone"
    assert sorted(r[2] for r in await all_rows(store)) == [T, far]
    if pg:
        held = await weeks(store)
        assert ret.weeks_dropped == 1 and partitions.name_of(partitions.week_of(OLD)) not in held
        assert held[partitions.DEFAULT] == 1, "the far reading waits in the default partition"

    clock.advance(WEEK)  # a week on, its week is made ahead and takes its reading
    await ret.run_once()
    if pg:
        held = await weeks(store)
        assert held[partitions.name_of(this + 3 * WEEK)] == 1 and held[partitions.DEFAULT] == 0
    async with store.read() as conn:
        assert (await conn.execute(select(func.count()).select_from(readings))).scalar() == 2


async def test_latest_readings_are_each_series_newest_whichever_week_holds_it(store: Store) -> None:
    ing = Ingestor(store)
    one, two = Sequencer("hp-1", boot=1), Sequencer("hp-2", boot=1)
    await send(ing, one, [(OLD, 1.0), (T - 2 * WEEK, 2.0), (T, 3.0)])  # three weeks
    await send(ing, two, [(ODD, 4.0), (OLD, 5.0)])  # the default partition and an old week
    await send(ing, two, [(OLD, 6.0)])  # the same time again: the later row wins
    rs = [{"dev": "lvl-2", "ts": ODD, "metric": "depth_mm", "value": 7.0, "quality": "suspect"}]
    await ing.ingest([msg(one, "telemetry", {"readings": rs})])
    latest = [
        (r["node"], r["dev"], r["ts"], r["value"], r["quality"]) for r in await reads.latest_readings(store)
    ]
    assert latest == [
        ("hp-1", "lvl-1", T, 3.0, "good"),
        ("hp-1", "lvl-2", ODD, 7.0, "suspect"),
        ("hp-2", "lvl-1", OLD, 6.0, "good"),
    ]
    assert [r["value"] for r in await reads.latest_readings(store, "hp-2")] == [6.0]
    assert await reads.latest_readings(store, "hp-3") == []


async def test_a_week_waits_for_a_batch_holding_the_default_partition_then_is_made(store: Store) -> None:
    if store.dialect != "postgresql":
        assert await partitions.make_ahead(store, T) == [], "SQLite has no partitions"
        return
    this = partitions.week_of(T)
    await partitions.make_ahead(store, T)
    far = this + 3 * WEEK + DAY
    async with store.begin() as batch:  # a batch still committing, with a reading in the default
        await batch.execute(readings.insert().values(series=1, ts=far, value=1.0, quality="good"))
        started = time.monotonic()
        assert await partitions.make_ahead(store, T + WEEK) == [], "given up, not waited for"
        assert time.monotonic() - started < 10, "after its lock timeout"
    made = await partitions.make_ahead(store, T + WEEK)
    assert made == [partitions.name_of(this + 3 * WEEK)], "the next round makes it"
    assert (await weeks(store))[made[0]] == 1, "with the batch's reading"
