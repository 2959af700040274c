"""Device profiles: register maps as data (firmware-config/profiles/*.yaml).

A profile says how to talk to one device model: link defaults, and named
points with their register table, address, data type, byte/word order,
scaling and unit. Adding a sensor model means adding a profile, not code.
The point names a kind needs are its roles:

====== ===================================================================
kind   required points (optional)
====== ===================================================================
level  ``level`` (``decimals``)
immer. ``wet`` (``cable_break``, ``comms_loss``)
sign   ``text`` (``brightness``)
gate   ``close_relay``, ``open_limit``, ``closed_limit`` (``override``)
rain   ``tips`` (a tipping-bucket counter; its ``scale`` is mm per tip) or
       ``intensity`` (mm/h)
====== ===================================================================

Any point can also be a status (validity) point: ``faults`` maps the codes it
reads to fault reasons (``{1: no_echo, 2: over_range}``; with ``ok: [0]`` any
other code is the fault ``status_<code>``), ``fault_bits`` maps bits of a
register to reasons (``{1: cable_break, 7: comms_loss}``). While a sensor's
status point reads a fault, the agent reports ``sensor_fault`` with that
reason and never a reading of water or dry. A point named ``cable_break`` or
``comms_loss`` with neither key is read as ``faults: {1: <its name>}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

from floodgate.vocab import DEVICE_KINDS, DeviceKind
from floodgate.yamlconfig import Source, load_yaml, validate

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "bit", "string"]
Order = Literal["AB", "BA", "ABCD", "CDAB", "BADC", "DCBA"]
Kind = DeviceKind

REQUIRED_POINTS: dict[str, tuple[str, ...]] = {k: d.points for k, d in DEVICE_KINDS.items()}
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "bit": 1}
UNIT_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}
INTEGER_TYPES = ("int16", "uint16", "int32", "uint32")
LEGACY_STATUS = ("cable_break", "comms_loss")
Reason = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


class _Strict(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Config objects refuse unknown keys, so a typo is an error and not a silent default."""


class Link(_Strict, frozen=True, kw_only=True):
    baud: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    address_base: Literal[0, 1] = 0
    turnaround_ms: Annotated[float, Meta(ge=0)] = 10.0


class Point(_Strict, frozen=True, kw_only=True):
    table: Table
    address: Annotated[int, Meta(ge=0, le=65536)]
    type: DataType = "uint16"
    order: Order | None = None
    bit: Annotated[int, Meta(ge=0, le=15)] | None = None
    length: Annotated[int, Meta(ge=1, le=120)] | None = None
    encoding: str = "ascii"
    scale: float = 1.0
    offset: float = 0.0
    decimals_from: str | None = None
    unit: str | None = None
    metric: Annotated[str, Meta(pattern=r"^[a-z][a-z0-9_]*$")] | None = None
    range: tuple[float, float] | None = None
    writable: bool = False
    description: str = ""
    faults: dict[int, Reason] | None = None
    fault_bits: dict[Annotated[int, Meta(ge=0, le=31)], Reason] | None = None
    ok: list[int] | None = None

    @property
    def is_status(self) -> bool:
        return self.faults is not None or self.fault_bits is not None

    def fault_reason(self, raw: object) -> str | None:
        """The fault reason a raw value of this status point stands for; None when all is well."""
        if isinstance(raw, bool | int) or (isinstance(raw, float) and raw.is_integer()):
            code = int(raw)
        else:
            return None
        if self.fault_bits:
            for bit, reason in sorted(self.fault_bits.items()):
                if (code >> bit) & 1:
                    return reason
            return None
        if self.faults is not None:
            if code in self.faults:
                return self.faults[code]
            if self.ok is not None and code not in self.ok:
                return f"status_{code}"
        return None

    @property
    def width(self) -> int:
        """Registers (or bits) this point spans."""
        if self.table in ("coil", "discrete"):
            return 1
        if self.type == "string":
            return self.length or 1
        return WIDTH[self.type]


class ConfigRegister(_Strict, frozen=True, kw_only=True):
    table: Literal["holding"] = "holding"
    address: Annotated[int, Meta(ge=0, le=65536)]
    codes: dict[int, int] | None = None
    save: tuple[int, int] | None = None  # (address, value) to write to persist the change


