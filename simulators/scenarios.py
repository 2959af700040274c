"""Storm scenarios: water depth on the road over time, with noise and spikes, and the rain that makes it."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# (duration in scenario seconds, depth in mm at the end of the segment)
SCENARIOS: dict[str, list[tuple[float, float]]] = {
    "dry": [(1.0, 0.0)],
    "slow-rise": [(30.0, 0.0), (600.0, 200.0), (600.0, 200.0)],
    "flash-flood": [(20.0, 0.0), (90.0, 400.0), (60.0, 400.0), (180.0, 0.0), (60.0, 0.0)],
    "recession": [(1.0, 350.0), (300.0, 0.0), (60.0, 0.0)],
    "storm": [
        (30.0, 0.0),
        (120.0, 180.0),
        (60.0, 180.0),
        (90.0, 360.0),
        (120.0, 360.0),
        (240.0, 60.0),
        (120.0, 0.0),
    ],
    # The demo's storms, played in a loop (``loop=True``): a flood that stays in danger for
    # 600 s, then 900 s dry (longer than a gate's reopen hold at the demo's speed) before the
    # next; a rise that only warns.
    "storm-cycle": [(20.0, 0.0), (90.0, 400.0), (600.0, 400.0), (180.0, 0.0), (900.0, 0.0)],
    "warning-cycle": [(30.0, 0.0), (300.0, 200.0), (600.0, 200.0), (300.0, 0.0), (600.0, 0.0)],
}

# The rain of each scenario, in the same scenario seconds: (duration, intensity in mm/h at its end).
# The rain leads the water: the road floods a few minutes into a burst and drains after it.
RAIN: dict[str, list[tuple[float, float]]] = {
    "dry": [(1.0, 0.0)],
    "slow-rise": [(1.0, 15.0), (600.0, 40.0), (630.0, 0.0)],
    "flash-flood": [(1.0, 30.0), (20.0, 120.0), (80.0, 120.0), (60.0, 0.0), (240.0, 0.0)],
    "recession": [(1.0, 0.0)],
    "storm": [(1.0, 20.0), (120.0, 60.0), (60.0, 30.0), (60.0, 100.0), (120.0, 40.0), (180.0, 0.0)],
    "storm-cycle": [(1.0, 30.0), (20.0, 120.0), (90.0, 120.0), (540.0, 60.0), (60.0, 0.0)],
    "warning-cycle": [(1.0, 10.0), (30.0, 40.0), (300.0, 40.0), (300.0, 0.0)],
}


def _piecewise(segments: list[tuple[float, float]], t: float) -> float:
    """The value at ``t`` of a piecewise-linear series from 0 (``(duration, value at its end)``)."""
    start = 0.0
    value = 0.0
    for duration, end in segments:
        if t <= start + duration:
            frac = (t - start) / duration if duration > 0 else 1.0
            return value + (end - value) * max(0.0, frac)
        start += duration
        value = end
    return value


def _integral(segments: list[tuple[float, float]], t: float) -> float:
    """The integral from 0 to ``t`` (value-seconds) of the same series; the last value holds after it."""
    total, start, value = 0.0, 0.0, 0.0
    for duration, end in segments:
        upto = min(t, start + duration)
        if upto > start:
            total += (value + _piecewise(segments, upto)) / 2 * (upto - start)
        if t <= start + duration:
            return total
        start += duration
        value = end
    return total + value * (t - start)


@dataclass
class Scenario:
    """A piecewise-linear depth profile; after its end the last depth holds, or with ``loop``
    it starts over. With ``delay_s`` it starts that many seconds late (dry until then).

    ``depth_at(t)`` is deterministic given the seed; noise and spikes are
    drawn per call so that successive reads differ like a real sensor's. ``rain`` gives the
    scenario its own rain (the same segments as ``RAIN``'s; a segment of duration 0 is a step),
    as a storm played through SWMM does (``simulators.swmm.scenario_from``).
    """

    name: str
    segments: list[tuple[float, float]]
    noise_mm: float = 2.0
    spike_chance: float = 0.0
    spike_mm: float = 400.0
    seed: int = 0
    loop: bool = False
    delay_s: float = 0.0
    rain: list[tuple[float, float]] | None = None  # its own rain (else the named scenario's in RAIN)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @classmethod
    def named(cls, name: str, **kw: float | bool) -> Scenario:
        if name not in SCENARIOS:
            raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
        return cls(name, SCENARIOS[name], **kw)  # type: ignore[arg-type]

    @property
    def duration_s(self) -> float:
        return sum(d for d, _ in self.segments)

    def true_depth(self, t: float) -> float:
        """The noise-free depth at scenario time ``t`` seconds."""
        st = self._storm_time(t)
        return 0.0 if st is None else _piecewise(self.segments, st)

    def _storm_time(self, t: float) -> float | None:
        """Where in its segments the storm is at ``t`` (delay and loop applied); None before it starts."""
        t -= self.delay_s
        if t < 0:
            return None
        if self.loop and self.duration_s > 0:
            t %= self.duration_s
        return t

    def rain_mm_h(self, t: float) -> float:
        """The rain intensity at scenario time ``t`` (the same storm as the water)."""
        st = self._storm_time(t)
        return 0.0 if st is None else _piecewise(self.rain_segments, st)

    @property
    def rain_segments(self) -> list[tuple[float, float]]:
        return self.rain if self.rain is not None else RAIN.get(self.name, RAIN["dry"])

    def rain_mm(self, t: float) -> float:
        """The rain fallen from the scenario's start to ``t``, in mm (every loop's rain counted)."""
        rain = self.rain_segments
        t -= self.delay_s
        if t <= 0:
            return 0.0
        if self.loop and self.duration_s > 0:
            loops, t = divmod(t, self.duration_s)
            return (loops * _integral(rain, self.duration_s) + _integral(rain, t)) / 3600
        return _integral(rain, t) / 3600

    def depth_at(self, t: float) -> float:
        d = self.true_depth(t)
        if self.noise_mm > 0:
            d += self._rng.gauss(0.0, self.noise_mm)
        if self.spike_chance > 0 and self._rng.random() < self.spike_chance:
            d += self.spike_mm
        return max(0.0, d)
