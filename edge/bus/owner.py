"""One owner per field bus: one task, one lock, every transaction through it.

The owner polls each device on its own schedule and serialises writes from
the actuation side between polls. A device that says it is urgent (a sensor
that is wet, rising or near a threshold) is polled at its ``poll_fast_s``,
ahead of the others, which are fitted into the gaps
(``edge.bus.schedule``). A device that stops answering is backed
off exponentially (its poll interval doubling up to ``backoff_max_s``) and,
after ``quarantine_after`` failures in a row, quarantined: polled only at the
slowest rate, so a dead slave costs its neighbours at most one timeout per
``backoff_max_s``. It logs once at ERROR when a device starts failing and
once at INFO when it recovers; in between it stays quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from edge.bus.link import ModbusLink, Table
from edge.bus.schedule import PollSchedule
from floodgate.clock import Clock, SystemClock
from floodgate.errors import BusError, LinkDown, ModbusException, NoResponse

log = logging.getLogger("floodgate.edge.bus")
T = TypeVar("T")


@dataclass
class Counters:
    requests: int = 0
    timeouts: int = 0
    errors: int = 0
    last_good_ms: int | None = None
    consecutive_failures: int = 0
    state: str = "ok"  # ok | failing | quarantined

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class DeviceIO:
    """A device's view of its bus: reads and writes at its unit id, counted."""

    def __init__(self, link: ModbusLink, unit: int, counters: Counters) -> None:
        self._link = link
        self.unit = unit
        self._c = counters

    async def _count(self, op: Awaitable[T]) -> T:
        self._c.requests += 1
        try:
            return await op
        except NoResponse:
            self._c.timeouts += 1
            raise
        except BusError:
            self._c.errors += 1
            raise

    async def read(self, table: Table, address: int, count: int) -> list[int]:
        return await self._count(self._link.read(table, address, count, self.unit))

    async def write_registers(self, address: int, values: list[int]) -> None:
        await self._count(self._link.write_registers(address, values, self.unit))

    async def write_register(self, address: int, value: int) -> None:
        await self._count(self._link.write_register(address, value, self.unit))

    async def write_coil(self, address: int, value: bool) -> None:
        await self._count(self._link.write_coil(address, value, self.unit))


class Polled(Protocol):
    """A device the owner polls."""

    id: str
    unit: int
    poll_s: float
    poll_fast_s: float

    @property
    def urgency(self) -> str | None: ...

    async def poll(self, io: DeviceIO) -> None: ...
    def on_failure(self, exc: BusError, ts_ms: int) -> None: ...


