"""No message can stop ingest: a batch the database refuses is split until the
refused messages are isolated; they become ``store_error`` dead letters and the
rest is stored, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import sqlite3
import uuid

import aiomqtt
import asyncpg
import paho.mqtt.client as paho
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from cloud.db.schema import alert_transitions, dead_letters, devices, messages, readings
from cloud.db.store import Store, _around, refusal
from cloud.ingest import Ingestor, Received
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer
from tests.cloud.test_collector import collecting, pubacks, scalar
from tests.cloud.test_ingest import birth, count, msg, telemetry
from tests.helpers import Mosquitto, wait_until


def alert(seq: Sequencer, reason: str, level: str = "warning", prev: str = "clear") -> Received:
    body = {"id": new_ulid(), "dev": "lvl-1", "kind": "flood", "level": level, "prev": prev, "ts": 5}
    return msg(seq, "alert", {"alert": {**body, "reason": reason}})


async def letters(store: Store) -> list[tuple[str, str, bytes]]:
    async with store.read() as conn:
        d = dead_letters.c
        q = select(d.code, d.detail, d.payload).order_by(d.id)
        return [(r.code, r.detail, r.payload) for r in await conn.execute(q)]


async def test_an_alert_reason_holding_nul_does_not_stop_the_batch(store: Store) -> None:
    """The issue's poison, which PostgreSQL's text cannot hold: the contract refuses it
    now, on both databases alike, and the rest of its batch is stored."""
    seq = Sequencer("hp-1", boot=1)
    poison = alert(seq, "water\u0000level")
    batch = [telemetry(seq), alert(seq, "rising"), poison, telemetry(seq), alert(seq, "fast")]
    ing = Ingestor(store)
    await ing.ingest(batch)
    assert await count(store, readings) == 6, "both telemetry messages stored"
    assert await letters(store) == [
        ("schema", "alert.reason: U+0000 (NUL) is not allowed in a string", poison.payload)
    ]
    assert await count(store, alert_transitions) == 2 and await count(store, messages) == 4
    assert ing.counters.by_reason == {"schema": 1}
    assert (ing.counters.received, ing.counters.stored) == (5, 4)
    # The dead letter is kept as received: replayed, it is refused again, and nothing else.
    await ing.ingest([poison, telemetry(seq)])
    assert await count(store, readings) == 9


POISON = -666.0  # a reading value the test's database refuses


async def refuse(store: Store, name: str, table: str, column: str, value: str) -> None:
    """Make the database itself refuse rows of ``table`` whose ``column`` is ``value`` (SQL):
    a CHECK constraint on PostgreSQL, a trigger on SQLite (a real refusal, not a mock)."""
    async with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            check = f"CHECK ({column} IS NULL OR {column} <> {value})"
            await conn.exec_driver_sql(f"ALTER TABLE {table} ADD CONSTRAINT {name} {check}")
        else:
            await conn.exec_driver_sql(
                f"CREATE TRIGGER {name} BEFORE INSERT ON {table} WHEN NEW.{column} = {value}"
                f" BEGIN SELECT RAISE(ABORT, '{name}: {column} refused'); END"
            )


async def refuse_poison(store: Store) -> None:
    """Readings of ``POISON`` refused by the database."""
    await refuse(store, "no_poison", "readings", "value", str(POISON))


def reading_of(seq: Sequencer, value: float) -> Received:
    r = {"dev": "lvl-1", "ts": 1000 + seq.next_seq, "metric": "depth_mm", "value": value, "quality": "good"}
    return msg(seq, "telemetry", {"readings": [r]})


@pytest.mark.parametrize("with_alert", [False, True], ids=["telemetry-only", "mixed"])
async def test_refused_messages_are_isolated_and_the_rest_stored(store: Store, with_alert: bool) -> None:
    """Telemetry alone (the store's one-go transaction) or mixed (SQLAlchemy's): the same."""
    await refuse_poison(store)
    seq = Sequencer("hp-1", boot=1)
    batch = [reading_of(seq, POISON if i in (3, 17) else float(i)) for i in range(20)]
    if with_alert:
        batch.insert(10, alert(seq, "rising"))
        batch.append(Received("floodgate/v1/hp-1/telemetry", b"{nope", 1))  # the contract's own
    batch.append(batch[0])  # a copy redelivered in the same batch: a duplicate, not stored twice
    ing = Ingestor(store)
    applied = await ing.ingest(batch)
    dead = await letters(store)
    refused = [(c, p) for c, _, p in dead if c == "store_error"]
    second = batch[18 if with_alert else 17]
    assert refused == [("store_error", batch[3].payload), ("store_error", second.payload)]
    assert all("no_poison" in d for c, d, _ in dead if c == "store_error")
    assert await count(store, readings) == 18 and await count(store, messages) == 18 + with_alert
    assert len(applied.alerts) == with_alert, "what committed is reported to whoever reacts"
    assert ing.counters.by_reason["store_error"] == 2 and ing.counters.batches_split > 0
    assert ing.counters.stored == 18 + with_alert and ing.counters.duplicates == 1
    async with store.read() as conn:
        values = [v for (v,) in await conn.execute(select(readings.c.value).order_by(readings.c.id))]
    assert values == [float(i) for i in range(20) if i not in (3, 17)], "in the order received"


@pytest.mark.parametrize("births", [False, True], ids=["telemetry-only", "with-a-birth"])
async def test_a_refused_reading_sets_apart_only_its_message_across_chunks(
    store: Store, births: bool
) -> None:
    """A batch of many chunks (``READINGS_CHUNK``), refused values in some: their messages
    alone are set apart, and a device's newest reading time is that of the messages kept."""
    await refuse_poison(store)
    seq = Sequencer("hp-1", boot=1)
    ing = Ingestor(store)
    await ing.ingest([birth(seq, "lvl-1", "lvl-2")])

    def readings_of(i: int) -> Received:
        values = [
            (f"lvl-{d}", POISON if (i, d) in ((0, 1), (410, 2), (599, 1)) else float(i)) for d in (1, 2)
        ]
        rs = [
            {"dev": d, "ts": 1000 + i, "metric": "depth_mm", "value": v, "quality": "good"} for d, v in values
        ]
        return msg(seq, "telemetry", {"readings": rs})

    batch = [readings_of(i) for i in range(600)]  # 1,200 rows: several chunks on SQLite
    if births:
        batch.insert(300, birth(seq, "lvl-1", "lvl-2"))
    await ing.ingest(batch)
    refused = [p for c, _, p in await letters(store) if c == "store_error"]
    assert refused == [batch[0].payload, batch[411 if births else 410].payload, batch[-1].payload]
    assert await count(store, readings) == 2 * 597
    await store.flush_heard()  # PostgreSQL writes telemetry's times after the batch
    async with store.read() as conn:
        times = dict((await conn.execute(select(devices.c.dev, devices.c.last_reading_ms))).all())
    assert times == {"lvl-1": 1000 + 598, "lvl-2": 1000 + 598}, "the refused newest reading moved nothing"
    assert ing.counters.stored == 1 + 597 + births and ing.counters.by_reason["store_error"] == 3


