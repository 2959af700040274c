"""Identifiers: ULIDs for messages, alerts and commands."""

from __future__ import annotations

import os
import time

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(ts_ms: int | None = None) -> str:
    """A 26-character ULID: 48 bits of milliseconds, then 80 random bits.

    Sorting ULIDs sorts them by creation time (to the millisecond).
    """
    ms = int(time.time() * 1000) if ts_ms is None else ts_ms
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch, UTC (the contract's timestamps)."""
    return time.time_ns() // 1_000_000
