"""The collector with a real broker: from the real agent, through SIGKILL, and shared."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from sqlalchemy import func, select, text

from cloud.collector import Collector
from cloud.commands import CommandError
from cloud.config import CloudConfig, load_cloud_config
from cloud.db.schema import alert_transitions, alerts, devices, messages, named_readings, nodes, readings
from cloud.db.store import Store
from cloud.ingest import Applied, Prepared
from cloud.tickets import TicketEvent
from edge.agent import Agent
from floodgate.broker import BrokerSettings
from floodgate.clock import Clock, ManualClock
from floodgate.ids import new_ulid, now_ms
from floodgate.wire import Sequencer, node_command_key
from tests.conftest import SiteFactory, running
from tests.edge.test_broker_security import secure_broker  # noqa: F401 - the fixture
from tests.helpers import Mosquitto, wait_until


@contextlib.asynccontextmanager
async def collecting(
    db_url: str,
    broker: Mosquitto | str,
    client_id: str,
    group: str | None = None,
    clock: Clock | None = None,
    command_key_file: str | None = None,
) -> AsyncIterator[Collector]:
    c = Collector(
        CloudConfig(
            database=db_url,
            client_id=client_id,
            shared_group=group,
            command_key_file=command_key_file,
            api=None,
        ),
        BrokerSettings(url=broker if isinstance(broker, str) else broker.url, reconnect_max_s=0.5),
        clock=clock,
    )
    task = asyncio.create_task(c.run())
    try:
        await asyncio.wait_for(c.ready.wait(), 20)
        await asyncio.wait_for(c.consumer.subscribed.wait(), 10)
        yield c
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


async def scalar(db_url: str, q: object) -> int:
    s = Store(db_url)
    try:
        async with s.read() as conn:
            return int((await conn.execute(q)).scalar() or 0)  # type: ignore[call-overload]
    finally:
        await s.close()


async def host_online(broker: Mosquitto) -> None:
    """Wait for the collector's retained online state (published once it has subscribed)."""
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.subscribe("floodgate/v1/_host/state", qos=1)
        async with asyncio.timeout(20):
            async for m in c.messages:
                if isinstance(m.payload, bytes) and json.loads(m.payload).get("online") is True:
                    return


async def publish_episode(broker: Mosquitto, node: str) -> None:
    """One flood episode: warning, danger, then a second warning episode soon after."""
    seq = Sequencer(node, 1)
    ep1, ep2 = new_ulid(), new_ulid()
    steps = [(ep1, "warning", "clear"), (ep1, "danger", "warning"), (ep2, "warning", "clear")]
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        for i, (ep, level, prev) in enumerate(steps):
            alert = {"id": ep, "dev": "lvl-1", "kind": "flood", "level": level, "prev": prev, "ts": i}
            body = {**seq.envelope(), "alert": alert}
            await c.publish(f"floodgate/v1/{node}/alert", json.dumps(body).encode(), qos=1)


async def publish_telemetry(broker: Mosquitto, node: str, n: int, boot: int = 1) -> None:
    seq = Sequencer(node, boot)
    async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=100) as c:
        for i in range(n):
            env = seq.envelope()
            # Read now: a reading from 1970 is past the raw retention, and a
            # collector's retention job would roll it up and delete it mid-test.
            reading = {
                "dev": "lvl-1",
                "ts": env["ts"],
                "metric": "depth_mm",
                "value": float(i),
                "quality": "good",
            }
            body = {**env, "readings": [reading]}
            await c.publish(f"floodgate/v1/{node}/telemetry", json.dumps(body).encode(), qos=1)


