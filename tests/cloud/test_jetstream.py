"""The collector's intake from a 3-node NATS JetStream cluster (cloud/jetstream.py), end to end.

Real nats-server cluster (tests/helpers.py ``NatsCluster``), real PostgreSQL, edges
and publishers speaking MQTT to the cluster's MQTT listeners; no mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from sqlalchemy import func, select

from cloud import ingest
from cloud.collector import Collector
from cloud.config import CloudConfig, NatsConfig, load_cloud_config
from cloud.db.schema import dead_letters, messages
from cloud.db.store import Store
from cloud.ingest import Applied
from cloud.jetstream import STREAM, JetStreamIntake, _for_nodes, failure, topic_of
from edge.agent import Agent
from floodgate.broker import BrokerSettings
from floodgate.errors import ConfigError
from floodgate.ids import new_ulid
from floodgate.wire import Sequencer, Telemetry, node_command_key
from tests.cloud.test_collector import scalar
from tests.cloud.test_e2e_ack import outbox_rows
from tests.conftest import SiteFactory, running
from tests.helpers import NatsCluster, wait_until

# Several collectors on one database: PostgreSQL (SQLite has one writer at a time).
PG = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


@contextlib.asynccontextmanager
async def collecting(
    db_url: str,
    cluster: NatsCluster,
    client_id: str,
    durable: str = "floodgate-collectors",
    command_key_file: str | None = None,
    ack_wait_s: float = 30.0,
    alert_lane: bool = True,
) -> AsyncIterator[Collector]:
    urls = cluster.mqtt_urls
    c = Collector(
        CloudConfig(
            database=db_url,
            client_id=client_id,
            api=None,
            command_key_file=command_key_file,
            nats=NatsConfig(
                urls=cluster.nats_urls,
                durable=durable,
                ack_wait_s=ack_wait_s,
                fetch_wait_s=0.5,
                alert_lane=alert_lane,
            ),
        ),
        BrokerSettings(url=urls[0], urls=tuple(urls), reconnect_max_s=0.5),
    )
    task = asyncio.create_task(c.run())
    try:
        await asyncio.wait_for(c.ready.wait(), 20)
        await wait_until(c.intake_ready, 30, "the collector on MQTT and bound to its JetStream consumer")
        yield c
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=15)


async def publish(cluster: NatsCluster, node: str, n: int, node_index: int = 0, boot: int = 1) -> set[int]:
    """``n`` telemetry messages of ``node`` over MQTT, QoS 1, moving to the next listener when one
    goes; returns the seqs the cluster PUBACKed (what it must not lose)."""
    seq = Sequencer(node, boot)
    bodies = []
    for _ in range(n):
        env = seq.envelope()
        reading = {"dev": "lvl-1", "ts": env["ts"], "metric": "depth_mm", "value": 1.0, "quality": "good"}
        bodies.append((env["seq"], json.dumps({**env, "readings": [reading]}).encode()))
    acked: set[int] = set()
    at = node_index
    while len(acked) < n:
        port = cluster.mqtt_ports[at % cluster.size]
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{node}", timeout=5) as c:
                for s, body in bodies:
                    if s not in acked:
                        await c.publish(f"floodgate/v1/{node}/telemetry", body, qos=1, timeout=5)
                        acked.add(s)  # publish returns on the PUBACK
        except aiomqtt.MqttError:
            at += 1  # that node is gone (or electing): the next one
    return acked


def stored(db_url: str, node: str) -> object:
    return scalar(db_url, select(func.count()).select_from(messages).where(messages.c.node == node))


async def consumer_idle(cluster: NatsCluster, durable: str = "floodgate-collectors") -> bool:
    nc = await nats.connect(cluster.nats_urls, allow_reconnect=False)
    try:
        info = await nc.jetstream().consumer_info(STREAM, durable)
        return info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await nc.close()


def test_the_topic_is_the_subject_with_its_dots_as_slashes() -> None:
    assert topic_of("$MQTT.msgs.floodgate.v1.site-01.alert") == "floodgate/v1/site-01/alert"


def test_what_the_collectors_send_the_nodes_is_passed_over_not_dead_lettered() -> None:
    """The stream holds what the collectors publish too: commands, ack reports and each
    collector's own online state (its Will) are for the nodes; anything else goes to ingest."""
    assert _for_nodes("floodgate/v1/site-01/cmd") and _for_nodes("floodgate/v1/site-01/ack")
    assert _for_nodes("floodgate/v1/_host/collector-a/state")
    assert not _for_nodes("floodgate/v1/_host/state")  # the shared one: ingest passes it over
    assert not _for_nodes("floodgate/v1/site-01/alert")
    assert not _for_nodes("floodgate/v1/site-01/extra/cmd")