class Profile(_Strict, frozen=True, kw_only=True):
    model: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")]
    kind: Kind
    vendor: str = ""
    description: str = ""
    link: Link = field(default_factory=Link)
    level_mode: Literal["depth", "distance"] = "depth"
    points: dict[str, Point]
    config_registers: dict[Literal["unit_id", "baud"], ConfigRegister] = field(default_factory=dict)
    identify: dict[str, int] = field(default_factory=dict)

    def protocol_address(self, point: Point | ConfigRegister) -> int:
        """The on-the-wire address: the manual's address minus the profile's base."""
        return point.address - self.link.address_base

    def status_points(self) -> dict[str, Point]:
        """The points whose value says whether the device's readings are valid, in profile order."""
        out: dict[str, Point] = {}
        for name, p in self.points.items():
            if p.is_status:
                out[name] = p
            elif name in LEGACY_STATUS:
                out[name] = msgspec.structs.replace(p, faults={1: name})
        return out

    def fault_reasons(self) -> list[str]:
        """Every reason a status point of this profile can report (``status_<code>`` aside)."""
        out: list[str] = []
        for p in self.status_points().values():
            for reason in [*(p.faults or {}).values(), *(p.fault_bits or {}).values()]:
                if reason not in out:
                    out.append(reason)
        return out


def check_profile(profile: Profile, src: Source) -> None:
    """Cross-field rules inside one profile."""
    for role in REQUIRED_POINTS[profile.kind]:
        if role not in profile.points:
            src.issue(["points"], f"a {profile.kind} profile needs a point named {role!r}")
    any_of = DEVICE_KINDS[profile.kind].any_of
    if any_of and not any(role in profile.points for role in any_of):
        names = " or ".join(repr(r) for r in any_of)
        src.issue(["points"], f"a {profile.kind} profile needs a point named {names}")
    for name, p in profile.points.items():
        loc: list[str | int] = ["points", name]
        if p.address - profile.link.address_base < 0:
            src.issue([*loc, "address"], "is below the profile's address_base")
        registers = p.table in ("holding", "input")
        if not registers and p.type not in ("bit", "uint16"):
            src.issue([*loc, "type"], f"a {p.table} point holds one bit; use type bit")
        if p.type == "bit" and registers and p.bit is None:
            src.issue([*loc, "bit"], "a bit of a register needs 'bit: 0..15'")
        if p.type == "string" and p.length is None:
            src.issue([*loc, "length"], "a string needs 'length' in registers")
        if p.order is not None:
            two = p.type in ("int32", "uint32", "float32")
            if two != (len(p.order) == 4):
                src.issue([*loc, "order"], f"{p.order} does not fit a {p.type}")
        if p.decimals_from is not None and p.decimals_from not in profile.points:
            src.issue([*loc, "decimals_from"], f"no point named {p.decimals_from!r}")
        if p.writable and p.table in ("input", "discrete"):
            src.issue([*loc, "writable"], f"{p.table} tables are read-only in Modbus")
        if p.unit in UNIT_TO_MM and p.metric is None and name == "level":
            src.issue([*loc, "metric"], "the level point needs a metric (e.g. depth_mm)")
        _check_status(profile, name, p, src)
        if p.encoding != "ascii":
            try:
                "".encode(p.encoding)
            except LookupError:
                src.issue([*loc, "encoding"], f"unknown text encoding {p.encoding!r}")


def _check_status(profile: Profile, name: str, p: Point, src: Source) -> None:
    """A status point reads integer codes (or bits) and says what each one means."""
    loc: list[str | int] = ["points", name]
    integer = p.table in ("coil", "discrete") or p.type in (*INTEGER_TYPES, "bit")
    if p.is_status and not integer:
        key = "faults" if p.faults is not None else "fault_bits"
        src.issue([*loc, key], f"a status point reads codes: use an integer type or bit, not {p.type}")
    if p.faults is not None and p.fault_bits is not None:
        src.issue([*loc, "fault_bits"], "give either faults (codes) or fault_bits (bits), not both")
    if p.fault_bits is not None:
        if p.table in ("coil", "discrete") or p.type == "bit":
            src.issue([*loc, "fault_bits"], "a single bit has no bits to map: use faults: {1: reason}")
        elif p.type in INTEGER_TYPES:
            bits = 16 * WIDTH[p.type]
            for bit in p.fault_bits:
                if bit >= bits:
                    src.issue([*loc, "fault_bits", bit], f"a {p.type} has bits 0 to {bits - 1}")
    if p.ok is not None:
        if p.faults is None:
            src.issue([*loc, "ok"], "ok lists the codes that are not faults: it needs faults")
        elif overlap := sorted(set(p.ok) & set(p.faults)):
            src.issue([*loc, "ok"], f"code {overlap[0]} is listed as ok and as a fault")
        if name in (*REQUIRED_POINTS[profile.kind], *DEVICE_KINDS[profile.kind].any_of):
            src.issue([*loc, "ok"], f"the {name} point reads values, not only status codes")


def load_profile(path: Path) -> Profile:
    """Load and check one profile; raise ConfigError naming file, line and key."""
    src = load_yaml(path)
    profile = validate(Profile, src)
    if profile is not None:
        check_profile(profile, src)
        if profile.model != path.stem:
            src.issue(["model"], f"must equal the file name {path.stem!r}")
    src.raise_if_issues()
    assert profile is not None
    return profile
