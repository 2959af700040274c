"""The collector's MQTT side: a persistent, optionally shared subscription, acked after commit.

Messages are taken in batches (up to ``batch_max``, or what arrives within
``batch_wait_s`` of the first) and acknowledged to the broker (PUBACK) only
after the batch is committed, so a collector killed mid-batch gets the same
messages again from its persistent session (or another member of the shared
group does) and ingests them once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import aiomqtt
from paho.mqtt.client import MQTTMessage

from cloud import paho_internals
from cloud.confirm import Confirmer, alongside
from cloud.ingest import Applied, CaughtUp, Ingestor, Prepared, Received
from cloud.metrics import IntakeMetrics
from cloud.receive import Intake
from floodgate import mqtt
from floodgate.broker import BrokerSettings, reconnect_delays
from floodgate.ids import now_ms
from floodgate.wire import HOST, PREFIX, QOS, Kind, Topic, host_state_topic

log = logging.getLogger("floodgate.cloud.consumer")
# Messages checked between two turns of the event loop (about half a millisecond).
PREPARE_SLICE = 50
EDGE_KINDS = (Kind.STATE, Kind.BIRTH, Kind.TELEMETRY, Kind.ALERT, Kind.EVENT, Kind.CMD_RESULT)


class Consumer:
    def __init__(
        self,
        settings: BrokerSettings,
        ingestor: Ingestor,
        client_id: str,
        shared_group: str | None = None,
        on_applied: Callable[[Applied], Awaitable[None]] | None = None,
        batch_max: int = 500,
        batch_wait_s: float = 0.02,
        commits_in_flight: int = 1,
        confirm_interval_s: float = 0.5,
        subscribe: bool = True,
        metrics: IntakeMetrics | None = None,
        confirmer: Confirmer | None = None,
    ) -> None:
        """``subscribe=False``: the intake is elsewhere (``cloud.jetstream``); this connection only
        publishes (commands) and keeps the collector's retained state and its Will.

        ``confirmer``: the nodes' ``ack`` reports when another connection sends them (the
        JetStream intake's, on a NATS cluster); this one only announces its ``wait_s``. None:
        this connection makes its own, runs it and publishes the reports (QoS 1).
        """
        self.settings = settings
        self.subscribe = subscribe
        self._at = 0  # index of the broker in use in settings.candidates
        self.ingestor = ingestor
        self.client_id = client_id
        self.shared_group = shared_group
        self.on_applied = on_applied
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.commits_in_flight = max(1, commits_in_flight)
        self.connected = False
        self.connected_at = 0.0  # time.monotonic() of the last CONNACK
        self.batches = 0  # batches committed (with ``ingestor.counters.received``: mean batch size)
        self.subscribed = asyncio.Event()  # set once the subscriptions are in place
        self.client: aiomqtt.Client | None = None
        # Its own online state (its Will), and the shared one older agents read (online only:
        # one collector's offline there would stop their resends while the others are up).
        self._host_topic = host_state_topic(client_id)
        self._shared_host_topic = str(Topic(HOST, Kind.STATE))
        # What each node's messages became, told to the node after commit (wire contract: "ack").
        self._own_confirmer = confirmer is None
        self.confirmer = confirmer or Confirmer(self.publish, confirm_interval_s)
        self.metrics = metrics
        # How far its intake has taken in what the broker holds (cloud.silence judges against it).
        self.caught_up = CaughtUp(self.subscribed.is_set)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish on the collector's one connection (QoS 1); fails when there is none."""
        client = self.client
        if client is None or not self.subscribed.is_set():
            raise aiomqtt.MqttError("not connected to the broker")
        await client.publish(topic, payload, qos=QOS, timeout=10)

    @property
    def broker(self) -> str:
        """The broker connected to now, or tried next (``broker.urls``: each in turn)."""
        return self.settings.candidates[self._at % len(self.settings.candidates)]

    def topics(self) -> list[str]:
        if not self.subscribe:
            return []
        base = [f"{PREFIX}/+/{k.value}" for k in EDGE_KINDS]
        if self.shared_group:
            return [f"$share/{self.shared_group}/{t}" for t in base]
        return base

    def _client(self) -> tuple[aiomqtt.Client, Intake]:
        client = mqtt.client(
            dataclasses.replace(self.settings, url=self.broker),
            identifier=self.client_id,
            will_topic=self._host_topic,
            will_payload=json.dumps({"online": False, "boot": 0}).encode(),
            persistent=True,
            # Nothing is acknowledged before its batch commits: let the broker
            # have a batch more than commit at once in flight, or batches
            # shrink to its window.
            receive_maximum=(self.commits_in_flight + 1) * self.batch_max,
        )
        # PUBACK after the commit, not on receipt: paho's public switch for that.
        paho_internals.manual_acks(client)
        return client, Intake(client)

    async def run(self) -> None:
        await alongside(self.confirmer if self._own_confirmer else None, self._run())

    async def _run(self) -> None:
        delays = reconnect_delays(0.1, self.settings.reconnect_max_s)
        while True:
            client: aiomqtt.Client | None = None
            try:
                client, intake = self._client()
                async with client:
                    self.client, self.connected = client, True
                    delays = reconnect_delays(0.1, self.settings.reconnect_max_s)
                    self.connected_at = time.monotonic()
                    if self.metrics is not None and self.subscribe:  # else the intake's to say
                        self.metrics.connected.set(1)
                    # A persistent session's backlog arrives right after the CONNACK,
                    # ahead of the SUBACK: it is taken in while we subscribe.
                    consuming = asyncio.create_task(self._consume(intake))
                    try:
                        if self.topics():
                            await client.subscribe([(t, QOS) for t in self.topics()])  # one SUBSCRIBE
                        # Online only once subscribed: a node may rely on it to know it is heard.
                        # ``acks``: this collector confirms what it stored (cloud.confirm).
                        # ``ack_wait_s``: the longest it holds a report back (cloud.confirm).
                        state = {"online": True, "boot": 0, "ts": now_ms(), "acks": True}
                        online = json.dumps({**state, "ack_wait_s": self.confirmer.wait_s}).encode()
                        await client.publish(self._host_topic, online, qos=QOS, retain=True)
                        await client.publish(self._shared_host_topic, online, qos=QOS, retain=True)
                        self.subscribed.set()
                        log.info("collector subscribed", extra={"topics": self.topics()})
                        await consuming
                    except asyncio.CancelledError:
                        offline = json.dumps({"online": False, "boot": 0}).encode()
                        try:
                            await client.publish(self._host_topic, offline, qos=QOS, retain=True, timeout=2)
                        except aiomqtt.MqttError:
                            # Not published: no clean DISCONNECT (it would discard the Will),
                            # so the broker publishes the Will, "offline", in its place.
                            paho_internals.drop_for_will(client)
                        raise
                    finally:
                        consuming.cancel()
                        await asyncio.gather(consuming, return_exceptions=True)
            except aiomqtt.MqttError as exc:
                log.warning("broker link lost: %s", exc, extra={"broker": self.broker})
                self._at += 1  # the next broker, in turn (with several)
            except Exception:
                # Most likely the database. Nothing of the batch was acknowledged:
                # reconnecting makes the broker deliver it again.
                log.exception("ingest failed; reconnecting to have the batch redelivered")
            finally:
                self.connected = False
                if self.metrics is not None and self.subscribe:
                    self.metrics.connected.set(0)
                self.subscribed.clear()
                self.client = None
                if client is not None:
                    paho_internals.settle(client)
            await asyncio.sleep(next(delays))

    async def _consume(self, intake: Intake) -> None:
        # A batch is what is queued once a message is in, plus what arrives within
        # the batch window, up to batch_max. The next batch is taken and checked
        # while earlier ones commit: up to ``commits_in_flight`` at once, each in
        # its own transaction; they are acknowledged in batch order. Whatever is
        # not acknowledged when the connection goes (queued, prepared, or in a
        # failed commit) is delivered again.
        inflight: deque[asyncio.Task[None]] = deque()
        try:
            while True:
                while inflight and inflight[0].done():
                    inflight.popleft().result()  # a failed commit raises here
                if inflight and not intake.queue:
                    # Until a commit is through or the next message is in,
                    # whichever comes first: never one then the other.
                    arrival = asyncio.ensure_future(intake.wait())
                    try:
                        await asyncio.wait({*inflight, arrival}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        arrival.cancel()
                    if arrival.done() and not arrival.cancelled():
                        arrival.result()  # raises MqttError when the link went
                    continue
                # Nothing in flight or in hand: once subscribed, the broker has nothing for us
                # either (before the SUBACK, a persistent session's backlog may be yet to come).
                self.caught_up.idle = not inflight and not intake.queue
                try:
                    await intake.wait()
                finally:
                    if self.caught_up.idle and self.subscribed.is_set():
                        self.caught_up.taken_to(now_ms())
                    self.caught_up.idle = False
                batch = intake.take(self.batch_max)
                if len(batch) < self.batch_max:  # the rest of the batch, or what comes in the window
                    await intake.wait(self.batch_wait_s, count=self.batch_max - len(batch))
                    batch += intake.take(self.batch_max - len(batch))
                t = now_ms()
                # Not full, nothing behind it: the broker had no more at t (said once committed).
                drained = t if len(batch) < self.batch_max and not intake.queue else None
                if self.metrics is not None:
                    # Sent again by the broker (DUP): not acknowledged before a connection went.
                    self.metrics.redeliveries.inc(sum(1 for m in batch if m.dup))
                prepared = Prepared(0)
                for i in range(0, len(batch), PREPARE_SLICE):
                    part = batch[i : i + PREPARE_SLICE]
                    self.ingestor.prepare([Received(m.topic, bytes(m.payload), t) for m in part], prepared)
                    await asyncio.sleep(0)  # the commits in flight take their next steps
                while len(inflight) >= self.commits_in_flight:
                    await inflight.popleft()  # raises what that commit raised
                previous = inflight[-1] if inflight else None
                commit = self._commit(intake, batch, prepared, previous, drained)
                inflight.append(asyncio.create_task(commit))
                await asyncio.sleep(0)  # it starts now, not after the next batch is prepared
        finally:
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)

    async def _commit(
        self,
        intake: Intake,
        batch: list[MQTTMessage],
        prepared: Prepared,
        previous: asyncio.Task[None] | None,
        drained: int | None = None,
    ) -> None:
        applied = await self.ingestor.commit(prepared)
        if previous is not None:
            # Acknowledged in the order received, as MQTT requires: after the
            # batch before. If that one failed, this one raises too, unacknowledged,
            # and comes again (the ledger knows it is stored).
            await asyncio.shield(previous)
        if drained is not None:
            self.caught_up.taken_to(drained)
        self.batches += 1
        intake.ack(batch)
        self.confirmer.handled(prepared)
        if self.on_applied is not None:
            await self.on_applied(applied)
