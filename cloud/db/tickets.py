"""Tickets, their timelines and their alerts: what the ticket service and its storm path read and write.

Every function but the reads takes the caller's connection: a ticket change
commits with what made it (an alert's batch, a person's action, an
escalation round), under ``Store.lock_tickets``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select, text, update

from cloud.db.schema import (
    alert_transitions,
    alerts,
    messages,
    nodes,
    ticket_alerts,
    ticket_timeline,
    tickets,
)
from cloud.db.store import Conn, Row, Store, for_update, insert_into


def entry(
    tid: str,
    ts: int,
    actor: str,
    action: str,
    frm: str | None,
    to: str | None,
    note: str | None,
    detail: Any,
) -> dict[str, Any]:
    """A ``ticket_timeline`` row."""
    return {
        "ticket_id": tid,
        "ts": ts,
        "actor": actor,
        "action": action,
        "from_state": frm,
        "to_state": to,
        "note": note,
        "detail": json.dumps(detail, ensure_ascii=False) if detail else None,
    }


# ------------------------------------------------------------------ one ticket


async def row(conn: Conn, ticket_id: str, lock: bool = False) -> Row | None:
    q = select(tickets).where(tickets.c.id == ticket_id)
    return (await conn.execute(for_update(conn, q) if lock else q)).mappings().first()


async def open_for(conn: Conn, node: str, kind: str) -> Row | None:
    """The ticket open for (node, kind), locked."""
    q = select(tickets).where(tickets.c.open_key == f"{node}/{kind}")
    return (await conn.execute(for_update(conn, q))).mappings().first()


async def closed_since(conn: Conn, node: str, kind: str, since: int) -> Row | None:
    """The (node, kind) ticket closed last, if at ``since`` or after, locked."""
    q = (
        select(tickets)
        .where(
            tickets.c.node == node,
            tickets.c.kind == kind,
            tickets.c.state == "closed",
            tickets.c.closed_ms >= since,
        )
        .order_by(tickets.c.closed_ms.desc())
        .limit(1)
    )
    return (await conn.execute(for_update(conn, q))).mappings().first()


async def site(conn: Conn, node: str) -> Row | None:
    """The node's row (name, place) a new ticket takes its title and place from."""
    return (await conn.execute(select(nodes).where(nodes.c.node == node))).mappings().first()


async def add(conn: Conn, values: dict[str, Any]) -> bool:
    """A new ticket; False if another writer holds its ``open_key`` already (nothing stored)."""
    q = (
        insert_into(conn, tickets)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["open_key"])
        .returning(tickets.c.id)
    )
    return (await conn.execute(q)).scalar() is not None


async def set_values(conn: Conn, ticket_id: str, values: dict[str, Any]) -> None:
    await conn.execute(update(tickets).where(tickets.c.id == ticket_id).values(**values))


async def move(conn: Conn, ticket_id: str, from_state: str, values: dict[str, Any]) -> bool:
    """Set ``values`` if the ticket is still in ``from_state``; False if another writer moved it."""
    result = await conn.execute(
        update(tickets).where(tickets.c.id == ticket_id, tickets.c.state == from_state).values(**values)
    )
    return bool(result.rowcount == 1)


async def log(conn: Conn, entry: dict[str, Any]) -> None:
    """A timeline entry (an ``entry`` row)."""
    await conn.execute(ticket_timeline.insert().values(**entry))


async def log_many(conn: Conn, entries: list[dict[str, Any]]) -> None:
    """Timeline entries (``entry`` rows) in one statement."""
    if entries:
        await conn.execute(ticket_timeline.insert(), entries)


# ------------------------------------------------------------------ alerts


async def linked(conn: Conn, alert_id: str) -> str | None:
    """The ticket episode ``alert_id`` belongs to, if any."""
    q = select(ticket_alerts.c.ticket_id).where(ticket_alerts.c.alert_id == alert_id)
    v = (await conn.execute(q)).scalar()
    return str(v) if v is not None else None


async def link_one(conn: Conn, alert_id: str, ticket_id: str) -> None:
    """An episode to its ticket, unless it is linked already."""
    q = (
        insert_into(conn, ticket_alerts)
        .values(alert_id=alert_id, ticket_id=ticket_id)
        .on_conflict_do_nothing(index_elements=["alert_id"])
    )
    await conn.execute(q)


