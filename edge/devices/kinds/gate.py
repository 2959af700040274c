"""The ``gate`` kind: a barrier driven through a relay, its position from limit switches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from edge.bus.budget import REPLY_WRITE, read_frames
from edge.bus.owner import DeviceIO
from edge.config.profile import Profile
from edge.config.site import Device
from edge.devices.base import DeviceDriver, Sink, read_points
from floodgate.clock import Clock
from floodgate.vocab import DeviceKind


@dataclass
class GateState:
    position: str  # open | closed | moving | fault
    relay: bool
    override: bool | None


class GateDevice(DeviceDriver):
    """A barrier through a relay: close/open by coil, position from the limit switches."""

    kind: ClassVar[DeviceKind] = "gate"

    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        self.relay = profile.points["close_relay"]
        self.inputs = [n for n in ("open_limit", "closed_limit", "override") if n in profile.points]
        self.listener: Callable[[str, GateState], None] | None = None
        self.state: GateState | None = None

    def _poll_names(self) -> Sequence[str]:
        return [*self.inputs, "close_relay"]

    def write_frames(self) -> Sequence[tuple[int, int]]:
        """The relay coil (FC05) and its read-back."""
        return [(8, REPLY_WRITE), read_frames("coil", 1)]

    async def poll(self, io: DeviceIO) -> None:
        raws = await read_points(io, self.profile, self._poll_names())
        self._set_fault(self.clock.now_ms(), None)
        opened, closed = bool(raws["open_limit"]), bool(raws["closed_limit"])
        position = "fault" if opened and closed else "open" if opened else "closed" if closed else "moving"
        override = bool(raws["override"]) if "override" in raws else None
        self.state = GateState(position, bool(raws["close_relay"]), override)
        if self.listener is not None:
            self.listener(self.id, self.state)

    async def set_closed(self, io: DeviceIO, closed: bool) -> bool:
        """Energise (close) or release (open) the relay and read the coil back."""

        addr = self.profile.protocol_address(self.relay)
        await io.write_coil(addr, closed)
        return bool((await io.read("coil", addr, 1))[0]) == closed
