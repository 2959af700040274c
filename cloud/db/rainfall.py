"""Rainfall forecasts (cloud.rainfall): the known sites' places, the rows in, the latest per site out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select

from cloud.db.schema import nodes, rainfall_forecasts
from cloud.db.store import Conn, Row, insert_into


async def site_places(conn: Conn) -> dict[str, tuple[float | None, float | None]]:
    """Every known site (node) -> its latitude and longitude (None where not known)."""
    return {
        r.node: (r.lat, r.lon)
        for r in (await conn.execute(select(nodes.c.node, nodes.c.lat, nodes.c.lon))).all()
    }


async def store(conn: Conn, rows: list[dict[str, Any]]) -> list[str]:
    """Store the rows whose (node, digest) is not stored yet; returns the nodes of those that were."""
    if not rows:
        return []
    f = rainfall_forecasts
    pairs = {(r["node"], r["digest"]) for r in rows}
    q = select(f.c.node, f.c.digest).where(
        f.c.node.in_(sorted({n for n, _ in pairs})), f.c.digest.in_(sorted({d for _, d in pairs}))
    )
    had = {(r.node, r.digest) for r in (await conn.execute(q)).all()}
    new = [r for r in rows if (r["node"], r["digest"]) not in had]
    if new:  # another collector storing the same document at the same moment: its rows stand
        stmt = insert_into(conn, f).on_conflict_do_nothing(index_elements=["node", "digest"])
        await conn.execute(stmt, new)
    return sorted({r["node"] for r in rows if (r["node"], r["digest"]) in had})


def _issued_sanely(ahead_ms: int) -> Any:
    """A row whose issue time is at most ``ahead_ms`` after it was received: one issued later
    (a local time stamped Z, taken before such documents were refused) would hide every
    forecast after it, and is passed over."""
    f = rainfall_forecasts
    return f.c.issued_ms <= f.c.received_ms + ahead_ms


async def since(conn: Conn, node: str, start_ms: int, end_ms: int, ahead_ms: int) -> list[Row]:
    """The forecasts of ``node`` covering any of ``start_ms`` to ``end_ms``, by issue time, then id."""
    f = rainfall_forecasts
    q = (
        select(f.c.id, f.c.issued_ms, f.c.steps, f.c.series)
        .where(f.c.node == node, f.c.end_ms > start_ms, f.c.start_ms < end_ms, _issued_sanely(ahead_ms))
        .order_by(f.c.issued_ms, f.c.id)
    )
    return list((await conn.execute(q)).mappings().all())


async def latest(conn: Conn, node: str | None, ahead_ms: int) -> list[Row]:
    """The latest forecast row of every site (or of ``node``), by node: the latest issued (of
    those not issued more than ``ahead_ms`` after they were received), then the last stored."""
    f = rainfall_forecasts
    newest = (
        select(f.c.node, func.max(f.c.issued_ms).label("issued_ms"))
        .where(_issued_sanely(ahead_ms))
        .group_by(f.c.node)
    )
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