async def link(conn: Conn, links: list[dict[str, Any]]) -> None:
    """Episodes to their tickets ({alert_id, ticket_id}); an episode linked already keeps its ticket."""
    if links:
        await conn.execute(
            insert_into(conn, ticket_alerts).on_conflict_do_nothing(index_elements=["alert_id"]), links
        )


async def move_alerts(conn: Conn, from_ticket: str, to_ticket: str) -> None:
    """The episodes of one ticket to another (a merge)."""
    await conn.execute(
        update(ticket_alerts).where(ticket_alerts.c.ticket_id == from_ticket).values(ticket_id=to_ticket)
    )


async def active_alerts(conn: Conn, ticket_id: str) -> int:
    """How many of the ticket's episodes are not clear."""
    q = (
        select(func.count())
        .select_from(ticket_alerts.join(alerts, alerts.c.id == ticket_alerts.c.alert_id))
        .where(ticket_alerts.c.ticket_id == ticket_id, alerts.c.level != "clear")
    )
    return int((await conn.execute(q)).scalar() or 0)


async def episode_transitions(conn: Conn, episodes: list[str]) -> list[Any]:
    """Every stored transition of ``episodes``, with its episode's node, device, kind and unit and
    its message's boot and seq (``machine.in_order`` walks them)."""
    t = alert_transitions
    q = (
        select(
            t.c.msg_id,
            t.c.alert_id,
            t.c.level,
            t.c.prev,
            t.c.value,
            t.c.ts,
            t.c.reason,
            t.c.eta_s,
            t.c.ticketed,
            t.c.held_ms,
            alerts.c.node,
            alerts.c.dev,
            alerts.c.kind,
            alerts.c.unit,
            messages.c.boot,
            messages.c.seq,
        )
        .select_from(
            t.join(alerts, alerts.c.id == t.c.alert_id).outerjoin(messages, messages.c.msg_id == t.c.msg_id)
        )
        .where(t.c.alert_id.in_(episodes))
    )
    return list((await conn.execute(q)).all())


async def mark_ticketed(conn: Conn, msg_ids: list[str]) -> None:
    if msg_ids:
        t = alert_transitions
        await conn.execute(update(t).where(t.c.msg_id.in_(msg_ids)).values(ticketed=True))


async def mark_held(conn: Conn, msg_ids: list[str], now: int) -> None:
    """Transitions found held for the first time: held since ``now``."""
    if msg_ids:
        t = alert_transitions
        await conn.execute(
            update(t).where(t.c.msg_id.in_(msg_ids), t.c.held_ms.is_(None)).values(held_ms=now)
        )


# The predicate of the ``alert_transitions_held`` index, as written there (so either database uses it).
_HELD = text("NOT alert_transitions.ticketed")


async def held_episodes(conn: Conn, since: int) -> list[str]:
    """The episodes with a transition held since ``since`` or earlier."""
    t = alert_transitions
    q = select(t.c.alert_id).distinct().where(_HELD, t.c.held_ms <= since).order_by(t.c.alert_id)
    return list((await conn.execute(q)).scalars())


async def first_held(store: Store) -> int | None:
    """When the longest-held transition was first found held, if any is."""
    t = alert_transitions
    async with store.read() as conn:
        got = (await conn.execute(select(func.min(t.c.held_ms)).where(_HELD))).scalar()
    return None if got is None else int(got)


# ------------------------------------------------------------------ the storm path


async def linked_of(conn: Conn, alert_ids: list[str]) -> set[str]:
    """Which of ``alert_ids`` are linked to a ticket already."""
    q = select(ticket_alerts.c.alert_id).where(ticket_alerts.c.alert_id.in_(alert_ids))
    return set((await conn.execute(q)).scalars())


