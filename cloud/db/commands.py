"""Commands sent to nodes: recorded before they are published, answered or timed out."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from cloud.db.schema import commands
from cloud.db.store import Conn, Row, Store


async def add(store: Store, row: dict[str, Any]) -> None:
    """A command about to be published (a ``commands`` row), committed."""
    async with store.begin() as conn:
        await conn.execute(commands.insert().values(**row))


async def not_published(store: Store, cmd_id: str, reason: str, now: int) -> None:
    """A command the broker did not take: failed, unless it was answered meanwhile."""
    async with store.begin() as conn:
        await conn.execute(
            update(commands)
            .where(commands.c.cmd_id == cmd_id, commands.c.status == "sent")
            .values(status="failed", result_reason=reason, result_ms=now)
        )


async def get(store: Store, cmd_id: str) -> Row | None:
    async with store.read() as conn:
        return (await conn.execute(select(commands).where(commands.c.cmd_id == cmd_id))).mappings().first()


async def page(store: Store, node: str | None, limit: int, offset: int) -> tuple[int, list[Row]]:
    """Commands (of ``node``, or all), the newest first, and how many there are."""
    q = select(commands).order_by(commands.c.issued_ms.desc()).limit(limit).offset(offset)
    n = select(func.count()).select_from(commands)
    if node:
        q, n = q.where(commands.c.node == node), n.where(commands.c.node == node)
    async with store.read() as conn:
        total = int((await conn.execute(n)).scalar() or 0)
        rows = (await conn.execute(q)).mappings().all()
    return total, list(rows)


async def time_out(store: Store, now: int) -> int:
    """Commands still unanswered past their expiry, as timed out; returns how many."""
    async with store.begin() as conn:
        result = await conn.execute(
            update(commands)
            .where(commands.c.status == "sent", commands.c.expires_ms < now)
            .values(status="timeout", result_reason="no result before expiry", result_ms=now)
        )
    return int(result.rowcount or 0)


async def first_expiry(store: Store) -> int | None:
    """The earliest expiry of an unanswered command (ms), if any."""
    async with store.read() as conn:
        q = select(func.min(commands.c.expires_ms)).where(commands.c.status == "sent")
        v = (await conn.execute(q)).scalar()
    return int(v) if v is not None else None


async def answered(conn: Conn, node: str, cmd_id: str, status: str, reason: str | None, ts: int) -> None:
    """A node's result for one of its commands (a result after the timeout still counts)."""
    await conn.execute(
        update(commands)
        .where(commands.c.cmd_id == cmd_id, commands.c.node == node)
        .values(status=status, result_reason=reason, result_ms=ts)
    )
