"""Ingest benchmark: a bare MQTT subscriber's receive rate vs the collector's stored rate.

For each consumer the same backlog of N telemetry messages (10 readings each)
is published to a real mosquitto while the consumer's persistent session is
offline; then the consumer connects and the time until it has received (bare
subscriber) or committed (collector) all N is measured. The bare subscriber
(aiomqtt's message iterator, the plain way to subscribe in asyncio) is the
baseline, run in the same process; the ratio is stored rate / receive rate.
The collector runs with SQLite and with PostgreSQL. Also printed, not the
baseline: the collector's own receive path storing nothing, which is leaner
than aiomqtt's iterator.

    .venv/bin/python bench/ingest.py [--messages 20000] [--runs 3]

Target (issue 3): ratio >= 0.8.

Also with poison, one message in 1,000 (target, issue 15: within 10 % of
the clean rate), of two kinds:
- "contract": an alert whose ``reason`` holds U+0000, the issue's poison,
  which PostgreSQL's text cannot hold; the contract refuses it at decode;
- "database": a telemetry message that passes the contract and that the
  database refuses (a reading value a CHECK constraint, or a trigger on
  SQLite, forbids); the collector splits its batch to set it aside as a
  ``store_error`` dead letter and stores the rest.
The rate is of messages stored or set aside.

Part (c), alert -> ticket latency: from the moment an alert is handed to the
MQTT client to the moment the collector has committed the ticket it opened
(its ticket listener fires after the commit). Idle: one alert at a time.
Burst: 1,000 nodes alert within 10 s (evenly paced). Targets: p99 <= 200 ms
idle, <= 1 s in the burst, with SQLite and with PostgreSQL.

    .venv/bin/python bench/ingest.py --part latency [--burst-nodes 1000 --burst-s 10]

Part (d), the store alone (``--part store``): one batch of 500 telemetry
messages committed through the ingestor (no broker), clean and with one
database poison, alternately, ``--store-rounds`` times each, on SQLite and
PostgreSQL. Printed: the median time of each, the mean CPU each took (this
process and the database's backends: a figure the other work on a shared
machine moves far less than the time) and the stored rate with one poison per
1,000 (every other batch poisoned) against the clean rate, from each.

    .venv/bin/python bench/ingest.py --part store [--store-rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud import paho_internals
from cloud.collector import Collector
from cloud.config import CloudConfig
from cloud.db.schema import messages
from cloud.db.store import Store
from cloud.events import TicketsChanged
from cloud.ingest import Ingestor, Received
from cloud.receive import Intake
from floodgate import mqtt
from floodgate.broker import BrokerSettings
from floodgate.ids import new_ulid, now_ms
from floodgate.runner import tune_for_service
from floodgate.wire import Sequencer
from tests.helpers import Mosquitto, wait_until

PG_ADMIN = "postgres://postgres@127.0.0.1:5432/test"


POISON = -666.0  # a reading value the bench's databases refuse (``refuse_poison``)


def backlog(node: str, n: int, poison: str = "") -> list[tuple[str, bytes]]:
    """N telemetry messages (topic, payload); with ``poison`` ("contract" or
    "database"), one in 1,000 of that kind (``POISONS``) in their place."""
    seq = Sequencer(node, boot=1)
    # Readings of the last n seconds: older than the raw retention, the
    # collector's retention job would be rolling them up and deleting them.
    start = now_ms() - n * 1000
    out = []
    for i in range(n):
        readings = [
            {
                "dev": f"lvl-{k}",
                "ts": start + i * 1000,
                "metric": "depth_mm",
                "value": POISON if poison == "database" and k == 5 and i in POISONED else float(k),
                "quality": "good",
            }
            for k in range(10)
        ]
        topic, body = f"floodgate/v1/{node}/telemetry", dict[str, Any](readings=readings)
        if poison == "contract" and i in POISONED:
            alert = {"id": new_ulid(), "dev": "lvl-1", "kind": "flood", "level": "warning", "prev": "clear"}
            topic, body = (
                f"floodgate/v1/{node}/alert",
                {"alert": {**alert, "ts": start, "reason": "a\u0000b"}},
            )
        out.append((topic, json.dumps({**seq.envelope(), **body}).encode()))
    return out


POISONS = ("contract", "database")
POISONED = range(500, 10**9, 1000)  # which messages are poison: one in 1,000


async def publish(broker: Mosquitto, payloads: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=500) as c:
        for i in range(0, len(payloads), 500):  # in chunks: aiomqtt warns past 10 pending calls per call
            chunk = payloads[i : i + 500]
            await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in chunk))


async def drop_session(broker: Mosquitto, cid: str) -> None:
    """End a persistent session: left behind, it would have the broker queue every
    later run's messages for it too (the collector's subscriptions are wildcards),
    and runs would get slower one after another."""
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=cid, clean_session=True):
        pass


async def bare_subscriber(broker: Mosquitto, n: int, payloads: list[tuple[str, bytes]], node: str) -> float:
    cid = f"bare-{uuid.uuid4().hex[:6]}"
    topic = f"floodgate/v1/{node}/telemetry"
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier=cid, clean_session=False) as c:
        await c.subscribe(topic, qos=1)
    await publish(broker, payloads)
    got = 0
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=cid, clean_session=False, max_queued_incoming_messages=0
    ) as c:
        t0 = time.monotonic()  # from the CONNACK, as for the collector
        async for _ in c.messages:
            got += 1
            if got == n:
                break
        took = time.monotonic() - t0
    await drop_session(broker, cid)
    return took


async def intake_subscriber(broker: Mosquitto, n: int, payloads: list[tuple[str, bytes]], node: str) -> float:
    """The collector's own receive path (its client, ``Intake``, PUBACK per batch) storing nothing.

    Not the baseline: printed so that what storing costs the collector can be
    read off against its own way of receiving too.
    """
    cid = f"intake-{uuid.uuid4().hex[:6]}"
    topic = f"floodgate/v1/{node}/telemetry"

    def make() -> aiomqtt.Client:
        c = mqtt.client(
            BrokerSettings(url=broker.url),
            identifier=cid,
            will_topic="bench/will",
            will_payload=b"",
            persistent=True,
        )
        paho_internals.manual_acks(c)
        return c

    async with make() as c:
        await c.subscribe(topic, qos=1)
    await publish(broker, payloads)
    c = make()
    intake = Intake(c)
    got = 0
    async with c:
        t0 = time.monotonic()  # from the CONNACK
        while got < n:
            await intake.wait()
            batch = intake.take(500)
            intake.ack(batch)
            got += len(batch)
        took = time.monotonic() - t0
    await drop_session(broker, cid)
    return took


async def refuse_poison(store: Store) -> None:
    """The database itself refuses a reading of ``POISON`` (a CHECK constraint, a trigger):
    a message that passes the contract and fails its batch, a poison message."""
    async with store.engine.begin() as conn:
        if store.dialect == "postgresql":
            await conn.exec_driver_sql("ALTER TABLE readings DROP CONSTRAINT IF EXISTS bench_poison")
            await conn.exec_driver_sql(
                f"ALTER TABLE readings ADD CONSTRAINT bench_poison CHECK (value <> {POISON})"
            )
        else:
            await conn.exec_driver_sql(
                "CREATE TRIGGER IF NOT EXISTS bench_poison BEFORE INSERT ON readings"
                f" WHEN NEW.value = {POISON} BEGIN SELECT RAISE(ABORT, 'poison'); END"
            )


async def collector(
    broker: Mosquitto, n: int, payloads: list[tuple[str, bytes]], node: str, db_url: str, protocol: str
) -> float:
    """The time to store (or set aside) a backlog of ``n`` messages."""
    cid = f"col-{uuid.uuid4().hex[:6]}"
    settings = BrokerSettings(url=broker.url, protocol=protocol)
    col = Collector(CloudConfig(database=db_url, client_id=cid, api=None), settings)
    task = asyncio.create_task(col.run())  # create the schema and the persistent session
    await asyncio.wait_for(col.consumer.subscribed.wait(), 30)
    task.cancel()
    await asyncio.wait({task})
    store = Store(db_url)
    await refuse_poison(store)  # clean runs too: the same database, the same check on each row
    await publish(broker, payloads)
    col = Collector(CloudConfig(database=db_url, client_id=cid, api=None), settings)
    task = asyncio.create_task(col.run())
    try:
        # Committed: its ingest counter moves after each transaction commits.
        c = col.ingestor.counters
        await wait_until(
            lambda: c.stored + c.dead_letters >= n, 300, "the backlog stored or dead-lettered", every=0.005
        )
        done = time.monotonic()
        async with store.engine.connect() as conn:
            stored = (
                await conn.execute(select(func.count()).select_from(messages).where(messages.c.node == node))
            ).scalar() or 0
        poisoned = sum(b"a\\u0000b" in p or f"{POISON}".encode() in p for _, p in payloads)
        assert stored == n - poisoned, f"{stored} of {n - poisoned} messages in the database"
        assert c.dead_letters == poisoned, f"{c.dead_letters} of {poisoned} set aside"
        print(f"    ({c.received / max(col.consumer.batches, 1):.0f} messages per batch)", file=sys.stderr)
        # From the CONNACK, as for the bare subscriber: not the collector's start-up.
        return done - col.consumer.connected_at
    finally:
        task.cancel()
        await asyncio.wait({task})
        await store.close()
        await drop_session(broker, cid)


def backend_cpu_s(pids: list[int]) -> float:
    """CPU seconds the database's backends ``pids`` have used (Linux /proc)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError):
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def store_rates(url: str, rounds: int) -> None:
    """Part (d) for one database: clean and poisoned batches of 500, alternately."""
    store = Store(url)
    await store.migrate()
    await refuse_poison(store)
    ing = Ingestor(store)
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    admin = await asyncpg.connect(PG_ADMIN) if store.dialect == "postgresql" else None
    try:
        for k in range(rounds):
            for poisoned in (False, True):
                node = f"store-{k}-{int(poisoned)}-{uuid.uuid4().hex[:4]}"
                # 500 messages; poisoned, the 500th of the 1,000 (``POISONED``) is among them.
                msgs = backlog(node, 1000, poison="database")[250:750] if poisoned else backlog(node, 500)
                batch = [Received(topic, payload, now_ms()) for topic, payload in msgs]
                await ing.ingest(batch[:1])  # its series named: not what is measured
                prepared = ing.prepare(batch[1:])
                pids: list[int] = []
                if admin is not None:
                    q = "SELECT pid FROM pg_stat_activity WHERE datname = $1"
                    pids = [r[0] for r in await admin.fetch(q, url.rsplit("/", 1)[1])]
                c0, t0 = time.process_time() + backend_cpu_s(pids), time.perf_counter()
                await ing.commit(prepared)
                wall[poisoned].append((time.perf_counter() - t0) * 1000)
                cpu[poisoned].append((time.process_time() + backend_cpu_s(pids) - c0) * 1000)
    finally:
        if admin is not None:
            await admin.close()
        await store.close()
    assert ing.counters.by_reason["store_error"] == rounds, ing.counters.by_reason
    name = "SQLite" if store.dialect == "sqlite" else "PostgreSQL"
    for what, values, mid in (("time", wall, statistics.median), ("CPU", cpu, statistics.mean)):
        clean, poisoned = mid(values[False]), mid(values[True])
        print(
            f"  {name:<11} {what:<5} clean {clean:6.1f} ms  poisoned {poisoned:6.1f} ms"
            f"  -> with poison / clean {2 / (1 + poisoned / clean):5.2f}"
        )


