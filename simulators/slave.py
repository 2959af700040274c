"""A Modbus slave with real framing: RTU (CRC-16) over a serial line, and TCP (MBAP).

Written here rather than taken from pymodbus' server so that faults can be
injected at the exact layer where field devices fail: a slave that does not
answer, answers with an exception, or sends a frame with a broken CRC.

Function codes: 01, 02, 03, 04, 05, 06, 15, 16. An address that a device
does not have answers exception 2 (illegal data address), as real devices do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger("floodgate.sim.slave")

Table = Literal["holding", "input", "coil", "discrete"]
ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3
DEVICE_FAILURE = 4


def crc16(data: bytes) -> int:
    """Modbus RTU CRC-16 (polynomial 0xA001, initial 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(frame: bytes) -> bytes:
    return frame + struct.pack("<H", crc16(frame))


@dataclass
class Faults:
    """Link-level faults of one slave; device-level faults live on the device model."""

    no_answer: bool = False
    exception: int | None = None
    corrupt: bool = False


@dataclass
class RegisterMap:
    """The tables of one slave. Only addresses present here exist on the device."""

    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    coil: dict[int, int] = field(default_factory=dict)
    discrete: dict[int, int] = field(default_factory=dict)

    def table(self, name: Table) -> dict[int, int]:
        t: dict[int, int] = getattr(self, name)
        return t


WriteHook = Callable[[Table, int, list[int]], None]
ReadHook = Callable[[], None]


@dataclass
class SlaveDevice:
    """One unit id on a bus: its registers, its faults and hooks for the device model."""

    unit: int
    regs: RegisterMap = field(default_factory=RegisterMap)
    faults: Faults = field(default_factory=Faults)
    on_write: WriteHook | None = None
    before_read: ReadHook | None = None
    turnaround_s: float = 0.01
    requests: int = 0

    def handle(self, pdu: bytes) -> bytes:
        """Answer one request PDU (function code first) with a response PDU."""
        self.requests += 1
        fc = pdu[0]
        if self.faults.exception is not None:
            return bytes([fc | 0x80, self.faults.exception])
        try:
            return self._dispatch(fc, pdu)
        except _ModbusError as exc:
            return bytes([fc | 0x80, exc.code])
        except (struct.error, IndexError):
            return bytes([fc | 0x80, ILLEGAL_VALUE])

    def _read(self, table: Table, addr: int, count: int) -> list[int]:
        t = self.regs.table(table)
        if any(a not in t for a in range(addr, addr + count)):
            raise _ModbusError(ILLEGAL_ADDRESS)
        return [t[a] for a in range(addr, addr + count)]

    def _write(self, table: Table, addr: int, values: list[int]) -> None:
        t = self.regs.table(table)
        if any(a not in t for a in range(addr, addr + len(values))):
            raise _ModbusError(ILLEGAL_ADDRESS)
        for i, v in enumerate(values):
            t[addr + i] = v
        if self.on_write is not None:
            self.on_write(table, addr, values)

    def _dispatch(self, fc: int, pdu: bytes) -> bytes:
        if fc in (1, 2, 3, 4):
            addr, count = struct.unpack(">HH", pdu[1:5])
            limit = 2000 if fc in (1, 2) else 125
            if not 1 <= count <= limit:
                raise _ModbusError(ILLEGAL_VALUE)
            if self.before_read is not None:
                self.before_read()
            tables: tuple[Table, ...] = ("coil", "discrete", "holding", "input")
            table = tables[fc - 1]
            values = self._read(table, addr, count)
            if fc in (1, 2):
                packed = bytearray((count + 7) // 8)
                for i, v in enumerate(values):
                    if v:
                        packed[i // 8] |= 1 << (i % 8)
                return bytes([fc, len(packed)]) + bytes(packed)
            return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *values)
        if fc == 5:
            addr, value = struct.unpack(">HH", pdu[1:5])
            if value not in (0xFF00, 0x0000):
                raise _ModbusError(ILLEGAL_VALUE)
            self._write("coil", addr, [1 if value == 0xFF00 else 0])
            return pdu[:5]
        if fc == 6:
            addr, value = struct.unpack(">HH", pdu[1:5])
            self._write("holding", addr, [value])
            return pdu[:5]
        if fc in (15, 16):
            addr, count, nbytes = struct.unpack(">HHB", pdu[1:6])
            data = pdu[6 : 6 + nbytes]
            if len(data) != nbytes:
                raise _ModbusError(ILLEGAL_VALUE)
            if fc == 16:
                if nbytes != 2 * count:
                    raise _ModbusError(ILLEGAL_VALUE)
                self._write("holding", addr, list(struct.unpack(f">{count}H", data)))
            else:
                bits = [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
                self._write("coil", addr, bits)
            return pdu[:5]
        raise _ModbusError(ILLEGAL_FUNCTION)


class _ModbusError(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def rtu_request_length(buf: bytes) -> int | None:
    """Length of the RTU request frame at the start of ``buf``, or None if unknown yet."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        return 9 + buf[6] if len(buf) >= 7 else None
    return -1


class SimBus:
    """All slaves sharing one line; answers requests addressed to them.

    ``char_time_s`` > 0 emulates the wire: a reply is held back for the time
    the request and the reply take at the bus speed, plus the device's
    turnaround, so that timing over a pty looks like RS-485 at that baud.
    """

    def __init__(self, devices: list[SlaveDevice] | None = None, char_time_s: float = 0.0) -> None:
        self.devices: dict[int, SlaveDevice] = {}
        self.char_time_s = char_time_s
        self.frames_in = 0
        self.crc_errors = 0
        for d in devices or []:
            self.add(d)

    def add(self, device: SlaveDevice) -> None:
        if device.unit in self.devices:
            raise ValueError(f"unit {device.unit} already on this bus")
        self.devices[device.unit] = device

    async def answer(self, unit: int, pdu: bytes, request_len: int) -> bytes | None:
        """The response PDU for ``unit``, after the emulated wire time; None for silence."""
        self.frames_in += 1
        dev = self.devices.get(unit)
        if dev is None or dev.faults.no_answer:
            return None
        if self.char_time_s > 0:  # the request is on the wire before the slave has it
            await asyncio.sleep(self.char_time_s * (request_len + 3.5))
        response = dev.handle(pdu)
        if dev.unit != unit:  # a new address, from the next request on, unless another has it
            if dev.unit in self.devices:
                dev.unit = unit
            else:
                del self.devices[unit]
                self.devices[dev.unit] = dev
        if unit == 0:  # broadcast: act, never answer
            return None
        if self.char_time_s > 0:  # the slave turns round, then its reply crosses the wire
            await asyncio.sleep(dev.turnaround_s + self.char_time_s * (len(response) + 3 + 3.5))
        return response


async def _serve_rtu_stream(
    bus: SimBus,
    read: Callable[[], Awaitable[bytes]],
    write: Callable[[bytes], None],
) -> None:
    buf = b""
    while True:
        chunk = await read()
        if not chunk:
            return
        buf += chunk
        while True:
            n = rtu_request_length(buf)
            if n is None or (n > 0 and len(buf) < n):
                break
            if n < 0:  # unknown function code: this is line noise, resynchronise
                buf = buf[1:]
                continue
            frame, rest = buf[:n], buf[n:]
            if crc16(frame[:-2]) != struct.unpack("<H", frame[-2:])[0]:
                bus.crc_errors += 1
                buf = buf[1:]
                continue
            buf = rest
            unit = frame[0]
            response = await bus.answer(unit, frame[1:-2], n)
            if response is None:
                continue
            out = with_crc(bytes([unit]) + response)
            dev = bus.devices.get(unit)
            if dev is not None and dev.faults.corrupt:
                out = out[:-1] + bytes([out[-1] ^ 0x5A])
            write(out)


async def serve_rtu_fd(bus: SimBus, path: str) -> None:
    """Serve RTU on a serial device (one end of a pty pair) until cancelled."""
    # Blocking fd: reads happen only when the loop says it is readable, and a
    # reply of at most 256 bytes never fills a pty's buffer.
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        queue.put_nowait(data)

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    loop.add_reader(fd, readable)
    try:
        await _serve_rtu_stream(bus, queue.get, write)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def serve_tcp(
    bus: SimBus, host: str = "127.0.0.1", port: int = 0, framing: Literal["tcp", "rtu"] = "tcp"
) -> asyncio.Server:
    """Listen for Modbus TCP (MBAP) or RTU frames over TCP (pyserial's ``socket://``)."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if framing == "rtu":

                async def read() -> bytes:
                    return await reader.read(4096)

                await _serve_rtu_stream(bus, read, writer.write)
                return
            while True:
                header = await reader.readexactly(7)
                tid, proto, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                if proto != 0:
                    continue
                response = await bus.answer(unit, pdu, 7 + len(pdu))
                if response is None:
                    continue
                dev = bus.devices.get(unit)
                out = struct.pack(">HHHB", tid, 0, len(response) + 1, unit) + response
                if dev is not None and dev.faults.corrupt:
                    out = out[:7] + bytes([0x7F]) + out[8:]  # garbage function code
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(client, host, port)
