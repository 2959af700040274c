"""Why a sensor should be polled fast right now (adaptive polling).

A level sensor is *urgent* while the water is there (its alert level is not
clear), while a jump is waiting to be confirmed, while the depth is within
``near_mm`` of the warning threshold's ``on``, or while it rises at
``rise_mm_per_min`` or faster (the least-squares slope of the accepted
readings of the last ``RISE_WINDOW_S``, once they span ``MIN_SPAN_S``). Once urgent it
stays so for ``HOLD_S`` after the last reason went away, so a depth hovering
at the edge of "near" does not flip the poll rate at every reading. A dry,
steady sensor far from its thresholds is polled at its slow ``poll_s``.

Pure: time comes in with every call (milliseconds, as the readings carry it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from edge.config.site import FastPoll, Thresholds
from floodgate.wire import Level

RISE_WINDOW_S = 10.0
MIN_SPAN_S = 2.0
HOLD_S = 10.0


@dataclass
class LevelUrgency:
    cfg: FastPoll
    thresholds: Thresholds
    reason: str | None = None
    _history: deque[tuple[int, float]] = field(default_factory=deque)
    _last_reason_ms: int | None = None

    def feed(self, ts_ms: int, mm: float | None, level: Level, pending: bool) -> str | None:
        """Take one poll's outcome; returns the reason to poll fast, or None.

        ``mm`` is the accepted depth (None when the reading was not usable),
        ``level`` the sensor's alert level, ``pending`` whether the filter holds
        back a jump that more readings must confirm.
        """
        why = self._reason(ts_ms, mm, level, pending)
        if why is not None:
            self._last_reason_ms = ts_ms
            self.reason = why
        elif self._last_reason_ms is not None and ts_ms - self._last_reason_ms < HOLD_S * 1000:
            pass  # keep the last reason through the hold time
        else:
            self.reason = None
            self._last_reason_ms = None
        return self.reason

    def rate_per_min(self) -> float | None:
        """Slope of the readings in the window in mm/min (None until they span ``MIN_SPAN_S``)."""
        h = self._history
        if len(h) < 3 or h[-1][0] - h[0][0] < MIN_SPAN_S * 1000:
            return None
        n = len(h)
        t_mean = sum(t for t, _ in h) / n
        v_mean = sum(v for _, v in h) / n
        var = sum((t - t_mean) ** 2 for t, _ in h)
        cov = sum((t - t_mean) * (v - v_mean) for t, v in h)
        return cov / var * 60_000

    def _reason(self, ts_ms: int, mm: float | None, level: Level, pending: bool) -> str | None:
        if mm is not None:
            self._history.append((ts_ms, mm))
            cutoff = ts_ms - RISE_WINDOW_S * 1000
            while self._history[0][0] < cutoff:
                self._history.popleft()
        if level != "clear":
            return "wet"
        if pending:
            return "confirming"
        if mm is None:
            return None
        if mm >= self.thresholds.warning.on - self.cfg.near_mm:
            return "near"
        rate = self.rate_per_min()
        if rate is not None and rate >= self.cfg.rise_mm_per_min:
            return "rising"
        return None
