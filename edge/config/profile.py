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
====== ===================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from msgspec import Meta, Struct, field

from floodgate.yamlconfig import Source, load_yaml, validate

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32", "bit", "string"]
Order = Literal["AB", "BA", "ABCD", "CDAB", "BADC", "DCBA"]
Kind = Literal["level", "immersion", "sign", "gate"]

REQUIRED_POINTS: dict[str, tuple[str, ...]] = {
    "level": ("level",),
    "immersion": ("wet",),
    "sign": ("text",),
    "gate": ("close_relay", "open_limit", "closed_limit"),
}
WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "bit": 1}
UNIT_TO_MM = {"mm": 1.0, "cm": 10.0, "m": 1000.0}


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


def check_profile(profile: Profile, src: Source) -> None:
    """Cross-field rules inside one profile."""
    for role in REQUIRED_POINTS[profile.kind]:
        if role not in profile.points:
            src.issue(["points"], f"a {profile.kind} profile needs a point named {role!r}")
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
        if p.encoding != "ascii":
            try:
                "".encode(p.encoding)
            except LookupError:
                src.issue([*loc, "encoding"], f"unknown text encoding {p.encoding!r}")


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