async def test_an_error_not_of_the_data_is_raised_not_dead_lettered(store: Store) -> None:
    """A database that cannot take anything (here a table gone) refuses no message:
    the batch fails whole, nothing is dead-lettered, and it is stored when redelivered."""
    seq = Sequencer("hp-1", boot=1)
    batch = [telemetry(seq), alert(seq, "rising")]
    ing = Ingestor(store)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE alert_transitions RENAME TO away")
    with pytest.raises(Exception, match="alert_transitions"):
        await ing.ingest(batch)
    async with store.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE away RENAME TO alert_transitions")
    assert await letters(store) == [] and ing.counters.batches_split == 0
    await ing.ingest(batch)
    assert await count(store, messages) == 2 and await letters(store) == []


async def test_refusal_tells_the_data_from_the_database() -> None:
    """Real errors of each kind, classified."""
    assert refusal(KeyError("tsunami")) == "KeyError: 'tsunami'", "a kind the code does not know"
    assert refusal(OverflowError("Python int too large to convert to SQLite INTEGER"))
    assert refusal(sqlite3.IntegrityError("NOT NULL constraint failed")) is not None
    assert refusal(sqlite3.OperationalError("database is locked")) is None
    assert refusal(ConnectionResetError()) is None and refusal(TimeoutError()) is None
    with pytest.raises(OSError, match=r"Connect call failed|refused") as lost:
        await asyncpg.connect("postgres://postgres@127.0.0.1:1/test", timeout=5)
    assert refusal(lost.value) is None


async def test_a_collector_rides_over_poison_and_acknowledges_everything(
    broker: Mosquitto, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the broker, with PostgreSQL's commits in flight: poison is dead-lettered,
    every later message stored, and every message acknowledged, in the order received."""
    sent = bytearray()
    send = paho.Client._sock_send
    client_id = f"col-poison-{uuid.uuid4().hex[:8]}"  # a session of its own: nothing queued before

    def recording_send(self: paho.Client, buf: bytes) -> int:
        n = send(self, buf)
        if self._client_id == client_id.encode():
            sent.extend(buf[:n])
        return n

    monkeypatch.setattr(paho.Client, "_sock_send", recording_send)
    store = Store(db_url)
    await store.migrate()
    await refuse_poison(store)
    await store.close()
    seq = Sequencer("hp-poison", boot=1)
    batch = [reading_of(seq, POISON if i % 50 == 7 else float(i)) for i in range(300)]
    batch.insert(150, alert(seq, "water\u0000level"))  # refused by the contract
    async with collecting(db_url, broker, client_id) as col:
        assert col.consumer.commits_in_flight == (3 if col.store.dialect == "postgresql" else 1)
        col.consumer.batch_max = 40
        async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=100) as c:
            for r in batch:
                await c.publish(r.topic, r.payload, qos=1)
        counters = col.ingestor.counters
        await wait_until(lambda: counters.stored + counters.dead_letters >= 301, 60, "every message settled")
        await wait_until(lambda: len(pubacks(sent)) == counters.received, 30, "every message acknowledged")
        acked = pubacks(sent)
        assert acked == sorted(acked), "acknowledged in the order received"
        assert (counters.by_reason["store_error"], counters.by_reason["schema"]) == (6, 1)
        assert counters.stored == 301 - counters.dead_letters
    assert await scalar(db_url, select(func.count()).select_from(readings)) == 294


@given(sizes=st.lists(st.integers(0, 4), min_size=2, max_size=20), row=st.integers(-1, 90))
def test_a_refused_batch_is_cut_into_parts_that_cover_it_once(sizes: list[int], row: int) -> None:
    """Around the reading PostgreSQL named, whatever it named (a wrong hint costs a try, never a message)."""
    units = [((f"m{i}",), [(i, j) for j in range(n)], {}) for i, n in enumerate(sizes)]
    parts = _around(units, row)
    assert [u for _, part in parts for u in part] == units
    assert all(units[start : start + len(part)] == part for start, part in parts)
    assert all(part for _, part in parts) and len(parts) >= 2
