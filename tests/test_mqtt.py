"""floodgate.mqtt.Intake with a real mosquitto: messages taken in batches, waits that end."""

from __future__ import annotations

import asyncio

import aiomqtt

from floodgate import mqtt
from floodgate.broker import BrokerSettings
from tests.helpers import Mosquitto


async def test_intake_waits_for_a_count_or_the_window(broker: Mosquitto) -> None:
    client = mqtt.client(
        BrokerSettings(url=broker.url), identifier="intake-test", will_topic="t/will", will_payload=b"x"
    )
    intake = mqtt.Intake(client)
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
