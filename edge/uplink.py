"""The MQTT uplink: state with a Will, birth after every connect, the outbox pump, commands.

The pump publishes the outbox's head at QoS 1 and deletes a message only after
its PUBACK; anything in flight when the link drops stays in the outbox and is
sent again (same ``msg_id``) after the reconnect, which the collector ingests
once. Reconnects back off exponentially up to ``reconnect_max_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from edge.outbox import Outbox
from floodgate import mqtt
from floodgate.broker import BrokerSettings
from floodgate.ids import now_ms
from floodgate.runner import run_together
from floodgate.wire import QOS, Kind, Topic

log = logging.getLogger("floodgate.edge.uplink")

# CONNACK codes that mean "not you": bad user name or password, not authorised (MQTT 3.1.1 and 5).
REFUSED_LOGIN = {4, 5, 0x86, 0x87}


def refused_login(exc: BaseException) -> bool:
    """Whether the broker refused the agent's credentials (as opposed to a network failure)."""
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    return isinstance(exc, aiomqtt.MqttCodeError) and isinstance(code, int) and code in REFUSED_LOGIN


class Uplink:
    def __init__(
        self,
        settings: BrokerSettings,
        node: str,
        boot: int,
        outbox: Outbox,
        on_connect: Callable[[], Awaitable[None]],
        on_command: Callable[[bytes], Awaitable[None]],
        batch: int = 100,
        initial_backoff_s: float = 0.2,
    ) -> None:
        self.settings = settings
        self.node = node
        self.boot = boot
        self.outbox = outbox
        self.on_connect = on_connect
        self.on_command = on_command
        self.batch = batch
        self.initial_backoff_s = initial_backoff_s
        self.connected = False
        self.subscribed = False  # to its command topic, on this connection
        self.connects = 0
        self.sent = 0
        self.last_error: str | None = None
        self._state_topic = str(Topic(node, Kind.STATE))
        self._cmd_topic = str(Topic(node, Kind.CMD))

    def _state(self, online: bool) -> bytes:
        body: dict[str, Any] = {"online": online, "boot": self.boot}
        if online:
            body["ts"] = now_ms()
        return json.dumps(body).encode()

    def _client(self) -> aiomqtt.Client:
        return mqtt.client(
            self.settings,
            identifier=f"floodgate-{self.node}",
            will_topic=self._state_topic,
            will_payload=self._state(False),
        )

    async def run(self) -> None:
        delay = self.initial_backoff_s
        while True:
            try:
                async with self._client() as client:
                    self.connected = True
                    self.connects += 1
                    delay = self.initial_backoff_s
                    log.info("connected to broker", extra={"broker": self.settings.url})
                    await client.publish(self._state_topic, self._state(True), qos=QOS, retain=True)
                    await client.subscribe(self._cmd_topic, qos=QOS)
                    self.subscribed = True
                    await self.on_connect()
                    try:
                        await self._serve(client)
                    except asyncio.CancelledError:
                        await self.close(client)
                        raise
            except (aiomqtt.MqttError, OSError) as exc:
                err = str(exc)
                if self.connected or err != self.last_error:
                    if refused_login(exc):
                        log.error(
                            "the broker refused the login: not authorised (%s); check broker.username "
                            "and the password file, and the broker's password file and ACL for user %s",
                            err,
                            self.settings.username or "(none)",
                            extra={"retry_s": delay},
                        )
                    else:
                        log.warning("broker link lost: %s", err, extra={"retry_s": delay})
                self.last_error = err
            finally:
                self.connected = self.subscribed = False
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.05), self.settings.reconnect_max_s)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Pump the outbox and receive commands until either fails; re-raise its error."""
        await run_together({"uplink-pump": self._pump(client), "uplink-receive": self._receive(client)})
        raise aiomqtt.MqttError("the broker closed the message stream")

    async def close(self, client: aiomqtt.Client) -> None:
        """Say goodbye cleanly (the Will covers every other way of leaving)."""
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self._state_topic, self._state(False), qos=QOS, retain=True, timeout=2)

    async def _pump(self, client: aiomqtt.Client) -> None:
        while True:
            self.outbox.changed.clear()
            batch = await self.outbox.peek(self.batch)
            if not batch:
                await self.outbox.changed.wait()
                continue
            results = await asyncio.gather(
                *(client.publish(p.topic, p.payload, qos=QOS) for p in batch),
                return_exceptions=True,
            )
            acked = [p.id for p, r in zip(batch, results, strict=True) if r is None]
            await self.outbox.ack(acked)
            self.sent += len(acked)
            for r in results:
                if isinstance(r, BaseException):
                    raise r

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.value == self._cmd_topic:
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                await self.on_command(data)
