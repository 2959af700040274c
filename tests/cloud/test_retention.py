"""Retention on SQLite and PostgreSQL: raw rows expire, one-minute aggregates stay and are right."""

from __future__ import annotations

from sqlalchemy import func, select

from cloud.db.schema import readings, readings_1m
from cloud.db.store import Store
from cloud.ingest import Ingestor
from cloud.retention import Retention
from floodgate.clock import ManualClock
from floodgate.wire import Sequencer
from tests.cloud.test_ingest import msg

DAY = 86_400_000
T = 1_790_000_040_000 - (1_790_000_040_000 % 60_000)  # on a minute


async def send(ing: Ingestor, seq: Sequencer, points: list[tuple[int, float]]) -> None:
    rs = [{"dev": "lvl-1", "ts": ts, "metric": "depth_mm", "value": v, "quality": "good"} for ts, v in points]
    await ing.ingest([msg(seq, "telemetry", {"readings": rs})])


async def n_rows(store: Store, table: object) -> int:
    async with store.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar() or 0)  # type: ignore[arg-type]


async def test_raw_expires_after_rollup_and_late_data_still_counts(store: Store) -> None:
    clock = ManualClock(start_ms=T)
    ing = Ingestor(store)
    seq = Sequencer("hp-1", boot=1)
    old = T - 40 * DAY
    # Two minutes of old data: values 1..6 in the first minute, 10 and 20 in the second.
    await send(ing, seq, [(old + i * 10_000, float(i + 1)) for i in range(6)])
    await send(ing, seq, [(old + 60_000, 10.0), (old + 90_000, 20.0)])
    await send(ing, seq, [(T - 1000, 5.0)])  # recent
    ret = Retention(store, clock, raw_days=30)
    assert await ret.run_once() == (0, 0), "the first run only marks what it saw"
    clock.advance(60_000)
    rolled, deleted = await ret.run_once()
    assert (rolled, deleted) == (9, 8), "all rolled up; the 8 old raw rows dropped"
    assert await n_rows(store, readings) == 1

    hist = await ret.history("hp-1", "lvl-1", "depth_mm", old, old + 120_000, 60, 100)
    assert hist == [
        {"ts": old, "min": 1.0, "avg": 3.5, "max": 6.0, "n": 6},
        {"ts": old + 60_000, "min": 10.0, "avg": 15.0, "max": 20.0, "n": 2},
    ]
    assert await ret.history("hp-1", "lvl-1", "depth_mm", old, old + 120_000, 0, 100) == [], "raw is gone"
    coarse = await ret.history("hp-1", "lvl-1", "depth_mm", old - 600_000, old + 600_000, 3600, 100)
    assert [p["n"] for p in coarse] == [8]

    # A box's backlog arrives late, for the old first minute: it joins that minute.
    await send(ing, seq, [(old + 30_500, 100.0)])
    await ret.run_once()
    clock.advance(60_000)
    await ret.run_once()
    hist = await ret.history("hp-1", "lvl-1", "depth_mm", old, old + 59_999, 60, 100)
    assert hist == [{"ts": old, "min": 1.0, "avg": 121 / 7, "max": 100.0, "n": 7}]
    assert await n_rows(store, readings_1m) == 3

    recent = await ret.history("hp-1", "lvl-1", "depth_mm", T - 120_000, None, 60, 100)
    assert recent == [{"ts": (T - 1000) // 60_000 * 60_000, "min": 5.0, "avg": 5.0, "max": 5.0, "n": 1}]


async def test_good_only_history_leaves_out_bad_and_suspect_readings_raw_and_rolled_up(store: Store) -> None:
    clock = ManualClock(start_ms=T)
    ing = Ingestor(store)
    seq = Sequencer("hp-1", boot=1)
    old, new = T - 40 * DAY, T - 10 * 60_000

    async def mixed(t0: int) -> None:
        rs = [
            {"dev": "lvl-1", "ts": t0, "metric": "depth_mm", "value": 10.0, "quality": "good"},
            {"dev": "lvl-1", "ts": t0 + 10_000, "metric": "depth_mm", "value": 4990.0, "quality": "bad"},
            {"dev": "lvl-1", "ts": t0 + 20_000, "metric": "depth_mm", "value": 900.0, "quality": "suspect"},
            {"dev": "lvl-1", "ts": t0 + 30_000, "metric": "depth_mm", "value": 20.0, "quality": "good"},
            {"dev": "lvl-1", "ts": t0 + 60_000, "metric": "depth_mm", "value": 4990.0, "quality": "bad"},
        ]
        await ing.ingest([msg(seq, "telemetry", {"readings": rs})])

    await mixed(old)
    await mixed(new)
    ret = Retention(store, clock, raw_days=30)
    await ret.run_once()
    clock.advance(60_000)
    await ret.run_once()  # the old minute rolled up, its raw rows gone
    assert await ret.history("hp-1", "lvl-1", "depth_mm", old, old + 120_000, 0, 100) == [], "raw is gone"
    for t0 in (old, new):  # from the one-minute aggregates, then from raw rows
        every = await ret.history("hp-1", "lvl-1", "depth_mm", t0, t0 + 120_000, 60, 100)
        assert [(p["n"], p["max"]) for p in every] == [(4, 4990.0), (1, 4990.0)], "all of them, as before"
        good = await ret.history("hp-1", "lvl-1", "depth_mm", t0, t0 + 120_000, 60, 100, good_only=True)
        assert good == [{"ts": t0, "min": None, "avg": 15.0, "max": None, "n": 2}], t0
        coarse = await ret.history("hp-1", "lvl-1", "depth_mm", t0, t0 + 120_000, 300, 100, good_only=True)
        assert [(p["avg"], p["n"]) for p in coarse] == [(15.0, 2)]
    raw = await ret.history("hp-1", "lvl-1", "depth_mm", new, new + 120_000, 0, 100, good_only=True)
    assert [r["value"] for r in raw] == [10.0, 20.0]
