"""Storm scenarios: water depth on the road over time, with noise and spikes."""

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


@dataclass
class Scenario:
    """A piecewise-linear depth profile; after its end the last depth holds, or with ``loop``
    it starts over. With ``delay_s`` it starts that many seconds late (dry until then).

    ``depth_at(t)`` is deterministic given the seed; noise and spikes are
    drawn per call so that successive reads differ like a real sensor's.
    """

    name: str
    segments: list[tuple[float, float]]
    noise_mm: float = 2.0
    spike_chance: float = 0.0
    spike_mm: float = 400.0
    seed: int = 0
    loop: bool = False
    delay_s: float = 0.0
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
        t -= self.delay_s
        if t < 0:
            return 0.0
        if self.loop and self.duration_s > 0:
            t %= self.duration_s
        start = 0.0
        depth = 0.0
        for duration, end in self.segments:
            if t <= start + duration:
                frac = (t - start) / duration if duration > 0 else 1.0
                return depth + (end - depth) * max(0.0, frac)
            start += duration
            depth = end
        return depth

    def depth_at(self, t: float) -> float:
        d = self.true_depth(t)
        if self.noise_mm > 0:
            d += self._rng.gauss(0.0, self.noise_mm)
        if self.spike_chance > 0 and self._rng.random() < self.spike_chance:
            d += self.spike_mm
        return max(0.0, d)