async def store_main(args: argparse.Namespace) -> None:
    print(
        f"store alone: batches of 500 messages x 10 readings, {args.store_rounds} rounds, clean and poisoned"
    )
    admin = await asyncpg.connect(PG_ADMIN)
    pg_db = f"fg_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{pg_db}"')
    try:
        await store_rates(
            f"sqlite:///{Path(tempfile.mkdtemp(prefix='floodgate-bench-store-')) / 's.db'}", args.store_rounds
        )
        await store_rates(f"postgresql://postgres@127.0.0.1:5432/{pg_db}", args.store_rounds)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
        await admin.close()
    print("  time: medians; CPU: means, this process and the database's backends; target: >= 0.90")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def alert_payload(node: str, now_ms: int) -> bytes:
    seq = Sequencer(node, boot=1)
    alert = {
        "id": new_ulid(),
        "dev": "lvl-1",
        "kind": "flood",
        "level": "danger",
        "prev": "clear",
        "ts": now_ms,
    }
    return json.dumps({**seq.envelope(now_ms), "alert": alert}).encode()


async def alert_latency(
    broker: Mosquitto, db_url: str, idle_n: int, burst_n: int, burst_s: float
) -> tuple[list[float], list[float]]:
    cid = f"lat-{uuid.uuid4().hex[:6]}"
    col = Collector(CloudConfig(database=db_url, client_id=cid, api=None), BrokerSettings(url=broker.url))
    opened: dict[str, float] = {}
    changed = asyncio.Event()

    async def listener(tickets_changed: TicketsChanged) -> None:
        t = time.time() * 1000
        for e in tickets_changed.events:
            if e.action == "open":
                opened[e.node] = t
        changed.set()

    col.bus.subscribe(TicketsChanged, listener)
    task = asyncio.create_task(col.run())
    tag = uuid.uuid4().hex[:6]
    try:
        await asyncio.wait_for(col.consumer.subscribed.wait(), 30)

        async def until(cond: Any, limit_s: float) -> None:
            async with asyncio.timeout(limit_s):
                while not cond():
                    changed.clear()
                    await changed.wait()

        sent: dict[str, float] = {}
        async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=1000) as c:
            idle_nodes = [f"idle-{tag}-{i}" for i in range(idle_n)]
            for node in idle_nodes:
                sent[node] = time.time() * 1000
                await c.publish(f"floodgate/v1/{node}/alert", alert_payload(node, int(sent[node])), qos=1)
                await until(lambda node=node: node in opened, 10)
            burst_nodes = [f"burst-{tag}-{i}" for i in range(burst_n)]
            loop = asyncio.get_running_loop()
            start = loop.time()
            pending = []
            for i, node in enumerate(burst_nodes):
                wait = start + i * burst_s / burst_n - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # pacing the load, not waiting for a result
                sent[node] = time.time() * 1000
                pending.append(
                    asyncio.create_task(
                        c.publish(f"floodgate/v1/{node}/alert", alert_payload(node, int(sent[node])), qos=1)
                    )
                )
            await asyncio.gather(*pending)
            await until(lambda: all(n in opened for n in burst_nodes), 120)
        return [opened[n] - sent[n] for n in idle_nodes], [opened[n] - sent[n] for n in burst_nodes]
    finally:
        task.cancel()
        await asyncio.wait({task})


