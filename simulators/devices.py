"""Device behaviour behind the registers, one class per profile kind.

Every simulated device is built from the same profile the agent reads, so a
new profile gets a simulator for free. The registers are kept up to date on
each read from the device's model of the world: the water depth source for
sensors, the message it was told to show for a board, the travel of the arm
for a gate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from edge.config.profile import UNIT_TO_MM, Point, Profile
from edge.devices.codec import Value, decode_raw, encode_raw, unscale
from floodgate.vocab import DeviceKind
from simulators.scenarios import Scenario
from simulators.slave import ILLEGAL_VALUE, RegisterMap, SlaveDevice, Table

Clock = Callable[[], float]
# Faults every device can have; a profile's status points add their own reasons
# (cable_break, no_echo, over_range, ...): see SimDevice.known_faults().
FAULTS = ("no_answer", "exception", "corrupt", "stuck", "out_of_range")


@dataclass
class DepthSource:
    """Water depth at a site: a scenario played at ``speed``, or a value set by hand."""

    scenario: Scenario
    speed: float = 1.0
    clock: Clock = time.monotonic
    started: float = field(default=0.0)
    manual: float | None = None

    def __post_init__(self) -> None:
        self.started = self.clock()

    def restart(self) -> None:
        self.started = self.clock()

    def scenario_time(self) -> float:
        return (self.clock() - self.started) * self.speed

    def depth_mm(self) -> float:
        if self.manual is not None:
            return self.manual
        return self.scenario.depth_at(self.scenario_time())


def build_registers(profile: Profile) -> RegisterMap:
    regs = RegisterMap()
    for point in profile.points.values():
        table = regs.table(point.table)
        base = profile.protocol_address(point)
        for i in range(point.width):
            table.setdefault(base + i, 0)
    for creg in profile.config_registers.values():
        regs.holding.setdefault(profile.protocol_address(creg), 0)
        if creg.save is not None:
            regs.holding.setdefault(creg.save[0] - profile.link.address_base, 0)
    return regs


@dataclass
class World:
    """What a simulated device of any kind may be built from: the site's water and its settings."""

    source: DepthSource
    clock: Clock = time.monotonic
    mount_height_mm: float | None = None  # a level sensor's (the site config's)
    gate_travel_s: float = 3.0