async def test_agent_alert_reaches_the_collector(
    broker: Mosquitto, sim_site: SiteFactory, node_id: str, db_url: str
) -> None:
    sim, site = await sim_site(broker_url=broker.url)
    async with collecting(db_url, broker, f"col-{node_id}") as col, running(Agent(site)):
        sim.source.manual = 320.0

        async def danger() -> int:
            return await scalar(
                db_url,
                select(func.count())
                .select_from(alerts)
                .where(alerts.c.node == node_id, alerts.c.dev == "lvl-1", alerts.c.level == "danger"),
            )

        await wait_until(danger, 20, "the danger alert stored")
        await wait_until(lambda: scalar(db_url, select(func.count()).select_from(readings)), 10, "readings")
        # The birth may land a batch after the alert: the water can rise before the
        # agent's uplink connects and queues its birth.
        n_devices = select(func.count()).select_from(devices).where(devices.c.node == node_id)

        async def four_devices() -> bool:
            return await scalar(db_url, n_devices) == 4

        await wait_until(four_devices, 10, "the 4 devices from the birth")
        assert (
            await scalar(
                db_url,
                select(func.count())
                .select_from(nodes)
                .where(nodes.c.node == node_id, nodes.c.online.is_(True)),
            )
            == 1
        )
        assert col.ingestor.counters.dead_letters == 0
        # The alert opened its ticket in the same transaction; the episode's later
        # transitions landed on that one ticket.
        total, rows = await col.tickets.list(node=node_id)
        assert total == 1 and rows[0]["priority"] == "danger" and rows[0]["kind"] == "flood"
        ticket = await col.tickets.get(rows[0]["id"])
        episodes = {a["id"] for a in ticket["alerts"] if a["dev"] == "lvl-1"}
        assert len(episodes) == 1
        assert ticket["timeline"][0]["action"] == "open"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_collector_killed_with_sigkill_loses_nothing(
    own_broker: Mosquitto, tmp_path: Path, node_id: str, protocol: str
) -> None:
    """On MQTT 5 the session outlives the connection only through its expiry interval."""
    broker = own_broker
    db = tmp_path / "c.db"
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(
        f"database: sqlite:///{db}\n"
        f"broker: {{url: '{broker.url}', reconnect_max_s: 0.5, protocol: '{protocol}'}}\n"
        f"client_id: col-{node_id}\napi: null\n"
    )
    cmd = [sys.executable, "-m", "floodgate.cli", "cloud", "run", "-c", str(cfg)]
    db_url = f"sqlite:///{db}"
    total = 3000
    count_q = select(func.count()).select_from(messages)
    first = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    second: subprocess.Popen[bytes] | None = None
    try:
        await host_online(broker)
        publisher = asyncio.create_task(publish_telemetry(broker, node_id, total))
        await wait_until(lambda: scalar(db_url, count_q), 30, "ingest under way")
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.to_thread(first.wait)
        at_kill = await scalar(db_url, count_q)
        await publisher
        assert at_kill < total, "killed before the end"
        second = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)

        async def all_stored() -> bool:
            return await scalar(db_url, count_q) == total

        await wait_until(all_stored, 60, f"all {total} messages after the restart")
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.terminate()
                await asyncio.to_thread(p.wait)
    assert await scalar(db_url, select(func.count()).select_from(readings)) == total, "none doubled"
    s = Store(db_url)
    try:
        gaps = await s.seq_gaps()
    finally:
        await s.close()
    assert [g["missing"] for g in gaps if g["node"] == node_id] == [0]


