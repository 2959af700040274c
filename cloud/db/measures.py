"""What the office's measures are counted from: tickets by dispatch time, episodes by start."""

from __future__ import annotations

from sqlalchemy import and_, select

from cloud.db.schema import alerts, tickets
from cloud.db.store import Row, Store


async def tickets_dispatched(store: Store, lo: int, hi: int) -> list[Row]:
    """Tickets dispatched in [lo, hi) (ms)."""
    q = select(tickets).where(and_(tickets.c.dispatched_ms >= lo, tickets.c.dispatched_ms < hi))
    async with store.read() as conn:
        return list((await conn.execute(q)).mappings().all())


async def episodes_begun(store: Store, lo: int, hi: int) -> list[Row]:
    """Alert episodes whose first transition is in [lo, hi) (ms)."""
    q = select(alerts).where(and_(alerts.c.first_ts >= lo, alerts.c.first_ts < hi))
    async with store.read() as conn:
        return list((await conn.execute(q)).mappings().all())