async def busy(conn: Conn, node_names: list[str], closed_since: int) -> set[tuple[str, str]]:
    """(node, kind) of ``node_names`` with a ticket open, or closed at ``closed_since`` or after."""
    q = select(tickets.c.node, tickets.c.kind).where(
        tickets.c.node.in_(node_names),
        or_(
            tickets.c.open_key.is_not(None),
            and_(tickets.c.state == "closed", tickets.c.closed_ms >= closed_since),
        ),
    )
    return {(r.node, r.kind) for r in (await conn.execute(q)).all()}


async def sites(conn: Conn, node_names: list[str]) -> dict[str, Row]:
    q = select(nodes).where(nodes.c.node.in_(node_names))
    return {r["node"]: r for r in (await conn.execute(q)).mappings()}


async def add_many(conn: Conn, rows: list[dict[str, Any]]) -> set[str]:
    """New tickets in one statement; returns the ids stored (a row whose ``open_key`` another
    writer holds is not)."""
    stmt = (
        insert_into(conn, tickets).on_conflict_do_nothing(index_elements=["open_key"]).returning(tickets.c.id)
    )
    return set((await conn.execute(stmt, rows)).scalars())


# ------------------------------------------------------------------ escalation


async def next_check(store: Store, states: Collection[str]) -> int | None:
    """The earliest deadline check of a ticket in ``states``."""
    async with store.read() as conn:
        q = select(func.min(tickets.c.next_check_ms)).where(tickets.c.state.in_(list(states)))
        v = (await conn.execute(q)).scalar()
        return int(v) if v is not None else None


async def checks_due(conn: Conn, now: int, states: Collection[str]) -> list[Row]:
    """Tickets in ``states`` whose check is due by ``now``, the longest due first, locked."""
    q = (
        select(tickets)
        .where(tickets.c.next_check_ms <= now, tickets.c.state.in_(list(states)))
        .order_by(tickets.c.next_check_ms)
    )
    return list((await conn.execute(for_update(conn, q))).mappings().all())


async def escalated(conn: Conn, t: Row, values: dict[str, Any]) -> bool:
    """Set ``values`` if the ticket's escalation and state are still ``t``'s; False if they moved."""
    result = await conn.execute(
        update(tickets)
        .where(
            tickets.c.id == t["id"],
            tickets.c.escalation == t["escalation"],
            tickets.c.state == t["state"],
        )
        .values(**values)
    )
    return bool(result.rowcount == 1)


# ------------------------------------------------------------------ reads


async def with_timeline(store: Store, ticket_id: str) -> tuple[Row, list[Row], list[Row]] | None:
    """A ticket, its timeline in order and its alert episodes by start."""
    async with store.read() as conn:
        t = await row(conn, ticket_id)
        if t is None:
            return None
        timeline = (
            (
                await conn.execute(
                    select(ticket_timeline)
                    .where(ticket_timeline.c.ticket_id == ticket_id)
                    .order_by(ticket_timeline.c.id)
                )
            )
            .mappings()
            .all()
        )
        episodes = (
            (
                await conn.execute(
                    select(alerts)
                    .join(ticket_alerts, ticket_alerts.c.alert_id == alerts.c.id)
                    .where(ticket_alerts.c.ticket_id == ticket_id)
                    .order_by(alerts.c.first_ts)
                )
            )
            .mappings()
            .all()
        )
    return t, list(timeline), list(episodes)


def _overdue(now: int, deadline_states: Collection[str]) -> ColumnElement[bool]:
    return or_(
        and_(tickets.c.state == "open", tickets.c.dispatch_due_ms < now),
        and_(tickets.c.state == "dispatched", tickets.c.accept_due_ms < now),
        and_(tickets.c.state.in_([s for s in deadline_states if s != "open"]), tickets.c.handle_due_ms < now),
    )


