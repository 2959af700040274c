"""Read-only queries behind the API's site data: nodes and devices, latest readings, alert
episodes, dead letters. The API's routers call these and hold no SQL."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, func, select

from cloud.db.schema import alerts, dead_letters, devices, named_readings, nodes
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
    """The newest reading of every (node, device, metric), sorted by them."""
    nr = named_readings
    last = select(nr.c.node, nr.c.dev, nr.c.metric, func.max(nr.c.ts).label("ts")).group_by(
        nr.c.node, nr.c.dev, nr.c.metric
    )
    if node:
        last = last.where(nr.c.node == node)
    sub = last.subquery()
    q = select(nr).join(
        sub,
        and_(
            nr.c.node == sub.c.node,
            nr.c.dev == sub.c.dev,
            nr.c.metric == sub.c.metric,
            nr.c.ts == sub.c.ts,
        ),
    )
    async with store.read() as conn:
        rows = (await conn.execute(q)).mappings().all()
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        seen[(r["node"], r["dev"], r["metric"])] = {
            k: r[k] for k in ("node", "dev", "metric", "ts", "value", "quality")
        }
    return [seen[k] for k in sorted(seen)]


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
