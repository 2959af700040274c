"""Every reach into paho-mqtt's and aiomqtt's private parts, in one module.

The collector's receive path (``cloud.receive``) reads the broker's stream
ahead, handles QoS 0/1 PUBLISH itself and sends a batch's PUBACKs in one
write: more than paho's public API allows. It does so only through this
module. paho does not promise to keep these names: the cloud extra pins
paho-mqtt to the minor version tested (2.2.x), and
``tests/cloud/test_paho_internals.py`` checks each name listed here against
the installed paho and aiomqtt, naming the one that changed, and that no
other module reaches for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

import aiomqtt
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.client import MQTTMessage, MQTTv5, mqtt_ms_invalid
from paho.mqtt.enums import MQTTErrorCode

# paho.mqtt.client.Client's methods used or replaced, with their parameters.
PAHO_METHODS: dict[str, tuple[str, ...]] = {
    "_sock_recv": ("self", "bufsize"),
    "_packet_read": ("self",),
    "_loop_rc_handle": ("self", "rc"),
    "_handle_publish": ("self",),
    "_handle_on_message": ("self", "message"),
    "_send_puback": ("self", "mid"),
    "_packet_queue": ("self", "command", "packet", "mid", "qos", "info"),
    "loop_read": ("self", "max_packets"),  # public, but replaced on the instance
}
# Attributes of a paho client instance that are read.
PAHO_ATTRIBUTES = ("_sock", "_in_packet", "_protocol", "_manual_ack")
# Keys of ``_in_packet`` that are read.
PAHO_IN_PACKET_KEYS = ("command", "packet")
# Attributes of a paho MQTTMessage set on one made without its constructor.
MESSAGE_ATTRIBUTES = ("_topic", "payload", "mid", "qos", "dup", "retain", "state", "properties", "timestamp")
# Attributes of an aiomqtt.Client instance that are read.
AIOMQTT_ATTRIBUTES = ("_client", "_disconnected")


def received(topic: bytes, payload: bytes, mid: int, qos: int, dup: bool, retain: bool) -> MQTTMessage:
    """A received message as paho makes one, without the ``MQTTMessageInfo`` (a lock and a
    condition) its constructor builds, which only a message being sent needs."""
    message = MQTTMessage.__new__(MQTTMessage)
    message._topic = topic
    message.payload = payload
    message.mid = mid
    message.qos = qos
    message.dup = dup
    message.retain = retain
    message.state = mqtt_ms_invalid
    message.properties = None
    message.timestamp = time.monotonic()
    return message


def paho_of(client: aiomqtt.Client) -> PahoClient:
    """The paho client under an aiomqtt one."""
    return client._client


def disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    """aiomqtt's future of the current connection's end (renewed per connection)."""
    return client._disconnected


def settle(client: aiomqtt.Client) -> None:
    """Take the error a lost connection left in aiomqtt's future of its end, if any.

    Nothing else reads it when the link drops while no message iteration waits
    on it (the collector reads through ``Intake``): asyncio would log "Future
    exception was never retrieved … Unexpected disconnection" when the future
    is collected, for a broker disconnect that was handled.
    """
    gone = client._disconnected
    if gone.done() and not gone.cancelled():
        gone.exception()


def drop_for_will(client: aiomqtt.Client) -> None:
    """End the connection without a DISCONNECT, so that the broker publishes the client's Will.

    A clean DISCONNECT discards the Will: a collector whose own offline state could not be
    published (it timed out behind a full window) would leave its retained "online" behind.
    Shutting the socket down first makes the ``DISCONNECT`` that aiomqtt sends on the way out
    go nowhere; to the broker the connection was lost.
    """
    sock = client._client.socket()
    if isinstance(sock, socket.socket):  # TLS too (an SSLSocket is one)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def manual_acks(client: aiomqtt.Client) -> None:
    """PUBACK when the program says, not on receipt (paho's public switch, under aiomqtt)."""
    client._client.manual_ack_set(True)


class Internals:
    """One paho client's private parts, as the receive path uses them.

    The bound methods are taken once, here: the receive path calls them per
    packet without reaching into paho itself.
    """

    def __init__(self, paho: PahoClient) -> None:
        self.paho = paho
        self.recv: Callable[[int], bytes] = paho._sock_recv  # maps TLS want-read to BlockingIOError
        self.packet_read: Callable[[], MQTTErrorCode] = paho._packet_read
        self.loop_rc_handle: Callable[[MQTTErrorCode], MQTTErrorCode] = paho._loop_rc_handle
        self.handle_publish: Callable[[], MQTTErrorCode] = paho._handle_publish
        self.send_puback: Callable[[int], MQTTErrorCode] = paho._send_puback
        self.v5 = paho._protocol == MQTTv5  # fixed when the client is made

    def socket(self) -> Any:
        """The connection's socket (None when there is none); a new object per connection."""
        return self.paho._sock

    def in_packet(self) -> tuple[int, bytearray]:
        """The packet paho has just read: its first header byte and its body."""
        packet = self.paho._in_packet
        return packet["command"], packet["packet"]

    def manual_ack(self) -> bool:
        return bool(self.paho._manual_ack)

    def queue(self, command: int, packet: bytes) -> None:
        """Queue ready-made bytes (``command`` is the packet type, for paho's bookkeeping) to send."""
        self.paho._packet_queue(command, packet, 0, 0)

    def replace(
        self,
        *,
        sock_recv: Callable[[int], bytes] | None = None,
        loop_read: Callable[[int], MQTTErrorCode] | None = None,
        handle_publish: Callable[[], MQTTErrorCode] | None = None,
        handle_on_message: Callable[[MQTTMessage], None] | None = None,
    ) -> None:
        """Put the receive path's own in place of paho's, on this client only."""
        paho = self.paho
        if sock_recv is not None:
            paho._sock_recv = sock_recv  # type: ignore[method-assign,assignment]
        if loop_read is not None:
            paho.loop_read = loop_read  # type: ignore[method-assign,assignment]
        if handle_publish is not None:
            paho._handle_publish = handle_publish  # type: ignore[method-assign]
        if handle_on_message is not None:
            paho._handle_on_message = handle_on_message  # type: ignore[method-assign,assignment]