async def test_two_collectors_on_one_shared_subscription(
    broker: Mosquitto, node_id: str, db_url: str
) -> None:
    total = 2000
    group = f"g-{node_id}"
    async with (
        collecting(db_url, broker, f"a-{node_id}", group) as a,
        collecting(db_url, broker, f"b-{node_id}", group) as b,
    ):
        # Telemetry, and alert episodes from 20 sites whose transitions the two
        # collectors share out between them: still one ticket per site.
        sites = [f"{node_id[:50]}-s{i}" for i in range(20)]
        await asyncio.gather(
            publish_telemetry(broker, node_id, total), *(publish_episode(broker, s) for s in sites)
        )
        q = select(func.count()).select_from(messages).where(messages.c.node == node_id)

        async def all_stored() -> bool:
            return await scalar(db_url, q) == total

        await wait_until(all_stored, 60, "every message stored once")
        n_alerts = select(func.count()).select_from(messages).where(messages.c.node.in_(sites))

        async def all_alerts() -> bool:
            return await scalar(db_url, n_alerts) == 3 * len(sites)

        await wait_until(all_alerts, 30, "every alert transition stored once")
        assert a.ingestor.counters.stored > 0 and b.ingestor.counters.stored > 0, "both collectors worked"
        assert a.ingestor.counters.stored + b.ingestor.counters.stored == total + 3 * len(sites)
        n_tickets, rows = await a.tickets.list(limit=500)
        assert n_tickets == len(sites), "no duplicate tickets"
        assert {r["node"] for r in rows} == set(sites)
        assert {r["priority"] for r in rows} == {"danger"}
    assert (
        await scalar(
            db_url, select(func.count()).select_from(named_readings).where(named_readings.c.node == node_id)
        )
        == total
    )


async def test_commands_are_answered_or_time_out(
    broker: Mosquitto, sim_site: SiteFactory, node_id: str, db_url: str, tmp_path: Path
) -> None:
    master = tmp_path / "master.key"
    master.write_bytes(b"office-master-secret-0123456789")
    key = node_command_key(b"office-master-secret-0123456789", node_id).decode()
    _, site = await sim_site(broker_url=broker.url, overrides={"command_key": key})
    clock = ManualClock(start_ms=now_ms())  # the box checks expiry against its own clock
    async with (
        collecting(db_url, broker, f"col-{node_id}", clock=clock, command_key_file=str(master)) as col,
        running(Agent(site)),
    ):
        await wait_until(lambda: scalar(db_url, select(func.count()).select_from(devices)), 20, "the birth")
        sent = await col.commands.send(node_id, "rebirth", issued_by="user:chen", reason="check the box")
        assert sent["status"] == "sent" and sent["issued_by"] == "user:chen"

        async def answered() -> bool:
            return (await col.commands.get(sent["cmd_id"]))["status"] == "done"

        await wait_until(answered, 20, "the box's cmd-result")
        ghost = await col.commands.send(
            "ghost-node", "gate.close", dev="gate-1", issued_by="user:chen", reason="x", ttl_s=30
        )
        clock.advance(31_000)

        async def timed_out() -> bool:
            return (await col.commands.get(ghost["cmd_id"]))["status"] == "timeout"

        await wait_until(timed_out, 10, "the timeout of a command nobody answered")
        with pytest.raises(CommandError, match="needs 'dev'"):
            await col.commands.send(node_id, "gate.close", issued_by="user:chen", reason="x")
        # A force carries the sender's role as the office knows it, never one from the body.
        force = {"force": True, "reason": "police on site", "role": "admin"}
        gate_open = {"dev": "gate-1", "reason": "x", "args": force}
        with pytest.raises(CommandError, match="only admin or dispatcher may force") as refused:
            await col.commands.send(node_id, "gate.open", issued_by="user:li", role="operator", **gate_open)
        assert refused.value.code == "forbidden"
        forced = await col.commands.send(
            node_id, "gate.open", issued_by="user:chen", role="dispatcher", **gate_open
        )
        assert forced["args"]["role"] == "dispatcher"

        async def forced_done() -> bool:
            return (await col.commands.get(forced["cmd_id"]))["status"] == "done"

        await wait_until(forced_done, 20, "the box takes the signed role")


