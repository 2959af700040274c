"""The collector's fast MQTT receive path: read ahead, PUBLISH handled here, PUBACKs in one write.

A bare paho client reads one packet per readable event in three or four
``recv`` calls, builds a lock and a condition for every message received, and
sends each PUBACK on its own. At collector rates that cost more than storing.
``Reader`` and ``Intake`` do the same work with fewer calls; everything they
need of paho's private parts goes through ``cloud.paho_internals``. The edge
uses paho's public API only (``floodgate.mqtt.client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiomqtt
from paho.mqtt.client import PUBACK as PUBACK_TYPE
from paho.mqtt.client import Client as PahoClient
from paho.mqtt.client import MQTTMessage
from paho.mqtt.enums import MQTTErrorCode

from cloud.paho_internals import Internals, disconnected, paho_of, received

# Bytes taken from the socket per recv, and packets handled per turn of the
# event loop (more while any are read ahead).
READ_AHEAD = 64 * 1024
READ_BURST = 200
_PUBACK = struct.Struct("!BBH")  # type and flags, remaining length 2, packet id
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class Reader:
    """paho's socket reading for a client that receives a lot: read ahead, drain per turn.

    paho reads one packet each time the socket is readable, in three or four
    ``recv`` calls (the fixed header byte, each length byte, the body). At
    collector rates that is a turn of the event loop and four system calls a
    message. Installed on a paho client, this reads up to ``READ_AHEAD`` bytes
    at once and hands paho its packets from them, and handles up to
    ``READ_BURST`` packets per readable event, then what is left of the
    read-ahead without reading more: the event loop's epoll sees the socket,
    not this buffer, so no whole packet may stay in it when a turn ends. paho
    keeps its own state for a packet that is cut off, as it always does.

    paho's reading is reached through ``cloud.paho_internals``
    (``tests/cloud/test_receive.py`` drives this through a real broker).
    """

    def __init__(self, paho: PahoClient, internals: Internals | None = None) -> None:
        self._paho = internals or Internals(paho)
        self._recv = self._paho.recv  # paho's own
        self._packet_read = self._paho.packet_read
        self._sock: object = None  # the socket the buffer was read from
        self._buf = b""
        self._pos = 0
        self._may_recv = True  # False once a turn has handled READ_BURST packets
        self._paho.replace(sock_recv=self._sock_recv, loop_read=self.loop_read)

    def _sock_recv(self, bufsize: int) -> bytes:
        sock = self._paho.socket()
        if self._sock is not sock:  # a new connection: nothing of the last one is kept
            self._sock, self._buf, self._pos = sock, b"", 0
            self._setsockopt(socket.TCP_NODELAY)  # a batch's PUBACKs go out at once, not after an ACK
        if self._pos >= len(self._buf):
            if not self._may_recv:
                raise BlockingIOError  # paho keeps the part of a packet it has; the rest is in the socket
            self._buf, self._pos = self._recv(READ_AHEAD), 0  # raises BlockingIOError when empty
            if not self._buf:
                return b""  # the broker closed the connection
        out = self._buf[self._pos : self._pos + bufsize]
        self._pos += len(out)
        return out

    def buffered(self) -> int:
        """Bytes read from the current socket and not yet handed to paho."""
        return len(self._buf) - self._pos if self._sock is self._paho.socket() else 0

    def _ack_now(self) -> None:
        """Have the kernel acknowledge what was read (TCP), now rather than when its timer says.

        A broker that sends with Nagle's algorithm on (mosquitto does, unless
        ``set_tcp_nodelay``) holds a small packet back until the last one is
        acknowledged; with the receiver's delayed ACK, a message arriving
        while the collector had nothing to send back waited 15-40 ms. Linux
        only (``TCP_QUICKACK``, which the kernel turns off again by itself).
        """
        if _QUICKACK is not None:
            self._setsockopt(_QUICKACK)

    def _setsockopt(self, option: int) -> None:
        sock = self._paho.socket()
        if isinstance(sock, socket.socket):  # TCP or TLS; not a WebSocket wrapper
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, 1)

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """paho's ``loop_read``, which aiomqtt calls when the socket is readable."""
        paho = self._paho
        handled = 0
        try:
            while True:
                if handled >= READ_BURST:
                    if not self.buffered():
                        break
                    self._may_recv = False  # only what is read ahead, then the turn ends
                if paho.socket() is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                rc = self._packet_read()
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:  # nothing more to read, for now
                    self._ack_now()
                    break
                if rc > 0:
                    return paho.loop_rc_handle(rc)
                handled += 1
        finally:
            self._may_recv = True
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class Intake:
    """A client's incoming messages, straight from paho into a deque, for taking in batches.

    aiomqtt's message iterator spends a task and a copy on every message; at
    collector rates that costs more than a third of the receive path. Here
    paho hands each message straight to an append (past its per-topic
    callback matching), and reads through a ``Reader``. A message stays in
    the deque until it is taken, so a wait can be cancelled (or time out)
    without losing one. Attach before connecting, so that no message goes to
    aiomqtt's own queue instead.
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self.queue: deque[MQTTMessage] = deque()
        self._ready = asyncio.Event()
        self._want = 1  # queued messages that wake a wait
        self._client = client
        paho = self._paho = Internals(paho_of(client))
        self.reader = Reader(paho.paho, paho)
        self._paho_publish = paho.handle_publish
        # QoS 2 still goes paho's way; its message comes here, past paho's
        # per-topic callback matching.
        paho.replace(handle_publish=self._publish, handle_on_message=self._append)

    def _publish(self) -> MQTTErrorCode:
        """A PUBLISH that paho has read, as a message in the queue.

        paho's own handling builds a ``MQTTMessageInfo`` with a lock and a
        condition for every message received (that is for messages sent), and
        formats a debug line even when nothing logs it; at collector rates
        that is a quarter of receiving. QoS 0 and 1 come here, on MQTT 3.1.1
        and on 5 when a message has no properties; anything else (QoS 2,
        properties, a malformed packet) goes to paho's handling, as before.
        """
        paho = self._paho
        header, packet = paho.in_packet()
        qos = (header & 0x06) >> 1
        end = 2 + int.from_bytes(packet[:2], "big")
        pid = end + 2 if qos else end  # the packet id, then (MQTT 5) the properties
        v5 = paho.v5
        if qos == 2 or end == 2 or len(packet) < pid + v5 or (v5 and packet[pid] != 0):
            return self._paho_publish()
        with memoryview(packet) as view:  # one copy each, out of paho's buffer
            topic, payload = bytes(view[2:end]), bytes(view[pid + v5 :])
        mid = int.from_bytes(packet[end:pid], "big")
        message = received(topic, payload, mid, qos, bool(header & 0x08), bool(header & 0x01))
        self._append(message)
        if qos == 1 and not paho.manual_ack():  # (paho's public ack() is for manual acks only)
            return paho.send_puback(message.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _append(self, message: MQTTMessage) -> None:
        self.queue.append(message)
        if len(self.queue) >= self._want:
            self._ready.set()

    def ack(self, messages: Sequence[MQTTMessage]) -> None:
        """Acknowledge taken messages, in the order given, on a client with manual acks.

        The PUBACKs of a batch go out as one write: paho would queue and send
        each one on its own, a system call a message.
        """
        paho = self._paho
        pubacks = b"".join(_PUBACK.pack(PUBACK_TYPE, 2, m.mid) for m in messages if m.qos == 1)
        if pubacks:
            paho.queue(PUBACK_TYPE, pubacks)
        for m in messages:
            if m.qos == 2:
                paho.paho.ack(m.mid, 2)

    def take(self, most: int) -> list[MQTTMessage]:
        """Up to ``most`` queued messages, oldest first."""
        q = self.queue
        return [q.popleft() for _ in range(min(most, len(q)))]

    async def wait(self, within: float | None = None, count: int = 1) -> bool:
        """Until ``count`` messages are queued (True) or ``within`` seconds pass (False).

        Filling a batch, one wait for the rest of it: waking for each message
        as it came cost a timer and two futures a message. Raises
        ``aiomqtt.MqttError`` when the connection is lost.
        """
        self._want = max(1, count)
        try:
            return await self._wait(within)
        finally:
            self._want = 1

    async def _wait(self, within: float | None) -> bool:
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while len(self.queue) < self._want:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            gone = disconnected(self._client)  # renewed per connection
            if gone.done():
                raise aiomqtt.MqttError("disconnected from the broker")
            self._ready.clear()
            waiter: asyncio.Future[Any] = asyncio.ensure_future(self._ready.wait())
            either: set[asyncio.Future[Any]] = {waiter, gone}
            try:
                done, _ = await asyncio.wait(either, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if not done:
                return False
        return True
