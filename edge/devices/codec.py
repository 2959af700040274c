"""Turning registers into values and back, as a profile point describes.

Byte and word order use the usual names: the value's bytes from most to least
significant are A, B (16 bit) or A, B, C, D (32 bit), and the order names how
they arrive on the wire: ``ABCD`` big-endian, ``CDAB`` word-swapped,
``BADC`` byte-swapped, ``DCBA`` little-endian.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence

from edge.config.profile import Point, Profile

Value = float | int | bool | str
_FMT = {"int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "float32": ">f"}


def _default_order(point: Point) -> str:
    if point.order is not None:
        return point.order
    return "ABCD" if point.width == 2 else "AB"


def _unshuffle(wire: bytes, order: str) -> bytes:
    """Bytes as they came on the wire -> big-endian (A first)."""
    letters = "ABCD"[: len(order)]
    return bytes(wire[order.index(letter)] for letter in letters)


def _shuffle(value: bytes, order: str) -> bytes:
    """Big-endian bytes -> the order they go on the wire."""
    return bytes(value["ABCD".index(letter)] for letter in order)


def registers_to_bytes(regs: Sequence[int]) -> bytes:
    return b"".join(int(r).to_bytes(2, "big") for r in regs)


def bytes_to_registers(data: bytes) -> list[int]:
    if len(data) % 2:
        data += b"\x00"
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def decode_raw(point: Point, words: Sequence[int] | Sequence[bool]) -> Value:
    """The raw value of a point (before scaling) from the words or bits read."""
    if point.table in ("coil", "discrete"):
        return bool(words[0])
    regs = [int(w) for w in words]
    if point.type == "bit":
        return bool((regs[0] >> (point.bit or 0)) & 1)
    data = registers_to_bytes(regs[: point.width])
    if point.type == "string":
        return data.rstrip(b"\x00 ").decode(point.encoding, errors="replace")
    value: int | float = struct.unpack(_FMT[point.type], _unshuffle(data, _default_order(point)))[0]
    return value


def scale(point: Point, raw: float, decimals: int = 0) -> float:
    """Engineering value: raw x scale x 10^-decimals + offset."""
    return raw * point.scale * (10.0**-decimals) + point.offset


def engineering(profile: Profile, name: str, raws: Mapping[str, Value]) -> Value:
    """A point's value in its unit, as the agent reads it (text and bits as they are)."""
    point = profile.points[name]
    raw = raws[name]
    if isinstance(raw, bool | str):
        return raw
    d = raws.get(point.decimals_from) if point.decimals_from else None
    decimals = int(d) if isinstance(d, int | float) else 0
    if isinstance(raw, int) and (point.scale, point.offset, decimals) == (1.0, 0.0, 0):
        return raw  # a count or a code stays an integer
    return scale(point, float(raw), decimals)


def plausible(point: Point, value: Value) -> bool:
    """Inside the point's ``range`` (and a finite number); text and bits always are."""
    if isinstance(value, bool | str):
        return True
    return math.isfinite(value) and (point.range is None or point.range[0] <= value <= point.range[1])


def encode_raw(point: Point, value: Value) -> list[int]:
    """Registers for a raw value (the inverse of :func:`decode_raw`); bits give [0|1]."""
    if point.table in ("coil", "discrete") or point.type == "bit":
        return [1 if value else 0]
    if point.type == "string":
        data = str(value).encode(point.encoding)
        size = 2 * (point.length or 1)
        if len(data) > size:
            raise ValueError(f"text is {len(data)} bytes in {point.encoding}, the block holds {size}")
        return bytes_to_registers(data.ljust(size, b"\x00"))
    fmt = _FMT[point.type]
    number = float(value) if point.type == "float32" else round(float(value))
    packed = struct.pack(fmt, number)
    return bytes_to_registers(_shuffle(packed, _default_order(point)))


def unscale(point: Point, value: float, decimals: int = 0) -> float:
    """Raw register value for an engineering value (inverse of :func:`scale`)."""
    return (value - point.offset) / (point.scale * (10.0**-decimals))
