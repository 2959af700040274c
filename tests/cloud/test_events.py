"""The post-commit event bus: subscribers by event type, after or with the commit."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud.db.store import Store
from cloud.events import Bus, CommandSent, TicketsChanged
from cloud.tickets import TicketEvent

EV = TicketEvent("01JD0000000000000000000001", "open", "system", 1, "open", "u", "danger", "n", "flood", "t")


async def test_subscribers_hear_their_type_and_a_failing_one_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = Bus()
    heard: list[object] = []

    def broken(_: TicketsChanged) -> None:
        raise RuntimeError("boom")

    async def later(e: TicketsChanged) -> None:
        heard.append(e)

    bus.subscribe(TicketsChanged, broken)
    bus.subscribe(TicketsChanged, later)
    bus.subscribe(CommandSent, heard.append)
    await bus.publish(TicketsChanged([EV]))
    await bus.publish(CommandSent("c1", 5))
    assert heard == [TicketsChanged([EV]), CommandSent("c1", 5)]
    assert any("TicketsChanged" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


async def test_a_with_commit_subscriber_writes_in_the_changes_transaction(store: Store) -> None:
    bus = Bus()

    async def record(conn: AsyncConnection, e: TicketsChanged) -> None:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS seen (n INTEGER)"))
        await conn.execute(text("INSERT INTO seen (n) VALUES (:n)"), {"n": len(e.events)})

    bus.with_commit(TicketsChanged, record)

    async def failing_change() -> None:
        async with store.engine.begin() as conn:
            await bus.record(conn, TicketsChanged([EV]))
            raise RuntimeError("the change fails")

    with pytest.raises(RuntimeError):
        await failing_change()
    async with store.engine.begin() as conn:
        await bus.record(conn, TicketsChanged([EV, EV]))  # its row commits with the change
    async with store.read() as conn:
        assert (await conn.execute(text("SELECT n FROM seen"))).scalars().all() == [2]
