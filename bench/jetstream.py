"""JetStream intake benchmark: a bare JetStream pull consumer's rate vs the collector's stored rate.

A 3-node NATS cluster (Debian's nats-server, JetStream R3, MQTT on every node,
tests/helpers.py ``NatsCluster``) and PostgreSQL. For each consumer the same
kind of backlog, N telemetry messages of 10 readings each, is published over
MQTT (QoS 1) to the cluster while its durable consumer on ``$MQTT_msgs``
exists and nobody pulls; then the consumer starts and the time until it has
acknowledged (bare) or committed (collector) all N is measured:

- bare: nats-py's pull subscription, ``fetch`` of up to 500, each message
  acknowledged, nothing else: the baseline, in the same process;
- 1 collector, 2 collectors: ``Collector`` with the ``nats`` intake
  (cloud/jetstream.py) on PostgreSQL, sharing one durable consumer, in this
  process (so two collectors share one core's event loop: a lower bound for
  two processes). The time runs from the first collector bound to its consumer.

Printed: per consumer the median rate and its p99 over the runs (with few runs,
the slowest), and the ratio of the medians to the bare consumer's.

    .venv/bin/python bench/jetstream.py [--messages 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt
import asyncpg
import nats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ingest import PG_ADMIN, backlog, pct
from cloud.collector import Collector
from cloud.config import CloudConfig, NatsConfig
from cloud.jetstream import FILTER, STREAM, NatsSettings, consumer_config
from floodgate.broker import BrokerSettings
from floodgate.runner import tune_for_service
from tests.helpers import NatsCluster, wait_until

DURABLE = "floodgate-collectors"


async def publish(cluster: NatsCluster, payloads: list[tuple[str, bytes]]) -> None:
    port = cluster.mqtt_ports[0]
    async with aiomqtt.Client("127.0.0.1", port, max_inflight_messages=500) as c:
        for i in range(0, len(payloads), 500):
            await asyncio.gather(*(c.publish(t, p, qos=1) for t, p in payloads[i : i + 500]))


async def fresh_consumer(js: nats.js.JetStreamContext) -> None:
    """Only the shared durable consumer on the stream, new: nothing of an earlier run waits in it."""
    for info in await js.consumers_info(STREAM):
        await js.delete_consumer(STREAM, info.name)
    await js.add_consumer(STREAM, consumer_config(NatsSettings(urls=(), durable=DURABLE)))


async def bare(cluster: NatsCluster, n: int, node: str) -> float:
    nc = await nats.connect(cluster.nats_urls)
    try:
        js = nc.jetstream()
        await fresh_consumer(js)
        await publish(cluster, backlog(node, n))
        sub = await js.pull_subscribe_bind(DURABLE, STREAM)
        got = 0
        t0 = time.monotonic()
        while got < n:
            try:
                msgs = await sub.fetch(500, timeout=1)
            except nats.errors.TimeoutError:
                continue
            for m in msgs:
                await m.ack()
            got += len(msgs)
        await nc.flush()
        return time.monotonic() - t0
    finally:
        await nc.close()


async def collectors(cluster: NatsCluster, n: int, node: str, db_url: str, count: int) -> float:
    nc = await nats.connect(cluster.nats_urls)
    try:
        await fresh_consumer(nc.jetstream())
    finally:
        await nc.close()
    await publish(cluster, backlog(node, n))
    urls = tuple(cluster.mqtt_urls)
    cols = [
        Collector(
            CloudConfig(
                database=db_url,
                client_id=f"bench-{uuid.uuid4().hex[:6]}",
                api=None,
                nats=NatsConfig(urls=cluster.nats_urls, durable=DURABLE),
            ),
            BrokerSettings(url=urls[0], urls=urls),
        )
        for _ in range(count)
    ]
    tasks = [asyncio.create_task(c.run()) for c in cols]
    try:
        intakes = [c.jetstream for c in cols if c.jetstream is not None]
        await wait_until(lambda: any(j.ready.is_set() for j in intakes), 60, "a collector bound", every=0.005)
        t0 = time.monotonic()
        counters = [c.ingestor.counters for c in cols]
        await wait_until(
            lambda: sum(c.stored + c.duplicates for c in counters) >= n,
            600,
            "the backlog stored",
            every=0.005,
        )
        took = time.monotonic() - t0
        shares = [c.stored for c in counters]
        batches = sum(j.counters.batches for j in intakes)
        print(
            f"    {count} collector(s): shares {shares}, {n / max(batches, 1):.0f} per batch", file=sys.stderr
        )
        return took
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks)


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    tune_for_service()
    work = Path(tempfile.mkdtemp(prefix="floodgate-bench-jetstream-"))
    cluster = NatsCluster(work / "nats")
    cluster.start()
    admin = await asyncpg.connect(PG_ADMIN)
    pg_db = f"fg_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{pg_db}"')
    pg = f"postgresql://postgres@127.0.0.1:5432/{pg_db}"
    n = args.messages
    results: dict[str, list[float]] = {"bare JetStream consumer": [], "1 collector": [], "2 collectors": []}
    try:
        async with aiomqtt.Client("127.0.0.1", cluster.mqtt_ports[0]):
            pass  # the gateway makes $MQTT_msgs on a first MQTT connection
        for run in range(args.runs):
            results["bare JetStream consumer"].append(n / await bare(cluster, n, f"bench-{run}a"))
            results["1 collector"].append(n / await collectors(cluster, n, f"bench-{run}b", pg, 1))
            results["2 collectors"].append(n / await collectors(cluster, n, f"bench-{run}c", pg, 2))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
        await admin.close()
        cluster.stop()
    base = statistics.median(results["bare JetStream consumer"])
    print(
        f"jetstream intake: {n} telemetry messages x 10 readings, backlog in {STREAM} ({FILTER}), "
        f"3-node cluster R3, PostgreSQL, {args.runs} runs"
    )
    for name, rates in results.items():
        med = statistics.median(rates)
        # The slow tail of the rate: p99 of a rate is its 1st percentile.
        print(
            f"  {name:<24} median {med:9,.0f} msg/s  p99 (slowest) {pct(rates, 1):9,.0f} msg/s"
            f"  ratio to bare {med / base:5.2f}"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--runs", type=int, default=3)
    asyncio.run(main(p.parse_args()))