async def page(
    store: Store,
    *,
    state: Sequence[str],
    unit: str | None,
    node: str | None,
    kind: str | None,
    overdue: bool | None,
    now: int,
    deadline_states: Collection[str],
    limit: int,
    offset: int,
) -> tuple[int, list[Row]]:
    """Tickets that match, the newest first, and how many match (``overdue``: a deadline passed at
    ``now``, as ``machine.is_overdue`` says)."""
    cond: list[ColumnElement[bool]] = []
    if state:
        cond.append(tickets.c.state.in_(list(state)))
    if unit:
        cond.append(tickets.c.unit == unit)
    if node:
        cond.append(tickets.c.node == node)
    if kind:
        cond.append(tickets.c.kind == kind)
    if overdue is not None:
        o = _overdue(now, deadline_states)
        cond.append(o if overdue else ~o)
    where = and_(*cond) if cond else None
    q = select(tickets).order_by(tickets.c.created_ms.desc(), tickets.c.id.desc()).limit(limit).offset(offset)
    n = select(func.count()).select_from(tickets)
    if where is not None:
        q, n = q.where(where), n.where(where)
    async with store.read() as conn:
        total = int((await conn.execute(n)).scalar() or 0)
        rows = (await conn.execute(q)).mappings().all()
    return total, list(rows)


# ------------------------------------------------------------------ forecasts and times


async def forecast_only(conn: Conn, ticket_ids: Collection[str], forecast_kinds: Collection[str]) -> set[str]:
    """Of ``ticket_ids``, those whose alert episodes are all forecasts (and there is one):
    no measured alert has joined them."""
    if not ticket_ids:
        return set()
    ta, kinds = ticket_alerts, list(forecast_kinds)
    q = (
        select(ta.c.ticket_id)
        .select_from(ta.join(alerts, alerts.c.id == ta.c.alert_id))
        .where(ta.c.ticket_id.in_(list(ticket_ids)))
        .group_by(ta.c.ticket_id)
        .having(func.sum(case((alerts.c.kind.in_(kinds), 0), else_=1)) == 0)
    )
    return {str(r[0]) for r in (await conn.execute(q)).all()}


async def prediction(conn: Conn, ticket_id: str, forecast_kinds: Collection[str]) -> Row | None:
    """The latest rise or update of the ticket's forecast episodes (not a clear): its level, the
    threshold, when it was made (``ts``) and how long until the level is expected (``eta_s``),
    the predicted peak (``value``), how likely (``probability``), and its episode's level now
    and device (``dev``: the collector's rainfall model, or the node's own forecast)."""
    t = alert_transitions
    q = (
        select(
            t.c.alert_id,
            t.c.level,
            t.c.value,
            t.c.threshold,
            t.c.ts,
            t.c.eta_s,
            t.c.probability,
            alerts.c.level.label("episode_level"),
            alerts.c.dev,
        )
        .select_from(
            t.join(alerts, alerts.c.id == t.c.alert_id).join(
                ticket_alerts, ticket_alerts.c.alert_id == t.c.alert_id
            )
        )
        .where(
            ticket_alerts.c.ticket_id == ticket_id,
            alerts.c.kind.in_(list(forecast_kinds)),
            t.c.level != "clear",
        )
        .order_by(t.c.ts.desc(), t.c.msg_id.desc())
        .limit(1)
    )
    return (await conn.execute(q)).mappings().first()


async def received_times(store: Store, ticket_id: str) -> dict[tuple[str, str, str, int], int]:
    """When the collector received each alert transition of the ticket's episodes, by (alert id,
    level, prev, time at the edge): the time its message arrived. Transitions the collector made
    itself (a forecast, a silence, a reconciled episode) came in no message and are not here."""
    t = alert_transitions
    q = (
        select(t.c.alert_id, t.c.level, t.c.prev, t.c.ts, messages.c.received_ms)
        .select_from(
            t.join(ticket_alerts, ticket_alerts.c.alert_id == t.c.alert_id).join(
                messages, messages.c.msg_id == t.c.msg_id
            )
        )
        .where(ticket_alerts.c.ticket_id == ticket_id)
    )
    async with store.read() as conn:
        found = (await conn.execute(q)).all()
    return {(str(a), str(lvl), str(p), int(ts)): int(r) for a, lvl, p, ts, r in found}


async def forecast_of(
    store: Store, ticket_ids: Collection[str], forecast_kinds: Collection[str], one: str | None = None
) -> tuple[set[str], Row | None]:
    """``forecast_only`` of ``ticket_ids`` and, for ticket ``one``, its ``prediction``."""
    async with store.read() as conn:
        only = await forecast_only(conn, ticket_ids, forecast_kinds)
        pred = await prediction(conn, one, forecast_kinds) if one is not None else None
    return only, pred
