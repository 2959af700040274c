"""Register codecs: byte and word orders, scaling, text blocks."""

from __future__ import annotations

import pytest

from edge.config.profile import Point
from edge.devices.codec import decode_raw, encode_raw, scale, unscale


@pytest.mark.parametrize(
    ("order", "words"),
    [
        ("ABCD", [0x4148, 0xF5C3]),
        ("CDAB", [0xF5C3, 0x4148]),
        ("BADC", [0x4841, 0xC3F5]),
        ("DCBA", [0xC3F5, 0x4841]),
    ],
)
def test_float32_orders(order: str, words: list[int]) -> None:
    p = Point(table="holding", address=0, type="float32", order=order)  # type: ignore[arg-type]
    assert decode_raw(p, words) == pytest.approx(12.56, abs=1e-5)
    assert encode_raw(p, 12.56) == words


@pytest.mark.parametrize(
    ("typ", "words", "value"),
    [
        ("int16", [0xFFFE], -2),
        ("uint16", [0xFFFE], 65534),
        ("int32", [0xFFFF, 0xFFFD], -3),
        ("uint32", [0x0001, 0x0000], 65536),
    ],
)
def test_integers(typ: str, words: list[int], value: int) -> None:
    p = Point(table="holding", address=0, type=typ)  # type: ignore[arg-type]
    assert decode_raw(p, words) == value
    assert encode_raw(p, value) == words


def test_byte_swapped_int16() -> None:
    p = Point(table="input", address=0, type="int16", order="BA")
    assert decode_raw(p, [0x3412]) == 0x1234


def test_bit_of_register_and_coils() -> None:
    p = Point(table="input", address=0, type="bit", bit=7)
    assert decode_raw(p, [0x0080]) is True
    assert decode_raw(p, [0x0040]) is False
    c = Point(table="coil", address=0, type="bit")
    assert decode_raw(c, [1]) is True


def test_decimals_and_scale() -> None:
    p = Point(table="holding", address=4, type="int16", scale=1.0, offset=0.0)
    assert scale(p, 2815, decimals=1) == pytest.approx(281.5)
    assert unscale(p, 281.5, decimals=1) == pytest.approx(2815)


def test_gbk_text_block() -> None:
    p = Point(table="holding", address=1000, type="string", length=8, encoding="gbk")
    words = encode_raw(p, "积水 STOP")
    assert len(words) == 8
    assert decode_raw(p, words) == "积水 STOP"
    with pytest.raises(ValueError, match="holds 16"):
        encode_raw(p, "隧道积水禁止通行请绕行")
