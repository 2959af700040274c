"""Read-only queries behind the API's site data: nodes and devices, latest readings, alert
episodes, dead letters. The API's routers call these and hold no SQL."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, inspect, select

from cloud.db.schema import alerts, dead_letters, devices, nodes, notifications, readings, series
from cloud.db.schema import schema_version as schema_version_table
from cloud.db.store import Store


def _json(v: str | None) -> Any:
    return json.loads(v) if v else None


def _node(r: Any) -> dict[str, Any]:
    out = dict(r)
    out["health"] = _json(out.get("health"))
    return out


async def all_nodes(store: Store) -> list[dict[str, Any]]:
    async with store.read() as conn:
        rows = (await conn.execute(select(nodes).order_by(nodes.c.node))).mappings().all()
    return [_node(r) for r in rows]


async def node_exists(store: Store, node: str) -> bool:
    async with store.read() as conn:
        return (await conn.execute(select(nodes.c.node).where(nodes.c.node == node))).first() is not None


async def node_with_devices(store: Store, node: str) -> dict[str, Any] | None:
    async with store.read() as conn:
        row = (await conn.execute(select(nodes).where(nodes.c.node == node))).mappings().first()
        devs = (
            (await conn.execute(select(devices).where(devices.c.node == node).order_by(devices.c.dev)))
            .mappings()
            .all()
        )
    if row is None:
        return None
    out = _node(row)
    out["devices"] = [{**dict(d), "thresholds": _json(d["thresholds"])} for d in devs]
    return out


async def latest_readings(store: Store, node: str | None = None) -> list[dict[str, Any]]:
    """The newest reading of every (node, device, metric), sorted by them.

    Series by series: each one's newest row is read off the end of its ``(series, ts)`` index
    (on PostgreSQL, of each week's), so the cost grows with the series, not with the rows.
    """
    r = readings.c

    def newest(col: Any) -> Any:
        # The same row for every column: the newest time, the highest id among equal times.
        q = select(col).where(r.series == series.c.id).order_by(r.ts.desc(), r.id.desc()).limit(1)
        return q.scalar_subquery()

    cols = [newest(r.ts).label("ts"), newest(r.value).label("value"), newest(r.quality).label("quality")]
    q = select(series.c.node, series.c.dev, series.c.metric, *cols)
    if node:
        q = q.where(series.c.node == node)
    async with store.read() as conn:
        rows = (await conn.execute(q.order_by(series.c.node, series.c.dev, series.c.metric))).mappings().all()
    return [dict(row) for row in rows if row["ts"] is not None]


async def alert_page(
    store: Store,
    *,
    node: str | None = None,
    active: bool | None = None,
    level: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[dict[str, Any]]]:
    """Alert episodes, newest change first."""
    cond: list[Any] = []
    if node:
        cond.append(alerts.c.node == node)
    if active is True:
        cond.append(alerts.c.level != "clear")
    if active is False:
        cond.append(alerts.c.level == "clear")
    if level:
        cond.append(alerts.c.level == level)
    q = select(alerts).where(*cond).order_by(alerts.c.last_ts.desc()).limit(limit).offset(offset)
    n = select(func.count()).select_from(alerts).where(*cond)
    async with store.read() as conn:
        total = (await conn.execute(n)).scalar() or 0
        rows = (await conn.execute(q)).mappings().all()
    return int(total), [dict(r) for r in rows]


async def dead_letter_page(
    store: Store, limit: int = 50, offset: int = 0
) -> tuple[int, list[dict[str, Any]]]:
    """Dead letters, newest first, the payload as text."""
    q = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit).offset(offset)
    async with store.read() as conn:
        total = (await conn.execute(select(func.count()).select_from(dead_letters))).scalar() or 0
        rows = (await conn.execute(q)).mappings().all()
    return int(total), [
        {
            **{k: r[k] for k in ("id", "topic", "code", "detail", "received_ms")},
            "payload": r["payload"].decode("utf-8", "replace"),
        }
        for r in rows
    ]


async def database_answers(store: Store) -> bool:
    """Whether the database answers a trivial query."""
    try:
        async with store.read() as conn:
            await conn.execute(select(1))
    except Exception:
        return False
    return True


async def schema_version(store: Store) -> int:
    """The schema version the database is at (0: never migrated)."""
    async with store.read() as conn:
        if not await conn.run_sync(lambda c: inspect(c).has_table(schema_version_table.name)):
            return 0
        return int((await conn.execute(select(func.max(schema_version_table.c.version)))).scalar() or 0)


async def watch_counts(store: Store) -> dict[str, int]:
    """What ``/metrics`` reports from the database: active alert episodes, notification
    deliveries pending and failed for good (an index each: cheap at every scrape)."""
    async with store.read() as conn:
        active = (
            await conn.execute(select(func.count()).select_from(alerts).where(alerts.c.level != "clear"))
        ).scalar()
        by_status: dict[str, int] = dict(
            (
                await conn.execute(
                    select(notifications.c.status, func.count())
                    .where(notifications.c.status.in_(("pending", "failed")))
                    .group_by(notifications.c.status)
                )
            ).all()
        )
    return {
        "alerts_active": int(active or 0),
        "notifications_pending": int(by_status.get("pending", 0)),
        "notifications_failed": int(by_status.get("failed", 0)),
    }
