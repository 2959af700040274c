"""The ``sign`` kind: an LED board that shows a message."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from edge.bus.budget import REPLY_WRITE, read_frames
from edge.bus.owner import DeviceIO
from edge.config.profile import Profile
from edge.config.site import Device
from edge.devices.base import DeviceDriver, Sink, read_points
from edge.devices.codec import decode_raw, encode_raw
from floodgate.clock import Clock
from floodgate.vocab import DeviceKind


@dataclass
class SignState:
    text: str
    default_text: str | None


class SignDevice(DeviceDriver):
    """An LED board: reads what it shows; writes a message and reads it back."""

    kind: ClassVar[DeviceKind] = "sign"

    def __init__(self, dev: Device, profile: Profile, sink: Sink, clock: Clock | None = None) -> None:
        super().__init__(dev, profile, sink, clock)
        self.point = profile.points["text"]
        self.names = ["text"] + (["default_text"] if "default_text" in profile.points else [])
        self.listener: Callable[[str, SignState], None] | None = None
        self.state: SignState | None = None

    def _poll_names(self) -> Sequence[str]:
        return ["text"]

    def write_frames(self) -> Sequence[tuple[int, int]]:
        """The text (FC16) and its read-back."""
        words = self.point.width
        return [(9 + 2 * words, REPLY_WRITE), read_frames("holding", words)]

    async def poll(self, io: DeviceIO) -> None:
        # The stored default never changes on its own: read it once, then only the text.
        names = self.names if self.state is None else ["text"]
        raws = await read_points(io, self.profile, names)
        self._set_fault(self.clock.now_ms(), None)
        dft = raws.get("default_text", None if self.state is None else self.state.default_text)
        self.state = SignState(str(raws["text"]), None if dft is None else str(dft))
        if self.listener is not None:
            self.listener(self.id, self.state)

    async def show(self, io: DeviceIO, text: str) -> bool:
        """Write ``text`` and read it back; True when the board holds exactly that."""

        words = encode_raw(self.point, text)
        addr = self.profile.protocol_address(self.point)
        await io.write_registers(addr, words)
        back = decode_raw(self.point, await io.read("holding", addr, len(words)))
        return back == text
