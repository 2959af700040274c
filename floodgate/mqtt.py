"""One way to build an MQTT client from ``BrokerSettings``, for the agent and the collector.

Imported only by the sides that talk MQTT (``edge.uplink``, ``cloud.consumer``),
so ``floodgate.wire`` and ``floodgate.broker`` stay free of the MQTT library.
The collector's fast receive path is its own (``cloud.receive``): the edge
uses paho's public API only.
"""

from __future__ import annotations

import aiomqtt
from paho.mqtt.client import MQTT_CLEAN_START_FIRST_ONLY
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from floodgate.broker import BrokerSettings
from floodgate.wire import QOS

# A persistent MQTT 5 session outlives a collector outage of up to a week.
SESSION_EXPIRY_S = 7 * 24 * 3600


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
    return aiomqtt.Client(
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
