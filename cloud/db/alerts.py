"""Alert episodes and their transitions as ingest (and the silence checker) records them."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import case, func, select

from cloud.db.schema import alert_transitions, alerts, messages
from cloud.db.store import Conn, Row, greatest, insert_into
from floodgate.vocab import LEVEL_RANK

_upserts: dict[str, Any] = {}  # the episodes' upsert, built once per dialect


def _case(cond: Any, yes: Any, no: Any) -> Any:
    return case((cond, yes), else_=no)


def _rank(col: Any) -> Any:
    return case(LEVEL_RANK, value=col, else_=0)


def _upsert(conn: Conn) -> Any:
    dialect = conn.dialect.name
    if dialect not in _upserts:
        stmt = insert_into(conn, alerts)
        later = stmt.excluded.last_ts >= alerts.c.last_ts
        _upserts[dialect] = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={
                # Transitions may arrive out of order: the latest one sets the level.
                "level": _case(later, stmt.excluded.level, alerts.c.level),
                "last_ts": greatest(dialect, alerts.c.last_ts, stmt.excluded.last_ts),
                "first_ts": -greatest(dialect, -alerts.c.first_ts, -stmt.excluded.first_ts),
                "peak_value": greatest(dialect, alerts.c.peak_value, stmt.excluded.peak_value),
                "max_level": _case(
                    _rank(stmt.excluded.max_level) > _rank(alerts.c.max_level),
                    stmt.excluded.max_level,
                    alerts.c.max_level,
                ),
            },
        )
    return _upserts[dialect]


async def record(conn: Conn, episodes: list[dict[str, Any]], transitions: list[dict[str, Any]]) -> None:
    """Episodes upserted (an ``alerts`` row per transition: the episode as that transition alone
    would make it) and transitions stored (``alert_transitions`` rows), one statement each."""
    await conn.execute(_upsert(conn), episodes)
    await conn.execute(alert_transitions.insert(), transitions)


async def active(conn: Conn, nodes: Collection[str], exclude: Collection[str] = ()) -> list[Row]:
    """The episodes of ``nodes`` not clear (but of the kinds in ``exclude``): ``id``, ``node``,
    ``dev``, ``kind``, ``level``, ``last_ts`` and ``boot``, the newest boot among the messages that
    carried its transitions (None when only the collector's own transitions made it: raised by
    the collector, or opened from a node's report by ``cloud.reconcile``)."""
    if not nodes:
        return []
    t = alert_transitions
    boot = (
        select(func.max(messages.c.boot))
        .select_from(t.join(messages, messages.c.msg_id == t.c.msg_id))
        .where(t.c.alert_id == alerts.c.id)
        .scalar_subquery()
    )
    q = (
        select(alerts.c.id, alerts.c.node, alerts.c.dev, alerts.c.kind, alerts.c.level, alerts.c.last_ts)
        .add_columns(boot.label("boot"))
        .where(alerts.c.level != "clear", alerts.c.node.in_(list(nodes)))
        .order_by(alerts.c.node, alerts.c.id)
    )
    if exclude:
        q = q.where(alerts.c.kind.not_in(list(exclude)))
    return list((await conn.execute(q)).mappings().all())


async def known(conn: Conn, ids: Collection[str]) -> set[str]:
    """Which of ``ids`` are episodes the collector has (any level)."""
    if not ids:
        return set()
    q = select(alerts.c.id).where(alerts.c.id.in_(list(ids)))
    return set((await conn.execute(q)).scalars().all())
