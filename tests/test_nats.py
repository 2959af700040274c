"""The NATS cluster the city-scale tests run on (tests/helpers.py ``NatsCluster``), and what the
collector's JetStream intake relies on in the server's MQTT gateway, pinned.

``$MQTT_msgs`` is internal to nats-server: these tests fail if an upgrade changes the
stream, the subjects, the payloads or the acknowledgement the intake builds on
(cloud/jetstream.py, docs/deployment.md).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiomqtt
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy

from tests.helpers import NatsCluster, wait_until

STREAM = "$MQTT_msgs"
FILTER = "$MQTT.msgs.floodgate.v1.>"


async def test_the_cluster_forms_elects_again_after_a_kill_and_takes_the_node_back(
    nats_cluster: NatsCluster,
) -> None:
    c = nats_cluster
    assert c.alive() == [0, 1, 2]
    for i in range(3):
        assert c.monitor(i, "routez")["num_routes"] == 2
    # The gateway makes its streams on the first MQTT connection.
    async with aiomqtt.Client("127.0.0.1", c.mqtt_ports[1], identifier="first", clean_session=False):
        pass
    await wait_until(lambda: c.leader_of(STREAM) is not None, 10, "a leader")
    leader = c.leader_of(STREAM)
    assert leader is not None
    c.kill(leader)
    assert leader not in c.alive()
    await wait_until(lambda: c.leader_of(STREAM) not in (None, leader), 20, "a new leader")
    new = c.leader_of(STREAM)
    assert new is not None
    c.restart(leader)
    assert c.alive() == [0, 1, 2]

    def caught_up() -> bool:
        replicas = _stream(c, new).get("cluster", {}).get("replicas", [])
        return len(replicas) == 2 and all(r.get("current") for r in replicas)

    await wait_until(caught_up, 20, "the restarted node current again in the stream's group")


def _stream(c: NatsCluster, i: int) -> dict[str, Any]:
    for account in c.monitor(i, "jsz?accounts=true&streams=true").get("account_details") or []:
        for s in account.get("stream_detail") or []:
            if s.get("name") == STREAM:
                return dict(s)
    return {}


async def test_a_single_node_has_jetstream_and_mqtt(tmp_path: Path) -> None:
    c = NatsCluster(tmp_path, size=1)
    c.start()
    try:
        async with aiomqtt.Client("127.0.0.1", c.mqtt_ports[0], identifier="x"):
            pass
        assert await wait_until(lambda: c.leader_of(STREAM) == 0, 10, "the stream on the one node")
    finally:
        c.stop()


@pytest.mark.parametrize("size", [1, 3])
async def test_mqtt_msgs_is_what_the_jetstream_intake_relies_on(tmp_path: Path, size: int) -> None:
    c = NatsCluster(tmp_path, size=size)
    c.start()
    nc = await nats.connect(c.nats_urls, allow_reconnect=False)
    try:
        js = nc.jetstream()
        # The gateway makes $MQTT_msgs on an MQTT connection (the collector's own connects first).
        async with aiomqtt.Client("127.0.0.1", c.mqtt_ports[0], identifier="collector", clean_session=False):
            pass
        info = await js.stream_info(STREAM)
        assert info.config.subjects == ["$MQTT.msgs.>"]
        # Interest retention: nothing is kept for a consumer made later; make it before traffic.
        assert info.config.retention == RetentionPolicy.INTEREST
        assert info.config.num_replicas == size
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name="fg", ack_policy=AckPolicy.EXPLICIT, filter_subject=FILTER, ack_wait=1
            ),
        )
        binary = bytes(range(256))
        async with aiomqtt.Client("127.0.0.1", c.mqtt_ports[-1], identifier="edge") as edge:
            # QoS 1 is PUBACKed once $MQTT_msgs has it: stored whatever happens to the consumer.
            await edge.publish("floodgate/v1/site-01/alert", b'{"a":1}', qos=1)
            await edge.publish("floodgate/v1/site-01/state", b'{"online":true}', qos=1, retain=True)
            await edge.publish("floodgate/v1/site-02/telemetry", binary, qos=1)
            await edge.publish("floodgate/v1/site-02/telemetry", b"qos 0", qos=0)
            await edge.publish("other/v1/site-01/alert", b"not ours", qos=1)
        sub = await js.pull_subscribe_bind("fg", STREAM)
        got = await sub.fetch(10, timeout=2)
        assert [(m.subject, m.data) for m in got] == [
            ("$MQTT.msgs.floodgate.v1.site-01.alert", b'{"a":1}'),
            ("$MQTT.msgs.floodgate.v1.site-01.state", b'{"online":true}'),
            ("$MQTT.msgs.floodgate.v1.site-02.telemetry", binary),  # the payload as it was
        ], "QoS 1 only, topic / -> ., in order, payload as-is; QoS 0 and other topics not stored here"
        # The MQTT retain flag is not in the message (retained copies go to $MQTT_rmsgs): the
        # intake does not need it (a node's state is the same message, retained or not).
        assert all(m.headers == {"Nmqtt-Pub": "1"} for m in got)
        for m in got[:2]:
            await m.ack_sync()
        # Not acked: redelivered after ack_wait; acked: never again.
        again = await sub.fetch(10, timeout=4)
        assert [m.subject for m in again] == ["$MQTT.msgs.floodgate.v1.site-02.telemetry"]
        assert again[0].metadata.num_delivered == 2
        await again[0].ack_sync()
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=1.5)  # past ack_wait
        # Interest retention: once acked by the only consumer, gone from the stream.
        await wait_until(lambda: _stored(js), 5, "the acked messages removed from the stream", every=0.1)
    finally:
        await nc.close()
        c.stop()


async def _stored(js: nats.js.JetStreamContext) -> bool:
    return (await js.stream_info(STREAM)).state.messages == 0


async def test_a_topic_with_a_dot_is_refused_by_the_gateway(tmp_path: Path) -> None:
    """2.9 disconnects a client that publishes a topic with a '.' (2.10 maps it to '//').

    Node ids never hold one (floodgate.wire.ID_PATTERN); the intake turns every '.' of
    a subject back into '/'.
    """
    c = NatsCluster(tmp_path, size=1)
    c.start()
    try:
        async with aiomqtt.Client("127.0.0.1", c.mqtt_ports[0], identifier="dot", timeout=2) as m:
            with pytest.raises(aiomqtt.MqttError):
                await m.publish("floodgate/v1/a.b/event", b"{}", qos=1, timeout=2)
    except aiomqtt.MqttError:
        pass  # the disconnect may surface on leaving the context instead
    finally:
        c.stop()


async def test_what_nats_publishes_reaches_mqtt_only_live_and_as_qos_0(tmp_path: Path) -> None:
    """Why the collector sends commands over MQTT, not as NATS publishes (docs/deployment.md):
    the gateway keeps a QoS 1 PUBLISH from MQTT for an offline persistent session, and a
    NATS publish only reaches a session that is connected, downgraded to QoS 0."""
    c = NatsCluster(tmp_path, size=1)
    c.start()
    nc = await nats.connect(c.nats_urls, allow_reconnect=False)
    port = c.mqtt_ports[0]
    topic = "floodgate/v1/site-01/cmd"
    try:
        async with aiomqtt.Client("127.0.0.1", port, identifier="edge", clean_session=False) as edge:
            await edge.subscribe(topic, qos=1)
        # The edge is away.
        await nc.publish("floodgate.v1.site-01.cmd", b"nats, while away")
        await nc.flush()
        async with aiomqtt.Client("127.0.0.1", port, identifier="office") as office:
            await office.publish(topic, b"mqtt, while away", qos=1)
        got: list[tuple[bytes, int]] = []
        async with aiomqtt.Client("127.0.0.1", port, identifier="edge", clean_session=False) as edge:
            await edge.subscribe(topic, qos=1)
            await nc.publish("floodgate.v1.site-01.cmd", b"nats, while there")
            await nc.flush()
            async with asyncio.timeout(10):
                async for m in edge.messages:
                    assert isinstance(m.payload, bytes)
                    got.append((m.payload, m.qos))
                    if {b"mqtt, while away", b"nats, while there"} <= {p for p, _ in got}:
                        break
        assert sorted(got) == [(b"mqtt, while away", 1), (b"nats, while there", 0)]
    finally:
        await nc.close()
        c.stop()
