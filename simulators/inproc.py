"""A Modbus link to a simulated bus in the same process: real request PDUs, no wire.

For tests and benches that drive time with a manual clock, where a pty or a
socket would make every step wait on real time: the agent's drivers and bus
owner run unchanged, each request is encoded as a Modbus PDU and answered at
once by the simulated slave (:meth:`SlaveDevice.handle`). What is left out is
the wire: RTU framing and CRC, TCP's MBAP header, and timing. A slave that is
set not to answer (or to garble its frames) raises :class:`NoResponse` at once,
as the master would after its timeout.
"""

from __future__ import annotations

import struct

from edge.bus.link import Table
from floodgate.errors import LinkDown, ModbusException, NoResponse
from simulators.slave import SimBus

READ_CODES: dict[Table, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


class InProcessLink:
    """A :class:`edge.bus.link.ModbusLink` over a :class:`SimBus`, without the wire."""

    def __init__(self, bus: SimBus) -> None:
        self.bus = bus
        self.up = True  # set False to make the link fail like an unplugged adapter
        self.connected = False

    async def connect(self) -> None:
        if not self.up:
            raise LinkDown("in-process link: down")
        self.connected = True

    async def close(self) -> None:
        self.connected = False

    def _ask(self, unit: int, pdu: bytes) -> bytes:
        if not self.up or not self.connected:
            self.connected = False
            raise LinkDown("in-process link: not connected")
        dev = self.bus.devices.get(unit)
        if dev is None or dev.faults.no_answer or dev.faults.corrupt:
            raise NoResponse(f"unit {unit}: no answer")
        answer = dev.handle(pdu)
        if answer[0] & 0x80:
            raise ModbusException(answer[1])
        return answer

    async def read(self, table: Table, address: int, count: int, unit: int) -> list[int]:
        fc = READ_CODES[table]
        answer = self._ask(unit, struct.pack(">BHH", fc, address, count))
        data = answer[2 : 2 + answer[1]]
        if fc in (1, 2):
            return [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
        return list(struct.unpack(f">{count}H", data))

    async def write_registers(self, address: int, values: list[int], unit: int) -> None:
        data = struct.pack(f">{len(values)}H", *values)
        self._ask(unit, struct.pack(">BHHB", 16, address, len(values), len(data)) + data)

    async def write_register(self, address: int, value: int, unit: int) -> None:
        self._ask(unit, struct.pack(">BHH", 6, address, value))

    async def write_coil(self, address: int, value: bool, unit: int) -> None:
        self._ask(unit, struct.pack(">BHH", 5, address, 0xFF00 if value else 0))
