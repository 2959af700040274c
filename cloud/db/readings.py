"""Readings after ingest: the one-minute rollup, retention, history, and followers of the table.

A follower of ``readings`` (the rollup, an InfluxDB export) keeps its place
in ``rollup_state`` by id: ``done_id``, what it has handled, and ``mark_id``,
the highest id it saw on its previous round (what it may handle next).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, column, delete, func, select, table, update

from cloud.db.partitions import DEFAULT
from cloud.db.schema import JOB_ROWS, named_readings, readings, readings_1m, rollup_state
from cloud.db.store import Conn, Row, Store

ROLLUP = "readings_1m"  # the rollup's row in rollup_state
_default_partition = table(DEFAULT, column("id"), column("ts"))


async def _follower(store: Store, conn: Conn, name: str, now: int) -> None:
    """``name``'s row in ``rollup_state``, made at 0 if it has none."""
    await conn.execute(
        store.insert(rollup_state)
        .values(name=name, done_id=0, mark_id=0, updated_ms=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )


async def roll_up_and_expire(store: Store, now: int, raw_ms: int) -> tuple[int, int]:
    """One round of the rollup, in one transaction; returns (readings rolled up, raw rows deleted).

    Rolls up the ids between the rollup's ``done_id`` and ``mark_id`` into
    one-minute aggregates, moves its mark to the highest id now, and deletes
    raw rows older than ``raw_ms`` that every follower of the table is past.
    """
    rolled = 0
    async with store.begin() as conn:
        await _follower(store, conn, ROLLUP, now)
        q = select(rollup_state).where(rollup_state.c.name == ROLLUP)
        st = (
            (await conn.execute(q.with_for_update() if store.dialect == "postgresql" else q)).mappings().one()
        )
        top = int((await conn.execute(select(func.max(readings.c.id)))).scalar() or 0)
        lo, hi = st["done_id"], st["mark_id"]
        if hi > lo:
            # In the database, one statement: at a city's rate a minute is 100,000 readings
            # or more and 10,000 aggregates, which fetched and sent back held the collector's
            # event loop (its intake, its alert lane) for a second or more each round.
            nr = named_readings
            minute = (nr.c.ts // 60_000 * 60_000).label("minute")
            good = nr.c.quality == "good"
            aggregates = (
                select(
                    nr.c.node,
                    nr.c.dev,
                    nr.c.metric,
                    minute,
                    func.count().label("n"),
                    func.min(nr.c.value).label("vmin"),
                    func.max(nr.c.value).label("vmax"),
                    func.sum(nr.c.value).label("vsum"),
                    func.sum(case((good, 1), else_=0)).label("good_n"),
                    func.sum(case((good, nr.c.value), else_=0.0)).label("good_sum"),
                )
                .where(nr.c.id > lo, nr.c.id <= hi)  # a WHERE: SQLite's upsert after a SELECT needs one
                .group_by(nr.c.node, nr.c.dev, nr.c.metric, minute)
            )
            stmt = store.insert(readings_1m).from_select(
                ["node", "dev", "metric", "minute", "n", "vmin", "vmax", "vsum", "good_n", "good_sum"],
                aggregates,
            )
            t = readings_1m.c
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["node", "dev", "metric", "minute"],
                    set_={
                        "n": t.n + stmt.excluded.n,
                        "vsum": t.vsum + stmt.excluded.vsum,
                        "vmin": -store.greatest(-t.vmin, -stmt.excluded.vmin),
                        "vmax": store.greatest(t.vmax, stmt.excluded.vmax),
                        # NULL (a minute rolled up before good_n existed) stays NULL
                        "good_n": t.good_n + stmt.excluded.good_n,
                        "good_sum": t.good_sum + stmt.excluded.good_sum,
                    },
                )
            )
            counted = (
                select(func.count()).select_from(readings).where(readings.c.id > lo, readings.c.id <= hi)
            )
            rolled = int((await conn.execute(counted)).scalar() or 0)
        await conn.execute(
            update(rollup_state)
            .where(rollup_state.c.name == ROLLUP)
            .values(done_id=max(lo, hi), mark_id=max(hi, top), updated_ms=now)
        )
        # Only what every follower of the table (the rollup, an InfluxDB export) is past.
        others = (
            await conn.execute(
                select(func.min(rollup_state.c.done_id)).where(
                    rollup_state.c.name != ROLLUP, rollup_state.c.name.not_in(JOB_ROWS)
                )
            )
        ).scalar()
        done = max(lo, hi) if others is None else min(max(lo, hi), int(others))
        # PostgreSQL drops whole weeks (``partitions.drop_expired``): rows go one by one only
        # from the default partition, which holds what falls outside the weeks.
        raw = readings if store.dialect != "postgresql" else _default_partition
        result = await conn.execute(delete(raw).where(and_(raw.c.ts < now - raw_ms, raw.c.id <= done)))
        deleted = int(result.rowcount or 0)
    return rolled, deleted


