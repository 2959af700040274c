"""When a site's forecast raises, holds and clears a ``forecast`` alert (pure; no I/O).

The cloud's forecast service (``cloud.forecast.service.Forecaster.decide``) and the lead-time
bench (``bench/forecast_lead.py``) both decide with these functions, so the bench scores the rule
the product runs. For one level (warning or danger) and one run of the site's forecast:

- **raise** when the level is at least ``probability`` likely to be crossed within the horizon
  *and* the storm is confirmed at the site: its rain gauge measured at least ``confirm_rain_mm``
  over the last hour, or there is water there now (``WATER_MM``). A rainfall forecast alone (rain not yet
  begun) puts the site on the at-risk list but raises no alert: a storm forecast hours ahead
  that never falls (a false storm) is indistinguishable from one that does until the rain is
  due, and it is the first source of false alarms. ``confirm_rain_mm`` None turns the
  confirmation off (raise on the forecast alone).
- **hold** an alert once raised while any of: the level is still ``probability - hysteresis``
  likely; the measured depth is rising (``RISE_MM`` above what it was ``RISING_S`` before); the rain is
  still falling (at least ``confirm_rain_mm``, or 1 mm with the confirmation off, in the last
  ``FALLING_S``). A storm under way whose forecast wavers (the rain came later than forecast,
  the model's peak dips under the threshold for one run) no longer clears the alert just before
  the water arrives.
- **clear** when none of them holds: the risk has passed.
"""

from __future__ import annotations

from dataclasses import dataclass

CONFIRM_S = 3600  # the rain that confirms a storm: measured over this long up to now
FALLING_S = 1800  # the rain is still falling: measured over this long up to now
RISING_S = 600  # the depth is rising: higher now than this long ago
RISE_MM = 10.0  # by at least this (a level sensor's noise on a steady depth stays under it)
FALLING_MM = 1.0  # rain that counts as still falling when the confirmation is off
WATER_MM = 20.0  # water on the road: a level sensor's noise on a dry road stays under it


@dataclass(frozen=True)
class Measured:
    """What the site measures now: the depth, whether it is rising, the rain just fallen."""

    depth_mm: float
    rising: bool
    rain_1h_mm: float  # over the last CONFIRM_S
    rain_30min_mm: float  # over the last FALLING_S


@dataclass(frozen=True)
class Settings:
    probability: float = 0.3
    hysteresis: float = 0.1
    confirm_rain_mm: float | None = 1.0


def confirmed(m: Measured, s: Settings) -> bool:
    """The storm has begun at the site (or the confirmation is off)."""
    if s.confirm_rain_mm is None:
        return True
    return m.depth_mm >= WATER_MM or m.rain_1h_mm >= s.confirm_rain_mm


def raises(p: float, m: Measured, s: Settings) -> bool:
    """A level ``p`` likely within the horizon raises a (new or higher) alert."""
    return p >= s.probability and confirmed(m, s)


def holds(p: float, m: Measured, s: Settings) -> bool:
    """An alert standing at a level ``p`` likely stays up."""
    falling = FALLING_MM if s.confirm_rain_mm is None else s.confirm_rain_mm
    return p >= s.probability - s.hysteresis or m.rising or m.rain_30min_mm >= falling


def measured(
    depth: list[tuple[int, float]], rain: list[tuple[int, float]], now_ms: int, step_s: float
) -> Measured:
    """``Measured`` from the site's depth points and rain intensity points ((ms, mm/h), each the
    mean of a step of ``step_s`` starting at its time), up to ``now_ms``."""
    d_now = depth[-1][1] if depth else 0.0
    t_last = depth[-1][0] if depth else now_ms
    before = [v for t, v in depth if t <= t_last - RISING_S * 1000]
    rising = bool(before) and d_now >= before[-1] + RISE_MM

    def mm(since_s: float) -> float:
        start = now_ms - since_s * 1000
        return sum(v * step_s / 3600 for t, v in rain if start <= t < now_ms)

    return Measured(d_now, rising, mm(CONFIRM_S), mm(FALLING_S))
