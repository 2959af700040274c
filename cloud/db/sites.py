"""Sites (nodes) and their devices as the collector's background work and the map read them."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, func, select, update

from cloud.db.schema import alerts, devices, events, nodes, tickets
from cloud.db.store import Conn, Row, Store, insert_into


async def last_seen(conn: Conn) -> dict[str, int | None]:
    """Every node → when anything was last received from it (ms, None if never)."""
    return {
        r.node: r.last_seen_ms for r in (await conn.execute(select(nodes.c.node, nodes.c.last_seen_ms))).all()
    }


async def sensor_reading_times(conn: Conn, kinds: Iterable[str]) -> list[tuple[str, str, int | None]]:
    """(node, dev, newest reading's time) of every device of ``kinds``."""
    q = select(devices.c.node, devices.c.dev, devices.c.last_reading_ms).where(
        devices.c.kind.in_(list(kinds))
    )
    return [(r.node, r.dev, r.last_reading_ms) for r in (await conn.execute(q)).all()]


async def open_alerts(conn: Conn, kind: str) -> dict[tuple[str, str], Row]:
    """The episodes of ``kind`` not clear, by (node, dev)."""
    q = select(alerts).where(alerts.c.kind == kind, alerts.c.level != "clear")
    return {(r["node"], r["dev"]): r for r in (await conn.execute(q)).mappings().all()}


class OverviewRows(NamedTuple):
    nodes: list[Row]  # by node
    active: list[Row]  # alert episodes not clear
    actuators: list[Row]  # each actuator's newest ``actuator.state`` event: node, dev, detail, ts
    open_tickets: list[Row]  # id, node, kind, state, priority of every ticket not closed


async def overview_rows(store: Store, node: str | None = None) -> OverviewRows:
    """What the map's rows are made of, for every site or one."""
    async with store.read() as conn:
        nq = select(nodes).order_by(nodes.c.node)
        if node:
            nq = nq.where(nodes.c.node == node)
        rows = (await conn.execute(nq)).mappings().all()
        active = (await conn.execute(select(alerts).where(alerts.c.level != "clear"))).mappings().all()
        last = (
            select(events.c.node, events.c.dev, func.max(events.c.ts).label("ts"))
            .where(events.c.type == "actuator.state")
            .group_by(events.c.node, events.c.dev)
            .subquery()
        )
        acts = (
            (
                await conn.execute(
                    select(events.c.node, events.c.dev, events.c.detail, events.c.ts).join(
                        last,
                        and_(
                            events.c.node == last.c.node, events.c.dev == last.c.dev, events.c.ts == last.c.ts
                        ),
                    )
                )
            )
            .mappings()
            .all()
        )
        open_tickets = (
            (
                await conn.execute(
                    select(
                        tickets.c.id, tickets.c.node, tickets.c.kind, tickets.c.state, tickets.c.priority
                    ).where(tickets.c.open_key.is_not(None))
                )
            )
            .mappings()
            .all()
        )
    return OverviewRows(list(rows), list(active), list(acts), list(open_tickets))


# ------------------------------------------------------------------ from ingest


class NodeState(NamedTuple):
    """A node's state message (online, or its Will), as its row takes it."""

    online: bool
    boot: int
    received: int


async def node_states(conn: Conn, states: dict[str, NodeState]) -> None:
    """Nodes' state messages (node -> one state), one statement: a late one of an older boot
    changes nothing. A batch's several states of one node come as the last of its highest boot:
    the one that, applied one by one, would stand."""
    if not states:
        return
    rows = [
        {"node": n, "online": s.online, "boot": s.boot, "last_seen_ms": s.received}
        for n, s in sorted(states.items())
    ]
    stmt = insert_into(conn, nodes).values(rows)
    # A late offline Will of an older boot must not mark a newer boot offline.
    newer = stmt.excluded.boot >= nodes.c.boot
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["node"],
            set_={
                "online": stmt.excluded.online,
                "boot": stmt.excluded.boot,
                "last_seen_ms": stmt.excluded.last_seen_ms,
            },
            where=newer | nodes.c.boot.is_(None),
        )
    )


class Birth(NamedTuple):
    """What a birth writes: its node's row values and its devices' rows (without ``node``)."""

    values: dict[str, Any]
    devices: list[dict[str, Any]]


async def born(conn: Conn, births: dict[str, Birth]) -> None:
    """Births (node -> its birth): each node's row (which the batch has made) takes its values;
    each device (a ``devices`` row) is added, or its kind, model, unit and thresholds replaced.

    Two statements for them all (a city's edges all send a birth when they connect again, and a
    batch holds hundreds): the nodes' rows, and every device; a device named twice counts once,
    as its last."""
    if not births:
        return
    names = sorted(births)
    keys = list(births[names[0]].values)
    q = (
        update(nodes)
        .where(nodes.c.node == bindparam("b_node"))
        .values({k: bindparam(f"b_{k}") for k in keys})
    )
    await conn.execute(q, [{"b_node": n, **{f"b_{k}": births[n].values[k] for k in keys}} for n in names])
    rows = list({(n, dv["dev"]): {"node": n, **dv} for n in names for dv in births[n].devices}.values())
    if rows:
        stmt = insert_into(conn, devices).values(rows)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["node", "dev"],
                set_={k: stmt.excluded[k] for k in ("kind", "model", "unit", "thresholds")},
            )
        )


async def health(conn: Conn, by_node: dict[str, Any]) -> None:
    """What the nodes' heartbeats say of them (node -> the newest heartbeat's detail), one statement."""
    if by_node:
        q = update(nodes).where(nodes.c.node == bindparam("b_node")).values(health=bindparam("b_health"))
        await conn.execute(q, [{"b_node": n, "b_health": json.dumps(d)} for n, d in sorted(by_node.items())])


async def boots(conn: Conn, names: Collection[str]) -> dict[str, int | None]:
    """Each node's current boot, as its newest state or birth set it (None: none yet)."""
    q = select(nodes.c.node, nodes.c.boot).where(nodes.c.node.in_(list(names)))
    return {r.node: r.boot for r in (await conn.execute(q)).all()}
