"""One way to build an MQTT client from ``BrokerSettings``, for the agent and the collector.

Imported only by the sides that talk MQTT (``edge.uplink``, ``cloud.consumer``),
so ``floodgate.wire`` and ``floodgate.broker`` stay free of the MQTT library.
The collector's fast receive path is its own (``cloud.receive``): the edge
uses paho's public API only.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from floodgate.broker import BrokerSettings
from floodgate.wire import QOS

# A persistent MQTT 5 session outlives a collector outage of up to a week.
SESSION_EXPIRY_S = 7 * 24 * 3600
# aiomqtt warns of "pending publish calls" beyond this many (its default, 10, is
# less than one batch of the outbox pump, so it warned on every batch of a backlog).
PENDING_CALLS_WARN = 1000
PENDING_WARNING = "There are %d pending publish calls."


class PendingCallsSummary(logging.Filter):
    """aiomqtt's "There are N pending publish calls" warning as one line per ``every_s``, with a count.

    The first goes through; later ones within ``every_s`` are counted and the
    next one after that says how many there were and the most pending.
    """

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self._last = -float("inf")
        self._count = 0
        self._most = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != PENDING_WARNING or not record.args:
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        pending = int(args[0]) if isinstance(args[0], int) else 0
        self._count += 1
        self._most = max(self._most, pending)
        now = time.monotonic()
        if now - self._last < self.every_s:
            return False
        record.msg = (
            "publishing is backed up: %d pending-publish warnings since the last such line,"
            " at most %d calls pending"
        )
        record.args = (self._count, self._most)
        self._last, self._count, self._most = now, 0, 0
        return True


_SUMMARY = PendingCallsSummary()
if not any(isinstance(f, PendingCallsSummary) for f in logging.getLogger("mqtt").filters):
    logging.getLogger("mqtt").addFilter(_SUMMARY)


def settle_on_drop(client: aiomqtt.Client) -> None:
    """Take the error a dropped link leaves in aiomqtt's future of the connection's end, whenever
    it comes, so that asyncio never logs it as "Future exception was never retrieved".

    aiomqtt sets it when the link drops (a keepalive timeout after a cut, a reset). The
    owner usually reads it (a message iteration raises from it), but not when it had left
    the connection for another reason first (a publish timed out on the cut link) and the
    keepalive gave up while it was tearing down: then nobody did, and asyncio logged
    "Future exception was never retrieved … Keep alive timeout" when the client was
    collected. The owner says the link was lost ("broker link lost"). Call after the
    client is made and again once connected (aiomqtt renews the future on a connect).
    aiomqtt's ``_disconnected`` is private: a version without it is left alone.
    """
    gone = getattr(client, "_disconnected", None)
    if isinstance(gone, asyncio.Future):
        gone.add_done_callback(_take_error)


def _take_error(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()


def client(
    settings: BrokerSettings,
    *,
    identifier: str,
    will_topic: str,
    will_payload: bytes,
    persistent: bool = False,
    receive_maximum: int | None = None,
) -> aiomqtt.Client:
    """A client with a retained Will, TLS and credentials from the settings.

    ``persistent`` keeps the session (and its queued QoS 1 messages) across
    disconnects: clean_session=0 on 3.1.1, clean start off and a session expiry
    on 5. ``receive_maximum`` (MQTT 5 only) lets the broker have that many QoS 1
    messages unacknowledged at once; on 3.1.1 the broker's own limit
    (mosquitto's ``max_inflight_messages``, 20 by default) applies.
    """
    s = settings
    v5 = s.protocol == "5"
    props: Properties | None = None
    if v5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent:
            props.SessionExpiryInterval = SESSION_EXPIRY_S
        if receive_maximum:
            props.ReceiveMaximum = min(receive_maximum, 65535)
    c = aiomqtt.Client(
        s.host,
        s.port,
        username=s.username,
        password=s.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        will=aiomqtt.Will(will_topic, will_payload, qos=QOS, retain=True),
        clean_session=None if v5 else not persistent,
        clean_start=(not persistent) if v5 else MQTT_CLEAN_START_FIRST_ONLY,
        properties=props,
        keepalive=s.keepalive_s,
        tls_context=s.ssl_context(),
        timeout=10,
    )
    c.pending_calls_threshold = PENDING_CALLS_WARN
    return c
