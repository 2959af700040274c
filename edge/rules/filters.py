"""Noise filtering for level readings (after NYC FloodNet's sensor practice).

- a burst of ``samples`` reads per poll is reduced to its median;
- values inside the noise floor count as zero;
- a change faster than water can rise or fall on a road is *implausible*:
  a reading ``r`` at ``t`` is rejected when, for the last accepted reading or
  any accepted in the minute before, ``|r - a_i| > max_jump +
  max_rise_mm_s x (t - t_i)``. It is rejected however many readings in a row
  agree with it; it is accepted once water could have got there at that rate
  (a step that holds that long is not a spike);
- a jump larger than ``max(max_jump, max_rate_per_min x elapsed)`` from the
  last accepted value is *suspect*: it is held back, and accepted only when
  ``confirm`` readings in a row agree with it (a real step), else dropped as
  a spike. A single spike between two normal readings never reaches the
  alert logic.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from edge.config.site import FilterCfg
from floodgate.wire import Quality


@dataclass(frozen=True)
class Filtered:
    value: float
    quality: Quality


ANCHOR_WINDOW_MS = 60_000


@dataclass
class LevelFilter:
    cfg: FilterCfg
    _last: float | None = None
    _last_ts: int = 0
    _pending: list[float] = field(default_factory=list)
    _anchors: deque[tuple[int, float]] = field(default_factory=deque)
    implausible: int = 0

    def feed(self, ts_ms: int, samples: Sequence[float]) -> Filtered:
        value = statistics.median(samples)
        if abs(value) < self.cfg.noise_floor:
            value = 0.0
        if self._last is None:
            self._accept(ts_ms, value)
            return Filtered(value, "good")
        if not self.physical(ts_ms, value):
            self.implausible += 1
            self._pending.clear()  # agreeing with an impossible reading confirms nothing
            return Filtered(value, "suspect")
        elapsed_min = max(0.0, (ts_ms - self._last_ts) / 60000)
        allowed = max(self.cfg.max_jump, self.cfg.max_rate_per_min * elapsed_min)
        if abs(value - self._last) <= allowed:
            self._pending.clear()
            self._accept(ts_ms, value)
            return Filtered(value, "good")
        # A jump: hold it until it is confirmed by readings that agree with each other.
        if self._pending and abs(value - self._pending[-1]) > self.cfg.max_jump:
            self._pending.clear()
        self._pending.append(value)
        if len(self._pending) >= self.cfg.confirm:
            self._pending.clear()
            self._accept(ts_ms, value)
            return Filtered(value, "good")
        return Filtered(value, "suspect")

    def physical(self, ts_ms: int, value: float) -> bool:
        """Whether water could have got to ``value`` from every recent accepted reading."""
        rate = self.cfg.max_rise_mm_s / 1000  # mm per ms
        return all(abs(value - a) <= self.cfg.max_jump + rate * (ts_ms - t) for t, a in self._anchors)

    def _accept(self, ts_ms: int, value: float) -> None:
        self._last = value
        self._last_ts = ts_ms
        self._anchors.append((ts_ms, value))
        while len(self._anchors) > 1 and self._anchors[0][0] < ts_ms - ANCHOR_WINDOW_MS:
            self._anchors.popleft()

    @property
    def last(self) -> float | None:
        return self._last
