"""Clocks: the wall clock, and a manual one that tests drive.

Anything that waits for a deadline (ticket escalation) asks a ``Clock`` for the
time and sleeps through it, so a test can move time forward instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from typing import Protocol

from floodgate.ids import now_ms


class Clock(Protocol):
    def now_ms(self) -> int: ...

    async def sleep_until(self, ms: int) -> None:
        """Return once ``now_ms() >= ms``."""


class SystemClock:
    def now_ms(self) -> int:
        return now_ms()

    async def sleep_until(self, ms: int) -> None:
        # The wall clock can be set back or forward while we sleep: look again.
        while (left := ms - now_ms()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(left / 1000)


class ManualClock:
    """Time stands still until ``advance`` or ``set`` moves it; sleepers wake when it passes."""

    def __init__(self, start_ms: int = 1_780_000_000_000) -> None:
        self._now = start_ms
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now_ms(self) -> int:
        return self._now

    async def sleep_until(self, ms: int) -> None:
        if ms <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (ms, next(self._order), fut))
        await fut

    def advance(self, ms: int) -> None:
        self.set(self._now + ms)

    def set(self, ms: int) -> None:
        if ms < self._now:
            raise ValueError("a manual clock does not go backwards")
        self._now = ms
        while self._sleepers and self._sleepers[0][0] <= ms:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)


async def sleep_until_or(clock: Clock, until_ms: int, wake: asyncio.Event) -> None:
    """Sleep on ``clock`` until ``until_ms``, or until ``wake`` is set, whichever is first."""
    sleeper = asyncio.ensure_future(clock.sleep_until(until_ms))
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f in (sleeper, woken):
            f.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await f