async def test_collector_over_tls_with_credentials_under_the_shipped_acl(
    secure_broker: Mosquitto,  # noqa: F811 - the imported fixture
    sim_site: SiteFactory,
    node_id: str,
    tmp_path: Path,
) -> None:
    (tmp_path / "node-password").write_text("node-secret\n")
    (tmp_path / "collector-password").write_text("collector-secret\n")
    master = b"office-master-secret-0123456789"
    (tmp_path / "master.key").write_bytes(master)
    _, site = await sim_site(
        broker_url=f"mqtts://127.0.0.1:{secure_broker.port}",
        overrides={
            "broker.username": node_id,
            "broker.password_file": str(tmp_path / "node-password"),
            "broker.tls": {"ca_file": str(tmp_path / "ca.crt")},
            "command_key": node_command_key(master, node_id).decode(),
        },
    )
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(
        "database: sqlite:///collector.db\n"
        f"broker: {{url: 'mqtts://127.0.0.1:{secure_broker.port}', username: collector,\n"
        "  password_file: collector-password, tls: {ca_file: ca.crt}, reconnect_max_s: 0.5}\n"
        f"client_id: col-{node_id}\napi: null\ncommand_key_file: master.key\n"
    )
    config, settings = load_cloud_config(cfg)
    col = Collector(config, settings)
    task = asyncio.create_task(col.run())
    try:
        await asyncio.wait_for(col.consumer.subscribed.wait(), 20)
        async with running(Agent(site)):
            db_url = f"sqlite:///{tmp_path / 'collector.db'}"
            n = select(func.count()).select_from(devices).where(devices.c.node == node_id)
            await wait_until(lambda: scalar(db_url, n), 20, "the birth, over TLS")
            sent = await col.commands.send(node_id, "rebirth", issued_by="user:chen", reason="tls check")

            async def done() -> bool:
                return (await col.commands.get(sent["cmd_id"]))["status"] == "done"

            await wait_until(done, 20, "a command through the ACL and its result")
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


async def test_a_storm_of_ticket_events_is_logged_as_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = f"sqlite:///{tmp_path / 'log.db'}"
    await Store(db).migrate()
    col = Collector(CloudConfig(database=db, api=None), BrokerSettings(url="mqtt://127.0.0.1:9"))
    try:

        def event(i: int, action: str) -> TicketEvent:
            return TicketEvent(
                f"t{i}", action, "system", 0, "open", "emergency-office", "danger", f"n{i}", "flood", "x"
            )

        caplog.set_level(logging.INFO, logger="floodgate.cloud")
        await col.ticket_events([event(1, "open")])
        assert [r.getMessage() for r in caplog.records] == ["ticket t1 open by system"]
        caplog.clear()
        await col.ticket_events([event(i, "open") for i in range(30)] + [event(99, "dispatch")])
        assert [r.getMessage() for r in caplog.records] == ["31 ticket events: open 30, dispatch 1"]
    finally:
        await col.store.close()


async def test_the_collector_rides_out_a_broker_restart(own_broker: Mosquitto, tmp_path: Path) -> None:
    """The broker goes away while the collector waits for messages: it notices, reconnects
    when the broker is back, subscribes again and stores what comes next."""
    db_url = f"sqlite:///{tmp_path / 'r.db'}"
    col = Collector(
        CloudConfig(database=db_url, client_id="col-restart", api=None),
        BrokerSettings(url=own_broker.url, reconnect_max_s=0.3),
    )
    task = asyncio.create_task(col.run())
    try:
        await asyncio.wait_for(col.consumer.subscribed.wait(), 20)
        await publish_telemetry(own_broker, "hp-restart", 5)
        await wait_until(lambda: col.ingestor.counters.stored == 5, 20, "the first messages")
        first_connect = col.consumer.connected_at

        own_broker.stop()
        await wait_until(lambda: not col.consumer.connected, 20, "the collector to notice")
        own_broker.start()
        await asyncio.wait_for(col.consumer.subscribed.wait(), 20)  # cleared when the link went
        assert col.consumer.connected_at > first_connect
        await publish_telemetry(own_broker, "hp-restart", 5, boot=2)
        await wait_until(lambda: col.ingestor.counters.stored == 10, 20, "the messages after the restart")
        assert await scalar(db_url, select(func.count()).select_from(readings)) == 10
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


