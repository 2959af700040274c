"""Each site's depth model and forecast (cloud.forecast): its sensors, its fits, its latest run,
its open forecast episode."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from sqlalchemy import delete, func, select, update

from cloud.db import turns
from cloud.db.schema import (
    JOB_ROWS,
    alert_transitions,
    alerts,
    devices,
    nodes,
    rainfall_forecasts,
    rollup_state,
    site_fits,
    site_forecasts,
)
from cloud.db.store import Conn, Row, Store, for_update, insert_into


async def rain_sites(conn: Conn) -> set[str]:
    """The sites with some rain to learn from: a rain gauge, or a rainfall forecast stored."""
    gauges = select(devices.c.node).where(devices.c.kind == "rain")
    forecast = select(rainfall_forecasts.c.node).distinct()
    return {r[0] for r in (await conn.execute(gauges.union(forecast))).all()}


async def site_devices(conn: Conn, node: str) -> list[dict[str, Any]]:
    """The site's devices: ``dev``, ``kind``, ``thresholds`` (decoded), ``last_reading_ms``, by dev."""
    d = devices.c
    q = select(d.dev, d.kind, d.thresholds, d.last_reading_ms).where(d.node == node)
    return [
        {
            "dev": r.dev,
            "kind": r.kind,
            "thresholds": json.loads(r.thresholds) if r.thresholds else {},
            "last_reading_ms": r.last_reading_ms,
        }
        for r in (await conn.execute(q.order_by(d.dev))).all()
    ]


async def add_fit(conn: Conn, row: dict[str, Any]) -> int:
    result = await conn.execute(site_fits.insert().returning(site_fits.c.id), [row])
    return int(result.scalar_one())


async def latest_fits(conn: Conn, node: str | None = None) -> dict[str, Row]:
    """Each site's latest fit (or ``node``'s), by node."""
    newest = select(func.max(site_fits.c.id)).group_by(site_fits.c.node)
    if node is not None:
        newest = newest.where(site_fits.c.node == node)
    q = select(site_fits).where(site_fits.c.id.in_(newest))
    return {r["node"]: r for r in (await conn.execute(q)).mappings().all()}


async def put_runs(conn: Conn, rows: list[dict[str, Any]]) -> None:
    """Each site's latest run replaced (``node``, ``run_ms``, ``status``, ``result`` JSON)."""
    if not rows:
        return
    stmt = insert_into(conn, site_forecasts)  # another collector's run of the same moment: the last wins
    up = {c: stmt.excluded[c] for c in ("run_ms", "status", "result")}
    await conn.execute(stmt.on_conflict_do_update(index_elements=["node"], set_=up), rows)


async def runs(conn: Conn, status: str | None = None) -> list[Row]:
    """The latest run of every site (of ``status``), with the site's name."""
    q = select(site_forecasts, nodes.c.site_name).join_from(
        site_forecasts, nodes, nodes.c.node == site_forecasts.c.node, isouter=True
    )
    if status is not None:
        q = q.where(site_forecasts.c.status == status)
    return list((await conn.execute(q.order_by(site_forecasts.c.node))).mappings().all())


async def run_of(conn: Conn, node: str) -> Row | None:
    """The site's latest run (``run_ms``, ``status``, ``result``), if it has one."""
    q = select(site_forecasts).where(site_forecasts.c.node == node)
    return (await conn.execute(q)).mappings().first()


async def run_statuses(conn: Conn) -> tuple[int, dict[str, int], int | None]:
    """How many sites there are, how many of them have a latest run of each status, and the
    newest run's time (None: none)."""
    total = (await conn.execute(select(func.count()).select_from(nodes))).scalar_one()
    q = select(site_forecasts.c.status, func.count()).group_by(site_forecasts.c.status)
    by = {str(st): int(n) for st, n in (await conn.execute(q)).all()}
    last = (await conn.execute(select(func.max(site_forecasts.c.run_ms)))).scalar()
    return int(total), by, None if last is None else int(last)


