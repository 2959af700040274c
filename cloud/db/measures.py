"""What the office's measures are counted from: tickets by dispatch time, episodes by start, the
highest readings of flood episodes."""

from __future__ import annotations

from sqlalchemy import and_, func, select

from cloud.db.schema import alerts, named_readings, readings_1m, tickets
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


async def depth_peaks(
    store: Store, windows: list[tuple[str, str, int, int]], metric: str = "depth_mm"
) -> list[float | None]:
    """The highest reading of each (node, dev, lo, hi) window (ms, both ends included).

    From the raw readings (a faulted sensor's ``bad`` ones left out); where
    retention has removed them, from the one-minute maxima of the minutes the
    window touches.
    """
    nr, a = named_readings, readings_1m.c
    out: list[float | None] = []
    async with store.read() as conn:
        for node, dev, lo, hi in windows:
            raw = select(func.max(nr.c.value)).where(
                nr.c.node == node,
                nr.c.dev == dev,
                nr.c.metric == metric,
                nr.c.ts >= lo,
                nr.c.ts <= hi,
                nr.c.quality != "bad",
            )
            peak = (await conn.execute(raw)).scalar()
            if peak is None:
                rolled = select(func.max(a.vmax)).where(
                    a.node == node,
                    a.dev == dev,
                    a.metric == metric,
                    a.minute >= lo // 60_000 * 60_000,
                    a.minute <= hi,
                )
                peak = (await conn.execute(rolled)).scalar()
            out.append(float(peak) if peak is not None else None)
    return out
