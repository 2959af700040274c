"""A minimal asyncio MQTT 3.1.1 client for the fleet simulator: thousands of connections in one process.

What a virtual node needs and nothing more: CONNECT (clean session, a Will,
credentials), PUBLISH at QoS 1 out (the PUBACK reported by packet id) and in
(answered with a PUBACK), SUBSCRIBE at QoS 1, PINGREQ, DISCONNECT, and
``abort()``: the socket closed without DISCONNECT, so the broker publishes
the Will. No QoS 2, no MQTT 5, no session kept on the client (every
reconnect is a clean session: the fleet resends what was not acknowledged).

It is an ``asyncio.Protocol``, not a task per connection: a connection costs
its transport, a buffer and one keepalive timer. A paho (aiomqtt) client per
node costs a thread-free but much heavier client object and a task or two
each; ``bench/city.py`` prints what one connection of each costs.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
_PING = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class MqttError(Exception):
    """The connection failed, was refused (CONNACK code in the text) or was lost."""


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True)
class Endpoint:
    """One broker URL: ``mqtt://host:port`` or ``mqtts://host:port``."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"broker URL {url!r}: expected mqtt://host:port or mqtts://host:port")
        try:
            port = u.port
        except ValueError:
            raise ValueError(f"broker URL {url!r}: the port is not a number from 0 to 65535") from None
        return cls(u.hostname, port or (8883 if u.scheme == "mqtts" else 1883), u.scheme == "mqtts")

    def __str__(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    """A fixed header (type and flags, remaining length as a varint) and the body."""
    n = len(body)
    head = bytearray([first])
    while True:
        byte, n = n & 0x7F, n >> 7
        head.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(head) + body


def connect_packet(
    client_id: str, keepalive_s: int, will: Will | None, username: str | None, password: str | None
) -> bytes:
    flags = 0x02  # clean session
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | (1 << 3) | (0x20 if will.retain else 0)  # Will at QoS 1
        payload += _str(will.topic) + _str(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    return _packet(0x10, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + payload)


class Connection(asyncio.Protocol):
    """One MQTT connection. ``on_message(topic, payload)`` and ``on_puback(packet_id)`` are
    called from the event loop; ``lost`` is set when the connection ends, whatever the cause."""

    def __init__(
        self,
        on_message: Callable[[str, bytes], None],
        on_puback: Callable[[int], None],
        keepalive_s: int = 30,
    ) -> None:
        self.on_message = on_message
        self.on_puback = on_puback
        self.keepalive_s = keepalive_s
        self.lost = asyncio.Event()
        self.error: str | None = None
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._connack: asyncio.Future[int] | None = None
        self._subacks: dict[int, asyncio.Future[bytes]] = {}
        self._next_pid = 0
        self._rx = 0.0  # loop time of the last packet received
        self._timer: asyncio.TimerHandle | None = None
        self.in_flight = 0  # PUBLISHes sent and not yet acknowledged

    @classmethod
    async def open(
        cls,
        endpoint: Endpoint,
        client_id: str,
        *,
        on_message: Callable[[str, bytes], None],
        on_puback: Callable[[int], None],
        will: Will | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        timeout_s: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Connection:
        loop = asyncio.get_running_loop()
        conn = cls(on_message, on_puback, keepalive_s)
        tls = ssl_context or (ssl.create_default_context() if endpoint.tls else None)
        try:
            async with asyncio.timeout(timeout_s):
                await loop.create_connection(lambda: conn, endpoint.host, endpoint.port, ssl=tls)
                conn._connack = loop.create_future()
                conn._write(connect_packet(client_id, keepalive_s, will, username, password))
                code = await conn._connack
        except (OSError, TimeoutError) as exc:
            conn.abort()
            raise MqttError(f"{endpoint}: {str(exc) or type(exc).__name__}") from None
        except MqttError:
            conn.abort()
            raise
        if code != 0:
            conn.abort()
            raise MqttError(f"{endpoint} refused the connection: {CONNACK_CODES.get(code, code)} ({code})")
        conn._schedule_ping()
        return conn

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self.lost.is_set() and not self._transport.is_closing()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Send at QoS 1; returns the packet id that ``on_puback`` will report. Raises MqttError if closed."""
        pid = self._pid()
        body = _str(topic) + struct.pack("!H", pid) + payload
        self._write(_packet(0x32 | (1 if retain else 0), body))
        self.in_flight += 1
        return pid

    async def subscribe(self, filters: list[str], qos: int = 1, timeout_s: float = 10.0) -> None:
        """Subscribe to every filter at ``qos`` (one SUBSCRIBE); raises MqttError if one is refused."""
        pid = self._pid()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._subacks[pid] = fut
        body = struct.pack("!H", pid) + b"".join(_str(f) + bytes([qos]) for f in filters)
        self._write(_packet(0x82, body))
        try:
            async with asyncio.timeout(timeout_s):
                codes = await fut
        except TimeoutError:
            raise MqttError("no SUBACK") from None
        finally:
            self._subacks.pop(pid, None)
        if 0x80 in codes:
            refused = [f for f, c in zip(filters, codes, strict=False) if c == 0x80]
            raise MqttError(f"subscription refused: {', '.join(refused)}")

    def disconnect(self) -> None:
        """A clean goodbye: the broker drops the Will."""
        if self._timer is not None:
            self._timer.cancel()
        if self.connected:
            self._write(_DISCONNECT)
            assert self._transport is not None
            self._transport.close()

    def abort(self) -> None:
        """Close without DISCONNECT: the broker publishes the Will, as when a box loses power."""
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._rx = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.error = self.error or (str(exc) if exc else "closed")
        self.lost.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(f"connection closed before CONNACK: {self.error}"))
        for fut in self._subacks.values():
            if not fut.done():
                fut.set_exception(MqttError("connection closed before SUBACK"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._rx = asyncio.get_running_loop().time()
        buf = self._buf
        pos = 0
        while True:
            # the remaining length: up to 4 bytes of 7 bits each
            if len(buf) - pos < 2:
                break
            n, shift, i = 0, 0, pos + 1
            while True:
                if i >= len(buf):
                    n = -1
                    break
                b = buf[i]
                n |= (b & 0x7F) << shift
                i += 1
                if not b & 0x80:
                    break
                shift += 7
                if shift > 21:
                    self._fail("malformed remaining length")
                    return
            if n < 0 or len(buf) - i < n:
                break
            self._handle(buf[pos], bytes(buf[i : i + n]))
            pos = i + n
        if pos:
            del buf[:pos]

    # -- inside

    def _handle(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBACK:
            self.in_flight -= 1
            self.on_puback(struct.unpack_from("!H", body)[0])
        elif kind == PUBLISH:
            qos = (first >> 1) & 3
            tlen = struct.unpack_from("!H", body)[0]
            topic = body[2 : 2 + tlen].decode()
            at = 2 + tlen
            if qos:
                pid = body[at : at + 2]
                at += 2
                self._write(b"\x40\x02" + pid)
            self.on_message(topic, body[at:])
        elif kind == CONNACK:
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(body[1])
        elif kind == SUBACK:
            fut = self._subacks.get(struct.unpack_from("!H", body)[0])
            if fut is not None and not fut.done():
                fut.set_result(body[2:])
        elif kind != PINGRESP:
            self._fail(f"unexpected packet type {kind}")

    def _fail(self, why: str) -> None:
        self.error = why
        self.abort()

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise MqttError(f"not connected ({self.error or 'closed'})")
        self._transport.write(data)

    def _pid(self) -> int:
        self._next_pid = self._next_pid % 65535 + 1
        return self._next_pid

    def _schedule_ping(self) -> None:
        if self.keepalive_s > 0:
            self._timer = asyncio.get_running_loop().call_later(self.keepalive_s / 2, self._ping)

    def _ping(self) -> None:
        if not self.connected:
            return
        if asyncio.get_running_loop().time() - self._rx > self.keepalive_s * 1.5:
            self._fail("broker silent past 1.5 keepalives")
            return
        try:
            self._write(_PING)
        except MqttError:
            return
        self._schedule_ping()