async def open_episodes(conn: Conn, dev: str) -> dict[str, Row]:
    """The collector's open forecast episodes (device ``dev``) by node: ``id``, ``level`` and the
    ``eta_s``, ``probability`` and ``ts`` of their latest transition."""
    inner = alert_transitions.alias("latest")
    last = select(func.max(inner.c.ts)).where(inner.c.alert_id == alerts.c.id).scalar_subquery()
    q = (
        select(
            alerts.c.id,
            alerts.c.node,
            alerts.c.level,
            alert_transitions.c.eta_s,
            alert_transitions.c.probability,
            alert_transitions.c.ts,
        )
        .join_from(alerts, alert_transitions, alert_transitions.c.alert_id == alerts.c.id)
        .where(
            alerts.c.kind == "forecast",
            alerts.c.dev == dev,
            alerts.c.level != "clear",
            alert_transitions.c.ts == last,
        )
    )
    return {r["node"]: r for r in (await conn.execute(q)).mappings().all()}


# rollup_state's rows (schema.JOB_ROWS): when the last forecast round (of any collector) began, and
# when the forecasts' expiry last ran.
ROUND, EXPIRY = JOB_ROWS


ROUND_MAX_MS = 3_600_000  # a round renews its turn's lease (cloud.db.turns) for at most this long


@contextlib.asynccontextmanager
async def round_turn(
    store: Store,
    now_ms: Callable[[], int],
    every_ms: int,
    force: bool,
    lease_ms: int = turns.LEASE_MS,
    max_round_ms: int = ROUND_MAX_MS,
) -> AsyncIterator[Literal["run", "skip", "busy"]]:
    """Whether this collector runs the forecast round (refits and runs) now, held for the block:
    ``run``; ``skip`` when the last round is recent; ``busy`` when another collector has the turn.

    On PostgreSQL the collectors take turns (``cloud.db.turns``: a lock on a lease, so one that
    dies or hangs loses it). A round runs when the last one, by any collector, began
    ``every_ms`` ago or more, or at once when ``force`` (a new rainfall forecast woke this one);
    a collector that dies mid-round leaves it recorded as begun, and the next one due runs it.
    SQLite has one collector: always.
    """
    if store.dialect != "postgresql":
        yield "run"
        return
    async with turns.turn(store, ROUND, lease_ms, max_round_ms) as got:
        if not got:
            yield "busy"
            return
        async with store.begin() as conn:  # a short transaction: when the last round began
            q = select(rollup_state.c.updated_ms).where(rollup_state.c.name == ROUND)
            last = (await conn.execute(q)).scalar()
            now = now_ms()
            mine = force or last is None or now - int(last) >= every_ms
            if mine:
                stmt = insert_into(conn, rollup_state)
                await conn.execute(
                    stmt.on_conflict_do_update(index_elements=["name"], set_={"updated_ms": now}),
                    {"name": ROUND, "done_id": 0, "mark_id": 0, "updated_ms": now},
                )
        yield "run" if mine else "skip"


async def expire(store: Store, now: int, keep_ms: int, every_ms: int) -> tuple[int, int] | None:
    """The forecasts' retention, once across collectors every ``every_ms``: rainfall forecasts
    that ended more than ``keep_ms`` ago, and the latest runs of sites not run for that long (a
    site no longer forecast). Every fit is kept (``site_fits``: the model's history). Returns the
    rows deleted (rainfall forecasts, runs), or None when another collector's run is recent.

    In one transaction on the job's ``rollup_state`` row, locked (``FOR UPDATE``; SQLite has one
    writer at a time): a collector that comes second finds it just run and does nothing."""
    async with store.begin() as conn:
        await conn.execute(
            insert_into(conn, rollup_state)
            .values(name=EXPIRY, done_id=0, mark_id=0, updated_ms=0)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        q = select(rollup_state.c.updated_ms).where(rollup_state.c.name == EXPIRY)
        last = int((await conn.execute(for_update(conn, q))).scalar_one())
        if now - last < every_ms:
            return None
        cut = now - keep_ms
        rain = await conn.execute(delete(rainfall_forecasts).where(rainfall_forecasts.c.end_ms < cut))
        runs = await conn.execute(delete(site_forecasts).where(site_forecasts.c.run_ms < cut))
        await conn.execute(update(rollup_state).where(rollup_state.c.name == EXPIRY).values(updated_ms=now))
    return int(rain.rowcount or 0), int(runs.rowcount or 0)
