"""A bus's time budget: how long each poll keeps the line busy, and whether it all fits.

On RS-485 only one frame is on the wire at a time. A transaction costs its
request and its reply at the bus's character time (start bit, data bits,
parity, stop bits), the 3.5-character silence before each frame, and the
slave's turnaround (from its profile). A Modbus TCP bus has no character
time: a transaction costs the device's turnaround and the bus's ``gap_ms``.

From one poll's requests (the drivers say which; see ``poll_reads``) this
gives each device's poll time, and for a set of poll intervals the fraction
of every second the bus is busy. The bus is over budget when the polls and
one board write with its read-back no longer fit in a second.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from edge.config.profile import Profile
from edge.config.site import RtuBus, TcpBus

RTU_OVERHEAD = 3  # unit id + CRC around a PDU
REQUEST_READ = 8  # unit, fc, address, count, CRC
REPLY_WRITE = 8  # unit, fc, address, value/count, CRC


class Request(Protocol):
    @property
    def table(self) -> str: ...
    @property
    def count(self) -> int: ...


class Costed(Protocol):
    """What the budget needs to know of a device (the drivers have it)."""

    id: str
    poll_s: float
    poll_fast_s: float
    profile: Profile

    def poll_reads(self) -> Sequence[Request]: ...

    def write_frames(self) -> Sequence[tuple[int, int]]: ...


def read_frames(table: str, count: int) -> tuple[int, int]:
    """Bytes of a read request and its reply (RTU framing)."""
    data = (count + 7) // 8 if table in ("coil", "discrete") else 2 * count
    return REQUEST_READ, RTU_OVERHEAD + 2 + data


def transaction_s(bus: RtuBus | TcpBus, turnaround_s: float, request: int, reply: int) -> float:
    """Seconds one request/reply keeps the bus busy."""
    if isinstance(bus, RtuBus):
        return (request + reply) * bus.char_time_s() + 2 * bus.frame_gap_s() + turnaround_s
    return turnaround_s + bus.frame_gap_s()


@dataclass(frozen=True)
class DeviceCost:
    id: str
    kind: str
    poll_s: float
    poll_fast_s: float
    poll_time_s: float  # one poll, all its requests

    @property
    def adaptive(self) -> bool:
        return self.poll_fast_s < self.poll_s


@dataclass(frozen=True)
class BusBudget:
    bus_id: str
    line: str  # "rtu 9600 8N1" or "tcp host:port"
    devices: tuple[DeviceCost, ...]
    write_s: float  # the longest actuator write with its read-back

    def busy(self, fast: Iterable[str] = ()) -> float:
        """Seconds of bus time per second with the devices in ``fast`` at their fast interval."""
        f = set(fast)
        return sum(d.poll_time_s / (d.poll_fast_s if d.id in f else d.poll_s) for d in self.devices)

    def polls_needed(self, fast: Iterable[str] = ()) -> float:
        f = set(fast)
        return sum(1 / (d.poll_fast_s if d.id in f else d.poll_s) for d in self.devices)

    def polls_available(self, fast: Iterable[str] = ()) -> float:
        """Polls per second the bus could carry with this mix of devices (and nothing else)."""
        busy = self.busy(fast)
        return self.polls_needed(fast) / busy if busy > 0 else float("inf")

    def fits(self, fast: Iterable[str] = ()) -> bool:
        return self.busy(fast) + self.write_s <= 1.0

    @property
    def adaptive_ids(self) -> list[str]:
        return [d.id for d in self.devices if d.adaptive]

    def max_fast(self) -> int:
        """How many adaptive sensors can be fast at once (the dearest first) and still fit."""
        dearest = sorted(
            (d for d in self.devices if d.adaptive),
            key=lambda d: d.poll_time_s / d.poll_fast_s - d.poll_time_s / d.poll_s,
            reverse=True,
        )
        n = 0
        while n < len(dearest) and self.fits(d.id for d in dearest[: n + 1]):
            n += 1
        return n if self.fits() else 0


def poll_time_s(bus: RtuBus | TcpBus, device: Costed) -> float:
    turnaround = device.profile.link.turnaround_ms / 1000
    total = 0.0
    for r in device.poll_reads():
        total += transaction_s(bus, turnaround, *read_frames(r.table, r.count))
    return total


def write_time_s(bus: RtuBus | TcpBus, device: Costed) -> float:
    """An actuator's write with its read-back, as its kind frames it (a board's text, a gate's coil)."""
    turnaround = device.profile.link.turnaround_ms / 1000
    return sum(transaction_s(bus, turnaround, req, reply) for req, reply in device.write_frames())


def bus_budget(bus: RtuBus | TcpBus, devices: Sequence[Costed]) -> BusBudget:
    if isinstance(bus, RtuBus):
        line = f"rtu {bus.baud} {bus.bytesize}{bus.parity}{bus.stopbits}"
    else:
        line = f"tcp {bus.host}:{bus.port}"
    costs = tuple(
        DeviceCost(d.id, d.profile.kind, d.poll_s, d.poll_fast_s, poll_time_s(bus, d)) for d in devices
    )
    write = max((write_time_s(bus, d) for d in devices), default=0.0)
    return BusBudget(bus.id, line, costs, write)