class BusOwner:
    def __init__(
        self,
        bus_id: str,
        link: ModbusLink,
        devices: list[Polled],
        frame_gap_s: float = 0.004,
        backoff_max_s: float = 30.0,
        quarantine_after: int = 3,
        reconnect_max_s: float = 10.0,
        expected_s: dict[str, float] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.bus_id = bus_id
        self.link = link
        self.devices = {d.id: d for d in devices}
        self.counters = {d.id: Counters() for d in devices}
        self.frame_gap_s = frame_gap_s
        self.backoff_max_s = backoff_max_s
        self.quarantine_after = quarantine_after
        self.reconnect_max_s = reconnect_max_s
        self.lock = asyncio.Lock()
        self.connected = False
        self.schedule = PollSchedule()
        self._expected = expected_s or {}
        self.clock = clock or SystemClock()  # stamps failures and last good polls; the cadence is loop time
        self._wake = asyncio.Event()
        self._loop_time = asyncio.get_running_loop().time

    def io(self, dev_id: str) -> DeviceIO:
        return DeviceIO(self.link, self.devices[dev_id].unit, self.counters[dev_id])

    async def transact(self, dev_id: str, fn: Callable[[DeviceIO], Awaitable[T]]) -> T:
        """Run ``fn`` on a device with the bus to itself (used for writes and read-backs)."""
        async with self.lock:
            if not self.connected:
                raise LinkDown(f"bus {self.bus_id} is not connected")
            try:
                result = await fn(self.io(dev_id))
            finally:
                await asyncio.sleep(self.frame_gap_s)
        return result

    def poll_soon(self, dev_id: str) -> None:
        """Ask for a device to be polled at the next chance (e.g. after a write)."""
        if dev_id in self.schedule.slots:
            self.schedule.soon(dev_id, self._loop_time())
        self._wake.set()

    async def _connect(self) -> None:
        delay = 0.05
        while True:
            try:
                await self.link.connect()
                self.connected = True
                log.info("bus connected", extra={"bus": self.bus_id})
                return
            except BusError as exc:
                now = self.clock.now_ms()
                for d in self.devices.values():
                    self._failed(d, exc, now)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)

    def _urgent(self, d: Polled) -> bool:
        """A device that is failing gets no priority, however urgent it was."""
        return d.urgency is not None and self.counters[d.id].consecutive_failures == 0

    def _interval(self, d: Polled) -> float:
        c = self.counters[d.id]
        if c.consecutive_failures == 0:
            return d.poll_fast_s if d.urgency is not None else d.poll_s
        backoff: float = d.poll_s * 2 ** min(c.consecutive_failures - 1, 16)
        return min(max(backoff, d.poll_s), max(self.backoff_max_s, d.poll_s))

    def _failed(self, d: Polled, exc: BusError, ts: int) -> None:
        c = self.counters[d.id]
        c.consecutive_failures += 1
        if c.state == "ok":
            c.state = "failing"
            log.error(
                "device stopped answering: %s",
                exc,
                extra={"bus": self.bus_id, "dev": d.id, "unit": d.unit},
            )
        elif c.consecutive_failures >= self.quarantine_after and c.state != "quarantined":
            c.state = "quarantined"
            log.debug("device quarantined", extra={"bus": self.bus_id, "dev": d.id})
        d.on_failure(exc, ts)

    def _succeeded(self, d: Polled, ts: int) -> None:
        c = self.counters[d.id]
        if c.state != "ok":
            log.info(
                "device recovered after %d failed polls",
                c.consecutive_failures,
                extra={"bus": self.bus_id, "dev": d.id},
            )
        c.state = "ok"
        c.consecutive_failures = 0
        c.last_good_ms = ts

    async def poll_once(self, d: Polled) -> tuple[float, float]:
        """Poll one device; returns when the poll started and ended (with the bus held)."""
        async with self.lock:
            started = self._loop_time()
            try:
                await d.poll(self.io(d.id))
            except (NoResponse, ModbusException) as exc:
                self._failed(d, exc, self.clock.now_ms())
            except LinkDown as exc:
                self._failed(d, exc, self.clock.now_ms())
                self.connected = False
            except Exception as exc:  # a library surprise must not stop the site
                # Counted as a link failure (the link is reopened), logged once per
                # streak like any other, with its type so it can be reported.
                self._failed(d, LinkDown(f"unexpected {type(exc).__name__}: {exc}"), self.clock.now_ms())
                self.connected = False
            else:
                self._succeeded(d, self.clock.now_ms())
            finally:
                await asyncio.sleep(self.frame_gap_s)
            return started, self._loop_time()

    async def run(self) -> None:
        """Poll forever; cancel to stop."""
        try:
            await self._connect()
            now = self._loop_time()
            for i, d in enumerate(self.devices.values()):
                self.schedule.add(d.id, now + i * 0.001, self._expected.get(d.id, 0.05), d.poll_s)
            while True:
                if not self.connected:
                    with contextlib.suppress(Exception):
                        await self.link.close()
                    await self._connect()
                now = self._loop_time()
                dev_id, at = self.schedule.next(now)
                if dev_id is None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), None if at == float("inf") else at - now)
                    continue
                d = self.devices[dev_id]
                started, ended = await self.poll_once(d)
                # The next poll is due an interval after this one started, so the cadence does not drift.
                self.schedule.polled(dev_id, started, ended, self._interval(d), self._urgent(d))
        finally:
            with contextlib.suppress(Exception):
                await self.link.close()
            self.connected = False

    def health(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "devices": {k: c.as_dict() for k, c in self.counters.items()},
        }
