"""Outgoing notifications, delivered at least once: recorded with the change, leased, retried."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from cloud.db.schema import notifications
from cloud.db.store import Conn, Row, Store


async def add(conn: Conn, rows: list[dict[str, Any]]) -> None:
    """Deliveries (``notifications`` rows) in ``conn``'s transaction: the one that made their events."""
    if rows:
        await conn.execute(notifications.insert(), rows)


async def due(store: Store, now: int, limit: int = 100) -> list[Row]:
    """Pending deliveries due by ``now``, the longest due first."""
    async with store.read() as conn:
        q = (
            select(notifications)
            .where(notifications.c.status == "pending", notifications.c.next_attempt_ms <= now)
            .order_by(notifications.c.next_attempt_ms)
            .limit(limit)
        )
        return list((await conn.execute(q)).mappings().all())


async def lease(store: Store, row: Row, until: int) -> bool:
    """Take delivery ``row`` until ``until``: False if another sender (a collector) took it first."""
    async with store.begin() as conn:
        won = await conn.execute(
            update(notifications)
            .where(
                notifications.c.id == row["id"],
                notifications.c.status == "pending",
                notifications.c.next_attempt_ms == row["next_attempt_ms"],
            )
            .values(next_attempt_ms=until)
        )
    return bool(won.rowcount == 1)


async def attempted(store: Store, delivery: str, values: dict[str, Any]) -> None:
    """The outcome of an attempt (attempts, status, next_attempt_ms, last_error, sent_ms)."""
    async with store.begin() as conn:
        await conn.execute(update(notifications).where(notifications.c.id == delivery).values(**values))


async def next_due(store: Store) -> int | None:
    """When the next pending delivery is due (ms), if any."""
    async with store.read() as conn:
        q = select(func.min(notifications.c.next_attempt_ms)).where(notifications.c.status == "pending")
        v = (await conn.execute(q)).scalar()
    return int(v) if v is not None else None
