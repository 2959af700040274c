"""What the Open311 and CAP views read: tickets as service requests, public episodes and their chains."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import or_, select

from cloud.db.schema import alert_transitions, alerts, nodes, tickets
from cloud.db.store import Conn, Row, Store


async def _sites(conn: Conn) -> dict[str, Row]:
    rows = (await conn.execute(select(nodes))).mappings().all()
    return {r["node"]: r for r in rows}


async def service_requests(
    store: Store,
    *,
    kind: str | None,
    closed: bool | None,
    closed_states: Collection[str],
    start_ms: int | None,
    end_ms: int | None,
    ids: list[str] | None,
    limit: int,
    offset: int,
) -> tuple[list[Row], dict[str, Row]]:
    """Tickets, newest first, and every site.

    ``closed``: only the tickets in ``closed_states`` (True), only the others (False), or all (None).
    """
    q = select(tickets).order_by(tickets.c.created_ms.desc(), tickets.c.id.desc())
    if ids:
        q = q.where(tickets.c.id.in_(ids))
    if kind:
        q = q.where(tickets.c.kind == kind)
    if closed is False:
        q = q.where(tickets.c.state.not_in(tuple(closed_states)))
    elif closed is True:
        q = q.where(tickets.c.state.in_(tuple(closed_states)))
    if start_ms is not None:
        q = q.where(tickets.c.created_ms >= start_ms)
    if end_ms is not None:
        q = q.where(tickets.c.created_ms <= end_ms)
    async with store.read() as conn:
        rows = (await conn.execute(q.limit(limit).offset(offset))).mappings().all()
        sites = await _sites(conn)
    return list(rows), sites


def _chain(alert_ids: list[str]) -> Any:
    return (
        select(alert_transitions)
        .where(alert_transitions.c.alert_id.in_(alert_ids))
        .order_by(alert_transitions.c.ts, alert_transitions.c.msg_id)
    )


async def public_episodes(
    store: Store, kinds: Collection[str], since: int, limit: int, offset: int
) -> tuple[list[Row], dict[str, Row], dict[str, list[Row]]]:
    """Episodes of ``kinds`` active or changed since ``since``, the most recently changed first;
    every site; each episode's transitions in order (by alert id)."""
    q = select(alerts).where(
        alerts.c.kind.in_(tuple(kinds)),
        or_(alerts.c.level != "clear", alerts.c.last_ts >= since),
    )
    chains: dict[str, list[Row]] = {}
    async with store.read() as conn:
        q = q.order_by(alerts.c.last_ts.desc(), alerts.c.id).limit(limit).offset(offset)
        eps = (await conn.execute(q)).mappings().all()
        sites = await _sites(conn)
        if eps:
            for tr in (await conn.execute(_chain([e["id"] for e in eps]))).mappings().all():
                chains.setdefault(tr["alert_id"], []).append(tr)
    return list(eps), sites, chains


async def transition_with_chain(
    store: Store, msg_id: str, kinds: Collection[str]
) -> tuple[Row, Row, list[Row], Row | None] | None:
    """Transition ``msg_id``, its episode (if of ``kinds``), the episode's transitions in order, its site."""
    async with store.read() as conn:
        tr = (
            (await conn.execute(select(alert_transitions).where(alert_transitions.c.msg_id == msg_id)))
            .mappings()
            .first()
        )
        if tr is None:
            return None
        ep = (await conn.execute(select(alerts).where(alerts.c.id == tr["alert_id"]))).mappings().first()
        if ep is None or ep["kind"] not in kinds:
            return None
        chain = (await conn.execute(_chain([ep["id"]]))).mappings().all()
        site = (await conn.execute(select(nodes).where(nodes.c.node == ep["node"]))).mappings().first()
    return tr, ep, list(chain), site