@PG
async def test_two_collectors_share_the_consumer_and_store_each_message_once(
    nats_cluster: NatsCluster, db_url: str, node_id: str
) -> None:
    total = 1500
    async with collecting(db_url, nats_cluster, "col-a") as a, collecting(db_url, nats_cluster, "col-b") as b:
        nodes = [f"{node_id[:40]}-{i}" for i in range(3)]
        sent = await asyncio.gather(*(publish(nats_cluster, n, total // 3, i) for i, n in enumerate(nodes)))
        assert sum(map(len, sent)) == total

        async def all_stored() -> bool:
            return sum([await stored(db_url, n) for n in nodes]) == total  # type: ignore[misc]

        await wait_until(all_stored, 60, "every message stored")
        await wait_until(lambda: consumer_idle(nats_cluster), 10, "every message acknowledged")
        ca, cb = a.jetstream, b.jetstream
        assert ca is not None and cb is not None
        # Each has its alert lane, bound to the one durable they share on the alerts.
        for c in (a, b):
            assert c.alert_lane is not None and c.alert_lane.consuming()
            assert c.alert_lane.settings.durable == "floodgate-collectors-alerts"
        assert await consumer_idle(nats_cluster, "floodgate-collectors-alerts")
        # Each took a share, and the server gave each message to one of them only.
        assert a.ingestor.counters.stored > 0 and b.ingestor.counters.stored > 0, "both collectors worked"
        assert a.ingestor.counters.stored + b.ingestor.counters.stored == total
        assert a.ingestor.counters.duplicates + b.ingestor.counters.duplicates == 0
        assert ca.counters.redelivered + cb.counters.redelivered == 0
        # What GET /metrics shows of each (cloud.metrics): the JetStream intake fills the same names.
        for c in (a, b):
            m = c.intake_metrics
            assert m.connected.value() == 1 and m.redeliveries.value() == 0
            assert m.batches.value() >= 1 and m.batch_size.sum == c.ingestor.counters.received
            lag = m.consumer_lag.value()
            assert lag is not None and lag >= 0
            # The alert lane's own samples, apart: no alert was sent, so it holds none.
            assert m.connected.value(lane="alerts") == 1
            await wait_until(lambda m=m: m.consumer_lag.value(lane="alerts") == 0, 10, "the lane's lag asked")


@PG
async def test_a_poison_message_is_a_dead_letter_and_ingest_goes_on(
    nats_cluster: NatsCluster, db_url: str, node_id: str
) -> None:
    async with collecting(db_url, nats_cluster, "col-p") as col:
        async with aiomqtt.Client("127.0.0.1", nats_cluster.mqtt_ports[2], identifier="poisoner") as c:
            await c.publish(f"floodgate/v1/{node_id}/alert", b"\xff not json", qos=1)
        await publish(nats_cluster, node_id, 5, 1)
        await wait_until(lambda: stored(db_url, node_id), 20, "the good messages")
        await wait_until(
            lambda: scalar(db_url, select(func.count()).select_from(dead_letters)), 20, "the dead letter"
        )
        await wait_until(lambda: consumer_idle(nats_cluster), 10, "the poison acknowledged, not redelivered")
        assert await stored(db_url, node_id) == 5  # type: ignore[misc]
        assert col.ingestor.counters.dead_letters == 1


@PG
async def test_ack_reports_go_at_qos_0_and_are_not_stored_in_the_stream(
    nats_cluster: NatsCluster, db_url: str
) -> None:
    """On NATS a QoS 1 report would be stored in ``$MQTT_msgs`` (replicated), handed to the
    collectors' consumer to skip and to each node's: the reports go at QoS 0 (cumulative, so
    one missed is made good by the next), and the intake sees none of them."""
    node = "nats-ackq-1"
    async with (
        aiomqtt.Client("127.0.0.1", nats_cluster.mqtt_ports[1], identifier="tap-ackq") as tap,
        collecting(db_url, nats_cluster, "col-q") as col,
    ):
        await tap.subscribe(f"floodgate/v1/{node}/ack", qos=1)
        await publish(nats_cluster, node, 20)
        async with asyncio.timeout(30):
            async for m in tap.messages:
                report = json.loads(m.payload if isinstance(m.payload, bytes) else b"{}")
                if report["boots"][0]["ranges"][-1][1] == 19:  # the last one confirmed
                    break
                assert m.qos == 0
        assert m.qos == 0
        assert col.confirmer.sent >= 1
        assert col.jetstream is not None and col.jetstream.counters.skipped_kinds["ack"] == 0


@PG
async def test_a_collector_restarted_with_a_backlog_stores_it_all(
    nats_cluster: NatsCluster, db_url: str, node_id: str
) -> None:
    async with collecting(db_url, nats_cluster, "col-r"):
        pass  # made the durable consumer: from now on the stream keeps what it filters
    sent = await publish(nats_cluster, node_id, 400)
    assert await stored(db_url, node_id) == 0
    async with collecting(db_url, nats_cluster, "col-r") as col:

        async def all_stored() -> bool:
            return await stored(db_url, node_id) == len(sent)  # type: ignore[misc]

        await wait_until(all_stored, 30, "the backlog stored")
        assert col.jetstream is not None and col.jetstream.counters.fetched >= len(sent)


@PG
async def test_edge_outbox_emptied_after_confirmation_and_a_command_reaches_it(
    nats_cluster: NatsCluster, db_url: str, sim_site: SiteFactory, node_id: str, tmp_path: Path
) -> None:
    """#14 through the cluster: the edge holds each message until the collector confirms it;
    the collector's command goes to the edge over the cluster's MQTT side."""
    master = tmp_path / "master.key"
    master.write_bytes(b"office-master-secret-0123456789")
    key = node_command_key(b"office-master-secret-0123456789", node_id).decode()
    sim, site = await sim_site(
        broker_url=None,
        poll_s=0.1,
        telemetry_interval_s=0.2,
        overrides={"broker.urls": nats_cluster.mqtt_urls, "command_key": key},
    )
    agent = Agent(site)
    async with (
        collecting(db_url, nats_cluster, "col-e", command_key_file=str(master)) as col,
        running(agent),
    ):
        sim.source.manual = 400.0  # alerts, board and gate events
        await wait_until(lambda: stored(db_url, node_id), 30, "the agent's messages stored")
        assert agent.seq is not None and agent.uplink is not None
        upto = agent.seq.next_seq - 1
        outbox = site.resolve(site.config.outbox.path)
        await wait_until(
            lambda: agent.uplink is not None and agent.uplink.confirmed > 0,
            20,
            "the collector's confirmations",
        )
        await wait_until(
            lambda: outbox_rows(outbox, agent.boot, upto) == 0, 20, "the outbox emptied up to it"
        )
        sent = await col.commands.send(node_id, "rebirth", issued_by="user:chen", reason="check the box")

        async def answered() -> bool:
            return (await col.commands.get(sent["cmd_id"]))["status"] == "done"

        await wait_until(answered, 30, "the box's cmd-result, through the cluster both ways")


@PG
async def test_leader_killed_mid_stream_loses_nothing_acknowledged(
    nats_cluster: NatsCluster, db_url: str, node_id: str
) -> None:
    """``kill -9`` of the ``$MQTT_msgs`` leader while two publishers and two collectors run."""
    c = nats_cluster
    async with collecting(db_url, c, "col-k1"), collecting(db_url, c, "col-k2"):
        nodes = [f"{node_id[:40]}-{i}" for i in range(2)]
        publishers = [asyncio.create_task(publish(c, n, 1500, i)) for i, n in enumerate(nodes)]
        await wait_until(lambda: stored(db_url, nodes[0]), 30, "ingest under way")
        leader = c.leader_of(STREAM)
        assert leader is not None
        assert not any(p.done() for p in publishers), "killed mid-stream"
        c.kill(leader)
        sent = await asyncio.wait_for(asyncio.gather(*publishers), 120)
        c.restart(leader)

        async def all_stored() -> bool:
            got = [await stored(db_url, n) for n in nodes]  # type: ignore[misc]
            return all(g >= len(s) for g, s in zip(got, sent, strict=True))

        await wait_until(all_stored, 90, "every PUBACKed message stored")
        for n, s in zip(nodes, sent, strict=True):
            q = select(messages.c.seq).where(messages.c.node == n)
            seqs = {int(r) for r in await _column(db_url, q)}
            assert s <= seqs, f"lost {len(s - seqs)} PUBACKed messages of {n}"


async def _column(db_url: str, q: object) -> list[object]:
    s = Store(db_url)
    try:
        async with s.read() as conn:
            return [r[0] for r in await conn.execute(q)]  # type: ignore[call-overload]
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ("shared_group: g\n", "shared_group"),
        ("broker: {url: 'mqtt://127.0.0.1:1', protocol: '5'}\n", "broker.protocol"),
        ("nats_extra_urls", "nats.urls"),
    ],
)
def test_nats_config_mistakes_say_where(tmp_path: Path, extra: str, where: str) -> None:
    urls = "['nats://127.0.0.1:1']"
    if extra == "nats_extra_urls":
        urls, extra = "['nats://127.0.0.1:1', 'nats://127.0.0.1:1']", ""
    cfg = tmp_path / "cloud.yaml"
    cfg.write_text(f"{extra}nats: {{urls: {urls}}}\n")
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_cloud_config(cfg)


@PG
async def test_a_failed_commit_hands_the_batch_back_and_it_is_stored_once_the_database_is_back(
    nats_cluster: NatsCluster, db_url: str, node_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with collecting(db_url, nats_cluster, "col-d") as col:
        js = col.jetstream
        assert js is not None
        s = Store(db_url)
        try:
            async with s.engine.begin() as conn:
                await conn.exec_driver_sql("ALTER TABLE messages RENAME TO messages_away")
            with caplog.at_level(logging.DEBUG, "floodgate.cloud.jetstream"):
                sent = await publish(nats_cluster, node_id, 20)
                await wait_until(lambda: js.counters.nacked >= 40, 30, "the batch handed back, twice")
                async with s.engine.begin() as conn:
                    await conn.exec_driver_sql("ALTER TABLE messages_away RENAME TO messages")

                async def all_stored() -> bool:
                    return await stored(db_url, node_id) == len(sent)  # type: ignore[misc]

                await wait_until(all_stored, 30, "every message once the table is back")
        finally:
            await s.close()
        await wait_until(lambda: consumer_idle(nats_cluster), 10, "everything acknowledged")
        assert js.counters.redelivered >= len(sent)
        failing = [r for r in caplog.records if r.name == "floodgate.cloud.jetstream" and "ingest" in r.msg]
        assert [r.levelno for r in failing if r.levelno >= logging.ERROR] == [logging.ERROR], "ERROR once"
        assert any(r.levelno == logging.INFO and "stores again" in r.msg for r in failing)


@PG
async def test_the_collectors_mqtt_side_moves_to_the_next_listener_when_its_node_dies(
    nats_cluster: NatsCluster, db_url: str, node_id: str
) -> None:
    """Commands and confirmations go out on the collector's MQTT connection: with ``broker.urls``
    it follows the cluster when the node it is connected to is killed."""
    async with collecting(db_url, nats_cluster, "col-f") as col:
        assert col.consumer.broker == nats_cluster.mqtt_urls[0]
        nats_cluster.kill(0)
        await wait_until(
            lambda: col.consumer.subscribed.is_set() and col.consumer.broker != nats_cluster.mqtt_urls[0],
            60,
            "the collector on another node's MQTT listener",
        )
        await publish(nats_cluster, node_id, 10, 1)

        async def stored_all() -> bool:
            return await stored(db_url, node_id) == 10  # type: ignore[misc]

        await wait_until(stored_all, 60, "ingest going on with a node down")


@pytest.mark.parametrize(
    ("exc", "said"),
    [
        (TimeoutError(), "TimeoutError"),
        (nats.errors.TimeoutError(), "TimeoutError: nats: timeout"),
        (OSError("refused"), "OSError: refused"),
    ],
)
def test_why_the_intake_is_not_consuming_names_the_failure(exc: BaseException, said: str) -> None:
    assert failure(exc) == said


@PG
async def test_a_connection_lost_before_the_acks_still_reacts_and_the_redelivery_stores_nothing_twice(
    nats_cluster: NatsCluster, db_url: str, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lost: list[str] = []
    real_ack = Msg.ack

    async def ack(self: Msg) -> None:
        if not lost and self.subject.endswith(".alert"):  # the connection goes between commit and acks
            lost.append(self.subject)
            raise nats.errors.ConnectionClosedError
        await real_ack(self)

    monkeypatch.setattr(Msg, "ack", ack)
    # The shared consumer's ack lost and its redelivery: no alert lane to store the alert first.
    async with collecting(db_url, nats_cluster, "col-k", ack_wait_s=2.0, alert_lane=False) as col:
        js = col.jetstream
        assert js is not None
        reacted: list[Applied] = []
        on_applied = js.on_applied
        assert on_applied is not None

        async def recording(applied: Applied) -> None:
            reacted.append(applied)
            await on_applied(applied)

        js.on_applied = recording
        seq = Sequencer(node_id, 1)
        alert = {
            "id": new_ulid(),
            "dev": "lvl-1",
            "kind": "flood",
            "level": "warning",
            "prev": "clear",
            "ts": 1,
        }
        async with aiomqtt.Client("127.0.0.1", nats_cluster.mqtt_ports[0], identifier="alerter") as c:
            await c.publish(
                f"floodgate/v1/{node_id}/alert",
                json.dumps({**seq.envelope(), "alert": alert}).encode(),
                qos=1,
            )
        await wait_until(lambda: bool(lost), 20, "the ack lost")
        await wait_until(lambda: any(a.alerts for a in reacted), 20, "the reaction to the stored alert")
        await wait_until(lambda: js.counters.redelivered >= 1, 20, "the unacknowledged alert delivered again")
        await wait_until(lambda: consumer_idle(nats_cluster), 20, "acknowledged the second time")
        assert await stored(db_url, node_id) == 1  # type: ignore[misc]
        assert col.ingestor.counters.duplicates == 1
        assert sum(len(a.alerts) for a in reacted) == 1, "reacted to once"


@PG
async def test_a_message_that_breaks_prepare_is_a_dead_letter_and_the_intake_goes_on(
    nats_cluster: NatsCluster, db_url: str, node_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, good = f"{node_id[:40]}-bad", f"{node_id[:40]}-good"
    real = ingest._reading_rows

    def rows(m: Telemetry, series: Any) -> Any:
        if m.node == bad:  # stands for a bug in the collector's own code on one node's message
            raise KeyError("no such column")
        return real(m, series)

    monkeypatch.setattr(ingest, "_reading_rows", rows)
    async with collecting(db_url, nats_cluster, "col-b"):
        await publish(nats_cluster, bad, 1)
        await publish(nats_cluster, good, 5, 1)
        await wait_until(lambda: consumer_idle(nats_cluster), 20, "all acknowledged")
        await wait_until(lambda: stored(db_url, good), 20, "the later messages")
        assert await stored(db_url, good) == 5  # type: ignore[misc]
        assert await stored(db_url, bad) == 0  # type: ignore[misc]
        details = await _column(
            db_url, select(dead_letters.c.detail).where(dead_letters.c.code == "intake_error")
        )
        assert details == ["prepare failed: KeyError: 'no such column'"]


@PG
async def test_an_unexpected_failure_of_the_intake_is_logged_once_and_it_consumes_again(
    nats_cluster: NatsCluster,
    db_url: str,
    node_id: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failed: list[int] = []
    real_fetch = JetStreamIntake._fetch

    async def fetch(self: JetStreamIntake, sub: Any) -> list[Msg]:
        if len(failed) < 3:  # a bug outside any one message, three times over
            failed.append(1)
            raise RuntimeError("a bug in fetching")
        return await real_fetch(self, sub)

    monkeypatch.setattr(JetStreamIntake, "_fetch", fetch)
    with caplog.at_level(logging.DEBUG, "floodgate.cloud.jetstream"):
        # One intake (the fetch is patched for every one): no alert lane.
        async with collecting(db_url, nats_cluster, "col-u", alert_lane=False):
            await wait_until(lambda: len(failed) == 3, 20, "three failures")
            await publish(nats_cluster, node_id, 5)
            await wait_until(lambda: stored(db_url, node_id), 20, "messages stored after the failures")
            await wait_until(lambda: consumer_idle(nats_cluster), 20, "all acknowledged")
            assert await stored(db_url, node_id) == 5  # type: ignore[misc]
    said = [r for r in caplog.records if r.name == "floodgate.cloud.jetstream" and "failed" in r.msg]
    assert [r.levelno for r in said if r.levelno >= logging.ERROR] == [logging.ERROR], "ERROR once"
    assert "RuntimeError: a bug in fetching" in said[0].getMessage()
