"""What the fault benches share (bench/faults.py, bench/chaos.py): real agents on simulated
sites in a storm, collector processes on PostgreSQL, an independent tap, and the counts.

- ``database()``: a PostgreSQL database of its own (the test fixtures' way), dropped after.
- ``Tap``: a subscriber with its own persistent session that records every envelope on the
  wire (node, boot, seq per msg_id); it tries each broker URL in turn.
- ``new_site()``: a simulated site (Modbus RTU over a pty pair) and its agent's config.
- ``storm()``: each site's water up and down, staggered: alerts, boards and gates all the time.
- ``sent_and_stored()``: what the edges sent (each boot's sequence up to the highest seq seen
  on the wire or stored) and what of it is stored, once the last of it had time to arrive.
- ``duplicates()``: readings stored twice and second tickets for one site and kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
from sqlalchemy import text

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cloud.db.store import Store
from edge.config.site import load_site
from simulators.scenarios import Scenario
from simulators.site import SimSite
from tests.cloud.conftest import _pg_admin, pg_database
from tests.conftest import site_yaml
from tests.helpers import wait_until

Key = tuple[str, int, int]  # node, boot, seq


@contextlib.asynccontextmanager
async def database(prefix: str = "fg_faults") -> AsyncIterator[str]:
    """A migrated database of its own for one run (the test fixtures' way), dropped after."""
    async with pg_database(await _pg_admin(), prefix) as url:
        s = Store(url)
        try:
            await s.migrate()
        finally:
            await s.close()
        yield url


class Tap:
    """An independent subscriber with its own persistent session: every envelope on the wire.

    ``urls``: the brokers to try in turn (one, or each node of a cluster).
    """

    def __init__(self, urls: Sequence[str], identifier: str = "bench-tap") -> None:
        self.urls = list(urls)
        self.identifier = identifier
        self.seen: dict[str, Key] = {}  # msg_id -> (node, boot, seq)
        self.newest: dict[str, int] = {}  # node -> the newest envelope ts seen
        self.arrived: dict[str, int] = {}  # node -> envelopes received (resends too)
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        i = 0
        while True:
            u = urlsplit(self.urls[i % len(self.urls)])
            i += 1
            try:
                async with aiomqtt.Client(
                    u.hostname or "127.0.0.1", u.port or 1883, identifier=self.identifier, clean_session=False
                ) as c:
                    await c.subscribe("floodgate/v1/+/+", qos=1)
                    async for m in c.messages:
                        kind = str(m.topic).rsplit("/", 1)[-1]
                        if kind in ("state", "cmd", "ack") or not isinstance(m.payload, bytes):
                            continue
                        with contextlib.suppress(ValueError, KeyError, TypeError):
                            p = json.loads(m.payload)
                            self.seen[p["msg_id"]] = (p["node"], int(p["boot"]), int(p["seq"]))
                            self.newest[p["node"]] = max(self.newest.get(p["node"], 0), int(p["ts"]))
                            self.arrived[p["node"]] = self.arrived.get(p["node"], 0) + 1
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)  # that broker is down: the next

    def start(self) -> Tap:
        self.task = asyncio.create_task(self.run())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


async def new_site(
    folder: Path, node: str, broker_urls: Sequence[str], telemetry_s: float, **overrides: Any
) -> tuple[SimSite, Path]:
    """A simulated site in ``folder/node`` (dry, no noise) and its agent's config for those brokers
    (``overrides``: more config keys, dotted, as ``SimSite.write_config`` takes them)."""
    d = folder / node
    d.mkdir()
    src = d / "src.yaml"
    src.write_text(site_yaml(node=node, poll_s=0.1, telemetry_interval_s=telemetry_s), encoding="utf-8")
    sim = SimSite(load_site(src), Scenario.named("dry", noise_mm=0.0), gate_travel_s=0.3)
    await sim.start(d)
    broker: dict[str, Any] = {"broker.reconnect_max_s": 2, **overrides}
    if len(broker_urls) == 1:
        broker["broker.url"] = broker_urls[0]
    else:
        broker["broker.urls"] = list(broker_urls)
    config = sim.write_config(
        d / "site.yaml", {**broker, "outbox.path": str(d / "outbox.db"), "heartbeat_s": 2}
    )
    return sim, config


def agent_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "floodgate.cli", "edge", "run", "--config", str(config)]


def collector_yaml(db_url: str, broker: str, client_id: str, extra: str = "") -> str:
    """A collector that only ingests (no API unless ``extra`` gives one)."""
    return f"database: {db_url}\nbroker: {broker}\nclient_id: {client_id}\n" + (extra or "api: null\n")


def collector_cmd(config: Path) -> list[str]:
    return [sys.executable, "-m", "floodgate.cli", "cloud", "run", "-c", str(config)]


def send_signal(p: subprocess.Popen[bytes] | None, sig: int) -> None:
    if p is not None and p.poll() is None:
        os.kill(p.pid, sig)


async def kill(p: subprocess.Popen[bytes] | None) -> None:
    """``kill -9`` by its PID, and reaped."""
    send_signal(p, signal.SIGKILL)
    if p is not None:
        await asyncio.to_thread(p.wait)


async def terminate(p: subprocess.Popen[bytes] | None, grace_s: float = 20.0) -> None:
    """SIGTERM, and ``kill -9`` if it is still there after ``grace_s`` (a run must end)."""
    if p is not None and p.poll() is None:
        p.terminate()
        try:
            await asyncio.to_thread(p.wait, grace_s)
        except subprocess.TimeoutExpired:
            await kill(p)


