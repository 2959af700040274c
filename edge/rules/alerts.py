"""Alert state machine per sensor: clear / warning / danger, with hysteresis and dwell.

A level is entered when the value has stayed at or above its ``on`` threshold
for ``dwell_s``, and left when it has stayed below its ``clear`` threshold for
``dwell_s``. Levels may be skipped on the way up (clear -> danger) and on the
way down. Every change is a :class:`Transition`; an episode id is minted at
the first rise and kept until the sensor is clear again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edge.config.site import Thresholds
from floodgate.ids import new_ulid
from floodgate.wire import Level, level_rank


@dataclass(frozen=True)
class Transition:
    episode: str
    level: Level
    prev: Level
    value: float
    threshold: float | None
    rate_per_min: float | None
    ts: int
    eta_s: float | None = None  # a forecast's expected seconds to its threshold


@dataclass
class LevelAlarm:
    """Thresholded value (depth) -> alert level."""

    thresholds: Thresholds
    level: Level = "clear"
    episode: str | None = None
    _since: dict[Level, int] = field(default_factory=dict)
    _history: list[tuple[int, float]] = field(default_factory=list)

    def _rate(self, ts: int, value: float) -> float | None:
        self._history.append((ts, value))
        cutoff = ts - 60_000
        while len(self._history) > 2 and self._history[0][0] < cutoff:
            self._history.pop(0)
        t0, v0 = self._history[0]
        if ts - t0 < 1000:
            return None
        return round((value - v0) / ((ts - t0) / 60000), 2)

    def _target(self, ts: int, value: float) -> Level:
        """The level the value argues for right now, dwell included."""
        th = self.thresholds
        want: Level = self.level
        # Going up: the highest level whose 'on' has held for its dwell.
        rising: tuple[Level, ...] = ("danger", "warning")
        for lvl in rising:
            t = getattr(th, lvl)
            key: Level = lvl
            if value >= t.on:
                self._since.setdefault(key, ts)
                if level_rank(lvl) > level_rank(want) and ts - self._since[key] >= t.dwell_s * 1000:
                    want = lvl
            else:
                self._since.pop(key, None)
        if level_rank(want) > level_rank(self.level):
            return want
        # Going down: below the current level's 'clear' for its dwell.
        if self.level == "clear":
            return "clear"
        cur = getattr(th, self.level)
        down_key: Level = "clear"
        if value < cur.clear:
            self._since.setdefault(down_key, ts)
            if ts - self._since[down_key] >= cur.dwell_s * 1000:
                if self.level == "danger" and value >= th.warning.clear:
                    return "warning"
                return "clear"
        else:
            self._since.pop(down_key, None)
        return self.level

    def feed(self, ts: int, value: float) -> Transition | None:
        rate = self._rate(ts, value)
        target = self._target(ts, value)
        if target == self.level:
            return None
        prev = self.level
        self.level = target
        self._since.pop("clear", None)
        if prev == "clear":
            self.episode = new_ulid(ts)
        episode = self.episode or new_ulid(ts)
        if target == "clear":
            self.episode = None
        th = None if target == "clear" else getattr(self.thresholds, target).on
        return Transition(episode, target, prev, value, th, rate, ts)


@dataclass
class ContactAlarm:
    """A wet contact -> ``wet_level`` when wet, clear once it has read dry for ``dry_hold_s``.

    Wet warns at once. A contact at the waterline chatters (waves of passing cars, water
    hovering at its height): with a hold, a contact that reads wet again within
    ``dry_hold_s`` of going dry stays in its episode instead of sending a clear and a new
    warning each time (0: clear at the first dry read).
    """

    wet_level: Level
    dry_hold_s: float = 0.0
    level: Level = "clear"
    episode: str | None = None
    dry_since: int | None = None

    def feed(self, ts: int, wet: bool) -> Transition | None:
        if wet:
            self.dry_since = None
        elif self.level != "clear":
            if self.dry_since is None:
                self.dry_since = ts
            if ts - self.dry_since < self.dry_hold_s * 1000:
                return None
        target: Level = self.wet_level if wet else "clear"
        if target == self.level:
            return None
        prev = self.level
        self.level = target
        if prev == "clear":
            self.episode = new_ulid(ts)
        episode = self.episode or new_ulid(ts)
        if target == "clear":
            self.episode = None
            self.dry_since = None
        return Transition(episode, target, prev, 1.0 if wet else 0.0, None, None, ts)
