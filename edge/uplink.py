"""The MQTT uplink: state with a Will, birth after every connect, the outbox pump, commands.

The pump publishes the outbox's head at QoS 1. After the broker's PUBACK a
message awaits the collector's confirmation (its ``ack`` topic, wire
contract "End-to-end acknowledgement"), which forgets it; one unconfirmed
past its deadline, or in a gap the collector's report shows, is sent again
(same ``msg_id``, which the collector ingests once). A collector whose online
state does not say ``acks`` confirms nothing: then a message is forgotten at
its PUBACK, as before. Anything in flight when the link drops stays in the
outbox and is sent again after the reconnect. Reconnects back off
exponentially, jittered, up to ``reconnect_max_s``. With several brokers
(``broker.urls``) the agent stays on the one that works and, when a connect
fails or the link drops, tries the next in turn (the same backoff): what the
old broker had not acknowledged is still in the outbox and goes to the new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt

from edge.outbox import Outbox
from floodgate import mqtt, wire
from floodgate.broker import BrokerSettings, reconnect_delays
from floodgate.errors import ContractError
from floodgate.ids import now_ms
from floodgate.runner import run_together
from floodgate.wire import HOST, QOS, Kind, Topic

log = logging.getLogger("floodgate.edge.uplink")

# CONNACK codes that mean "not you": bad user name or password, not authorised (MQTT 3.1.1 and 5).
REFUSED_LOGIN = {4, 5, 0x86, 0x87}
# The outbox setting that remembers whether the collector confirms (1) or not (0).
ACKS_SETTING = "collector_acks"
# A message the broker acknowledged this long before the collector confirmed a
# later one is a gap (lost), not one still on its way.
GAP_GRACE_MS = 1000
# How often messages past their confirmation deadline are looked for.
RESEND_CHECK_S = 1.0


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
        confirm_timeout_s: float = 60.0,
        confirm_timeout_max_s: float = 900.0,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.settings = settings
        self.node = node
        self.boot = boot
        self.outbox = outbox
        self.on_connect = on_connect
        self.on_command = on_command
        self.batch = batch
        self.initial_backoff_s = initial_backoff_s
        self.confirm_timeout_ms = int(confirm_timeout_s * 1000)
        self.confirm_timeout_max_ms = int(max(confirm_timeout_max_s, confirm_timeout_s) * 1000)
        self.clock_ms = clock_ms
        # Whether the collector confirms what it stores: until a collector's online
        # state says otherwise, yes (an outbox keeps what it cannot know is stored).
        self.collector_acks = True
        # The collectors' retained state: online while any is (None: not heard on this run).
        self.collector_online: bool | None = None
        self._collectors: dict[str, bool] = {}  # each collector's own state (floodgate/v1/_host/<id>/state)
        self._shared_online: bool | None = None  # the shared _host/state of older collectors
        # How long each collector online may hold a report back (its own state's ``ack_wait_s``):
        # with two or more, a hole acknowledged less than that before a message confirmed later
        # was sent may be another collector's, not reported yet (``Outbox.confirm``). One
        # alone reports all it handled of a node at once: a hole in its report is a gap.
        self._ack_wait_ms: dict[str, int] = {}
        self.confirmed = 0  # messages the collector confirmed
        self.resent = 0  # messages sent again: unconfirmed past their deadline, or in a reported gap
        self.connected = False
        self.subscribed = False  # to its command topic, on this connection
        self.connects = 0
        self._at = 0  # index of the broker in use in settings.candidates
        self.sent = 0
        self.last_error: str | None = None  # the last failure, with the broker's URL
        self._last_exc: str | None = None
        self._state_topic = str(Topic(node, Kind.STATE))
        self._cmd_topic = str(Topic(node, Kind.CMD))
        self._ack_topic = str(Topic(node, Kind.ACK))
        self._host_topic = str(Topic(HOST, Kind.STATE))

    def _state(self, online: bool) -> bytes:
        body: dict[str, Any] = {"online": online, "boot": self.boot}
        if online:
            body["ts"] = now_ms()
        return json.dumps(body).encode()

    @property
    def broker(self) -> str:
        """The broker the agent connects to (or is connected to) now."""
        return self.settings.candidates[self._at % len(self.settings.candidates)]

    def _client(self) -> aiomqtt.Client:
        return mqtt.client(
            dataclasses.replace(self.settings, url=self.broker),
            identifier=f"floodgate-{self.node}",
            will_topic=self._state_topic,
            will_payload=self._state(False),
        )

    async def run(self) -> None:
        remembered = await self.outbox.setting(ACKS_SETTING)
        self.collector_acks = remembered != 0
        delays = reconnect_delays(self.initial_backoff_s, self.settings.reconnect_max_s)
        while True:
            delay = 0.0
            try:
                client = self._client()
                mqtt.settle_on_drop(client)  # a connect given up, its CONNACK late: it may still drop
                async with client:
                    mqtt.settle_on_drop(client)  # the connection's own (aiomqtt renews it on a connect)
                    self.connected = True
                    self.connects += 1
                    delays = reconnect_delays(self.initial_backoff_s, self.settings.reconnect_max_s)
                    log.info("connected to broker", extra={"broker": self.broker})
                    await client.publish(self._state_topic, self._state(True), qos=QOS, retain=True)
                    await client.subscribe(
                        [
                            (self._cmd_topic, QOS),
                            (self._ack_topic, QOS),
                            (wire.HOST_STATES, QOS),  # the shared state and each collector's own
                        ]
                    )
                    self.subscribed = True
                    await self.on_connect()
                    try:
                        await self._serve(client)
                    except asyncio.CancelledError:
                        await self.close(client)
                        raise
            except (aiomqtt.MqttError, OSError) as exc:
                delay = next(delays)
                err = f"{self.broker}: {exc}"
                self._at += 1  # the next broker, in turn (with several)
                # Once per kind of failure, not once per broker tried.
                if self.connected or str(exc) != self._last_exc:
                    if refused_login(exc):
                        log.error(
                            "the broker refused the login: not authorised (%s); check broker.username "
                            "and the password file, and the broker's password file and ACL for user %s",
                            err,
                            self.settings.username or "(none)",
                            extra={"retry_s": delay},
                        )
                    else:
                        log.warning(
                            "broker link lost: %s", err, extra={"retry_s": delay, "next": self.broker}
                        )
                self.last_error, self._last_exc = err, str(exc)
            finally:
                self.connected = self.subscribed = False
            await asyncio.sleep(delay or next(delays))

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Pump the outbox and receive commands until either fails; re-raise its error."""
        await run_together(
            {
                "uplink-pump": self._pump(client),
                "uplink-receive": self._receive(client),
                "uplink-resend": self._resend_due(),
            }
        )
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
            sent_ms = self.clock_ms()
            results = await asyncio.gather(
                *(client.publish(p.topic, p.payload, qos=QOS) for p in batch),
                return_exceptions=True,
            )
            acked = [p.id for p, r in zip(batch, results, strict=True) if r is None]
            if self.collector_acks:
                await self.outbox.delivered(
                    acked, sent_ms, self.clock_ms(), self.confirm_timeout_ms, self.confirm_timeout_max_ms
                )
            else:
                await self.outbox.ack(acked)
            self.sent += len(acked)
            for r in results:
                if isinstance(r, BaseException):
                    raise r

    async def _resend_due(self) -> None:
        """Send again what the collector has not confirmed by its deadline (not while it is offline)."""
        while True:
            await asyncio.sleep(RESEND_CHECK_S)
            if self.collector_acks and self.collector_online is not False:
                n = await self.outbox.resend_due(self.clock_ms())
                if n:
                    self.resent += n
                    log.info("%d messages unconfirmed by the collector past their deadline: sending again", n)

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload
            data = payload if isinstance(payload, bytes) else str(payload).encode()
            if topic == self._cmd_topic:
                await self.on_command(data)
            elif topic == self._ack_topic:
                await self.on_ack(data)
            elif topic == self._host_topic:
                await self.on_host_state(data)
            elif (collector := wire.collector_of(topic)) is not None:
                await self.on_host_state(data, collector)

    async def on_ack(self, data: bytes) -> None:
        """The collector's report of what it handled: forget that, resend the gaps at once."""
        try:
            ack = wire.decode(self._ack_topic, data).message
        except ContractError as exc:
            log.warning("ignored a bad ack report: %s %s", exc.code, exc.detail)
            return
        assert isinstance(ack, wire.Ack)
        if ack.node != self.node:  # the broker's ACL keeps others' reports away; not every broker has one
            log.warning("ignored an ack report for node %s", ack.node)
            return
        now = self.clock_ms()
        progressed: list[int] = []
        for b in ack.boots:
            waits = self._ack_wait_ms.values()
            wait = max(waits) if len(waits) > 1 else 0
            done = await self.outbox.confirm(b.boot, b.ranges, now, GAP_GRACE_MS, wait)
            self.confirmed += done.confirmed
            if done.confirmed > 0:
                progressed.append(b.boot)
            if done.resend:
                self.resent += done.resend
                log.warning(
                    "the collector never got %d messages the broker had acknowledged: sending them again",
                    done.resend,
                    extra={"boot": b.boot},
                )
        if progressed:
            # A collector that confirms is slow, not losing: a deadline runs from its
            # last progress, not from the PUBACK (wire contract, "Resends"), so a
            # collector behind on its intake gets no resend storm; gaps went back above.
            # Only for the boots it is confirming: the last messages of an earlier boot
            # (lost by the broker just before a power cut) leave no gap a report can show,
            # and a new boot confirmed every half second must not put their deadline off.
            await self.outbox.hold(now + self.confirm_timeout_ms, boots=progressed)
        if not self.collector_acks:  # a collector that confirms after all
            await self._set_acks(True)

    async def on_host_state(self, data: bytes, collector: str | None = None) -> None:
        """A collector's retained state: online or not, and whether it confirms.

        ``collector``: from its own topic (``floodgate/v1/_host/<client_id>/state``, wire
        contract), else the shared ``_host/state`` of older collectors. The service is online
        while any collector's own state says so: one collector dying (its Will) while others
        are up is not "offline" (that held every resend back). The shared topic counts only
        until a collector's own state is heard.
        """
        if collector is not None and not data:  # its retained state cleared: gone for good
            self._collectors.pop(collector, None)
            self._ack_wait_ms.pop(collector, None)
            self.collector_online = self._online()
            return
        try:
            state = wire.decode(self._host_topic, data).message
        except ContractError:
            return  # the collector's business (an empty payload clears it)
        assert isinstance(state, wire.State)
        if collector is None:
            self._shared_online = state.online
        else:
            self._collectors[collector] = state.online
        was_online, self.collector_online = self.collector_online, self._online()
        if not state.online:
            if collector is not None:
                self._ack_wait_ms.pop(collector, None)  # it reports nothing more
            return
        if collector is not None:
            self._ack_wait_ms[collector] = round((state.ack_wait_s or 0) * 1000)
        acks = bool(state.acks)
        if acks != self.collector_acks:
            await self._set_acks(acks)
        if acks and was_online is not True:
            # A collector (back) online first takes in what its session kept: give it
            # a deadline's time before sending anything again (its reports show gaps sooner).
            # Only when it comes online or is first seen: the state is retained, so every
            # reconnect re-delivers it, and a link flapping faster than a deadline
            # would otherwise postpone every resend for good.
            await self.outbox.hold(self.clock_ms() + self.confirm_timeout_ms)

    def _online(self) -> bool | None:
        if self._collectors:
            return any(self._collectors.values())
        return self._shared_online

    async def _set_acks(self, acks: bool) -> None:
        self.collector_acks = acks
        await self.outbox.set_setting(ACKS_SETTING, int(acks))
        if acks:
            log.info("the collector confirms what it stores: messages are kept until it does")
        else:
            n = await self.outbox.forget_awaiting()
            log.warning(
                "the collector does not confirm what it stores (an older version): messages are "
                "forgotten once the broker has them; %d awaiting confirmation forgotten",
                n,
            )