async def history(
    store: Store,
    node: str,
    dev: str,
    metric: str,
    start: int | None,
    end: int | None,
    resolution_s: int,
    limit: int,
    horizon: int,
    good_only: bool = False,
) -> list[dict[str, Any]]:
    """Points between ``start`` and ``end``: raw (resolution 0) or per bucket with min/avg/max/n.

    Raw rows after ``horizon`` (where retention keeps them), one-minute
    aggregates before it. ``good_only``: readings of quality good only (what the forecast
    fits and runs on); buckets then have ``avg`` and ``n`` (of the good ones), no min or max,
    and minutes rolled up before the rollup kept their good readings apart are left out.
    """
    nr = named_readings
    key = [nr.c.node == node, nr.c.dev == dev, nr.c.metric == metric]
    if good_only:
        key.append(nr.c.quality == "good")
    async with store.read() as conn:
        if resolution_s == 0:
            cond = [*key]
            if start is not None:
                cond.append(nr.c.ts >= start)
            if end is not None:
                cond.append(nr.c.ts <= end)
            q = select(nr.c.ts, nr.c.value, nr.c.quality).where(*cond).order_by(nr.c.ts)
            return [dict(r) for r in (await conn.execute(q.limit(limit))).mappings().all()]
        size = resolution_s * 1000
        points: dict[int, dict[str, Any]] = {}
        if (start is None or start < horizon) and resolution_s % 60 == 0:
            a = readings_1m.c
            cond = [a.node == node, a.dev == dev, a.metric == metric, a.minute < horizon]
            if start is not None:
                cond.append(a.minute >= start)
            if end is not None:
                cond.append(a.minute <= end)
            if good_only:
                cond.append(a.good_n > 0)
            bucket = (a.minute // size).label("bucket")
            q = (
                select(
                    bucket,
                    func.sum(a.good_n if good_only else a.n).label("n"),
                    func.min(a.vmin).label("min"),
                    func.max(a.vmax).label("max"),
                    func.sum(a.good_sum if good_only else a.vsum).label("sum"),
                )
                .where(*cond)
                .group_by(bucket)
            )
            for r in (await conn.execute(q)).mappings().all():
                points[int(r["bucket"])] = dict(r)
        bucket = (nr.c.ts // size).label("bucket")
        cond = [*key]
        lo = max(start, horizon) if start is not None else horizon
        cond.append(nr.c.ts >= lo)
        if end is not None:
            cond.append(nr.c.ts <= end)
        q = (
            select(
                bucket,
                func.count().label("n"),
                func.min(nr.c.value).label("min"),
                func.max(nr.c.value).label("max"),
                func.sum(nr.c.value).label("sum"),
            )
            .where(*cond)
            .group_by(bucket)
        )
        for r in (await conn.execute(q)).mappings().all():
            b = int(r["bucket"])
            if b in points:  # a bucket straddling the horizon: merge
                p = points[b]
                points[b] = {
                    "n": p["n"] + r["n"],
                    "min": min(p["min"], r["min"]),
                    "max": max(p["max"], r["max"]),
                    "sum": p["sum"] + r["sum"],
                }
            else:
                points[b] = dict(r)
    out = []
    for b in sorted(points)[:limit]:
        p = points[b]
        n = int(p["n"])
        lo_hi = (None, None) if good_only else (p["min"], p["max"])  # of every reading: not the good ones'
        out.append({"ts": b * size, "min": lo_hi[0], "avg": float(p["sum"]) / n, "max": lo_hi[1], "n": n})
    return out


async def newest(store: Store, node: str, dev: str, metric: str, since: int) -> Row | None:
    """The newest reading of the series at or after ``since`` (any quality): ``ts``, ``value``,
    ``quality``; None when there is none."""
    nr = named_readings
    q = (
        select(nr.c.ts, nr.c.value, nr.c.quality)
        .where(nr.c.node == node, nr.c.dev == dev, nr.c.metric == metric, nr.c.ts >= since)
        .order_by(nr.c.ts.desc(), nr.c.id.desc())
        .limit(1)
    )
    async with store.read() as conn:
        return (await conn.execute(q)).mappings().first()


async def follower_state(store: Store, name: str, now: int) -> Row:
    """Follower ``name``'s ``rollup_state`` row (made at 0 if it has none)."""
    async with store.begin() as conn:
        await _follower(store, conn, name, now)
        return (await conn.execute(select(rollup_state).where(rollup_state.c.name == name))).mappings().one()


async def named_after(store: Store, done: int, mark: int, limit: int) -> tuple[int, list[Row]]:
    """The highest reading id now, and up to ``limit`` readings with ids in (done, mark], by id, named."""
    async with store.read() as conn:
        top = int((await conn.execute(select(func.max(readings.c.id)))).scalar() or 0)
        rows = (
            (
                await conn.execute(
                    select(named_readings)
                    .where(named_readings.c.id > done, named_readings.c.id <= mark)
                    .order_by(named_readings.c.id)
                    .limit(limit)
                )
            )
            .mappings()
            .all()
        )
    return top, list(rows)


async def follower_moved(store: Store, name: str, was_done: int, done: int, mark: int, now: int) -> None:
    """Follower ``name`` moves on to ``done`` and ``mark``, if no one moved it from ``was_done`` meanwhile."""
    async with store.begin() as conn:
        await conn.execute(
            update(rollup_state)
            .where(rollup_state.c.name == name, rollup_state.c.done_id == was_done)
            .values(done_id=done, mark_id=mark, updated_ms=now)
        )


async def add_history(store: Store, rows: list[tuple[str, str, str, int, float]]) -> int:
    """Readings that no agent sent (``node``, ``dev``, ``metric``, ``ts``, ``value``; quality
    good): the demo's simulated past (``simulators.demo_weather``). Returns how many were added."""
    if not rows:
        return 0
    await store.resolve_series({(n, d, m) for n, d, m, _, _ in rows})
    values = [
        {"series": store.series_ids[(n, d, m)], "ts": ts, "value": v, "quality": "good"}
        for n, d, m, ts, v in rows
    ]
    async with store.begin() as conn:
        await conn.execute(readings.insert(), values)
    return len(values)
