"""cloud.receive.Intake with a real mosquitto: messages taken in batches, waits that end."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from cloud import receive
from cloud.paho_internals import manual_acks, paho_of
from floodgate import mqtt
from floodgate.broker import BrokerSettings
from tests.edge.test_broker_security import make_pki
from tests.helpers import Mosquitto


async def test_intake_waits_for_a_count_or_the_window(broker: Mosquitto) -> None:
    client = mqtt.client(
        BrokerSettings(url=broker.url), identifier="intake-test", will_topic="t/will", will_payload=b"x"
    )
    intake = receive.Intake(client)
    async with client, aiomqtt.Client("127.0.0.1", broker.port) as pub:
        await client.subscribe("t/intake", qos=1)
        for i in range(3):
            await pub.publish("t/intake", str(i).encode(), qos=1)
        assert await intake.wait(10, count=3), "three published, three to wait for"
        # Only three: a wait for ten ends at its window, with what there is still queued.
        assert not await intake.wait(0.05, count=10)
        assert [m.payload for m in intake.take(10)] == [b"0", b"1", b"2"]
        waiting = asyncio.create_task(intake.wait(10, count=2))
        await pub.publish("t/intake", b"3", qos=1)
        await pub.publish("t/intake", b"4", qos=1)
        assert await waiting
        assert [m.payload for m in intake.take(1)] == [b"3"], "taken oldest first, up to the number asked"
        assert await intake.wait(0), "one still queued: no wait"


def sizes(n: int) -> list[int]:
    """Payload sizes that cut packets at every kind of place.

    Around each step of MQTT's remaining length (one, two, three bytes), and
    past the read-ahead (``READ_AHEAD`` set to 4 KiB below), among random ones.
    """
    edges = [0, 1, 100, 127, 128, 129, 16_383, 16_384, 16_385, 70_000]
    rng = random.Random(7)
    return [edges[i % len(edges)] if i % 5 == 0 else rng.randrange(1, 3000) for i in range(n)]


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_reader_hands_every_packet_of_a_stream_to_paho(
    tls: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One packet per turn at most: what else is read ahead gets through only
    # because a turn never ends with bytes still buffered (epoll cannot see them).
    # If it did, the stream would stall until the keepalive (30 s) sent a ping.
    monkeypatch.setattr(receive, "READ_BURST", 1)
    monkeypatch.setattr(receive, "READ_AHEAD", 4096)
    if tls:
        make_pki(tmp_path)
        listener = [
            f"cafile {tmp_path / 'ca.crt'}",
            f"certfile {tmp_path / 'server.crt'}",
            f"keyfile {tmp_path / 'server.key'}",
            "allow_anonymous true",
        ]
        broker = Mosquitto(tmp_path, listener=listener)
        settings = BrokerSettings(url=f"mqtts://127.0.0.1:{broker.port}", ca_file=str(tmp_path / "ca.crt"))
    else:
        broker = Mosquitto(tmp_path)
        settings = BrokerSettings(url=f"mqtt://127.0.0.1:{broker.port}")
    broker.start()
    try:
        client = mqtt.client(settings, identifier="reader-test", will_topic="t/will", will_payload=b"x")
        intake = receive.Intake(client)
        payloads = [bytes([i % 251]) * size for i, size in enumerate(sizes(600))]
        async with (
            client,
            mqtt.client(settings, identifier="reader-pub", will_topic="t/will", will_payload=b"x") as pub,
        ):
            await client.subscribe("t/stream", qos=1)
            for i in range(0, len(payloads), 10):  # aiomqtt warns past 10 pending calls
                await asyncio.gather(*(pub.publish("t/stream", p, qos=1) for p in payloads[i : i + 10]))
            assert await intake.wait(20, count=len(payloads)), f"{len(intake.queue)} of {len(payloads)}"
            assert [m.payload for m in intake.take(len(payloads))] == payloads, "every byte, in order"
            assert intake.reader.buffered() == 0
    finally:
        broker.stop()


async def test_reader_ends_a_turn_after_its_burst(broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    # A turn handles READ_BURST packets, then only what is already read ahead:
    # a long backlog must not keep the event loop (and the commits) waiting.
    monkeypatch.setattr(receive, "READ_BURST", 5)
    monkeypatch.setattr(receive, "READ_AHEAD", 4096)
    settings = BrokerSettings(url=broker.url)
    client = mqtt.client(
        settings, identifier="reader-burst", will_topic="t/will", will_payload=b"x", persistent=True
    )
    async with client:
        await client.subscribe("t/burst", qos=1)
    payloads = [bytes([i % 251]) * 1000 for i in range(300)]
    async with mqtt.client(settings, identifier="burst-pub", will_topic="t/will", will_payload=b"x") as pub:
        for i in range(0, len(payloads), 10):  # aiomqtt warns past 10 pending calls
            await asyncio.gather(*(pub.publish("t/burst", p, qos=1) for p in payloads[i : i + 10]))
    # The backlog waits in the session: it arrives at once when the client is back.
    intake = receive.Intake(client)
    paho = paho_of(client)
    read, per_turn = paho.loop_read, []

    def counting(max_packets: int = 1) -> Any:
        before = len(intake.queue)
        rc = read(max_packets)
        per_turn.append(len(intake.queue) - before)
        return rc

    paho.loop_read = counting  # type: ignore[method-assign]
    async with client:
        assert await intake.wait(20, count=len(payloads)), f"{len(intake.queue)} of {len(payloads)}"
    assert [m.payload for m in intake.take(len(payloads))] == payloads
    # 5, and at most the rest of 4 KiB of 1 KB packets (a packet cut off finishes next turn).
    assert max(per_turn) <= 5 + 5, per_turn
    assert sum(n >= 5 for n in per_turn) >= 10, "the backlog came in full turns"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_intake_takes_every_kind_of_publish(broker: Mosquitto, protocol: str) -> None:
    # QoS 0 and 1 take the intake's own way; QoS 2 and (on MQTT 5) a message
    # with properties take paho's. Either way the message is the same, and
    # (without manual acks) acknowledged as it comes.
    v5 = protocol == "5"
    settings = BrokerSettings(url=broker.url, protocol=protocol)

    def make() -> tuple[aiomqtt.Client, receive.Intake]:
        c = mqtt.client(
            settings, identifier=f"kinds-{protocol}", will_topic="t/will", will_payload=b"x", persistent=True
        )
        return c, receive.Intake(c)

    def publisher() -> aiomqtt.Client:
        return mqtt.client(settings, identifier=f"kinds-pub-{protocol}", will_topic="t/w", will_payload=b"")

    client, intake = make()
    sent: list[tuple[str, bytes, int]] = []
    async with client, publisher() as pub:
        await client.subscribe("t/kinds/#", qos=2)
        for qos in (0, 1, 2):
            for topic, payload in ((f"t/kinds/q{qos}", b""), (f"t/kinds/q{qos}/long", b"\x00\xff" * 9000)):
                await pub.publish(topic, payload, qos=qos)
                sent.append((topic, payload, qos))
        if v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.UserProperty = [("site", "hp-01")]
            await pub.publish("t/kinds/props", b"with properties", qos=1, properties=props)
            sent.append(("t/kinds/props", b"with properties", 1))
        assert await intake.wait(10, count=len(sent)), f"{len(intake.queue)} of {len(sent)}"
        got = intake.take(len(sent))
        sock = paho_of(client).socket()
        assert isinstance(sock, socket.socket)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), "PUBACKs are not held back (Nagle)"
    assert sorted((m.topic, bytes(m.payload), m.qos) for m in got) == sorted(sent)
    assert not intake.queue
    # Back on the same session: the broker sends what was not acknowledged
    # before a new message (the marker), so only the marker means all were.
    client, intake = make()
    async with client, publisher() as pub:
        await pub.publish("t/kinds/marker", b"marker", qos=1)
        assert await intake.wait(10)
        assert [m.payload for m in intake.take(10)] == [b"marker"], "every message was acknowledged"


async def test_acknowledged_messages_are_not_delivered_again(broker: Mosquitto) -> None:
    # The PUBACKs of a batch go out as one write; the broker must take each of them.
    settings = BrokerSettings(url=broker.url)

    def make() -> tuple[aiomqtt.Client, receive.Intake]:
        c = mqtt.client(settings, identifier="acks", will_topic="t/will", will_payload=b"x", persistent=True)
        manual_acks(c)
        return c, receive.Intake(c)

    async def marker(text: bytes) -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            await pub.publish("t/acks", text, qos=1)

    client, intake = make()
    async with client:
        await client.subscribe("t/acks", qos=1)
        async with aiomqtt.Client("127.0.0.1", broker.port) as pub:
            for i in range(10):
                await pub.publish("t/acks", str(i).encode(), qos=1)
        assert await intake.wait(10, count=10)
        intake.ack(intake.take(6))  # the other four are taken but never acknowledged
    client, intake = make()
    async with client:
        # The broker sends a session's queued messages before a new one (the marker).
        await marker(b"first marker")
        assert await intake.wait(10, count=5)
        again = intake.take(10)
        assert [m.payload for m in again] == [b"6", b"7", b"8", b"9", b"first marker"]
        assert [m.dup for m in again] == [True] * 4 + [False]
        intake.ack(again)
    client, intake = make()
    async with client:
        await marker(b"second marker")
        assert await intake.wait(10)
        assert [m.payload for m in intake.take(10)] == [b"second marker"], "nothing acknowledged comes again"
