"""The tickets' SQL that is more than one statement's worth: rows built, queries shared."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db.schema import alert_transitions, alerts, messages, tickets
from cloud.registry import Registry
from cloud.tickets.machine import title
from floodgate.ids import new_ulid
from floodgate.vocab import DEADLINE_STATES


def new_row(registry: Registry, node: str, kind: str, priority: str, site: Any, now: int) -> dict[str, Any]:
    """A new open ticket, routed; every column set. ``site``: the node's row, if any."""
    dept, unit = registry.route(node, kind)
    return {
        "id": new_ulid(now),
        "node": node,
        "kind": kind,
        "title": title(registry, kind, node, site["site_name"] if site is not None else None),
        "state": "open",
        "priority": priority,
        "department": dept,
        "unit": unit,
        "open_key": f"{node}/{kind}",
        "created_ms": now,
        "updated_ms": now,
        "dispatched_ms": None,
        "accept_due_ms": None,
        "handle_due_ms": None,
        "next_check_ms": None,
        "escalation": 0,
        "escalations": 0,
        "reopened": 0,
        "last_alert_id": None,
        "lat": site["lat"] if site is not None else None,
        "lon": site["lon"] if site is not None else None,
    }


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


async def episode_transitions(conn: AsyncConnection, episodes: list[str]) -> list[Any]:
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
            t.c.ticketed,
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


async def mark_ticketed(conn: AsyncConnection, msg_ids: list[str]) -> None:
    if msg_ids:
        t = alert_transitions
        await conn.execute(update(t).where(t.c.msg_id.in_(msg_ids)).values(ticketed=True))


def overdue_clause(now: int) -> Any:
    return or_(
        and_(tickets.c.state == "dispatched", tickets.c.accept_due_ms < now),
        and_(tickets.c.state.in_(DEADLINE_STATES), tickets.c.handle_due_ms < now),
    )
