"""Rainfall forecasts (cloud.rainfall): the known sites' places, the rows in, the latest per site out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select

from cloud.db.schema import nodes, rainfall_forecasts
from cloud.db.store import Conn, Row


async def site_places(conn: Conn) -> dict[str, tuple[float | None, float | None]]:
    """Every known site (node) -> its latitude and longitude (None where not known)."""
    return {
        r.node: (r.lat, r.lon)
        for r in (await conn.execute(select(nodes.c.node, nodes.c.lat, nodes.c.lon))).all()
    }


async def store(conn: Conn, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(rainfall_forecasts.insert(), rows)


async def latest(conn: Conn, node: str | None) -> list[Row]:
    """The latest forecast row of every site (or of ``node``), by node."""
    f = rainfall_forecasts
    newest = select(f.c.node, func.max(f.c.issued_ms).label("issued_ms")).group_by(f.c.node)
    if node is not None:
        newest = newest.where(f.c.node == node)
    n = newest.subquery()
    last = (
        select(func.max(f.c.id).label("id"))
        .join(n, and_(f.c.node == n.c.node, f.c.issued_ms == n.c.issued_ms))
        .group_by(f.c.node)
        .subquery()
    )
    q = select(f).where(f.c.id.in_(select(last.c.id))).order_by(f.c.node)
    return list((await conn.execute(q)).mappings().all())