def pubacks(stream: bytes | bytearray) -> list[int]:
    """The packet ids of the PUBACKs in a stream of MQTT packets, in order."""
    out, i = [], 0
    while i < len(stream):
        kind, length, shift = stream[i], 0, 0
        i += 1
        while True:  # the remaining length: 7 bits a byte, low first
            length |= (stream[i] & 0x7F) << shift
            shift += 7
            i += 1
            if stream[i - 1] < 0x80:
                break
        if kind & 0xF0 == 0x40:
            out.append(int.from_bytes(stream[i : i + 2], "big"))
        i += length
    return out


async def test_batches_commit_side_by_side_and_are_acknowledged_in_order(
    broker: Mosquitto, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With two commits in flight, the second batch may commit first; its PUBACKs
    still wait for the first batch's (MQTT wants them in the order received)."""
    sent = bytearray()  # what the collector wrote to the broker
    send = paho.Client._sock_send

    def recording_send(self: paho.Client, buf: bytes) -> int:
        n = send(self, buf)
        if self._client_id == b"col-inflight":
            sent.extend(buf[:n])
        return n

    monkeypatch.setattr(paho.Client, "_sock_send", recording_send)
    settings = BrokerSettings(url=broker.url, reconnect_max_s=0.5)
    config = CloudConfig(database=db_url, client_id="col-inflight", batch_max=5, api=None)
    first = Collector(config, settings)  # creates the schema and the persistent session
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(first.consumer.subscribed.wait(), 20)
    task.cancel()
    await asyncio.wait({task}, timeout=15)
    await publish_telemetry(broker, "hp-inflight", 10)  # two batches' worth, queued for the session
    sent.clear()  # what the first one wrote

    col = Collector(config, settings)
    col.consumer.commits_in_flight = 2
    started: list[int] = []
    committed: list[int] = []
    second_done = asyncio.Event()
    commit = col.ingestor.commit

    async def gated(p: Prepared) -> Applied:
        n = len(started)
        started.append(n)
        if n == 0:  # the first batch waits until the second has committed: only possible side by side
            await asyncio.wait_for(second_done.wait(), 20)
        applied = await commit(p)
        committed.append(n)
        if n == 1:
            second_done.set()
        return applied

    col.ingestor.commit = gated  # type: ignore[method-assign]
    task = asyncio.create_task(col.run())
    try:
        counters = col.ingestor.counters
        await wait_until(lambda: counters.stored == 10, 30, "the backlog stored")
        # Its own retained state comes with it: everything received is acknowledged.
        await wait_until(lambda: len(pubacks(sent)) == counters.received, 30, "every batch acknowledged")
        assert committed[:2] == [1, 0], "the second batch committed while the first waited"
        acked = pubacks(sent)
        assert acked == sorted(acked), "acknowledged in the order received"
        assert counters.duplicates == 0, "its own state on _host is no duplicate"
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


async def test_two_collectors_through_a_storm_put_every_transition_on_its_timeline(
    broker: Mosquitto, node_id: str, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Sites' episodes, heartbeats and readings shared out between two collectors, whose
    batches commit side by side in any order: every transition on its ticket's timeline
    once, one ticket per site, and on PostgreSQL not one deadlock."""
    group = f"g-{node_id}"
    sites = [f"{node_id[:50]}-s{i}" for i in range(40)]
    ladder = [("clear", "warning"), ("warning", "danger"), ("danger", "warning"), ("warning", "clear")]

    async def publish_site(node: str) -> None:
        seq = Sequencer(node, 1)
        async with aiomqtt.Client("127.0.0.1", broker.port, max_inflight_messages=100) as c:
            for i, (ep, (prev, level)) in enumerate(
                (ep, step) for ep in (new_ulid(), new_ulid()) for step in ladder
            ):
                env = seq.envelope()
                body = {
                    **env,
                    "alert": {
                        "id": ep,
                        "dev": "lvl-1",
                        "kind": "flood",
                        "level": level,
                        "prev": prev,
                        "ts": 1000 + i,
                    },
                }
                await c.publish(f"floodgate/v1/{node}/alert", json.dumps(body).encode(), qos=1)
                beat = {**seq.envelope(), "event": {"type": "heartbeat", "detail": {"i": i}}}
                await c.publish(f"floodgate/v1/{node}/event", json.dumps(beat).encode(), qos=1)

    deadlocks_before = await _deadlocks(db_url)
    async with (
        collecting(db_url, broker, f"a-{node_id}", group) as a,
        collecting(db_url, broker, f"b-{node_id}", group) as b,
    ):
        await asyncio.gather(*(publish_site(s) for s in sites))
        want = 2 * len(ladder) * len(sites)
        n_transitions = (
            select(func.count())
            .select_from(alert_transitions)
            .where(
                alert_transitions.c.ticketed,
                alert_transitions.c.alert_id.in_(select(alerts.c.id).where(alerts.c.node.in_(sites))),
            )
        )

        async def all_ticketed() -> bool:
            return await scalar(db_url, n_transitions) == want

        await wait_until(all_ticketed, 90, "every transition applied to its ticket")
        assert a.ingestor.counters.stored > 0 and b.ingestor.counters.stored > 0, "both collectors worked"
        n_tickets, rows = await a.tickets.list(limit=500)
        assert n_tickets == len(sites), "one ticket per site, no duplicate"
        on_timelines: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for r in rows:
            for e in (await a.tickets.get(r["id"]))["timeline"]:
                if e["detail"] and "alert_id" in e["detail"]:
                    d = e["detail"]
                    on_timelines[(d["alert_id"], d["prev"], d["level"])] += 1
        s = Store(db_url)
        try:
            async with s.read() as conn:
                stored = collections.Counter(
                    (t.alert_id, t.prev, t.level)
                    for t in (await conn.execute(select(alert_transitions))).all()
                )
        finally:
            await s.close()
        assert sum(stored.values()) == want
        assert on_timelines == stored, "every transition on its timeline, once"
    assert not [r for r in caplog.records if "deadlock" in r.getMessage().lower()]
    assert await _deadlocks(db_url) == deadlocks_before


async def _deadlocks(db_url: str) -> int:
    """PostgreSQL's count of deadlocks detected in the test's database (0 on SQLite)."""
    if not db_url.startswith("postgresql"):
        return 0
    return await scalar(
        db_url, text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
    )


async def retained_state(broker: Mosquitto, topic: str) -> dict[str, object]:
    """The retained message on ``topic``, as JSON."""
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.subscribe(topic, qos=1)
        async with asyncio.timeout(10):
            async for m in c.messages:
                assert isinstance(m.payload, bytes)
                return dict(json.loads(m.payload))
    raise AssertionError("unreachable")


@pytest.mark.parametrize("publishes", [True, False], ids=["goodbye-published", "goodbye-failed"])
async def test_a_collector_stopping_leaves_offline_even_when_its_goodbye_cannot_be_published(
    broker: Mosquitto, tmp_path: Path, publishes: bool
) -> None:
    """Stopping, a collector publishes its own "offline" and disconnects. When that publish fails
    (it timed out behind a full window), the clean DISCONNECT discarded its Will: its retained
    "online" outlived it, and edges never held their resends through an outage."""
    cid = f"bye-{new_ulid()[-6:].lower()}"
    topic = f"floodgate/v1/_host/{cid}/state"
    async with collecting(f"sqlite:///{tmp_path / 'c.db'}", broker, cid) as c:
        assert (await retained_state(broker, topic))["online"] is True
        client = c.consumer.client
        assert client is not None
        if not publishes:
            real = client.publish

            async def refuse_offline(t: str, payload: bytes, **kw: object) -> None:
                if t == topic:
                    raise aiomqtt.MqttError("timed out")
                await real(t, payload, **kw)  # type: ignore[arg-type]

            client.publish = refuse_offline  # type: ignore[method-assign]
    assert (await retained_state(broker, topic))["online"] is False
