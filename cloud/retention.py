"""Telemetry retention: raw readings for ``raw_days``, one-minute aggregates kept.

Aggregates are built from readings by insert order (the ``id``), not by
reading time, so a backlog that a box sends hours late is still counted.
Each run rolls up the ids up to the highest id the previous run saw (a
``rollup_interval`` ago), so a writer's transaction still in flight when an id
was taken has had that long to commit. Raw rows are deleted only once they
are older than ``raw_days`` and already rolled up.

History queries (:meth:`Retention.history`) read raw rows inside the raw
horizon and aggregates beyond it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, func, select, update

from cloud.db.schema import named_readings, readings, readings_1m, rollup_state
from cloud.db.store import Store
from floodgate.clock import Clock

DAY_MS = 86_400_000
NAME = "readings_1m"


class Retention:
    def __init__(self, store: Store, clock: Clock, raw_days: float = 30.0, interval_ms: int = 60_000) -> None:
        self.store = store
        self.clock = clock
        self.raw_ms = int(raw_days * DAY_MS)
        self.interval_ms = interval_ms
        self.rolled = 0
        self.deleted = 0

    def _locked(self, q: Any) -> Any:
        return q.with_for_update() if self.store.dialect == "postgresql" else q

    async def run_once(self) -> tuple[int, int]:
        """Roll up what is safe to, then drop expired raw rows; returns (rolled, deleted)."""
        now = self.clock.now_ms()
        rolled = deleted = 0
        async with self.store.engine.begin() as conn:
            await conn.execute(
                self.store.insert(rollup_state)
                .values(name=NAME, done_id=0, mark_id=0, updated_ms=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            st = (
                (await conn.execute(self._locked(select(rollup_state).where(rollup_state.c.name == NAME))))
                .mappings()
                .one()
            )
            top = int((await conn.execute(select(func.max(readings.c.id)))).scalar() or 0)
            lo, hi = st["done_id"], st["mark_id"]
            if hi > lo:
                nr = named_readings
                minute = (nr.c.ts // 60_000 * 60_000).label("minute")
                rows = (
                    (
                        await conn.execute(
                            select(
                                nr.c.node,
                                nr.c.dev,
                                nr.c.metric,
                                minute,
                                func.count().label("n"),
                                func.min(nr.c.value).label("vmin"),
                                func.max(nr.c.value).label("vmax"),
                                func.sum(nr.c.value).label("vsum"),
                            )
                            .where(nr.c.id > lo, nr.c.id <= hi)
                            .group_by(nr.c.node, nr.c.dev, nr.c.metric, minute)
                        )
                    )
                    .mappings()
                    .all()
                )
                if rows:
                    stmt = self.store.insert(readings_1m)
                    t = readings_1m.c
                    await conn.execute(
                        stmt.on_conflict_do_update(
                            index_elements=["node", "dev", "metric", "minute"],
                            set_={
                                "n": t.n + stmt.excluded.n,
                                "vsum": t.vsum + stmt.excluded.vsum,
                                "vmin": -self.store.greatest(-t.vmin, -stmt.excluded.vmin),
                                "vmax": self.store.greatest(t.vmax, stmt.excluded.vmax),
                            },
                        ),
                        [{**dict(r), "minute": int(r["minute"])} for r in rows],
                    )
                rolled = sum(int(r["n"]) for r in rows)
            await conn.execute(
                update(rollup_state)
                .where(rollup_state.c.name == NAME)
                .values(done_id=max(lo, hi), mark_id=max(hi, top), updated_ms=now)
            )
            # Only what every follower of the table (the rollup, an InfluxDB export) is past.
            others = (
                await conn.execute(
                    select(func.min(rollup_state.c.done_id)).where(rollup_state.c.name != NAME)
                )
            ).scalar()
            done = max(lo, hi) if others is None else min(max(lo, hi), int(others))
            result = await conn.execute(
                delete(readings).where(and_(readings.c.ts < now - self.raw_ms, readings.c.id <= done))
            )
            deleted = int(result.rowcount or 0)
        self.rolled += rolled
        self.deleted += deleted
        return rolled, deleted

    async def next_run(self) -> int:
        return self.clock.now_ms() + self.interval_ms

    async def history(
        self,
        node: str,
        dev: str,
        metric: str,
        start: int | None,
        end: int | None,
        resolution_s: int,
        limit: int,
    ) -> list[dict[str, Any]]:
        """Points between ``start`` and ``end``: raw (resolution 0) or per bucket with min/avg/max/n."""
        now = self.clock.now_ms()
        horizon = now - self.raw_ms
        nr = named_readings
        key = [nr.c.node == node, nr.c.dev == dev, nr.c.metric == metric]
        async with self.store.read() as conn:
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
                bucket = (a.minute // size).label("bucket")
                q = (
                    select(
                        bucket,
                        func.sum(a.n).label("n"),
                        func.min(a.vmin).label("min"),
                        func.max(a.vmax).label("max"),
                        func.sum(a.vsum).label("sum"),
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
            out.append({"ts": b * size, "min": p["min"], "avg": float(p["sum"]) / n, "max": p["max"], "n": n})
        return out