async def latency_main(args: argparse.Namespace, broker: Mosquitto, work: Path, pg_db: str) -> None:
    print(
        f"alert -> ticket latency: idle {args.idle} alerts one at a time; "
        f"burst {args.burst_nodes} nodes within {args.burst_s:g} s"
    )
    for name, url in [
        ("SQLite", f"sqlite:///{work / 'latency.db'}"),
        ("PostgreSQL", f"postgresql://postgres@127.0.0.1:5432/{pg_db}"),
    ]:
        idle, burst = await alert_latency(broker, url, args.idle, args.burst_nodes, args.burst_s)
        print(
            f"  {name:<11} idle  p50 {statistics.median(idle):6.1f} ms  p99 {pct(idle, 99):6.1f} ms"
            f"   burst p50 {statistics.median(burst):6.1f} ms  p99 {pct(burst, 99):6.1f} ms"
        )
    print("  targets: p99 <= 200 ms idle, <= 1000 ms in the burst")


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # aiomqtt's pending-call warnings
    # The GC and GIL settings `floodgate cloud run` uses, for the whole process: the
    # bare subscriber (the baseline) runs with them too.
    tune_for_service()
    if args.part == "store":
        logging.getLogger("floodgate").setLevel(logging.ERROR)  # a dead letter logged per poison
        await store_main(args)
        return
    work = Path(tempfile.mkdtemp(prefix="floodgate-bench-ingest-"))
    broker = Mosquitto(work)
    broker.start()
    admin = await asyncpg.connect(PG_ADMIN)
    pg_db = f"fg_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{pg_db}"')
    if args.part in ("latency", "all"):
        try:
            await latency_main(args, broker, work, pg_db)
        finally:
            if args.part == "latency":
                await admin.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
                await admin.close()
                broker.stop()
        if args.part == "latency":
            return
    n = args.messages
    results: dict[str, list[float]] = {
        "bare subscriber": [],
        "collector, receive only": [],
        "collector (SQLite)": [],
        "collector (PostgreSQL)": [],
        **{f"{db}, poison: {kind}": [] for kind in args.poisons for db in ("SQLite", "PostgreSQL")},
    }
    try:
        for run in range(args.runs):
            node = f"bench-{run}"
            payloads = backlog(node + "a", n)
            results["bare subscriber"].append(n / await bare_subscriber(broker, n, payloads, node + "a"))
            payloads = backlog(node + "i", n)
            results["collector, receive only"].append(
                n / await intake_subscriber(broker, n, payloads, node + "i")
            )
            payloads = backlog(node + "b", n)
            db = f"sqlite:///{work / f'run{run}.db'}"
            results["collector (SQLite)"].append(
                n / await collector(broker, n, payloads, node + "b", db, args.protocol)
            )
            payloads = backlog(node + "c", n)
            pg = f"postgresql://postgres@127.0.0.1:5432/{pg_db}"
            results["collector (PostgreSQL)"].append(
                n / await collector(broker, n, payloads, node + "c", pg, args.protocol)
            )
            for kind in args.poisons:  # the same backlog with one message in 1,000 poison
                for name, url in (("SQLite", f"sqlite:///{work / f'run{run}{kind}.db'}"), ("PostgreSQL", pg)):
                    where = f"{node}-{kind}-{name}".lower()
                    payloads = backlog(where, n, poison=kind)
                    results[f"{name}, poison: {kind}"].append(
                        n / await collector(broker, n, payloads, where, url, args.protocol)
                    )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
        await admin.close()
        broker.stop()
    base = statistics.median(results["bare subscriber"])
    print(
        f"ingest: {n} telemetry messages x 10 readings, backlog drained from a persistent session, "
        f"{args.runs} runs, medians"
    )
    for name, rates in results.items():
        med = statistics.median(rates)
        spread = f"{min(rates):,.0f}-{max(rates):,.0f}"
        print(f"  {name:<29} {med:10,.0f} msg/s  (range {spread})  ratio to bare {med / base:5.2f}")
    for db in ("SQLite", "PostgreSQL"):
        clean = statistics.median(results[f"collector ({db})"])
        for kind in args.poisons:
            with_poison = statistics.median(results[f"{db}, poison: {kind}"])
            print(f"  {db}, one {kind} poison per 1,000 / clean: {with_poison / clean:5.2f}")
    print("  targets: collector / bare >= 0.80; with poison >= 0.90 of clean")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1", help="the collector's MQTT version")
    p.add_argument("--part", choices=["all", "rate", "latency", "store"], default="all")
    p.add_argument("--store-rounds", type=int, default=30, help="--part store: batches of each kind")
    p.add_argument(
        "--poisons", nargs="*", choices=POISONS, default=list(POISONS), help="the kinds of poison to run"
    )
    p.add_argument("--idle", type=int, default=100, help="alerts sent one at a time")
    p.add_argument("--burst-nodes", type=int, default=1000)
    p.add_argument("--burst-s", type=float, default=10.0)
    asyncio.run(main(p.parse_args()))