class SimDevice:
    """A profile's registers on a slave, with device-level faults."""

    kind: ClassVar[DeviceKind]

    @classmethod
    def build(cls, profile: Profile, unit: int, world: World) -> SimDevice:
        """A device of this kind for ``profile`` at ``unit``, in ``world``."""
        return cls(profile, unit, clock=world.clock)

    def __init__(self, profile: Profile, unit: int, clock: Clock = time.monotonic) -> None:
        self.profile = profile
        self.clock = clock
        self.slave = SlaveDevice(
            unit, build_registers(profile), turnaround_s=profile.link.turnaround_ms / 1000
        )
        self.slave.before_read = self._before_read
        self.slave.on_write = self._on_write
        self.stuck = False
        self.out_of_range = False
        self.status_faults: set[str] = set()
        self._status = profile.status_points()
        self._init_config_registers()
        self._write_status()

    def _init_config_registers(self) -> None:
        cr = self.profile.config_registers
        if "unit_id" in cr:
            self.slave.regs.holding[self.profile.protocol_address(cr["unit_id"])] = self.slave.unit
        if "baud" in cr and cr["baud"].codes:
            code = cr["baud"].codes.get(self.profile.link.baud, 0)
            self.slave.regs.holding[self.profile.protocol_address(cr["baud"])] = code

    @property
    def unit(self) -> int:
        return self.slave.unit

    def known_faults(self) -> list[str]:
        return [*FAULTS, *self.profile.fault_reasons()]

    def inject(self, fault: str, on: bool = True, code: int = ILLEGAL_VALUE) -> None:
        """Turn a fault on or off: one of FAULTS, or a reason a status point of the profile reports."""
        if fault == "no_answer":
            self.slave.faults.no_answer = on
        elif fault == "exception":
            self.slave.faults.exception = code if on else None
        elif fault == "corrupt":
            self.slave.faults.corrupt = on
        elif fault in ("stuck", "out_of_range"):
            setattr(self, fault, on)
        elif fault in self.profile.fault_reasons():
            if on:
                self.status_faults.add(fault)
            else:
                self.status_faults.discard(fault)
        else:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(self.known_faults())}")

    @property
    def status_faulted(self) -> bool:
        return bool(self.status_faults)

    def _before_read(self) -> None:
        self.refresh()
        self._write_status()

    def _write_status(self) -> None:
        """Status points show the injected status faults as the profile codes them."""
        if self.stuck:
            return
        for name, point in self._status.items():
            if point.fault_bits is not None:
                mask = sum(1 << b for b in point.fault_bits)
                bits = sum(1 << b for b, r in point.fault_bits.items() if r in self.status_faults)
                self.set_point(name, (int(self.get_point(name)) & ~mask) | bits)
                continue
            faults = point.faults or {}
            active = [c for c, r in faults.items() if r in self.status_faults]
            if active:
                code = active[0]
            elif point.ok:
                code = point.ok[0]
            else:
                code = min(c for c in range(len(faults) + 1) if c not in faults)
            self.set_point(name, code)

    def set_point(self, name: str, value: Value) -> None:
        point = self.profile.points[name]
        table = self.slave.regs.table(point.table)
        base = self.profile.protocol_address(point)
        words = encode_raw(point, value)
        if point.type == "bit" and point.table in ("holding", "input"):
            mask = 1 << (point.bit or 0)
            table[base] = (table[base] | mask) if value else (table[base] & ~mask)
            return
        for i, w in enumerate(words):
            table[base + i] = w

    def get_point(self, name: str) -> Value:
        point = self.profile.points[name]
        table = self.slave.regs.table(point.table)
        base = self.profile.protocol_address(point)
        return decode_raw(point, [table[base + i] for i in range(point.width)])

    def refresh(self) -> None:
        """Bring the registers up to date just before a read."""

    def _on_write(self, table: Table, address: int, values: list[int]) -> None:
        self._config_written(table, address, values)
        self._written(table, address, values)

    def _config_written(self, table: Table, address: int, values: list[int]) -> None:
        """A new unit id takes effect once written (and saved, where the profile needs a save)."""
        cr = self.profile.config_registers.get("unit_id")
        if cr is None or table != "holding":
            return
        reg = self.profile.protocol_address(cr)
        touched = range(address, address + len(values))
        if cr.save is not None:
            save_at, save_value = cr.save[0] - self.profile.link.address_base, cr.save[1]
            if save_at not in touched or self.slave.regs.holding.get(save_at) != save_value:
                return
        elif reg not in touched:
            return
        new = self.slave.regs.holding.get(reg, self.slave.unit)
        if 1 <= new <= 247:
            self.slave.unit = new  # the bus re-files it after this answer

    def _written(self, table: Table, address: int, values: list[int]) -> None:
        """React to a master's write."""

    def status(self) -> dict[str, object]:
        return {"unit": self.unit, "model": self.profile.model, "requests": self.slave.requests}


def _fit(point: Point, raw: float) -> float | int:
    """A raw value as the point's register type can hold it."""
    if point.type == "float32":
        return raw
    lo, hi = {"int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}.get(
        point.type, (0, 65535)
    )
    return max(lo, min(hi, round(raw)))


