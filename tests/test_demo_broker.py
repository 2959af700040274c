"""The demo's embedded broker (amqtt) on a loaded machine: a subscriber slow to acknowledge a
delivery costs a count, not a traceback on the newcomer's screen (the edges send again what the
collector did not confirm)."""

from __future__ import annotations

import asyncio
import logging
import struct
from urllib.parse import urlparse

import aiomqtt
import pytest

from floodgate.demo import SlowSubscriber, embedded_broker
from tests.helpers import wait_until


def _packet(kind: int, body: bytes) -> bytes:
    n, length = len(body), b""
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            return bytes([kind]) + length + body


def _string(s: str) -> bytes:
    return struct.pack("!H", len(s)) + s.encode()


async def never_acknowledging_subscriber(host: str, port: int, topic: str) -> asyncio.StreamWriter:
    """A raw MQTT 3.1.1 client that subscribes at QoS 1 and never sends a PUBACK."""
    reader, writer = await asyncio.open_connection(host, port)
    connect = _string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + _string("never-acks")
    writer.write(_packet(0x10, connect))
    assert (await reader.readexactly(4))[0] == 0x20  # CONNACK
    writer.write(_packet(0x82, struct.pack("!H", 1) + _string(topic) + bytes([1])))
    assert (await reader.readexactly(5))[0] == 0x90  # SUBACK
    return writer


async def test_a_delivery_never_acknowledged_is_counted_not_printed(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    slow = SlowSubscriber()
    unhandled: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    caplog.set_level(logging.DEBUG)
    try:
        async with embedded_broker(slow=slow) as url:
            u = urlparse(url)
            assert u.hostname and u.port
            writer = await never_acknowledging_subscriber(u.hostname, u.port, "floodgate/v1/x/alert")
            try:
                async with aiomqtt.Client(u.hostname, u.port) as pub:
                    await pub.publish("floodgate/v1/x/alert", b"{}", qos=1)

                    async def traffic() -> bool:
                        # amqtt gives a delivery up after 5 s without its PUBACK, and reports
                        # the failure when it next broadcasts: the demo's traffic goes on
                        await pub.publish("floodgate/v1/y/telemetry", b"{}", qos=1)
                        await asyncio.sleep(0.5)
                        return slow.count >= 1

                    await wait_until(traffic, 30, "amqtt's PUBACK timeout")
            finally:
                writer.close()
    finally:
        loop.set_exception_handler(None)
    assert not [r for r in caplog.records if "PUBACK" in r.getMessage() and r.levelno >= logging.ERROR]
    assert not [c for c in unhandled if "PUBACK" in str(c.get("exception"))]
    assert "Traceback" not in capfd.readouterr().err
