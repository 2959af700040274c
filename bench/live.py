"""Live-update latency: an alert published by a node until the dashboard's SSE stream carries it.

The collector runs with its API on SQLite against a real mosquitto; a client
holds ``GET /api/v1/stream`` open (as the dashboard does) and each alert is
timed from the moment it is handed to the MQTT client to the moment its
``alert`` event arrives on the stream. One alert at a time, then a burst of
nodes alerting together. The browser's redraw comes on top (a few ms).

    .venv/bin/python bench/live.py [--alerts 200] [--burst 200] [--collectors 3] [--pg URL]

Then the same with ``--collectors`` collectors on PostgreSQL (a database of its own on the
``--pg`` server, dropped after) sharing one subscription, the stream held on the first: most
alerts are ingested by another collector and reach the stream through the live feed (LISTEN/
NOTIFY, issue 13 §3). The single SQLite collector, run first in the same process, is the
baseline.

Target (issue 4): a new alert shows within a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiomqtt
import asyncpg
import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ingest import alert_payload, pct
from cloud.collector import Collector
from cloud.config import Api, CloudConfig
from floodgate.broker import BrokerSettings
from floodgate.ids import now_ms
from tests.helpers import Mosquitto, free_port, wait_until


async def listen(url: str, arrived: dict[str, float], ready: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=None) as http, http.stream("GET", url) as response:
        response.raise_for_status()
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
                if kind == "hello":
                    ready.set()
            elif line.startswith("data: ") and kind == "alert":
                node = json.loads(line[6:])["node"]
                arrived.setdefault(node, time.perf_counter())


async def measure(args: argparse.Namespace, broker: Mosquitto, db: str, collectors: int) -> None:
    """Alerts timed to the stream of the first of ``collectors`` collectors on ``db``; with several,
    they share one subscription and most alerts are ingested by another (the live feed carries them)."""
    group = f"live-{uuid.uuid4().hex[:6]}" if collectors > 1 else None
    cols: list[Collector] = []
    for i in range(collectors):
        config = CloudConfig(
            database=db,
            client_id=f"live-{uuid.uuid4().hex[:6]}-{i}",
            shared_group=group,
            api=Api(host="127.0.0.1", port=free_port()),
        )
        cols.append(Collector(config, BrokerSettings(url=broker.url)))
    tasks = []
    arrived: dict[str, float] = {}
    try:
        for col in cols:  # one after the other: the first creates the schema
            tasks.append(asyncio.create_task(col.run()))
            await asyncio.wait_for(col.consumer.subscribed.wait(), 30)
        await wait_until(lambda: all(c.feed.listening for c in cols), 10, "the live feeds")
        col = cols[0]
        assert col.api is not None
        api = col.api
        await wait_until(lambda: api.started, 10, "the API")
        username = f"bench-{uuid.uuid4().hex[:4]}"
        await col.auth.add_user(username, "viewer", "bench-password-123")
        token = await col.auth.issue_token(username)
        ready = asyncio.Event()
        listener = asyncio.create_task(
            listen(f"http://127.0.0.1:{api.port}/api/v1/stream?token={token}", arrived, ready)
        )
        await asyncio.wait_for(ready.wait(), 10)
        sent: dict[str, float] = {}
        tag = uuid.uuid4().hex[:6]
        async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=1000) as c:
            one = [f"one-{tag}-{i}" for i in range(args.alerts)]
            for node in one:
                sent[node] = time.perf_counter()
                await c.publish(f"floodgate/v1/{node}/alert", alert_payload(node, now_ms()), qos=1)
                await wait_until(lambda node=node: node in arrived, 10, "the alert on the stream")
            burst = [f"burst-{tag}-{i}" for i in range(args.burst)]
            for node in burst:
                sent[node] = time.perf_counter()
                await c.publish(f"floodgate/v1/{node}/alert", alert_payload(node, now_ms()), qos=1)
            await wait_until(lambda: all(n in arrived for n in burst), 60, "the burst on the stream")
        listener.cancel()
        others = sum(c.ingestor.counters.stored for c in cols[1:])
        if collectors > 1:
            print(f"  ({others} of {len(one) + len(burst)} alerts ingested by another collector)")
        for name, nodes in (("one at a time", one), (f"burst of {args.burst}", burst)):
            ms = [(arrived[n] - sent[n]) * 1000 for n in nodes]
            print(
                f"  {name:<16} p50 {statistics.median(ms):7.1f} ms   p99 {pct(ms, 99):7.1f} ms"
                f"   max {max(ms):7.1f} ms   ({len(ms)} alerts)"
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def main(args: argparse.Namespace) -> None:
    logging.getLogger("mqtt").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp(prefix="floodgate-bench-live-"))
    broker = Mosquitto(work)
    broker.start()
    try:
        print("alert -> SSE event latency: one collector on SQLite (the baseline)")
        await measure(args, broker, f"sqlite:///{work / 'live.db'}", 1)
        if args.pg:
            admin = await asyncpg.connect(args.pg.replace("postgresql://", "postgres://", 1))
            name = f"fg_bench_live_{uuid.uuid4().hex[:8]}"
            await admin.execute(f'CREATE DATABASE "{name}"')
            try:
                print(f"{args.collectors} collectors on PostgreSQL, the stream on the first (LISTEN/NOTIFY)")
                await measure(args, broker, args.pg.rsplit("/", 1)[0] + "/" + name, args.collectors)
            finally:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                await admin.close()
        print("  target: a new alert on the dashboard within 1000 ms")
    finally:
        broker.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--alerts", type=int, default=200)
    p.add_argument("--burst", type=int, default=200)
    p.add_argument("--collectors", type=int, default=3)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/test", help="'' for SQLite only")
    asyncio.run(main(p.parse_args()))
