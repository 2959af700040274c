"""The edge's own forecast: from the filtered rise rate, the expected time to the next threshold.

Minutes ahead, with no cloud: a straight line through the accepted depths of
the last ``window_s`` (least squares) gives the rise rate; the time to the
next ``on`` threshold above the measured level is the distance to it over that
rate. A ``forecast`` episode is raised when that time is under ``horizon_s``
while the water rises at ``min_rise_mm_min`` or more; its level is the level
expected (``warning`` or ``danger``), its ``eta_s`` the expected time. It moves
to ``danger`` when danger is the next threshold within the horizon, and is
cleared when the rise stops (under half of ``min_rise_mm_min``), when the
expected time goes beyond twice the horizon, or when the measured water has
reached the highest threshold (the ``flood`` alert speaks then). It is also
cleared when the sensor faults or stops answering (:meth:`RiseForecast.drop`).

A forecast never drives the board or the gate: only measured water does
(the agent passes only ``flood`` and ``immersion`` alerts to the policy).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from edge.config.site import ForecastCfg, Thresholds
from edge.rules.alerts import Transition
from floodgate.ids import new_ulid
from floodgate.wire import Level, level_rank

MIN_POINTS = 3  # readings in the window before a rate is trusted


def rise_rate_mm_s(points: deque[tuple[int, float]]) -> float | None:
    """The least-squares slope of ``(ts_ms, mm)`` in mm/s; None with too few points or no time span."""
    if len(points) < MIN_POINTS:
        return None
    t0 = points[0][0]
    ts = [(t - t0) / 1000 for t, _ in points]
    vs = [v for _, v in points]
    mt, mv = sum(ts) / len(ts), sum(vs) / len(vs)
    var = sum((t - mt) ** 2 for t in ts)
    if var <= 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in zip(ts, vs, strict=True)) / var


@dataclass
class RiseForecast:
    """Accepted depths in, ``forecast`` transitions out (with ``eta_s``)."""

    cfg: ForecastCfg
    thresholds: Thresholds
    level: Level = "clear"
    episode: str | None = None
    eta_s: float | None = None
    _points: deque[tuple[int, float]] = field(default_factory=deque)

    def next_threshold(self, value: float, measured: Level) -> tuple[Level, float] | None:
        """The lowest level above the measured one whose ``on`` is still above ``value``."""
        rising: tuple[Level, ...] = ("warning", "danger")
        for lvl in rising:
            on = float(getattr(self.thresholds, lvl).on)
            if level_rank(lvl) > level_rank(measured) and on > value:
                return lvl, on
        return None

    def feed(self, ts: int, value: float, measured: Level) -> Transition | None:
        """An accepted depth (mm) and the measured level now; a transition when the forecast changes."""
        assert self.cfg.horizon_s is not None
        self._points.append((ts, value))
        while self._points and self._points[0][0] < ts - self.cfg.window_s * 1000:
            self._points.popleft()
        rate = rise_rate_mm_s(self._points)
        per_min = None if rate is None else rate * 60
        target = self.next_threshold(value, measured)
        want: Level = "clear"
        eta: float | None = None
        threshold: float | None = None
        if target is not None and per_min is not None and rate is not None and rate > 0:
            lvl, threshold = target
            eta = (threshold - value) / rate
            start = per_min >= self.cfg.min_rise_mm_min and eta <= self.cfg.horizon_s
            keep = (
                self.level != "clear"
                and per_min >= self.cfg.min_rise_mm_min / 2
                and eta <= 2 * self.cfg.horizon_s
            )
            if start or keep:
                want = lvl
        self.eta_s = None if want == "clear" else round(eta or 0.0, 1)
        if want == self.level:
            return None
        prev, self.level = self.level, want
        if prev == "clear":
            self.episode = new_ulid()
        episode = self.episode
        assert episode is not None
        if want == "clear":
            self.episode = None
        rpm = None if per_min is None else round(per_min, 2)
        return Transition(episode, want, prev, value, threshold, rpm, ts, eta_s=self.eta_s)

    def drop(self, ts: int) -> Transition | None:
        """The depth is no longer known (the sensor faults or stops answering): clear an open forecast.

        The window starts afresh, so the rate is taken again from readings after the sensor is back.
        """
        last = self._points[-1][1] if self._points else 0.0
        self._points.clear()
        self.eta_s = None
        if self.level == "clear":
            return None
        assert self.episode is not None
        prev, episode = self.level, self.episode
        self.level, self.episode = "clear", None
        return Transition(episode, "clear", prev, last, None, None, ts)
