"""comms_lost judged against how far the intake has taken in what the broker holds (issue 13).

On a city's backlog the collectors were six minutes behind: every node heard six minutes
ago looked silent, and one silence check opened thousands of comms_lost tickets in one
transaction that held the ticket lock every alert waits on, for minutes. A node whose
messages wait in the broker is late, not silent; and a check does its transitions a chunk
at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
from sqlalchemy import func, select

from cloud.consumer import Consumer
from cloud.db.schema import alerts, tickets
from cloud.db.store import Store
from cloud.ingest import Applied, CaughtUp, Ingestor, Received
from cloud.silence import Silence
from floodgate.broker import BrokerSettings
from floodgate.clock import ManualClock
from floodgate.wire import Sequencer
from tests.cloud.test_collectors import BIRTH, MIN, count, heard
from tests.cloud.test_ingest import msg
from tests.cloud.test_tickets import service
from tests.helpers import Mosquitto, wait_until


async def silent_after(store: Store, tmp_path: Path, nodes: int, prefix: str, **kw: Any) -> Silence:
    """A silence checker, and ``nodes`` nodes born and heard, then six minutes of nothing
    (silent after five)."""
    clock = ManualClock()
    t = service(store, tmp_path, clock)
    ingestor = Ingestor(store, t)
    silence = Silence(store, ingestor, t, clock, after_ms=5 * MIN, **kw)
    seqs = [Sequencer(f"{prefix}-{n}", boot=1) for n in range(nodes)]
    births = (msg(seq, "birth", BIRTH) for seq in seqs)
    await ingestor.ingest([Received(m.topic, m.payload, clock.now_ms()) for m in births])
    await ingestor.ingest([heard(seq, clock.now_ms()) for seq in seqs])
    clock.advance(6 * MIN)
    return silence


async def test_a_node_whose_messages_wait_in_the_intakes_backlog_is_late_not_silent(
    store: Store, tmp_path: Path
) -> None:
    behind: list[int | None] = [None]
    silence = await silent_after(store, tmp_path, 1, "hp-late", behind=lambda: behind[0])
    assert await silence.check() == [], "the intake has not caught up since it started: nothing judged"
    assert silence.held == 1
    behind[0] = 2 * MIN  # heard 6 min ago, but the intake is 2 min behind: 4 min of silence at most
    assert await silence.check() == []
    assert await count(store, select(func.count()).select_from(alerts)) == 0
    behind[0] = 0  # caught up, and still nothing from it: silent
    assert [e.action for e in await silence.check()] == ["open"]


async def test_a_thousand_silences_at_once_take_the_ticket_lock_a_chunk_at_a_time(
    store: Store, tmp_path: Path
) -> None:
    silence = await silent_after(store, tmp_path, 25, "hp-chunk", behind=lambda: 0, chunk=10)

    writes = 0
    begin = store.begin

    @contextlib.asynccontextmanager
    async def counted() -> AsyncIterator[object]:
        nonlocal writes
        writes += 1
        async with begin() as conn:
            yield conn

    store.begin = counted  # type: ignore[method-assign]
    opened = [e.action for e in await silence.check()]
    store.begin = begin  # type: ignore[method-assign]
    assert opened == ["open"] * 25
    assert writes == 3, "25 transitions in transactions of 10, 10 and 5"
    assert await count(store, select(func.count()).select_from(tickets)) == 25
    assert await silence.check() == [], "nothing more while they stay silent"


def test_caught_up_is_idle_only_while_ready_and_never_goes_back() -> None:
    ready = [False]
    c = CaughtUp(lambda: ready[0])
    assert c.behind_ms() is None
    c.idle = True
    assert c.behind_ms() is None, "waiting before the SUBACK: a persistent session's backlog may come"
    ready[0] = True
    assert c.behind_ms() == 0
    c.idle = False
    c.taken_to(1_000)
    c.taken_to(500)  # a batch that committed after a later one
    assert c.ms == 1_000


async def test_the_mqtt_intake_is_behind_while_its_sessions_backlog_comes_and_caught_up_once_idle(
    store: Store, broker: Mosquitto
) -> None:
    """Full batches from a persistent session's backlog: the broker holds more, so the intake has
    not caught up; once it waits with nothing in hand, subscribed, it has."""
    seen: list[int | None] = []

    async def record(_: Applied) -> None:
        seen.append(consumer.caught_up.behind_ms())

    def make() -> Consumer:
        settings = BrokerSettings(url=broker.url, reconnect_max_s=0.5)
        # A second to fill each batch: a loaded machine does not cut them short.
        return Consumer(
            settings, Ingestor(store), "col-behind", batch_max=50, batch_wait_s=1.0, on_applied=record
        )

    consumer = make()
    async with consuming(consumer):
        pass  # its persistent session, subscribed
    seq = Sequencer("hp-backlog", boot=1)
    async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=100) as c:
        for m in [msg(seq, "telemetry", {"readings": []}) for _ in range(400)]:
            await c.publish(m.topic, m.payload, qos=1)
    consumer = make()
    async with consuming(consumer):
        await wait_until(lambda: consumer.ingestor.counters.received >= 400, 30, "the backlog taken in")
        await wait_until(lambda: consumer.caught_up.behind_ms() == 0, 10, "idle, subscribed")
    assert seen[0] is None, "a full batch with more behind it: not caught up"


@contextlib.asynccontextmanager
async def consuming(consumer: Consumer) -> AsyncIterator[None]:
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(consumer.subscribed.is_set, 10, "subscribed")
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