class SimLevel(SimDevice):
    """A level sensor over a depth source; distance-mode models report mount height minus depth."""

    kind: ClassVar[DeviceKind] = "level"

    @classmethod
    def build(cls, profile: Profile, unit: int, world: World) -> SimDevice:
        return cls(profile, unit, world.source, world.mount_height_mm, clock=world.clock)

    def __init__(
        self,
        profile: Profile,
        unit: int,
        source: DepthSource,
        mount_height_mm: float | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.source = source
        self.mount_height_mm = mount_height_mm or 4500.0
        self.decimals = 1 if "decimals" in profile.points else 0
        super().__init__(profile, unit, clock)
        if "decimals" in profile.points:
            self.set_point("decimals", self.decimals)
        self.last_depth_mm = 0.0
        self.refresh()

    def _raw_for(self, depth_mm: float) -> float:
        point: Point = self.profile.points["level"]
        value_mm = self.mount_height_mm - depth_mm if self.profile.level_mode == "distance" else depth_mm
        in_unit = value_mm / UNIT_TO_MM.get(point.unit or "mm", 1.0)
        return unscale(point, in_unit, self.decimals if point.decimals_from else 0)

    def refresh(self) -> None:
        if self.stuck:
            return
        depth = self.source.depth_mm()
        self.last_depth_mm = depth
        point = self.profile.points["level"]
        # A sensor whose status says "no valid reading" still shows a number: here the
        # worst one, water up to the sensor (a radar without an echo reads distance 0).
        raw = self._raw_for(self.mount_height_mm if self.status_faulted else depth)
        if self.out_of_range and point.range is not None:
            span = point.range[1] - point.range[0]
            raw = unscale(point, point.range[1] + span, self.decimals if point.decimals_from else 0)
        for name in ("level", "level_avg"):
            if name in self.profile.points:
                self.set_point(name, _fit(self.profile.points[name], raw))

    def status(self) -> dict[str, object]:
        return {**super().status(), "depth_mm": round(self.last_depth_mm, 1)}


class SimImmersion(SimDevice):
    """A wet contact at ``contact_mm`` above the road; in a status fault (a broken cable) it reads dry."""

    kind: ClassVar[DeviceKind] = "immersion"

    @classmethod
    def build(cls, profile: Profile, unit: int, world: World) -> SimDevice:
        return cls(profile, unit, world.source, clock=world.clock)

    def __init__(
        self,
        profile: Profile,
        unit: int,
        source: DepthSource,
        contact_mm: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.source = source
        self.contact_mm = contact_mm
        super().__init__(profile, unit, clock)
        self.refresh()

    def refresh(self) -> None:
        if self.stuck:
            return
        wet = self.source.depth_mm() >= self.contact_mm and not self.status_faulted
        self.set_point("wet", int(wet) if self.profile.points["wet"].type != "bit" else wet)
        if self.out_of_range and self.profile.points["wet"].type != "bit":
            self.set_point("wet", 7)


class SimSign(SimDevice):
    """An LED board: shows what it is told until a power cut brings back its default."""

    kind: ClassVar[DeviceKind] = "sign"

    def __init__(
        self,
        profile: Profile,
        unit: int,
        default_text: str = "黄埔区 安全出行",
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(profile, unit, clock)
        self.shown: list[tuple[float, str]] = []
        self.listeners: list[Callable[[float, str], None]] = []
        if "default_text" in profile.points:
            self.set_point("default_text", default_text)
        self.set_point("text", default_text)
        if "brightness" in profile.points:
            self.set_point("brightness", 80)

    @property
    def text(self) -> str:
        return str(self.get_point("text"))

    def power_cycle(self) -> None:
        """The board loses power: the real-time message in RAM is gone."""
        default = self.get_point("default_text") if "default_text" in self.profile.points else ""
        self.set_point("text", default)

    def _written(self, table: Table, address: int, values: list[int]) -> None:
        point = self.profile.points["text"]
        base = self.profile.protocol_address(point)
        if table == "holding" and base <= address < base + point.width:
            now = self.clock()
            text = self.text
            self.shown.append((now, text))
            for listener in self.listeners:
                listener(now, text)

    def status(self) -> dict[str, object]:
        return {**super().status(), "text": self.text}


class SimGate(SimDevice):
    """A barrier arm behind a relay: it travels for ``travel_s`` and reports its limit switches."""

    kind: ClassVar[DeviceKind] = "gate"

    @classmethod
    def build(cls, profile: Profile, unit: int, world: World) -> SimDevice:
        return cls(profile, unit, travel_s=world.gate_travel_s, clock=world.clock)

    def __init__(
        self, profile: Profile, unit: int, travel_s: float = 3.0, clock: Clock = time.monotonic
    ) -> None:
        super().__init__(profile, unit, clock)
        self.travel_s = travel_s
        self._pos = 0.0  # 0 open, 1 closed
        self._t0 = clock()
        self._target = 0.0
        self.override = False
        self.jammed = False
        self.relay_writes: list[tuple[float, bool]] = []
        self.refresh()

    def position(self) -> float:
        if self.jammed or self.travel_s <= 0:
            return self._target if self.travel_s <= 0 and not self.jammed else self._pos
        moved = (self.clock() - self._t0) / self.travel_s
        if self._target > self._pos:
            return min(self._target, self._pos + moved)
        return max(self._target, self._pos - moved)

    def _written(self, table: Table, address: int, values: list[int]) -> None:
        point = self.profile.points["close_relay"]
        if table == "coil" and address == self.profile.protocol_address(point):
            self._pos = self.position()
            self._t0 = self.clock()
            self._target = 1.0 if values[0] else 0.0
            self.relay_writes.append((self._t0, bool(values[0])))

    def refresh(self) -> None:
        pos = self.position()
        self.set_point("open_limit", pos <= 0.0)
        self.set_point("closed_limit", pos >= 1.0)
        if "override" in self.profile.points:
            self.set_point("override", self.override)

    @property
    def state(self) -> str:
        pos = self.position()
        return "closed" if pos >= 1.0 else "open" if pos <= 0.0 else "moving"

    def status(self) -> dict[str, object]:
        return {**super().status(), "gate": self.state, "override": self.override}


class SimRain(SimDevice):
    """A rain gauge in the site's storm: a tip counter (wrapping at its width) or an intensity register.

    The rain is the depth source's scenario's (the same storm as the water), or set by hand:
    ``manual_mm`` (the total fallen) and ``manual_mm_h``. ``counter_start`` is the count at
    the start (set it near 65535 to see the counter wrap).
    """

    kind: ClassVar[DeviceKind] = "rain"

    def __init__(
        self,
        profile: Profile,
        unit: int,
        source: DepthSource,
        counter_start: int = 0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.source = source
        self.counter_start = counter_start
        self.manual_mm: float | None = None
        self.manual_mm_h: float | None = None
        super().__init__(profile, unit, clock)
        self.refresh()

    @classmethod
    def build(cls, profile: Profile, unit: int, world: World) -> SimDevice:
        return cls(profile, unit, world.source, clock=world.clock)

    def fallen_mm(self) -> float:
        if self.manual_mm is not None:
            return self.manual_mm
        return self.source.scenario.rain_mm(self.source.scenario_time())

    def mm_h(self) -> float:
        if self.manual_mm_h is not None:
            return self.manual_mm_h
        return self.source.scenario.rain_mm_h(self.source.scenario_time())

    def refresh(self) -> None:
        if self.stuck:
            return
        if "tips" in self.profile.points:
            point = self.profile.points["tips"]
            tips = self.counter_start + int(self.fallen_mm() / point.scale + 1e-9)
            self.set_point("tips", tips % (1 << (16 * point.width)))
        if "intensity" in self.profile.points:
            point = self.profile.points["intensity"]
            value = self.mm_h()
            if self.out_of_range and point.range is not None:
                value = point.range[1] * 2
            self.set_point("intensity", _fit(point, unscale(point, value)))

    def status(self) -> dict[str, object]:
        return {**super().status(), "rain_mm": round(self.fallen_mm(), 1), "rain_mm_h": round(self.mm_h(), 1)}


# One simulator class per device kind (the same kinds as edge.devices.kinds.KINDS).
SIM_KINDS: dict[str, type[SimDevice]] = {
    c.kind: c for c in (SimLevel, SimImmersion, SimSign, SimGate, SimRain)
}


def make_sim(profile: Profile, unit: int, world: World) -> SimDevice:
    """The simulated device for ``profile``'s kind; an unknown kind is a ValueError."""
    cls = SIM_KINDS.get(profile.kind)
    if cls is None:
        raise ValueError(
            f"no simulator for kind {profile.kind!r} (profile {profile.model}); one of {', '.join(SIM_KINDS)}"
        )
    return cls.build(profile, unit, world)