async def storm(sites: Sequence[SimSite], period_s: float) -> None:
    """Each site's water up and down, staggered: alerts, boards and gates all the time."""
    t0 = time.monotonic()
    while True:
        for i, s in enumerate(sites):
            phase = ((time.monotonic() - t0) / period_s + i / max(1, len(sites))) % 1.0
            s.source.manual = 400.0 if phase < 0.5 else 0.0
        await asyncio.sleep(0.2)


async def rows(db_url: str, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
    s = Store(db_url)
    try:
        async with s.engine.connect() as conn:
            return list((await conn.execute(text(sql), params or {})).all())
    finally:
        await s.close()


async def scalar(db_url: str, sql: str) -> Any:
    got = await rows(db_url, sql)
    return got[0][0] if got else None


async def fresh_from_all(db_url: str, nodes: Sequence[str], since_ms: int) -> bool:
    """Every one of ``nodes`` has a message stored that it stamped after ``since_ms``."""
    got = await rows(db_url, f"SELECT DISTINCT node FROM messages WHERE ts > {since_ms}")
    return {r[0] for r in got} >= set(nodes)


async def stored(db_url: str) -> set[Key]:
    return {(r[0], int(r[1]), int(r[2])) for r in await rows(db_url, "SELECT node, boot, seq FROM messages")}


async def stored_keys(db_url: str, keys: Iterable[Key]) -> dict[Key, int]:
    """Which of ``keys`` the ``messages`` ledger holds, looked up by key (its index), each with
    its ``received_ms`` (when the collector fetched it, not when it committed). PostgreSQL."""
    want = sorted(set(keys))
    found: dict[Key, int] = {}
    for i in range(0, len(want), 5000):
        part = want[i : i + 5000]
        got = await rows(
            db_url,
            "SELECT m.node, m.boot, m.seq, m.received_ms FROM messages m JOIN unnest("
            "CAST(:n AS text[]), CAST(:b AS bigint[]), CAST(:s AS bigint[])) AS k(node, boot, seq)"
            " ON m.node = k.node AND m.boot = k.boot AND m.seq = k.seq",
            {"n": [k[0] for k in part], "b": [k[1] for k in part], "s": [k[2] for k in part]},
        )
        found.update(((r[0], int(r[1]), int(r[2])), int(r[3])) for r in got)
    return found


async def wait_stored(db_url: str, left: set[Key], before_ms: int, timeout_s: float) -> tuple[int, float]:
    """Until every key of ``left`` is in the ``messages`` ledger (each removed from ``left`` once
    seen), looked up by key: when a row becomes visible is not when it was received. Returns how
    many were stored with a ``received_ms`` before ``before_ms`` and the longest lag, in seconds,
    from a ``received_ms`` to the row seen. Raises ``AssertionError`` after ``timeout_s``, with
    ``left`` holding what is still missing."""
    late = 0
    lag_s = 0.0

    async def have_all() -> bool:
        nonlocal late, lag_s
        got = await stored_keys(db_url, left)
        seen_ms = int(time.time() * 1000)
        for key, received in got.items():
            left.discard(key)
            late += received < before_ms
            lag_s = max(lag_s, (seen_ms - received) / 1000)
        return not left

    await wait_until(have_all, timeout_s, "everything sent before stored", every=0.2)
    return late, lag_s


async def dead_letters_of(db_url: str, keys: Iterable[Key]) -> dict[Key, str]:
    """Which of ``keys`` are dead letters (their payload read back), each as its code, detail
    and when it was received."""
    want = set(keys)
    found: dict[Key, str] = {}
    for topic, payload, code, detail, received_ms in await rows(
        db_url, "SELECT topic, payload, code, detail, received_ms FROM dead_letters ORDER BY id"
    ):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            p = json.loads(bytes(payload))
            key = (str(p["node"]), int(p["boot"]), int(p["seq"]))
            if key in want:
                found[key] = f"{code} ({detail}) on {topic}, received_ms {received_ms}"
    return found


async def sent_and_stored(
    db_url: str, tap: Tap, wait_s: float = 30.0, also: frozenset[Key] = frozenset()
) -> tuple[set[Key], set[Key], set[Key]]:
    """(sent, on the wire, stored of what was sent).

    The edges go on sending (telemetry, heartbeats): what counts is what they had sent by now,
    each boot's sequence up to the highest seq seen anywhere (and ``also``: what an edge says
    it sent), and whether the collector has all of it once the last of it had time to arrive
    (``wait_s``).
    """
    top: dict[tuple[str, int], int] = {}
    for node, boot, seq in [*await stored(db_url), *tap.seen.values(), *also]:
        top[(node, boot)] = max(top.get((node, boot), -1), seq)
    sent = {(n, b, s) for (n, b), hi in top.items() for s in range(hi + 1)}

    async def complete() -> bool:
        return sent <= await stored(db_url)

    with contextlib.suppress(AssertionError):
        await wait_until(complete, wait_s, "everything sent stored", every=0.5)
    wire = {k for k in tap.seen.values() if k in sent}
    return sent, wire, await stored(db_url) & sent


async def duplicates(db_url: str) -> tuple[int, int]:
    """(readings stored twice, second tickets for one site and kind)."""
    twice = await scalar(
        db_url,
        "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM readings GROUP BY series, ts) x",
    )
    dup_tickets = await scalar(
        db_url,
        "SELECT COALESCE(SUM(c - 1), 0) FROM (SELECT COUNT(*) AS c FROM tickets GROUP BY node, kind) x",
    )
    return int(twice), int(dup_tickets)
