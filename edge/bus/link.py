"""The one thin module that talks to pymodbus.

Everything above this speaks :class:`ModbusLink`; tests and simulators can
pass any object with the same methods. pymodbus renamed keywords across 3.x
(``slave=`` became ``device_id=`` in 3.10), so the pinned range lives here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from edge.config.site import RtuBus, TcpBus
from floodgate.errors import LinkDown, ModbusException, NoResponse
from floodgate.runner import stop_if_cancelled

Table = Literal["holding", "input", "coil", "discrete"]


class ModbusLink(Protocol):
    """What a bus owner needs from a Modbus master."""

    async def connect(self) -> None: ...
    async def close(self) -> None: ...
    async def read(self, table: Table, address: int, count: int, unit: int) -> list[int]: ...
    async def write_registers(self, address: int, values: list[int], unit: int) -> None: ...
    async def write_register(self, address: int, value: int, unit: int) -> None: ...
    async def write_coil(self, address: int, value: bool, unit: int) -> None: ...


class PymodbusLink:
    """A ModbusLink over pymodbus' async RTU (serial or ``socket://``) or TCP client."""

    def __init__(self, bus: RtuBus | TcpBus) -> None:
        self.bus = bus
        self._client: Any
        if isinstance(bus, RtuBus):
            self._client = AsyncModbusSerialClient(
                bus.port,
                framer=FramerType.RTU,
                baudrate=bus.baud,
                bytesize=bus.bytesize,
                parity=bus.parity,
                stopbits=bus.stopbits,
                timeout=bus.timeout_s,
                retries=bus.retries,
                reconnect_delay=0,  # the bus owner reconnects, with its own backoff
                name=bus.id,
            )
        else:
            self._client = AsyncModbusTcpClient(
                bus.host,
                port=bus.port,
                framer=FramerType.SOCKET,
                timeout=bus.timeout_s,
                retries=bus.retries,
                reconnect_delay=0,
                name=bus.id,
            )
        # pymodbus closes a TCP link after a few unanswered requests in a row; a dead
        # slave behind a gateway must not take its neighbours down with it.
        if hasattr(self._client, "ctx"):
            self._client.ctx.max_until_disconnect = 1 << 30
            self._client.ctx.count_until_disconnect = 1 << 30

    @property
    def connected(self) -> bool:
        return bool(self._client.connected)

    async def connect(self) -> None:
        try:
            ok = await self._client.connect()
        except OSError as exc:  # pragma: no cover - depends on the OS refusing
            raise LinkDown(f"{self._where()}: {exc}") from exc
        if not ok:
            raise LinkDown(f"{self._where()}: cannot open")

    async def close(self) -> None:
        self._client.close()
        await asyncio.sleep(0)  # let the transport's close callbacks run

    def _where(self) -> str:
        b = self.bus
        return b.port if isinstance(b, RtuBus) else f"{b.host}:{b.port}"

    async def _call(self, request: Callable[[], Awaitable[Any]]) -> Any:
        """Run one request; ``request`` is called here, since pymodbus raises "not
        connected" when the request is made, not when it is awaited."""
        if not self._client.connected:
            raise LinkDown(f"{self._where()}: not connected")
        try:
            rr = await request()
            # pymodbus awaits with asyncio.wait_for, which in Python 3.11 can swallow
            # a cancel that lands as the answer arrives: do not lose it here.
            stop_if_cancelled()
        except ModbusIOException as exc:
            raise NoResponse(str(exc)) from None
        except ConnectionException as exc:
            raise LinkDown(str(exc)) from None
        if rr.isError():
            code = getattr(rr, "exception_code", 0)
            raise ModbusException(int(code))
        return rr

    async def read(self, table: Table, address: int, count: int, unit: int) -> list[int]:
        c = self._client
        if table == "holding":
            rr = await self._call(lambda: c.read_holding_registers(address, count=count, device_id=unit))
            return list(rr.registers)
        if table == "input":
            rr = await self._call(lambda: c.read_input_registers(address, count=count, device_id=unit))
            return list(rr.registers)
        if table == "coil":
            rr = await self._call(lambda: c.read_coils(address, count=count, device_id=unit))
        else:
            rr = await self._call(lambda: c.read_discrete_inputs(address, count=count, device_id=unit))
        return [1 if b else 0 for b in rr.bits[:count]]

    async def write_registers(self, address: int, values: list[int], unit: int) -> None:
        await self._call(lambda: self._client.write_registers(address, values, device_id=unit))

    async def write_register(self, address: int, value: int, unit: int) -> None:
        await self._call(lambda: self._client.write_register(address, value, device_id=unit))

    async def write_coil(self, address: int, value: bool, unit: int) -> None:
        await self._call(lambda: self._client.write_coil(address, value, device_id=unit))
